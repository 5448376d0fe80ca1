//! A lean server-role WebSocket framing layer (RFC 6455, no extensions).
//!
//! [`ServerWs`] replaces tokio-tungstenite's `WebSocketStream` for server sockets. It
//! exists for memory: an idle socket holds **no buffer at all** (no read buffer, no
//! write buffer capacity, no codec state), and reads do not zero-fill a buffer first.
//!
//! * **Reading** goes into a per-thread scratch buffer (16 KiB, borrowed only inside one
//!   synchronous poll). Every complete frame in it is parsed and its payload unmasked
//!   and copied into an owned [`Bytes`] / [`Utf8Bytes`]. Only the bytes that cannot be
//!   handed out in this call (the rest of a partial frame, or complete frames after the
//!   message being returned) are copied into a per-socket buffer, which is freed as
//!   soon as it has been consumed. A partial frame whose header announces a large
//!   payload is completed by reading straight into the per-socket buffer (reserved to
//!   the frame's length, never zero-filled by us) and, when the frame fills that buffer,
//!   handed out without another copy.
//! * **Fragmented messages** are accumulated in a per-socket buffer that exists only
//!   while a message is incomplete.
//! * **Writing** serializes frames into a per-socket buffer that is freed once it has
//!   been written out.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub(crate) use crate::server::Io;

/// [`ServerWs::poll_ready`] is `Pending` only while more than this many bytes are
/// buffered for writing and the socket would block.
pub(crate) const WRITE_THRESHOLD: usize = 8 * 1024;

/// Size of the per-thread read buffer.
const SCRATCH_LEN: usize = 16 * 1024;
/// A partial frame that still needs more than this many bytes is completed by reading
/// straight into the socket's own buffer (reserved to the frame's length).
const DIRECT_READ_MIN: usize = 8 * 1024;
/// A single-frame message at least this large that exactly fills the socket's read
/// buffer is handed out without copying its payload.
const ZERO_COPY_MIN: usize = 16 * 1024;
/// How much to read at once when the thread's scratch buffer is unavailable.
const FALLBACK_READ: usize = 4 * 1024;

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The read side has ended (close frame received, EOF or error).
const READ_DONE: u8 = 1;
/// Our close frame has been queued: no more frames may be sent.
const CLOSE_SENT: u8 = 2;

thread_local! {
    /// Read buffer shared by every socket polled on this thread; zeroed once, when the
    /// thread first uses it.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// One complete WebSocket message (pings and pongs are handled inside [`ServerWs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WsMessage {
    /// A text message (valid UTF-8).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A close frame: its code and reason, `None` when it had no payload.
    Close(Option<(u16, String)>),
}

/// Why reading or writing a WebSocket failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    /// A message or frame over the maximum size (close with 1009).
    #[error("message larger than the maximum message size")]
    Capacity,
    /// Invalid UTF-8 in a text message or a close reason (close with 1007).
    #[error("invalid UTF-8 in a text message or close reason")]
    Utf8,
    /// A violation of RFC 6455 by the peer (close with 1002).
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// The connection failed (close with 1006, without a close frame).
    #[error("WebSocket I/O error: {0}")]
    Io(#[from] io::Error),
    /// A frame was sent after our close frame.
    #[error("the WebSocket close frame has already been sent")]
    Closed,
}

/// A fragmented message being received.
struct Frag {
    /// Whether it started with a text frame.
    text: bool,
    /// The unmasked payload received so far.
    data: Vec<u8>,
}

/// A parsed, validated frame header.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header length (2 to 14 bytes).
    hlen: usize,
    /// Payload length.
    plen: usize,
}

/// What one read into the scratch buffer produced.
enum Filled {
    /// The peer closed the connection.
    Eof,
    /// A complete message.
    Msg(WsMessage),
    /// Bytes were read (and stored or consumed); keep going.
    More,
}

/// The server end of a WebSocket connection (after the HTTP upgrade): reads client
/// frames, answers pings, and writes unmasked server frames.
///
/// Idle, it owns only the connection and a few words: both buffers are empty without
/// capacity, and no fragmented message is in progress.
pub(crate) struct ServerWs {
    io: Box<dyn Io>,
    /// Received bytes not yet handed out: `rbuf[rpos..]` starts at a frame boundary.
    /// Empty (without capacity) whenever everything has been consumed.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Serialized frames: `wbuf[wpos..]` is still to be written. Empty (without
    /// capacity) once everything has been written.
    wbuf: Vec<u8>,
    wpos: usize,
    /// A fragmented message in progress.
    frag: Option<Box<Frag>>,
    /// Maximum message (and frame) payload size, clamped to `u32::MAX`.
    max: u32,
    /// `READ_DONE` | `CLOSE_SENT`.
    flags: u8,
}

