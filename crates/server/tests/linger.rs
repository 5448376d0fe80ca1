//! Lingering close (RFC 6455 §7.1.1): after closing for a bad frame (1009 too big, 1002
//! protocol error) the server stops reading messages but keeps draining what the peer
//! still sends, so a peer that is still writing receives the close frame and its code
//! instead of a TCP reset.

mod common;

use std::time::Duration;

use common::*;
use socketcluster_rs_server::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

/// Upgrade a raw TCP connection and complete the SocketCluster handshake.
async fn raw_connect(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(tcp.read(&mut b).await.unwrap(), 1, "upgrade response");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    tcp.write_all(&client_frame(
        0x81,
        br##"{"event":"#handshake","data":{},"cid":1}"##,
    ))
    .await
    .unwrap();
    let (op, payload) = read_frame(&mut tcp).await.expect("handshake reply");
    assert_eq!(op, 1);
    assert!(payload.starts_with(br#"{"rid":1"#));
    tcp
}

/// A masked client frame (mask 0: the payload goes out as is).
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = frame_header(b0, payload.len() as u64);
    f.extend_from_slice(payload);
    f
}

fn frame_header(b0: u8, len: u64) -> Vec<u8> {
    let mut f = vec![b0];
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&len.to_be_bytes());
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f
}

/// Read one server frame: `(opcode, payload)`, `None` on EOF or error.
async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await.ok()?;
    let len = match h[1] & 0x7f {
        126 => u64::from(r.read_u16().await.ok()?),
        127 => r.read_u64().await.ok()?,
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await.ok()?;
    Some((h[0] & 0x0f, payload))
}

/// Keep writing junk until writing fails (the server dropped the connection).
async fn keep_writing(mut w: OwnedWriteHalf) -> usize {
    let junk = vec![b'x'; 16 * 1024];
    let mut sent = 0;
    while w.write_all(&junk).await.is_ok() {
        sent += junk.len();
    }
    sent
}

/// Bytes the peer sends after its bad frame: far more than the kernel buffers of the
/// connection hold (`tcp_wmem` max 4 MiB here), so that without lingering the server's
/// reset reaches the peer while it is still writing; less than the drain budget
/// (2 x the default 8 MiB max payload).
const REST: usize = 12 << 20;

/// Like a peer that sends a whole message before it reads (a Node client, whose write
/// error destroys the socket before it reads what arrived): send `trigger` and then
/// `REST` bytes, and only then read. Returns the close code of the first close frame,
/// or what went wrong.
async fn close_code(tcp: TcpStream, trigger: Vec<u8>) -> Result<u16, String> {
    let got = received_while_sending(tcp, trigger).await?;
    let mut rd = &got[..];
    loop {
        match read_frame(&mut rd).await {
            Some((8, p)) if p.len() >= 2 => return Ok(u16::from_be_bytes([p[0], p[1]])),
            Some(_) => continue,
            None => return Err("no close frame".into()),
        }
    }
}

/// Send `trigger`, then `REST` bytes, then read: everything the server sent, or the
/// write error.
async fn received_while_sending(tcp: TcpStream, trigger: Vec<u8>) -> Result<Vec<u8>, String> {
    let (mut r, mut w) = tcp.into_split();
    w.write_all(&trigger).await.unwrap();
    let reader = tokio::spawn(async move {
        // Read concurrently (so the server's writes never block), but keep what
        // arrives to be looked at after writing.
        let mut got = Vec::new();
        let _ = r.read_to_end(&mut got).await;
        got
    });
    let junk = vec![b'x'; 16 * 1024];
    let mut sent = 0;
    while sent < REST {
        if let Err(e) = w.write_all(&junk).await {
            reader.abort();
            return Err(format!("write failed after {sent} bytes: {e}"));
        }
        sent += junk.len();
    }
    drop(w);
    Ok(tokio::time::timeout(WAIT, reader)
        .await
        .expect("the server never closed the connection")
        .unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_an_oversized_upgrade_head_receives_the_431() {
    let server = start(config()).await;
    let addr = server.local_addr().unwrap();
    for round in 0..5 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        // A header line far over `max_http_header_bytes` (16 KiB): 12 MiB of it.
        let trigger = b"GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        let got = received_while_sending(tcp, trigger).await;
        let head = got
            .as_deref()
            .map(|g| String::from_utf8_lossy(&g[..g.len().min(40)]).into_owned());
        assert!(
            head.as_deref().is_ok_and(|h| h.starts_with("HTTP/1.1 431")),
            "round {round}: {head:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_still_sending_after_an_oversized_frame_receives_1009() {
    let server = start(config()).await;
    let addr = server.local_addr().unwrap();
    for round in 0..5 {
        let tcp = raw_connect(addr).await;
        // A text frame announcing 12 MiB (over the default 8 MiB limit), then its payload.
        let trigger = frame_header(0x81, REST as u64);
        assert_eq!(close_code(tcp, trigger).await, Ok(1009), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_still_sending_after_a_protocol_error_receives_1002() {
    let server = start(config()).await;
    let addr = server.local_addr().unwrap();
    for round in 0..5 {
        let tcp = raw_connect(addr).await;
        // Reserved bits set: a protocol error.
        let trigger = client_frame(0xf1, b"x");
        assert_eq!(close_code(tcp, trigger).await, Ok(1002), "round {round}");
    }
}

/// The drain is bounded: a peer that never stops sending is dropped in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_ends_for_a_peer_that_never_stops() {
    let server = start(
        config().with_limits(
            Limits::default()
                .max_payload(1024)
                .close_timeout(Duration::from_millis(300)),
        ),
    )
    .await;
    let tcp = raw_connect(server.local_addr().unwrap()).await;
    let (mut r, mut w) = tcp.into_split();
    w.write_all(&frame_header(0x81, 1 << 20)).await.unwrap();
    let writer = tokio::spawn(keep_writing(w));
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, r.read_to_end(&mut sink)).await;
    // the writer stops because the server dropped the connection
    let sent = tokio::time::timeout(WAIT, writer)
        .await
        .expect("the server never dropped the connection")
        .unwrap();
    assert!(sent > 0);
    eventually(|| server.clients_count() == 0).await;
}
