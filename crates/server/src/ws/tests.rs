//! Tests of the whole WebSocket layer through [`ServerWs`](super::ServerWs): framing,
//! message assembly and the stream adapter against raw bytes and a tungstenite client.

use std::future::poll_fn;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::stream::{SCRATCH, WRITE_THRESHOLD};
use super::{ServerWs, WsError, WsMessage};

const MAX: usize = 1 << 20;
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A server socket on one end of a duplex pipe; the other end is returned raw.
fn pair(max: usize, pipe: usize) -> (ServerWs, DuplexStream) {
    let (server, client) = duplex(pipe);
    (ServerWs::new(Box::new(server), Vec::new(), max), client)
}

/// A server socket and a tungstenite client on a duplex pipe.
async fn ws_pair(max: usize, pipe: usize) -> (ServerWs, WebSocketStream<DuplexStream>) {
    let (ws, raw) = pair(max, pipe);
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let client = WebSocketStream::from_raw_socket(raw, Role::Client, Some(config)).await;
    (ws, client)
}

/// A client frame: `b0` is FIN/RSV/opcode, the payload is masked with `mask`.
fn frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![b0];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(bit | len as u8);
    } else if len <= 0xffff {
        out.push(bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mut body = payload.to_vec();
    if let Some(m) = mask {
        out.extend_from_slice(&m);
        for (i, b) in body.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    out.extend_from_slice(&body);
    out
}

/// A masked client frame.
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    frame(b0, payload, Some(MASK))
}

async fn next(ws: &mut ServerWs) -> Option<Result<WsMessage, WsError>> {
    poll_fn(|cx| ws.poll_next(cx)).await
}

/// One poll of `poll_next`, without waiting.
fn poll_once(ws: &mut ServerWs) -> Poll<Option<Result<WsMessage, WsError>>> {
    ws.poll_next(&mut Context::from_waker(Waker::noop()))
}

async fn send(ws: &mut ServerWs, msg: WsMessage) {
    poll_fn(|cx| ws.poll_ready(cx)).await.expect("ready");
    ws.start_send(msg).expect("start_send");
    poll_fn(|cx| ws.poll_flush(cx)).await.expect("flush");
}

fn text(m: Option<Result<WsMessage, WsError>>) -> String {
    match m {
        Some(Ok(WsMessage::Text(t))) => t.as_str().to_owned(),
        other => panic!("expected text, got {other:?}"),
    }
}

fn is_idle(ws: &ServerWs) -> bool {
    ws.buffer_state() == (0, 0, false)
}

/// Reads one unmasked server frame from the raw end: `(b0, payload)`.
async fn read_frame(raw: &mut DuplexStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    raw.read_exact(&mut head).await.expect("frame header");
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => u64::from(raw.read_u16().await.expect("len16")),
        127 => raw.read_u64().await.expect("len64"),
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    raw.read_exact(&mut payload).await.expect("payload");
    (head[0], payload)
}

fn patterned(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

/// Hostile input: thousands of seeded random byte streams (raw garbage, and
/// sequences of plausible frames with random opcodes, flags, lengths and masks),
/// fed in random chunk sizes. Every stream ends in a message, an error or `None`;
/// nothing panics, and the socket's buffers never exceed the message limit plus
/// one frame header and the read chunk.
#[tokio::test]
async fn random_input_never_panics_and_stays_bounded() {
    const LIMIT: usize = 4096;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for case in 0..3000 {
        let mut bytes = Vec::new();
        if case % 3 == 0 {
            let n = (rand() % 600) as usize;
            bytes.extend((0..n).map(|_| rand() as u8));
        } else {
            for _ in 0..(1 + rand() % 6) {
                let b0 = [0x81, 0x82, 0x01, 0x00, 0x80, 0x88, 0x89, 0x8a, 0x83, 0xc1]
                    [(rand() % 10) as usize];
                let len = match rand() % 4 {
                    0 => (rand() % 126) as usize,
                    1 => (rand() % 3000) as usize,
                    2 => LIMIT + (rand() % 10) as usize,
                    _ => (rand() % 200) as usize,
                };
                let payload: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
                let mut f = frame(b0, &payload, (rand() % 8 != 0).then_some(MASK));
                if rand() % 10 == 0 {
                    f.truncate((rand() as usize) % (f.len() + 1));
                }
                bytes.extend(f);
            }
        }
        let (mut ws, mut raw) = pair(LIMIT, 1 << 16);
        let writer = async {
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = 1 + (rand() as usize) % rest.len().min(700);
                if raw.write_all(&rest[..n]).await.is_err() {
                    return;
                }
                rest = &rest[n..];
            }
            let _ = raw.shutdown().await;
        };
        let reader = async {
            let mut messages = 0;
            loop {
                let (rcap, wcap, _) = ws.buffer_state();
                assert!(
                    rcap <= LIMIT + 14 + (16 << 10),
                    "case {case}: read buffer {rcap}"
                );
                assert!(
                    wcap <= 2 * WRITE_THRESHOLD,
                    "case {case}: write buffer {wcap}"
                );
                match next(&mut ws).await {
                    Some(Ok(_)) => messages += 1,
                    Some(Err(_)) | None => break,
                }
                assert!(messages <= 64, "case {case}: more messages than frames");
            }
        };
        tokio::join!(writer, reader);
    }
}

#[test]
fn struct_is_small() {
    let size = std::mem::size_of::<ServerWs>();
    tracing::info!(size, "size_of::<ServerWs>()");
    assert!(size <= 96, "ServerWs is {size} bytes");
}

#[tokio::test]
async fn text_and_binary_round_trip() {
    let (mut ws, mut client) = ws_pair(MAX, 64 << 10).await;
    let big_text = patterned(100_000);
    let big_bin: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let sent = vec![
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text(""),
        Message::text(big_text.clone()),
        Message::binary(big_bin.clone()),
    ];
    let client_side = async {
        for m in &sent {
            client.send(m.clone()).await.expect("client send");
            let echo = client.next().await.expect("echo").expect("echo ok");
            assert_eq!(&echo, m);
        }
        client
    };
    let server_side = async {
        for _ in 0..sent.len() {
            let m = next(&mut ws).await.expect("message").expect("ok");
            send(&mut ws, m).await;
        }
        ws
    };
    let (_client, ws) = tokio::join!(client_side, server_side);
    assert!(is_idle(&ws), "{:?}", ws.buffer_state());
}

#[tokio::test]
async fn exactly_max_size_is_accepted() {
    let max = 70_000;
    let (mut ws, mut client) = ws_pair(max, 16 << 10).await;
    let payload = patterned(max);
    let (sent, got) = tokio::join!(client.send(Message::text(payload.clone())), next(&mut ws));
    sent.expect("send");
    assert_eq!(text(got), payload);
    let bin = vec![9u8; max];
    let (sent, got) = tokio::join!(client.send(Message::binary(bin.clone())), next(&mut ws));
    sent.expect("send");
    match got {
        Some(Ok(WsMessage::Binary(b))) => assert_eq!(&b[..], &bin[..]),
        other => panic!("expected binary, got {other:?}"),
    }
}

#[tokio::test]
async fn one_byte_over_max_is_capacity() {
    let max = 70_000;
    let (mut ws, mut raw) = pair(max, 1 << 20);
    // Rejected from the header, before the payload has arrived.
    let f = masked(0x81, patterned(max + 1).as_bytes());
    raw.write_all(&f[..14]).await.expect("write");
    assert!(matches!(next(&mut ws).await, Some(Err(WsError::Capacity))));
    assert!(next(&mut ws).await.is_none());
    assert!(is_idle(&ws));
}

#[tokio::test]
async fn fragmented_total_over_max_is_capacity() {
    let (mut ws, mut raw) = pair(100, 4096);
    let mut bytes = masked(0x01, &[b'a'; 60]);
    bytes.extend(masked(0x80, &[b'b'; 41]));
    raw.write_all(&bytes).await.expect("write");
    assert!(matches!(next(&mut ws).await, Some(Err(WsError::Capacity))));
    assert!(is_idle(&ws));
}

#[tokio::test]
async fn many_frames_in_one_write_come_in_order() {
    let (mut ws, mut raw) = pair(MAX, 1 << 20);
    let mut bytes = Vec::new();
    for i in 0..200 {
        let body = format!("message {i} {}", patterned(i * 3));
        if i % 2 == 0 {
            bytes.extend(masked(0x81, body.as_bytes()));
        } else {
            bytes.extend(masked(0x82, body.as_bytes()));
        }
    }
    raw.write_all(&bytes).await.expect("write");
    for i in 0..200 {
        let want = format!("message {i} {}", patterned(i * 3));
        match next(&mut ws).await {
            Some(Ok(WsMessage::Text(t))) if i % 2 == 0 => assert_eq!(t.as_str(), want),
            Some(Ok(WsMessage::Binary(b))) if i % 2 == 1 => assert_eq!(&b[..], want.as_bytes()),
            other => panic!("message {i}: {other:?}"),
        }
    }
    assert!(is_idle(&ws), "{:?}", ws.buffer_state());
    assert!(poll_once(&mut ws).is_pending());
}

#[tokio::test]
async fn frame_split_byte_by_byte() {
    // No coop budget: every poll must see the bytes written so far.
    tokio::task::unconstrained(async {
        let (mut ws, mut raw) = pair(MAX, 1 << 20);
        for len in [5, 300, 70_000] {
            let payload = patterned(len);
            let f = masked(0x81, payload.as_bytes());
            let step = if len > 1000 { 997 } else { 1 };
            let mut sent = 0;
            while sent < f.len() {
                let end = (sent + step).min(f.len());
                raw.write_all(&f[sent..end]).await.expect("write");
                sent = end;
                match poll_once(&mut ws) {
                    Poll::Pending => assert!(sent < f.len(), "complete frame not returned"),
                    Poll::Ready(m) => {
                        assert_eq!(sent, f.len(), "returned before the frame was complete");
                        assert_eq!(text(m), payload);
                    }
                }
            }
            assert!(is_idle(&ws), "{:?}", ws.buffer_state());
        }
    })
    .await;
}

#[tokio::test]
async fn leftover_bytes_are_parsed_first() {
    let (server, mut raw) = duplex(4096);
    let second = masked(0x81, b"second");
    let mut leftover = masked(0x81, b"first");
    leftover.extend_from_slice(&second[..4]);
    let mut ws = ServerWs::new(Box::new(server), leftover, MAX);
    assert_eq!(text(next(&mut ws).await), "first");
    raw.write_all(&second[4..]).await.expect("write");
    assert_eq!(text(next(&mut ws).await), "second");
    assert!(is_idle(&ws));
}

#[tokio::test]
async fn fragmented_message_with_interleaved_ping() {
    let (mut ws, mut raw) = pair(MAX, 4096);
    let mut bytes = masked(0x01, "Hé".as_bytes());
    bytes.extend(masked(0x89, b"p"));
    // A 2-byte character split across fragments.
    bytes.extend(masked(0x00, &"llo wörld".as_bytes()[..7]));
    bytes.extend(masked(0x8A, b"unsolicited pong"));
    bytes.extend(masked(0x80, &"llo wörld".as_bytes()[7..]));
    raw.write_all(&bytes).await.expect("write");
    assert_eq!(text(next(&mut ws).await), "Héllo wörld");
    assert!(is_idle(&ws), "{:?}", ws.buffer_state());
    // The pong went out without the caller writing anything.
    assert_eq!(read_frame(&mut raw).await, (0x8A, b"p".to_vec()));
}

#[tokio::test]
async fn ping_on_idle_socket_is_answered() {
    let (mut ws, mut client) = ws_pair(MAX, 4096).await;
    client
        .send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .expect("ping");
    tokio::select! {
        m = next(&mut ws) => panic!("no message expected, got {m:?}"),
        pong = client.next() => {
            let pong = pong.expect("pong").expect("pong ok");
            assert_eq!(pong, Message::Pong(Bytes::from_static(b"are you there")));
        }
    }
    assert!(is_idle(&ws), "{:?}", ws.buffer_state());
}

#[tokio::test]
async fn ping_flood_does_not_grow_the_write_buffer() {
    // The peer pings but never reads: pongs stop being queued past the threshold.
    let (mut ws, mut raw) = pair(MAX, 64);
    let ping = masked(0x89, &[7u8; 125]);
    let mut bytes = Vec::new();
    for _ in 0..500 {
        bytes.extend_from_slice(&ping);
    }
    bytes.extend(masked(0x81, b"done"));
    let writer = async {
        raw.write_all(&bytes).await.expect("write");
        raw
    };
    let (_raw, m) = tokio::join!(writer, next(&mut ws));
    assert_eq!(text(m), "done");
    let buffered = ws.buffered();
    assert!(
        buffered > 0 && buffered <= WRITE_THRESHOLD + 127,
        "{buffered}"
    );
}

#[tokio::test]
async fn protocol_violations() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", frame(0x81, b"hi", None)),
        ("rsv1", masked(0xC1, b"hi")),
        ("rsv2", masked(0xA1, b"hi")),
        ("rsv3", masked(0x91, b"hi")),
        ("opcode 3", masked(0x83, b"hi")),
        ("opcode 11", masked(0x8B, b"")),
        ("fragmented ping", masked(0x09, b"")),
        ("long ping", masked(0x89, &[0; 126])),
        ("continuation first", masked(0x80, b"x")),
        ("text inside fragmented", {
            let mut b = masked(0x01, b"a");
            b.extend(masked(0x81, b"b"));
            b
        }),
        ("64-bit length msb", {
            let mut b = vec![0x82, 0xFF];
            b.extend_from_slice(&(1u64 << 63).to_be_bytes());
            b.extend_from_slice(&MASK);
            b
        }),
        ("close 1 byte", masked(0x88, &[3])),
        ("close 999", masked(0x88, &999u16.to_be_bytes())),
        ("close 1004", masked(0x88, &1004u16.to_be_bytes())),
        ("close 1005", masked(0x88, &1005u16.to_be_bytes())),
        ("close 1006", masked(0x88, &1006u16.to_be_bytes())),
        ("close 1015", masked(0x88, &1015u16.to_be_bytes())),
        ("close 2000", masked(0x88, &2000u16.to_be_bytes())),
        ("close 5000", masked(0x88, &5000u16.to_be_bytes())),
    ];
    for (name, bytes) in cases {
        let (mut ws, mut raw) = pair(MAX, 4096);
        raw.write_all(&bytes).await.expect("write");
        match next(&mut ws).await {
            Some(Err(WsError::Protocol(_))) => {}
            other => panic!("{name}: expected a protocol error, got {other:?}"),
        }
        assert!(next(&mut ws).await.is_none(), "{name}: ends after an error");
        assert!(is_idle(&ws), "{name}: {:?}", ws.buffer_state());
        // The caller can still close with 1002.
        send(&mut ws, WsMessage::Close(Some((1002, String::new())))).await;
        assert_eq!(
            read_frame(&mut raw).await,
            (0x88, 1002u16.to_be_bytes().to_vec())
        );
    }
}

