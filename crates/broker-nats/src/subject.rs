//! Mapping of SocketCluster channel names to NATS subjects.
//!
//! A channel name is arbitrary UTF-8: it may contain `.` (the NATS token separator),
//! `*` and `>` (wildcards), spaces (not allowed in subjects) or any unicode. Using it as a
//! subject directly would let a channel named `a.*` or `>` subscribe to other channels'
//! traffic. So every channel maps to **exactly one token** that uses only the base64url
//! alphabet (`A-Z a-z 0-9 - _`):
//!
//! ```text
//! <prefix>.c.<base64url(UTF-8 name), no padding>    names of 1..=192 bytes
//! <prefix>.h.<hex(SHA-256(UTF-8 name))>             the empty name and longer names
//! ```
//!
//! The second form keeps subjects short (NATS limits the protocol line length). It is
//! collision-resistant, and the envelope carries the real channel name, which the
//! receiver checks, so even a collision could not deliver to the wrong channel.
//!
//! `prefix` (default `sc`) must be one or more tokens of `A-Z a-z 0-9 - _` separated by
//! dots. All instances of one application must use the same prefix.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Longest channel name (in bytes) encoded inline; longer names are hashed.
pub const MAX_INLINE_CHANNEL_LEN: usize = 192;

/// The NATS subject carrying `channel` under `prefix`.
///
/// ```
/// use socketcluster_rs_broker_nats::channel_subject;
/// assert_eq!(channel_subject("sc", "a.b"), "sc.c.YS5i");
/// assert_eq!(channel_subject("sc", "a.*"), "sc.c.YS4q");
/// assert_eq!(channel_subject("sc", ">"), "sc.c.Pg");
/// assert!(channel_subject("sc", "").starts_with("sc.h."));
/// ```
pub fn channel_subject(prefix: &str, channel: &str) -> String {
    if !channel.is_empty() && channel.len() <= MAX_INLINE_CHANNEL_LEN {
        format!("{prefix}.c.{}", URL_SAFE_NO_PAD.encode(channel.as_bytes()))
    } else {
        format!(
            "{prefix}.h.{}",
            hex::encode(Sha256::digest(channel.as_bytes()))
        )
    }
}

/// Whether `prefix` is a valid subject prefix (dot-separated tokens of
/// `A-Z a-z 0-9 - _`).
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(subject: &str) -> &str {
        subject.rsplit('.').next().unwrap()
    }

    #[test]
    fn every_channel_is_one_safe_token() {
        let names = [
            "a",
            "a.b",
            "a.*",
            "a.>",
            "*",
            ">",
            " ",
            "a b",
            "tab\there",
            "new\nline",
            "ünï.cødé ✓",
            "日本語",
            "..",
            ".a.",
            "$SYS.x",
            "_INBOX.x",
            "%2E",
            "a\u{0}b",
        ];
        for name in names {
            let s = channel_subject("sc", name);
            assert_eq!(s.split('.').count(), 3, "{name:?} -> {s}");
            assert!(s.starts_with("sc.c."), "{name:?} -> {s}");
            let t = token(&s);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{name:?} -> {s}"
            );
            assert_eq!(URL_SAFE_NO_PAD.decode(t).unwrap(), name.as_bytes());
        }
    }

    #[test]
    fn distinct_channels_get_distinct_subjects() {
        let names = ["a.b", "a.*", "a.>", "a", "a.b.c", "a b", "", "*", ">"];
        let subjects: std::collections::HashSet<String> =
            names.iter().map(|n| channel_subject("sc", n)).collect();
        assert_eq!(subjects.len(), names.len());
    }

    #[test]
    fn empty_and_long_names_are_hashed() {
        let empty = channel_subject("p", "");
        assert_eq!(
            empty,
            "p.h.e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let long = "x".repeat(MAX_INLINE_CHANNEL_LEN + 1);
        let s = channel_subject("p", &long);
        assert!(s.starts_with("p.h.") && s.len() == 4 + 64, "{s}");
        let edge = "y".repeat(MAX_INLINE_CHANNEL_LEN);
        assert!(channel_subject("p", &edge).starts_with("p.c."));
        assert_ne!(s, channel_subject("p", &long[1..]));
    }

    #[test]
    fn golden_subjects() {
        assert_eq!(channel_subject("sc", "news"), "sc.c.bmV3cw");
        assert_eq!(channel_subject("app.sc", "ü"), "app.sc.c.w7w");
    }

    #[test]
    fn validates_prefixes() {
        for ok in ["sc", "app.sc", "my-app_1.x"] {
            assert!(valid_prefix(ok), "{ok}");
        }
        for bad in ["", ".", "a.", ".a", "a..b", "a.*", ">", "a b", "ü", "a.>"] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }
}
