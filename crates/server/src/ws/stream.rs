//! The stream adapter: a [`ServerWs`] reads client frames from and writes server frames
//! to the upgraded connection (tokio `AsyncRead`/`AsyncWrite`), holding buffers only
//! while something is in flight (see the module docs of [`super`]).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::frame::{
    Header, OP_BINARY, OP_CLOSE, OP_PONG, OP_TEXT, WsError, encode_header, frame_len, parse_header,
    unmask,
};
use super::message::{Assembled, Assembler, WsMessage, data_message};

/// Any byte stream a WebSocket can run on (TCP, TLS, an HTTP upgrade).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// [`ServerWs::poll_ready`] is `Pending` only while more than this many bytes are
/// buffered for writing and the socket would block.
pub(super) const WRITE_THRESHOLD: usize = 8 * 1024;

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

/// The read side has ended (close frame received, EOF or error).
const READ_DONE: u8 = 1;
/// Our close frame has been queued: no more frames may be sent.
const CLOSE_SENT: u8 = 2;
/// Our side of the connection has been shut down (lingering close).
const WRITE_SHUT: u8 = 4;

thread_local! {
    /// Read buffer shared by every socket polled on this thread; zeroed once, when the
    /// thread first uses it.
    pub(super) static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
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
    /// The fragmented message in progress, if any.
    msg: Assembler,
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
            msg: Assembler::default(),
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
    /// * A close frame is answered with a close frame echoing its code and reason
    ///   (nothing if it had no payload), unless ours was already sent, and returned as
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

    /// Lingering close (RFC 6455 §7.1.1), once no more messages will be read: writes
    /// out what is buffered (our close frame), shuts our side of the connection down,
    /// then reads and discards whatever the peer still sends until it closes its side
    /// (EOF), an error, or `budget` bytes have been discarded. A peer that is still
    /// sending when we close thereby receives our close frame instead of a TCP reset
    /// (which the kernel sends when a socket is closed with unread data, and which can
    /// make the peer lose what it had not read yet). The caller bounds the time.
    pub(crate) fn poll_linger(&mut self, cx: &mut Context<'_>, budget: &mut usize) -> Poll<()> {
        self.end_read();
        if self.flags & WRITE_SHUT == 0 {
            if ready!(self.flush_buffered(cx)).is_err() {
                return Poll::Ready(());
            }
            if ready!(Pin::new(&mut self.io).poll_shutdown(cx)).is_err() {
                return Poll::Ready(());
            }
            self.flags |= WRITE_SHUT;
        }
        let mut buf = [0u8; 8 * 1024];
        loop {
            let mut rb = ReadBuf::new(&mut buf);
            match ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb)) {
                Ok(()) if !rb.filled().is_empty() && rb.filled().len() < *budget => {
                    *budget -= rb.filled().len();
                }
                _ => return Poll::Ready(()),
            }
        }
    }

    // ----- writing -----

    /// Bytes buffered and not yet written.
    pub(super) fn buffered(&self) -> usize {
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
        let (head, hlen) = encode_header(opcode, len);
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
        self.msg.clear();
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
        if let Some(h) = parse_header(&buf[start..], self.msg.in_progress(), self.max as usize)?
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
        while let Some(h) = parse_header(&buf[pos..], self.msg.in_progress(), self.max as usize)? {
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

    /// Handles one complete, unmasked frame: pings are answered and a close frame is
    /// echoed here, messages are assembled by [`Assembler`].
    #[inline]
    fn on_frame(&mut self, h: &Header, payload: &[u8]) -> Result<Option<WsMessage>, WsError> {
        match self.msg.on_frame(h, payload)? {
            Assembled::Nothing => Ok(None),
            Assembled::Message(m) => Ok(Some(m)),
            Assembled::Ping(payload) => {
                if self.flags & CLOSE_SENT == 0 && self.buffered() <= WRITE_THRESHOLD {
                    self.push_frame(OP_PONG, payload);
                }
                Ok(None)
            }
            Assembled::Close(close) => {
                if self.flags & CLOSE_SENT == 0 {
                    // Echo the code and the reason (the whole, validated payload), like
                    // the JS server.
                    self.push_frame(OP_CLOSE, payload);
                    self.flags |= CLOSE_SENT;
                }
                self.flags |= READ_DONE;
                Ok(Some(WsMessage::Close(close)))
            }
        }
    }

    /// `(read buffer capacity, write buffer capacity, fragmented message in progress)`.
    #[cfg(test)]
    pub(super) fn buffer_state(&self) -> (usize, usize, bool) {
        (
            self.rbuf.capacity(),
            self.wbuf.capacity(),
            self.msg.in_progress().is_some(),
        )
    }
}