#[tokio::test]
async fn valid_close_codes_are_accepted() {
    for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
        let (mut ws, mut raw) = pair(MAX, 4096);
        raw.write_all(&masked(0x88, &code.to_be_bytes()))
            .await
            .expect("write");
        assert_eq!(
            next(&mut ws).await.expect("close").expect("ok"),
            WsMessage::Close(Some((code, String::new())))
        );
    }
}

#[tokio::test]
async fn invalid_utf8_is_utf8_error() {
    let mut fragmented = masked(0x01, b"ok");
    fragmented.extend(masked(0x80, &[0xC3]));
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(&[0xFF, 0xFE]);
    for (name, bytes) in [
        ("single frame", masked(0x81, &[b'a', 0xFF, b'b'])),
        ("fragmented, truncated character", fragmented),
        ("close reason", masked(0x88, &close)),
    ] {
        let (mut ws, mut raw) = pair(MAX, 4096);
        raw.write_all(&bytes).await.expect("write");
        assert!(
            matches!(next(&mut ws).await, Some(Err(WsError::Utf8))),
            "{name}"
        );
        assert!(next(&mut ws).await.is_none(), "{name}");
    }
    // Binary frames are not checked.
    let (mut ws, mut raw) = pair(MAX, 4096);
    raw.write_all(&masked(0x82, &[0xFF])).await.expect("write");
    assert!(matches!(
        next(&mut ws).await,
        Some(Ok(WsMessage::Binary(_)))
    ));
}

