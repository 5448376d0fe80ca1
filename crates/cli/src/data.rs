//! `DATA` arguments: JSON when it parses, else a JSON string; `-` reads standard input.

use std::io::Read;

use serde_json::Value;

/// Parse a DATA argument (see `../shared/CLI.md`): text that is valid JSON is sent as that
/// JSON; anything else as a JSON string (`hello` becomes `"hello"`); `-` reads stdin.
pub(crate) fn parse_data(arg: Option<&str>) -> std::io::Result<Option<Value>> {
    let Some(arg) = arg else {
        return Ok(None);
    };
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        arg.to_owned()
    };
    Ok(Some(
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_or_string() {
        assert_eq!(
            parse_data(Some("hello")).unwrap(),
            Some(Value::String("hello".into()))
        );
        assert_eq!(
            parse_data(Some("{\"a\":1}")).unwrap(),
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(parse_data(Some("42")).unwrap(), Some(serde_json::json!(42)));
        assert_eq!(parse_data(None).unwrap(), None);
    }
}