impl ServerWs {
    /// Wraps an upgraded connection. `leftover`: bytes already read after the HTTP
    /// request head (may be empty); they are parsed before anything else is read.
    /// `max_message_size` bounds every message and frame payload (sizes above
    /// `u32::MAX` are clamped to it).
    pub(crate) fn new(io: Box<dyn Io>, leftover: Vec<u8>, max_message_size: usize) -> Self {
        Self {
            io,
            rbuf: if leftover.is_empty() {
                Vec::new()
            } else {
                leftover
            },
            rpos: 0,
            wbuf: Vec::new(),
            wpos: 0,
            frag: None,
            max: u32::try_from(max_message_size).unwrap_or(u32::MAX),
            flags: 0,
        }
    }

    /// Next complete message.
    ///
    /// * Ping frames are answered automatically: the pong is queued into the write
    ///   buffer (only while at most [`WRITE_THRESHOLD`] bytes are waiting, so a peer
    ///   that pings without reading cannot grow it; RFC 6455 allows answering only the
    ///   latest ping). Pong frames are ignored.
    /// * Whenever something is buffered for writing, each call also writes it out and
    ///   flushes the connection, without waiting (an opportunistic
    ///   [`poll_flush`](Self::poll_flush)): pongs and close replies reach the peer even
    ///   if the caller writes nothing. If that write fails while no message is ready,
    ///   the failure is returned as [`WsError::Io`].
    /// * A close frame is answered with a close frame echoing its code (none if it had
    ///   no payload), unless ours was already sent, and returned as
    ///   [`WsMessage::Close`]. Afterwards the read side has ended.
    /// * EOF: `None`. After an error, the read side has ended as well.
    ///
    /// Once the read side has ended, a call first writes out whatever is still
    /// buffered (such as the reply to the peer's close; `Pending` while the socket
    /// would block, write errors ignored) and then returns `None`.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<WsMessage, WsError>>> {
        if self.flags & READ_DONE == 0 {
            let res = self.poll_read_msg(cx);
            let more = matches!(
                res,
                Poll::Pending | Poll::Ready(Ok(Some(WsMessage::Text(_) | WsMessage::Binary(_))))
            );
            if !more {
                self.end_read();
            }
            match res {
                Poll::Ready(Ok(None)) => {}
                Poll::Pending => {
                    if let Poll::Ready(Err(e)) = self.flush_buffered(cx) {
                        tracing::debug!(error = %e, "websocket write failed while reading");
                        self.end_read();
                        return Poll::Ready(Some(Err(WsError::Io(e))));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(r) => {
                    // A failed write shows at the next call or at the caller's flush.
                    let _ = self.flush_buffered(cx);
                    if let Err(e) = &r {
                        tracing::debug!(error = %e, "websocket read failed");
                    }
                    return Poll::Ready(r.transpose());
                }
            }
        }
        if self.flush_buffered(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(None)
    }

    /// Ready to accept another message: `Pending` only while more than
    /// [`WRITE_THRESHOLD`] bytes are buffered and the socket would block (they are
    /// written out first, as far as the socket takes them).
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if self.buffered() > WRITE_THRESHOLD {
            match self.poll_write_out(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(WsError::Io(e))),
                Poll::Pending if self.buffered() > WRITE_THRESHOLD => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Appends one frame to the write buffer (server frames are never masked):
    /// `Text`/`Binary` as one FIN frame, `Close(Some((code, reason)))` as a close frame
    /// (the reason truncated to 123 bytes at a char boundary), `Close(None)` as an
    /// empty close frame. After a close frame, every send fails with
    /// [`WsError::Closed`]. Nothing is written until [`poll_flush`](Self::poll_flush)
    /// (or [`poll_ready`](Self::poll_ready) above the threshold, or
    /// [`poll_next`](Self::poll_next)).
    pub(crate) fn start_send(&mut self, msg: WsMessage) -> Result<(), WsError> {
        if self.flags & CLOSE_SENT != 0 {
            return Err(WsError::Closed);
        }
        match msg {
            WsMessage::Text(t) => self.push_frame(OP_TEXT, t.as_bytes()),
            WsMessage::Binary(b) => self.push_frame(OP_BINARY, &b),
            WsMessage::Close(frame) => {
                let mut payload = [0u8; 125];
                let len = match frame {
                    None => 0,
                    Some((code, reason)) => {
                        let mut end = reason.len().min(123);
                        while !reason.is_char_boundary(end) {
                            end -= 1;
                        }
                        payload[..2].copy_from_slice(&code.to_be_bytes());
                        payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
                        2 + end
                    }
                };
                self.push_frame(OP_CLOSE, &payload[..len]);
                self.flags |= CLOSE_SENT;
            }
        }
        Ok(())
    }

    /// Writes out everything buffered (then frees the buffer), then flushes the
    /// connection.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.poll_flush_io(cx).map_err(WsError::Io)
    }

    // ----- writing -----

    /// Bytes buffered and not yet written.
    fn buffered(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Serializes one unmasked FIN frame into the write buffer.
    fn push_frame(&mut self, opcode: u8, payload: &[u8]) {
        if self.wpos > 0 && self.wpos >= self.buffered() {
            // More written than waiting: drop the written part (moves at most as many
            // bytes as were written since the last time).
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        let len = payload.len();
        let mut head = [0u8; 10];
        head[0] = 0x80 | opcode;
        let hlen = if len < 126 {
            head[1] = len as u8;
            2
        } else if let Ok(len) = u16::try_from(len) {
            head[1] = 126;
            head[2..4].copy_from_slice(&len.to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        // On an empty buffer this allocates exactly one frame.
        self.wbuf.reserve(hlen + len);
        self.wbuf.extend_from_slice(&head[..hlen]);
        self.wbuf.extend_from_slice(payload);
    }

    /// Writes the buffer out (partial writes continue at `wpos`) and frees it once
    /// everything has been written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.wpos += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.wbuf = Vec::new();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_flush_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// [`poll_flush_io`](Self::poll_flush_io) if anything is buffered.
    fn flush_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.wbuf.is_empty() {
            Poll::Ready(Ok(()))
        } else {
            self.poll_flush_io(cx)
        }
    }

    // ----- reading -----

    /// The read side has ended: release everything it holds.
    fn end_read(&mut self) {
        self.flags |= READ_DONE;
        self.rbuf = Vec::new();
        self.rpos = 0;
        self.frag = None;
    }

    /// Next message; `Ok(None)` at EOF.
    fn poll_read_msg(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<WsMessage>, WsError>> {
        loop {
            if self.rpos < self.rbuf.len() {
                if let Some(m) = self.parse_pending()? {
                    return Poll::Ready(Ok(Some(m)));
                }
                // What is left is the start of one frame (its header, when complete,
                // was validated).
                let pending = self.rbuf.len() - self.rpos;
                if let Some(total) = frame_len(&self.rbuf[self.rpos..])
                    && total.saturating_sub(pending) > DIRECT_READ_MIN
                {
                    self.compact_rbuf();
                    self.rbuf.reserve_exact(total - pending);
                    if ready!(self.poll_read_rbuf(cx))? == 0 {
                        return Poll::Ready(Ok(None));
                    }
                    continue;
                }
            }
            match ready!(self.poll_read_scratch(cx))? {
                Filled::Eof => return Poll::Ready(Ok(None)),
                Filled::Msg(m) => return Poll::Ready(Ok(Some(m))),
                Filled::More => {}
            }
        }
    }

    /// Moves the unconsumed bytes to the front of the read buffer.
    fn compact_rbuf(&mut self) {
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
    }

    /// Reads into the spare capacity of the socket's own buffer (not zero-filled).
    fn poll_read_rbuf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        pin!(self.io.read_buf(&mut self.rbuf)).poll(cx)
    }

    /// Reads into the thread's scratch buffer and handles what arrived.
    fn poll_read_scratch(&mut self, cx: &mut Context<'_>) -> Poll<Result<Filled, WsError>> {
        let res = SCRATCH.try_with(|cell| {
            let mut scratch = cell.try_borrow_mut().ok()?;
            Some(self.read_into(&mut scratch, cx))
        });
        if let Ok(Some(p)) = res {
            return p;
        }
        // No scratch buffer right now (the thread is exiting): use our own.
        self.compact_rbuf();
        self.rbuf.reserve(FALLBACK_READ);
        let n = match self.poll_read_rbuf(cx) {
            Poll::Ready(r) => r?,
            Poll::Pending => {
                if self.rbuf.is_empty() {
                    // Hold no buffer while waiting.
                    self.rbuf = Vec::new();
                }
                return Poll::Pending;
            }
        };
        Poll::Ready(Ok(if n == 0 { Filled::Eof } else { Filled::More }))
    }

    fn read_into(
        &mut self,
        scratch: &mut [u8],
        cx: &mut Context<'_>,
    ) -> Poll<Result<Filled, WsError>> {
        let n = {
            let mut rb = ReadBuf::new(scratch);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            rb.filled().len()
        };
        if n == 0 {
            return Poll::Ready(Ok(Filled::Eof));
        }
        let data = &mut scratch[..n];
        if self.rpos < self.rbuf.len() {
            // Continues a partial frame: parsed from the socket's buffer.
            self.compact_rbuf();
            self.rbuf.extend_from_slice(data);
            return Poll::Ready(Ok(Filled::More));
        }
        let (used, msg) = self.process(data)?;
        if used < n && self.flags & READ_DONE == 0 {
            let rest = &data[used..];
            // When only a partial frame is left (its header, if complete, was
            // validated), make room for all of it at once if it is large.
            let cap = match (&msg, frame_len(rest)) {
                (None, Some(total)) if total.saturating_sub(rest.len()) > DIRECT_READ_MIN => total,
                _ => rest.len(),
            };
            let mut keep = Vec::with_capacity(cap);
            keep.extend_from_slice(rest);
            self.rbuf = keep;
            self.rpos = 0;
        }
        Poll::Ready(Ok(msg.map_or(Filled::More, Filled::Msg)))
    }

    /// Parses frames from `rbuf[rpos..]` until one completes a message.
    fn parse_pending(&mut self) -> Result<Option<WsMessage>, WsError> {
        let mut buf = std::mem::take(&mut self.rbuf);
        match self.parse_owned(&mut buf) {
            Ok(msg) => {
                if self.rpos >= buf.len() {
                    // Everything consumed: free the buffer.
                    buf = Vec::new();
                    self.rpos = 0;
                }
                self.rbuf = buf;
                Ok(msg)
            }
            Err(e) => {
                self.rpos = 0;
                Err(e)
            }
        }
    }

    fn parse_owned(&mut self, buf: &mut Vec<u8>) -> Result<Option<WsMessage>, WsError> {
        let start = self.rpos;
        if let Some(h) = parse_header(&buf[start..], self.frag.as_deref(), self.max as usize)?
            && h.fin
            && (h.opcode == OP_TEXT || h.opcode == OP_BINARY)
            && h.plen >= ZERO_COPY_MIN
            && start + h.hlen + h.plen == buf.len()
            && buf.capacity() - buf.len() <= buf.len() / 8
        {
            // One large message filling the buffer: hand the buffer itself out.
            let payload = start + h.hlen;
            unmask(&mut buf[payload..], h.mask);
            let bytes = Bytes::from(std::mem::take(buf)).slice(payload..);
            self.rpos = 0;
            return data_message(h.opcode == OP_TEXT, bytes).map(Some);
        }
        let (used, msg) = self.process(&mut buf[start..])?;
        self.rpos += used;
        Ok(msg)
    }

    /// Handles the complete frames at the start of `buf` until one yields a message.
    /// Returns the bytes consumed and that message.
    fn process(&mut self, buf: &mut [u8]) -> Result<(usize, Option<WsMessage>), WsError> {
        let mut pos = 0;
        while let Some(h) = parse_header(&buf[pos..], self.frag.as_deref(), self.max as usize)? {
            let start = pos + h.hlen;
            let end = start + h.plen;
            if end > buf.len() {
                break;
            }
            let payload = &mut buf[start..end];
            unmask(payload, h.mask);
            pos = end;
            if let Some(m) = self.on_frame(&h, payload)? {
                return Ok((pos, Some(m)));
            }
        }
        Ok((pos, None))
    }

    /// Handles one complete, unmasked frame.
    fn on_frame(&mut self, h: &Header, payload: &[u8]) -> Result<Option<WsMessage>, WsError> {
        match h.opcode {
            OP_TEXT | OP_BINARY if h.fin => Ok(Some(if h.opcode == OP_TEXT {
                let text = std::str::from_utf8(payload).map_err(|_| WsError::Utf8)?;
                WsMessage::Text(Utf8Bytes::from(text))
            } else {
                WsMessage::Binary(Bytes::copy_from_slice(payload))
            })),
            OP_TEXT | OP_BINARY => {
                self.frag = Some(Box::new(Frag {
                    text: h.opcode == OP_TEXT,
                    data: payload.to_vec(),
                }));
                Ok(None)
            }
            OP_CONT => {
                let Some(frag) = &mut self.frag else {
                    return Err(WsError::Protocol("continuation frame without a message"));
                };
                frag.data.extend_from_slice(payload);
                if !h.fin {
                    return Ok(None);
                }
                match self.frag.take() {
                    Some(frag) => {
                        let Frag { text, data } = *frag;
                        data_message(text, Bytes::from(data)).map(Some)
                    }
                    None => Ok(None),
                }
            }
            OP_PING => {
                if self.flags & CLOSE_SENT == 0 && self.buffered() <= WRITE_THRESHOLD {
                    self.push_frame(OP_PONG, payload);
                }
                Ok(None)
            }
            OP_PONG => Ok(None),
            _ => {
                let close = parse_close(payload)?;
                if self.flags & CLOSE_SENT == 0 {
                    let code = close.as_ref().map(|(code, _)| code.to_be_bytes());
                    self.push_frame(OP_CLOSE, code.as_ref().map_or(&[][..], |c| &c[..]));
                    self.flags |= CLOSE_SENT;
                }
                self.flags |= READ_DONE;
                self.frag = None;
                Ok(Some(WsMessage::Close(close)))
            }
        }
    }

    /// `(read buffer capacity, write buffer capacity, fragmented message in progress)`.
    #[cfg(test)]
    fn buffer_state(&self) -> (usize, usize, bool) {
        (
            self.rbuf.capacity(),
            self.wbuf.capacity(),
            self.frag.is_some(),
        )
    }
}

/// A complete text or binary message from its unmasked payload.
fn data_message(text: bool, bytes: Bytes) -> Result<WsMessage, WsError> {
    if text {
        Utf8Bytes::try_from(bytes)
            .map(WsMessage::Text)
            .map_err(|_| WsError::Utf8)
    } else {
        Ok(WsMessage::Binary(bytes))
    }
}

/// Header length and announced payload length, once the header is complete.
fn lengths(buf: &[u8]) -> Option<(usize, u64)> {
    let b1 = *buf.get(1)?;
    let (off, len) = match b1 & 0x7f {
        126 => (
            4,
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
        ),
        127 => (10, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => (2, u64::from(n)),
    };
    let hlen = off + if b1 & 0x80 != 0 { 4 } else { 0 };
    (buf.len() >= hlen).then_some((hlen, len))
}

/// Total length (header and payload) of the frame starting `buf`, once its header is
/// complete. Saturates: only meaningful for validated headers.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let (hlen, len) = lengths(buf)?;
    Some(
        usize::try_from(len)
            .unwrap_or(usize::MAX)
            .saturating_add(hlen),
    )
}

/// Parses and validates the header of a client frame starting `buf`: `None` while
/// incomplete. `frag` is the fragmented message in progress, `max` the maximum message
/// size.
fn parse_header(buf: &[u8], frag: Option<&Frag>, max: usize) -> Result<Option<Header>, WsError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set"));
    }
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol("unmasked client frame"));
    }
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY => match (opcode, frag) {
            (OP_CONT, None) => {
                return Err(WsError::Protocol("continuation frame without a message"));
            }
            (OP_TEXT | OP_BINARY, Some(_)) => {
                return Err(WsError::Protocol("new message inside a fragmented one"));
            }
            _ => {}
        },
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin {
                return Err(WsError::Protocol("fragmented control frame"));
            }
            if b1 & 0x7f > 125 {
                return Err(WsError::Protocol("control frame payload over 125 bytes"));
            }
        }
        _ => return Err(WsError::Protocol("unknown opcode")),
    }
    let Some((hlen, len)) = lengths(buf) else {
        return Ok(None);
    };
    if len >> 63 != 0 {
        return Err(WsError::Protocol("payload length with the high bit set"));
    }
    let room = max.saturating_sub(frag.map_or(0, |f| f.data.len()));
    if len > room as u64 {
        return Err(WsError::Capacity);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[hlen - 4..hlen]);
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        hlen,
        plen: len as usize,
    }))
}

/// Validates a close frame's payload.
fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close frame with a 1-byte payload")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !socketcluster_protocol::CloseCode(code).is_sendable() {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::Utf8)?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}

/// XORs `buf` (a payload, from its first byte) with the 4-byte `mask`.
fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the mask index restarts at 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::task::Waker;

    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    use super::*;

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
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4100),
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
}