#[tokio::test]
async fn peer_initiated_close_is_echoed() {
    let (mut ws, mut client) = ws_pair(MAX, 4096).await;
    client
        .close(Some(CloseFrame {
            code: 4100.into(),
            reason: "bye".into(),
        }))
        .await
        .expect("close");
    let got = next(&mut ws).await.expect("close").expect("ok");
    assert_eq!(got, WsMessage::Close(Some((4100, "bye".to_owned()))));
    assert!(next(&mut ws).await.is_none());
    assert!(matches!(
        ws.start_send(WsMessage::Text("late".into())),
        Err(WsError::Closed)
    ));
    match client.next().await {
        // code and reason, like the JS server (`ws` echoes the whole close payload)
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4100, "bye"))
        }
        other => panic!("expected the echoed close, got {other:?}"),
    }
    assert!(is_idle(&ws), "{:?}", ws.buffer_state());
}

#[tokio::test]
async fn server_initiated_close() {
    let (mut ws, mut client) = ws_pair(MAX, 4096).await;
    send(
        &mut ws,
        WsMessage::Close(Some((4000, "going away".to_owned()))),
    )
    .await;
    assert!(matches!(
        ws.start_send(WsMessage::Text("late".into())),
        Err(WsError::Closed)
    ));
    assert!(matches!(
        ws.start_send(WsMessage::Close(None)),
        Err(WsError::Closed)
    ));
    match client.next().await {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 4000);
            assert_eq!(f.reason.as_str(), "going away");
        }
        other => panic!("expected our close, got {other:?}"),
    }
    // tungstenite writes its reply on its next poll, then (as a client) waits for
    // the server to close the connection.
    let server = async move {
        let got = next(&mut ws).await;
        assert!(next(&mut ws).await.is_none());
        assert!(is_idle(&ws), "{:?}", ws.buffer_state());
        got
    };
    let (peer_end, got) = tokio::join!(client.next(), server);
    assert_eq!(
        got.expect("reply").expect("ok"),
        WsMessage::Close(Some((4000, "going away".to_owned())))
    );
    assert!(peer_end.is_none(), "{peer_end:?}");
}

