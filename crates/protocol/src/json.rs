//! Small JSON text helpers that write exactly what JavaScript's `JSON.stringify` writes.

use serde_json::value::RawValue;

/// Append `s` as a JSON string literal with `JSON.stringify` escaping: `"` `\\` `\b` `\f`
/// `\n` `\r` `\t` escaped, other control characters as lowercase `\u00xx`, everything else
/// (non-ASCII, U+2028/U+2029, `/`, `<`) raw (docs/PROTOCOL.md 2.1).
pub(crate) fn push_str(buf: &mut String, s: &str) {
    buf.reserve(s.len() + 2);
    buf.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0x00..=0x1f => None,
            _ => continue,
        };
        buf.push_str(&s[start..i]);
        match esc {
            Some(e) => buf.push_str(e),
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                buf.push_str("\\u00");
                buf.push(HEX[(b >> 4) as usize] as char);
                buf.push(HEX[(b & 0xf) as usize] as char);
            }
        }
        start = i + 1;
    }
    buf.push_str(&s[start..]);
    buf.push('"');
}

/// Append a JSON key (`"key":`).
pub(crate) fn push_key(buf: &mut String, key: &str) {
    push_str(buf, key);
    buf.push(':');
}

/// Append raw JSON text as a value.
pub(crate) fn push_raw(buf: &mut String, raw: &RawValue) {
    buf.push_str(raw.get());
}

/// JavaScript truthiness of a JSON value given as text: `null`, `false`, `0` (any
/// spelling), and `""` are falsy; everything else (objects, arrays, other numbers and
/// strings) is truthy.
pub(crate) fn is_truthy(raw: &str) -> bool {
    let t = raw.trim();
    match t.as_bytes().first() {
        None => false,
        Some(b'n') | Some(b'f') => false,
        Some(b't') | Some(b'{') | Some(b'[') => true,
        Some(b'"') => t != "\"\"",
        Some(_) => t
            .parse::<f64>()
            .map(|v| v != 0.0 && !v.is_nan())
            .unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> String {
        let mut b = String::new();
        push_str(&mut b, s);
        b
    }

    #[test]
    fn escapes_like_json_stringify() {
        assert_eq!(enc("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(enc("\u{8}\u{c}\n\r\t"), r#""\b\f\n\r\t""#);
        assert_eq!(enc("\u{1}\u{1f}"), r#""\u0001\u001f""#);
        assert_eq!(enc("é/<\u{2028}"), "\"é/<\u{2028}\"");
        assert_eq!(enc("\u{7f}"), "\"\u{7f}\"");
    }

    #[test]
    fn agrees_with_serde_json_on_arbitrary_text() {
        for s in ["", "plain", "tab\there", "\u{0}", "日本語 🎉", "\\\"\\"] {
            assert_eq!(enc(s), serde_json::to_string(s).unwrap());
        }
    }

    #[test]
    fn truthiness_follows_javascript() {
        for falsy in ["null", "false", "0", "-0", "0.0", "0e5", "\"\""] {
            assert!(!is_truthy(falsy), "{falsy}");
        }
        for truthy in ["true", "1", "-1", "0.5", "\"0\"", "\"x\"", "{}", "[]"] {
            assert!(is_truthy(truthy), "{truthy}");
        }
    }
}
