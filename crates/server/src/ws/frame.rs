//! Pure RFC 6455 framing, server role: client frame header parsing and validation,
//! unmasking, close payload validation and the encoding of (unmasked) server frame
//! headers. No I/O and no state: the layers above ([`super::message`],
//! [`super::stream`]) build on this one, which imports nothing from the crate.

use std::io;

pub(super) const OP_CONT: u8 = 0x0;
pub(super) const OP_TEXT: u8 = 0x1;
pub(super) const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(super) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

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

/// A parsed, validated frame header.
pub(super) struct Header {
    pub(super) fin: bool,
    pub(super) opcode: u8,
    pub(super) mask: [u8; 4],
    /// Header length (2 to 14 bytes).
    pub(super) hlen: usize,
    /// Payload length.
    pub(super) plen: usize,
}

/// The header of an unmasked FIN server frame with this opcode and payload length:
/// the bytes, of which the first `.1` are used (2, 4 or 10).
#[inline]
pub(super) fn encode_header(opcode: u8, len: usize) -> ([u8; 10], usize) {
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
    (head, hlen)
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
pub(super) fn frame_len(buf: &[u8]) -> Option<usize> {
    let (hlen, len) = lengths(buf)?;
    Some(
        usize::try_from(len)
            .unwrap_or(usize::MAX)
            .saturating_add(hlen),
    )
}

/// Parses and validates the header of a client frame starting `buf`: `None` while
/// incomplete. `frag_len` is the length received so far of the fragmented message in
/// progress (`None` when there is none), `max` the maximum message size.
pub(super) fn parse_header(
    buf: &[u8],
    frag_len: Option<usize>,
    max: usize,
) -> Result<Option<Header>, WsError> {
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
        OP_CONT | OP_TEXT | OP_BINARY => match (opcode, frag_len) {
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
    let room = max.saturating_sub(frag_len.unwrap_or(0));
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
pub(super) fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close frame with a 1-byte payload")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !socketcluster_rs_protocol::CloseCode(code).is_sendable() {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::Utf8)?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}

/// XORs `buf` (a payload, from its first byte) with the 4-byte `mask`.
pub(super) fn unmask(buf: &mut [u8], mask: [u8; 4]) {
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
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame header for a payload of `len` bytes.
    fn client_header(b0: u8, len: usize) -> Vec<u8> {
        let (mut head, hlen) = encode_header(b0 & 0x0f, len);
        head[0] = b0;
        head[1] |= 0x80;
        let mut v = head[..hlen].to_vec();
        v.extend_from_slice(&MASK);
        v
    }

    #[test]
    fn header_length_encodings_switch_at_126_and_65536() {
        for (len, hlen) in [
            (0, 2),
            (125, 2),
            (126, 4),
            (65_535, 4),
            (65_536, 10),
            (1 << 40, 10),
        ] {
            let (head, n) = encode_header(OP_TEXT, len);
            assert_eq!(n, hlen, "len {len}");
            assert_eq!(head[0], 0x81);
            assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
            // The encoded header parses back to the same length (as a masked frame).
            let mut client = head[..n].to_vec();
            client[1] |= 0x80;
            client.extend_from_slice(&MASK);
            assert_eq!(frame_len(&client), Some(n + 4 + len), "len {len}");
        }
    }

    #[test]
    fn incomplete_headers_parse_as_none() {
        let full = client_header(0x82, 70_000);
        assert_eq!(full.len(), 14);
        for cut in 0..full.len() {
            assert!(
                matches!(parse_header(&full[..cut], None, usize::MAX), Ok(None)),
                "{cut} bytes"
            );
        }
        let h = parse_header(&full, None, usize::MAX)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (h.fin, h.opcode, h.hlen, h.plen, h.mask),
            (true, OP_BINARY, 14, 70_000, MASK)
        );
    }

    #[test]
    fn the_size_limit_counts_the_fragments_received_so_far() {
        let cont = client_header(0x80, 40);
        assert!(parse_header(&cont, Some(60), 100).unwrap().is_some());
        assert!(matches!(
            parse_header(&cont, Some(61), 100),
            Err(WsError::Capacity)
        ));
        // A continuation needs a message in progress; a new message must not have one.
        assert!(matches!(
            parse_header(&cont, None, 100),
            Err(WsError::Protocol(_))
        ));
        let text = client_header(0x81, 1);
        assert!(matches!(
            parse_header(&text, Some(0), 100),
            Err(WsError::Protocol(_))
        ));
    }

    #[test]
    fn unmask_matches_the_bytewise_definition_at_every_length() {
        for len in 0..40 {
            let original: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            let mut buf = original.clone();
            unmask(&mut buf, MASK);
            let expected: Vec<u8> = original
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[i % 4])
                .collect();
            assert_eq!(buf, expected, "len {len}");
            unmask(&mut buf, MASK);
            assert_eq!(buf, original, "len {len}: unmasking twice restores");
        }
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close(&[]).unwrap(), None);
        assert!(matches!(parse_close(&[3]), Err(WsError::Protocol(_))));
        let mut p = 4100u16.to_be_bytes().to_vec();
        p.extend_from_slice("bye".as_bytes());
        assert_eq!(parse_close(&p).unwrap(), Some((4100, "bye".to_owned())));
        assert!(matches!(
            parse_close(&1005u16.to_be_bytes()),
            Err(WsError::Protocol(_))
        ));
    }
}