#[tokio::test]
async fn empty_close_and_long_reason() {
    let (mut ws, mut raw) = pair(MAX, 4096);
    raw.write_all(&masked(0x88, b"")).await.expect("write");
    assert_eq!(
        next(&mut ws).await.expect("close").expect("ok"),
        WsMessage::Close(None)
    );
    assert_eq!(
        read_frame(&mut raw).await,
        (0x88, Vec::new()),
        "empty close echoed"
    );

    let (mut ws, mut raw) = pair(MAX, 4096);
    let reason = "é".repeat(100); // 200 bytes
    send(&mut ws, WsMessage::Close(Some((4001, reason.clone())))).await;
    let (b0, payload) = read_frame(&mut raw).await;
    assert_eq!(b0, 0x88);
    assert_eq!(
        payload.len(),
        124,
        "2 + 122 bytes: 123 would split a character"
    );
    assert_eq!(&payload[..2], &4001u16.to_be_bytes());
    assert_eq!(
        std::str::from_utf8(&payload[2..]).expect("utf8"),
        &reason[..122]
    );
}

#[tokio::test]
async fn large_write_through_small_pipe() {
    let (mut ws, mut client) = ws_pair(MAX, 1024).await;
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let msg = Bytes::from(big.clone());
    let (_, got) = tokio::join!(send(&mut ws, WsMessage::Binary(msg)), client.next());
    match got {
        Some(Ok(Message::Binary(b))) => assert!(b[..] == big[..], "payload differs"),
        other => panic!("expected binary, got {other:?}"),
    }
    assert!(is_idle(&ws), "{:?}", ws.buffer_state());
}

