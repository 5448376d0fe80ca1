//! Message assembly on top of the framing: text and binary messages from one or more
//! frames (continuation frames accumulated while a message is incomplete), UTF-8
//! validation of text messages, and the classification of control frames (the
//! stream layer answers pings and closes).

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::frame::{Header, OP_BINARY, OP_CONT, OP_PING, OP_PONG, OP_TEXT, WsError, parse_close};

/// One complete WebSocket message (pings and pongs are handled inside
/// [`ServerWs`](super::ServerWs)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WsMessage {
    /// A text message (valid UTF-8).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A close frame: its code and reason, `None` when it had no payload.
    Close(Option<(u16, String)>),
}

/// A fragmented message being received.
struct Frag {
    /// Whether it started with a text frame.
    text: bool,
    /// The unmasked payload received so far.
    data: Vec<u8>,
    /// For text: how much of `data` is known to be valid UTF-8 (the rest is at most
    /// the start of one incomplete character).
    checked: usize,
}

impl Frag {
    /// Fails fast (RFC 6455 §8.1, Autobahn 6.4.x) as soon as the text received so far
    /// cannot be the start of valid UTF-8, instead of at the last fragment.
    fn check_utf8(&mut self) -> Result<(), WsError> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(_) => self.checked = self.data.len(),
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => return Err(WsError::Utf8),
        }
        Ok(())
    }
}

/// What one complete, unmasked frame amounts to.
pub(super) enum Assembled<'a> {
    /// Nothing for the caller yet (a fragment of an incomplete message, a pong).
    Nothing,
    /// A complete text or binary message.
    Message(WsMessage),
    /// A ping with this payload (to be answered with a pong).
    Ping(&'a [u8]),
    /// A valid close frame: its code and reason (`None` without payload). Any
    /// fragmented message in progress has been dropped.
    Close(Option<(u16, String)>),
}

/// The fragmented message in progress, if any: holds no memory between messages.
#[derive(Default)]
pub(super) struct Assembler {
    frag: Option<Box<Frag>>,
}

impl Assembler {
    /// The length received so far of the fragmented message in progress.
    #[inline]
    pub(super) fn in_progress(&self) -> Option<usize> {
        self.frag.as_ref().map(|f| f.data.len())
    }

    /// Drop the fragmented message in progress.
    pub(super) fn clear(&mut self) {
        self.frag = None;
    }

    /// Handles one complete, unmasked frame whose header was validated by
    /// [`parse_header`](super::frame::parse_header) with [`Assembler::in_progress`].
    #[inline]
    pub(super) fn on_frame<'a>(
        &mut self,
        h: &Header,
        payload: &'a [u8],
    ) -> Result<Assembled<'a>, WsError> {
        match h.opcode {
            OP_TEXT | OP_BINARY if h.fin => Ok(Assembled::Message(if h.opcode == OP_TEXT {
                let text = std::str::from_utf8(payload).map_err(|_| WsError::Utf8)?;
                WsMessage::Text(Utf8Bytes::from(text))
            } else {
                WsMessage::Binary(Bytes::copy_from_slice(payload))
            })),
            OP_TEXT | OP_BINARY => {
                let mut frag = Box::new(Frag {
                    text: h.opcode == OP_TEXT,
                    data: payload.to_vec(),
                    checked: 0,
                });
                frag.check_utf8()?;
                self.frag = Some(frag);
                Ok(Assembled::Nothing)
            }
            OP_CONT => {
                let Some(frag) = &mut self.frag else {
                    return Err(WsError::Protocol("continuation frame without a message"));
                };
                frag.data.extend_from_slice(payload);
                if !h.fin {
                    frag.check_utf8()?;
                    return Ok(Assembled::Nothing);
                }
                match self.frag.take() {
                    Some(frag) => {
                        let Frag { text, data, .. } = *frag;
                        data_message(text, Bytes::from(data)).map(Assembled::Message)
                    }
                    None => Ok(Assembled::Nothing),
                }
            }
            OP_PING => Ok(Assembled::Ping(payload)),
            OP_PONG => Ok(Assembled::Nothing),
            _ => {
                let close = parse_close(payload)?;
                self.frag = None;
                Ok(Assembled::Close(close))
            }
        }
    }
}

