//! Call ids (`cid`) and response ids (`rid`), docs/PROTOCOL.md 3.3.

use std::fmt;

/// Largest integer a JavaScript number holds exactly (2^53 - 1). Call ids stay below it.
pub const MAX_SAFE_CID: u64 = (1 << 53) - 1;

/// A call id as it appears on the wire.
///
/// Receivers accept any JSON number as a `cid` and echo it unchanged as the `rid`
/// (`0`, negative and fractional values included, docs/PROTOCOL.md 3.3), so a `Cid` keeps
/// non-integer values too. Senders only ever allocate positive integers
/// ([`CidAllocator`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Cid {
    /// A non-negative integer (the only kind a well-behaved sender uses).
    Int(u64),
    /// Any other finite number (negative, fractional, beyond `u64`).
    Float(f64),
    /// A number too large to represent (e.g. `1e400`); JavaScript parses it as
    /// `Infinity` and echoes it as `null`.
    NonFinite,
}

impl Cid {
    /// The integer value, when the id is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Cid::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// Parse the text of a JSON number. Returns `None` when the text is not a JSON number.
    pub fn from_json_number(text: &str) -> Option<Cid> {
        let t = text.trim();
        let first = *t.as_bytes().first()?;
        if !(first == b'-' || first.is_ascii_digit()) {
            return None;
        }
        if let Ok(v) = t.parse::<u64>() {
            return Some(Cid::Int(v));
        }
        let v: f64 = t.parse().ok()?;
        if !v.is_finite() {
            return Some(Cid::NonFinite);
        }
        if v >= 0.0 && v.fract() == 0.0 && v < 18_446_744_073_709_551_616.0 {
            // `-0`, `2.0`, `1e3`: integral values compare equal to allocated ids.
            return Some(Cid::Int(v as u64));
        }
        Some(Cid::Float(v))
    }

    /// Write the id as JavaScript would print the number (`null` for a non-finite one).
    pub(crate) fn write(&self, buf: &mut String) {
        use std::fmt::Write;
        match self {
            Cid::Int(v) => {
                let _ = write!(buf, "{v}");
            }
            Cid::Float(v) => {
                if v.fract() == 0.0 && v.abs() < 1e21 {
                    let _ = write!(buf, "{v:.0}");
                } else {
                    let _ = write!(buf, "{v}");
                }
            }
            Cid::NonFinite => buf.push_str("null"),
        }
    }
}

impl From<u64> for Cid {
    fn from(v: u64) -> Self {
        Cid::Int(v)
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.write(&mut s);
        f.write_str(&s)
    }
}

/// Allocates call ids the way the JS peers do: one counter per endpoint object,
/// starting at 1, incremented by one for every invoke (application invokes,
/// `#handshake`, `#subscribe`, `#authenticate`, `#publish`, ...).
///
/// A client keeps one allocator for its whole life, so ids keep growing across
/// reconnects (docs/PROTOCOL.md 3.3); a server uses a new one per connection. The counter
/// wraps back to 1 before reaching 2^53 so that every id stays exact in JavaScript.
#[derive(Clone, Debug)]
pub struct CidAllocator {
    next: u64,
}

impl Default for CidAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl CidAllocator {
    /// A counter whose first id is 1.
    pub const fn new() -> Self {
        CidAllocator { next: 1 }
    }

    /// A counter whose first id is `first` (clamped to `1..=MAX_SAFE_CID`).
    pub fn starting_at(first: u64) -> Self {
        CidAllocator {
            next: first.clamp(1, MAX_SAFE_CID),
        }
    }

    /// Take the next id.
    pub fn next_cid(&mut self) -> u64 {
        let cid = self.next;
        self.next = if cid >= MAX_SAFE_CID { 1 } else { cid + 1 };
        cid
    }

    /// The id the next call to [`next_cid`](Self::next_cid) returns.
    pub fn peek(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_starts_at_one_and_increments() {
        let mut a = CidAllocator::new();
        assert_eq!(a.next_cid(), 1);
        assert_eq!(a.next_cid(), 2);
        assert_eq!(a.peek(), 3);
    }

    #[test]
    fn allocator_wraps_before_losing_precision() {
        let mut a = CidAllocator::starting_at(MAX_SAFE_CID);
        assert_eq!(a.next_cid(), MAX_SAFE_CID);
        assert_eq!(a.next_cid(), 1);
    }

    #[test]
    fn cid_parsing_and_echo_follow_protocol_3_3() {
        let echo = |t: &str| Cid::from_json_number(t).unwrap().to_string();
        assert_eq!(echo("7"), "7");
        assert_eq!(echo("0"), "0");
        assert_eq!(echo("-3"), "-3");
        assert_eq!(echo("1.5"), "1.5");
        assert_eq!(echo("1e400"), "null");
        assert_eq!(echo("2.0"), "2");
        assert!(Cid::from_json_number("\"9\"").is_none());
        assert!(Cid::from_json_number("true").is_none());
    }
}