#[tokio::test]
async fn poll_ready_applies_backpressure() {
    let (mut ws, mut raw) = pair(MAX, 64);
    let cx = &mut Context::from_waker(Waker::noop());
    assert!(ws.poll_ready(cx).is_ready());
    ws.start_send(WsMessage::Binary(Bytes::from(vec![1u8; 20_000])))
        .expect("send");
    assert!(
        ws.poll_ready(cx).is_pending(),
        "20 KB buffered, peer not reading"
    );
    let reader = async {
        let (b0, payload) = read_frame(&mut raw).await;
        assert_eq!((b0, payload.len()), (0x82, 20_000));
    };
    let writer = async {
        poll_fn(|cx| ws.poll_ready(cx)).await.expect("ready");
        poll_fn(|cx| ws.poll_flush(cx)).await.expect("flush");
    };
    tokio::join!(reader, writer);
    assert!(is_idle(&ws));
}

#[tokio::test]
async fn idle_socket_holds_no_buffers() {
    let (mut ws, mut raw) = pair(MAX, 256 << 10);
    assert!(is_idle(&ws));
    // A large single frame (read directly into the socket's buffer), a fragmented
    // message, and a burst of small frames.
    let big = patterned(200_000);
    let mut bytes = masked(0x81, big.as_bytes());
    bytes.extend(masked(0x01, b"frag"));
    bytes.extend(masked(0x80, b"ment"));
    for _ in 0..10 {
        bytes.extend(masked(0x82, b"small"));
    }
    let writer = async {
        raw.write_all(&bytes).await.expect("write");
        raw
    };
    let reader = async {
        assert_eq!(text(next(&mut ws).await), big);
        assert_eq!(text(next(&mut ws).await), "fragment");
        for _ in 0..10 {
            assert!(matches!(
                next(&mut ws).await,
                Some(Ok(WsMessage::Binary(_)))
            ));
        }
    };
    let (_raw, ()) = tokio::join!(writer, reader);
    assert!(is_idle(&ws), "{:?}", ws.buffer_state());
    ws.start_send(WsMessage::Text("x".into())).expect("send");
    assert_ne!(ws.buffer_state().1, 0);
    poll_fn(|cx| ws.poll_flush(cx)).await.expect("flush");
    assert!(is_idle(&ws), "{:?}", ws.buffer_state());
}

