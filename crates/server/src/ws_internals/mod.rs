//! Unstable entry points into the server's own WebSocket layer (the framing, message
//! assembly and stream code every server socket uses), for conformance testing and
//! fuzzing only: the Autobahn echo server (`examples/autobahn_echo.rs`) and the fuzz
//! targets (`fuzz/`). Enabled by the `ws-internals` feature; not part of the public
//! API and not covered by semantic versioning.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub mod session;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::limits::CLOSE_MESSAGE_TOO_BIG;
use crate::ws::{ServerWs, WsError, WsMessage};

/// How long [`echo`] lingers after its close frame for the peer to close (the server
/// task's default linger).
const LINGER: Duration = Duration::from_secs(2);
/// How many bytes [`echo`] discards while lingering.
const LINGER_BYTES: usize = 1 << 20;

/// The close code the server sends for a read error (as the socket task does), `None`
/// when the connection failed and no close frame is sent.
fn close_code(e: &WsError) -> Option<u16> {
    match e {
        WsError::Capacity => Some(CLOSE_MESSAGE_TOO_BIG),
        WsError::Utf8 => Some(1007),
        WsError::Protocol(_) => Some(1002),
        WsError::Io(_) | WsError::Closed => None,
    }
}

/// Accepts the WebSocket upgrade on `io` (any path, the server's header checks) and
/// echoes every text and binary message until the peer closes, with the server's
/// framing layer: pings answered, closes echoed, and protocol errors closed with the
/// codes the server uses (1002, 1007, 1009), followed by the server's lingering close.
pub async fn echo<S>(io: S, max_message_size: usize) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut io: Box<dyn crate::ws::Io> = Box::new(io);
    let mut buf = Vec::new();
    let head_len = crate::listener::read_head(&mut io, &mut buf, 16 * 1024)
        .await
        .map_err(|status| io::Error::other(format!("bad request head ({status})")))?;
    let req = crate::request::parse_request(&buf[..head_len], None, false)
        .ok_or_else(|| io::Error::other("unparsable request"))?;
    let ok = crate::listener::check_upgrade(req.uri.path(), &req)
        .map_err(|r| io::Error::other(format!("upgrade refused: {}", r.status)))?;
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        ok.accept
    );
    io.write_all(resp.as_bytes()).await?;
    io.flush().await?;
    let mut ws = ServerWs::new(io, buf.split_off(head_len), max_message_size);
    loop {
        match poll_fn(|cx| ws.poll_next(cx)).await {
            Some(Ok(WsMessage::Close(_))) | None => break,
            Some(Ok(m)) => {
                let sent = async {
                    poll_fn(|cx| ws.poll_ready(cx)).await?;
                    ws.start_send(m)?;
                    poll_fn(|cx| ws.poll_flush(cx)).await
                };
                if sent.await.is_err() {
                    return Ok(());
                }
            }
            Some(Err(e)) => match close_code(&e) {
                Some(code) => {
                    let _ = ws.start_send(WsMessage::Close(Some((code, String::new()))));
                    break;
                }
                None => return Ok(()),
            },
        }
    }
    let mut budget = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, poll_fn(|cx| ws.poll_linger(cx, &mut budget))).await;
    Ok(())
}

/// An in-memory connection: reads come from `input` in chunks of the given sizes
/// (cycled), writes are counted and discarded.
struct MemIo {
    input: Vec<u8>,
    pos: usize,
    chunks: Vec<usize>,
    next_chunk: usize,
    written: usize,
}

impl AsyncRead for MemIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let chunk = match self.chunks.len() {
            0 => usize::MAX,
            n => self.chunks[self.next_chunk % n].max(1),
        };
        self.next_chunk = self.next_chunk.wrapping_add(1);
        let n = chunk.min(buf.remaining()).min(self.input.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.input[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MemIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written += buf.len();
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What [`read_frames`] produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FrameOutcome {
    /// The text messages read, in order.
    pub texts: Vec<String>,
    /// The binary messages read, in order.
    pub binaries: Vec<Vec<u8>>,
    /// The close frame received: `Some(None)` for one without payload.
    pub close: Option<Option<(u16, String)>>,
    /// The close code the server would send for the error that ended the reading.
    pub error_close: Option<u16>,
}

/// Feeds `input` (the client's bytes after the upgrade; the first `leftover` bytes
/// as if read with the request head) to the server's framing layer, delivered in
/// reads of the sizes in `chunks` (cycled; empty: as large as possible), and collects
/// the messages until EOF, a close frame or an error. Synchronous: the in-memory
/// connection never blocks. Checks that no message exceeds `max_message_size`.
pub fn read_frames(
    input: &[u8],
    leftover: usize,
    chunks: &[usize],
    max_message_size: usize,
) -> FrameOutcome {
    let leftover = leftover.min(input.len());
    let io = MemIo {
        input: input[leftover..].to_vec(),
        pos: 0,
        chunks: chunks.to_vec(),
        next_chunk: 0,
        written: 0,
    };
    let mut ws = ServerWs::new(Box::new(io), input[..leftover].to_vec(), max_message_size);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = FrameOutcome::default();
    loop {
        match ws.poll_next(&mut cx) {
            Poll::Pending => panic!("the in-memory connection never blocks"),
            Poll::Ready(None) => break,
            Poll::Ready(Some(Ok(WsMessage::Text(t)))) => {
                assert!(t.len() <= max_message_size, "text message over the maximum");
                out.texts.push(t.as_str().to_owned());
            }
            Poll::Ready(Some(Ok(WsMessage::Binary(b)))) => {
                assert!(
                    b.len() <= max_message_size,
                    "binary message over the maximum"
                );
                out.binaries.push(b.to_vec());
            }
            Poll::Ready(Some(Ok(WsMessage::Close(c)))) => {
                out.close = Some(c);
                break;
            }
            Poll::Ready(Some(Err(e))) => {
                out.error_close = close_code(&e);
                break;
            }
        }
    }
    // Once the read side has ended, it stays ended.
    assert!(matches!(ws.poll_next(&mut cx), Poll::Ready(None)));
    out
}

/// Maximum message size used by [`check_ws_frames`]: small, so that it is reached.
pub const FUZZ_MAX: usize = 4096;

/// The `ws_frames` fuzz check. Input layout: byte 0 = how many of the client's bytes
/// arrive together with the request head, bytes 1..4 = read sizes (0: unlimited),
/// then the client's bytes. Whatever the split, the messages, the close and the error
/// must be the same as when everything arrives in one read.
pub fn check_ws_frames(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let chunks: Vec<usize> = data[1..4]
        .iter()
        .map(|&c| if c == 0 { usize::MAX } else { usize::from(c) })
        .collect();
    let input = &data[4..];
    let split = read_frames(input, usize::from(data[0]), &chunks, FUZZ_MAX);
    let whole = read_frames(input, 0, &[], FUZZ_MAX);
    assert_eq!(split, whole, "the result depends on how the bytes arrive");
}