/// A complete text or binary message from its unmasked payload.
pub(super) fn data_message(text: bool, bytes: Bytes) -> Result<WsMessage, WsError> {
    if text {
        Utf8Bytes::try_from(bytes)
            .map(WsMessage::Text)
            .map_err(|_| WsError::Utf8)
    } else {
        Ok(WsMessage::Binary(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::OP_CLOSE;

    fn header(fin: bool, opcode: u8, plen: usize) -> Header {
        Header {
            fin,
            opcode,
            mask: [0; 4],
            hlen: 2,
            plen,
        }
    }

    fn on(a: &mut Assembler, fin: bool, opcode: u8, payload: &[u8]) -> Option<WsMessage> {
        match a.on_frame(&header(fin, opcode, payload.len()), payload) {
            Ok(Assembled::Message(m)) => Some(m),
            Ok(Assembled::Nothing) => None,
            Ok(Assembled::Ping(_)) => panic!("unexpected ping"),
            Ok(Assembled::Close(_)) => panic!("unexpected close"),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn fragments_are_joined_and_validated_as_a_whole() {
        let mut a = Assembler::default();
        let word = "wörld".as_bytes();
        assert_eq!(on(&mut a, false, OP_TEXT, &word[..2]), None);
        assert_eq!(a.in_progress(), Some(2));
        // A ping between fragments is handed out, the message stays in progress.
        let ping = a.on_frame(&header(true, OP_PING, 1), b"p").unwrap();
        assert!(matches!(ping, Assembled::Ping(b"p")));
        assert_eq!(on(&mut a, false, OP_CONT, &word[2..3]), None);
        assert_eq!(
            on(&mut a, true, OP_CONT, &word[3..]),
            Some(WsMessage::Text("wörld".into()))
        );
        assert_eq!(a.in_progress(), None, "no memory kept between messages");
        // The joined payload is validated, not each fragment.
        assert_eq!(on(&mut a, false, OP_TEXT, &[0xC3]), None);
        let err = a.on_frame(&header(true, OP_CONT, 1), &[0xFF]);
        assert!(matches!(err, Err(WsError::Utf8)));
    }

    #[test]
    fn invalid_utf8_in_a_fragment_fails_before_the_last_fragment() {
        // Autobahn 6.4.1/6.4.2: the error must show at the fragment that makes the
        // text invalid, not when the message completes.
        let mut a = Assembler::default();
        assert_eq!(on(&mut a, false, OP_TEXT, "κόσμε".as_bytes()), None);
        let err = a.on_frame(&header(false, OP_CONT, 4), &[0xCE, 0xBA, 0xE1, 0xBD]);
        assert!(
            err.is_ok(),
            "an incomplete character at the end is not an error"
        );
        let err = a.on_frame(&header(false, OP_CONT, 4), &[0xF4, 0x90, 0x80, 0x80]);
        assert!(
            matches!(err, Err(WsError::Utf8)),
            "0xF4 0x90 is never valid"
        );
        // An invalid first fragment fails at once as well.
        let mut a = Assembler::default();
        let err = a.on_frame(&header(false, OP_TEXT, 2), &[b'a', 0xFF]);
        assert!(matches!(err, Err(WsError::Utf8)));
        // Binary fragments are not checked.
        let mut a = Assembler::default();
        assert_eq!(on(&mut a, false, OP_BINARY, &[0xFF]), None);
    }

    #[test]
    fn a_close_frame_drops_the_message_in_progress() {
        let mut a = Assembler::default();
        assert_eq!(on(&mut a, false, OP_BINARY, b"part"), None);
        let close = a.on_frame(&header(true, OP_CLOSE, 0), &[]).unwrap();
        assert!(matches!(close, Assembled::Close(None)));
        assert_eq!(a.in_progress(), None);
    }
}