#[tokio::test]
async fn eof_is_none() {
    let (mut ws, raw) = pair(MAX, 4096);
    drop(raw);
    assert!(next(&mut ws).await.is_none());
    assert!(next(&mut ws).await.is_none());

    // EOF inside a frame.
    let (mut ws, mut raw) = pair(MAX, 4096);
    raw.write_all(&masked(0x81, b"hello")[..5])
        .await
        .expect("write");
    drop(raw);
    assert!(next(&mut ws).await.is_none());
    assert!(is_idle(&ws));
}

#[tokio::test]
async fn reads_without_the_scratch_buffer() {
    // While the thread's scratch buffer is taken, reads go to the socket's own.
    let (mut ws, mut raw) = pair(MAX, 4096);
    SCRATCH.with(|cell| {
        let _taken = cell.borrow_mut();
        assert!(poll_once(&mut ws).is_pending());
        assert!(
            is_idle(&ws),
            "waiting holds no buffer: {:?}",
            ws.buffer_state()
        );
    });
    let mut bytes = masked(0x81, b"one");
    bytes.extend(masked(0x81, b"two"));
    raw.write_all(&bytes).await.expect("write");
    SCRATCH.with(|cell| {
        let _taken = cell.borrow_mut();
        assert_eq!(text(into_ready(poll_once(&mut ws))), "one");
        assert_eq!(text(into_ready(poll_once(&mut ws))), "two");
    });
    assert!(is_idle(&ws), "{:?}", ws.buffer_state());
}

fn into_ready<T: std::fmt::Debug>(p: Poll<T>) -> T {
    match p {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("expected Ready"),
    }
}

/// A real TCP connection with tungstenite's client handshake; the HTTP head is
/// answered by hand and the bytes after it are handed over as leftover.
#[tokio::test]
async fn loopback_tcp_with_tungstenite_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = async {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        let head_len = loop {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.expect("read head");
            assert!(n > 0, "EOF in the request head");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = std::str::from_utf8(&buf[..head_len]).expect("head");
        let key = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim())
            })
            .expect("key");
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        tcp.write_all(response.as_bytes())
            .await
            .expect("write head");
        let leftover = buf.split_off(head_len);
        let mut ws = ServerWs::new(Box::new(tcp), leftover, MAX);
        while let Some(m) = next(&mut ws).await {
            match m.expect("message") {
                WsMessage::Close(_) => break,
                m => send(&mut ws, m).await,
            }
        }
        assert!(next(&mut ws).await.is_none());
    };
    let client = async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut c, _) =
            tokio_tungstenite::client_async(format!("ws://{addr}/socketcluster/"), tcp)
                .await
                .expect("handshake");
        for m in [
            Message::text("#1"),
            Message::text(patterned(50_000)),
            Message::binary(vec![5u8; 3]),
        ] {
            c.send(m.clone()).await.expect("send");
            assert_eq!(c.next().await.expect("echo").expect("ok"), m);
        }
        c.close(Some(CloseFrame {
            code: 4100.into(),
            reason: "bye".into(),
        }))
        .await
        .expect("close");
        match c.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4100),
            other => panic!("expected the echoed close, got {other:?}"),
        }
    };
    tokio::join!(server, client);
}
