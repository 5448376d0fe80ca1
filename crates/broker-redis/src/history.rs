//! Channel history in Redis (docs/PROTOCOL.md 14.16): one stream per channel whose entry
//! ids are the publications' offsets (`0-<offset>`), and a meta hash with the epoch
//! (`e`) and the last offset (`s`). One Lua script takes the next offset, appends the
//! publication and publishes it (with its position) as one atomic step, so every
//! instance receives a channel's publications in offset order and a reader finds each
//! publication in the stream or receives it afterwards.
//!
//! Keys, for the Redis channel `sc:chat/1`: `{sc:chat/1}#h` (stream) and `{sc:chat/1}#m`
//! (meta). The `{...}` hash tag puts both keys in the slot of the shard channel, as a
//! Redis Cluster requires for the script; a channel name that already has a hash tag
//! keeps it. The meta key lives `meta_ttl` after the last publication (longer than the
//! entries, so that a client recovering an empty window is not told the epoch changed);
//! when it is gone (expired, flushed, a Redis without persistence restarted), the next
//! publication or read starts a new epoch and drops any stream left behind.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use socketcluster_rs_server::Publication;
use socketcluster_rs_server::broker::BrokerError;
use socketcluster_rs_server::history::{HistoryRead, StreamPosition};

/// Take the next offset, append, publish. KEYS: stream, meta. ARGV: the pub/sub channel,
/// the envelope header, the data ("" when none), size, ttl ms, meta ttl ms, a new epoch
/// (used only when the stream has none), the publish command, "1" when there is data.
const PUBLISH_LUA: &str = r#"
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[7]
  redis.call('HSET', KEYS[2], 'e', epoch)
  redis.call('DEL', KEYS[1])
end
local offset = redis.call('HINCRBY', KEYS[2], 's', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
local off = string.format('%d', offset)
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if ARGV[9] == '1' then
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], '0-' .. off, 't', now, 'd', ARGV[3])
else
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], '0-' .. off, 't', now)
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call(ARGV[8], ARGV[1], ARGV[2] .. string.char(#epoch) .. epoch .. off .. ':' .. ARGV[3])
return {off, epoch}
"#;

/// Read the position and the entries after an offset that are younger than the ttl.
/// KEYS: stream, meta. ARGV: first id to read (`0-<since+1>`), limit, ttl ms, a new epoch
/// (when the stream has none), meta ttl ms. Returns {epoch, top, {{offset, hasData, data},
/// ...}}.
const READ_LUA: &str = r#"
local epoch = redis.call('HGET', KEYS[2], 'e')
local top = redis.call('HGET', KEYS[2], 's')
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', KEYS[2], 'e', epoch, 's', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  redis.call('DEL', KEYS[1])
  top = '0'
end
local out = {}
if tonumber(ARGV[2]) > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local ttl = tonumber(ARGV[3])
  local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
  for _, e in ipairs(entries) do
    local fields = e[2]
    local ts, data, has = 0, '', 0
    for i = 1, #fields, 2 do
      if fields[i] == 't' then ts = tonumber(fields[i + 1]) end
      if fields[i] == 'd' then data = fields[i + 1]; has = 1 end
    end
    if ts + ttl > now then
      local id = e[1]
      table.insert(out, {string.sub(id, 3), has, data})
    end
  end
end
return {epoch, top, out}
"#;

/// The scripts, loaded once per process.
pub(crate) struct Scripts {
    pub(crate) publish: redis::Script,
    pub(crate) read: redis::Script,
}

pub(crate) fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        publish: redis::Script::new(PUBLISH_LUA),
        read: redis::Script::new(READ_LUA),
    })
}

/// The stream and meta keys of a Redis channel; `None` when the channel's name has braces
/// but no hash tag (its keys could not share its slot in a Redis Cluster).
pub(crate) fn keys(redis_channel: &str, cluster: bool) -> Option<(String, String)> {
    let has_tag = redis_channel.find('{').is_some_and(|open| {
        redis_channel[open + 1..]
            .find('}')
            .is_some_and(|len| len > 0)
    });
    let base = if has_tag {
        redis_channel.to_owned()
    } else if !redis_channel.contains(['{', '}']) {
        format!("{{{redis_channel}}}")
    } else if cluster {
        return None;
    } else {
        redis_channel.to_owned()
    };
    Some((format!("{base}#h"), format!("{base}#m")))
}

/// How long the meta key (epoch and offset) lives after the last publication: a day, or
/// the entries' time-to-live when that is longer.
pub(crate) fn meta_ttl(ttl: Duration) -> Duration {
    ttl.max(Duration::from_secs(86_400))
}

fn bulk(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => bulk(other)?.parse().ok(),
    }
}

fn malformed(what: &str) -> BrokerError {
    BrokerError(format!("redis history: unexpected {what} reply"))
}

/// The publish script's reply: `{offset, epoch}`.
pub(crate) fn parse_position(v: &Value) -> Result<StreamPosition, BrokerError> {
    let Value::Array(items) = v else {
        return Err(malformed("publish"));
    };
    match &items[..] {
        [o, e] => Ok(StreamPosition::new(
            bulk(e).ok_or_else(|| malformed("publish"))?,
            int(o).ok_or_else(|| malformed("publish"))?,
        )),
        _ => Err(malformed("publish")),
    }
}

/// The read script's reply, as publications of `channel`.
pub(crate) fn parse_read(channel: &str, v: &Value) -> Result<HistoryRead, BrokerError> {
    let bad = || malformed("history read");
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let [epoch, top, entries] = &items[..] else {
        return Err(bad());
    };
    let epoch = bulk(epoch).ok_or_else(bad)?;
    let top = int(top).ok_or_else(bad)?;
    let shared_epoch: Arc<str> = Arc::from(epoch.as_str());
    let mut publications = Vec::new();
    if let Value::Array(entries) = entries {
        for e in entries {
            let Value::Array(f) = e else {
                return Err(bad());
            };
            let [offset, has, data] = &f[..] else {
                return Err(bad());
            };
            let offset = int(offset).ok_or_else(bad)?;
            let data = if int(has) == Some(1) {
                let text = bulk(data).ok_or_else(bad)?;
                // Written by our own scripts from validated JSON; checked again anyway.
                Some(socketcluster_rs_server::RawValue::from_string(text).map_err(|_| bad())?)
            } else {
                None
            };
            publications.push(Publication::with_position(
                channel,
                data,
                offset,
                shared_epoch.clone(),
            ));
        }
    }
    Ok(HistoryRead::new(
        StreamPosition::new(epoch, top),
        publications,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_channel_slot() {
        use crate::link::key_slot;
        for ch in ["sc:chat/1", "sc:{user42}.feed", "sc:a b ✓"] {
            let (s, m) = keys(ch, true).unwrap();
            assert_eq!(key_slot(s.as_bytes()), key_slot(ch.as_bytes()), "{ch}");
            assert_eq!(key_slot(m.as_bytes()), key_slot(ch.as_bytes()), "{ch}");
            assert_ne!(s, m);
        }
        assert_eq!(
            keys("sc:chat/1", false).unwrap(),
            ("{sc:chat/1}#h".into(), "{sc:chat/1}#m".into())
        );
        assert!(keys("sc:a}b{", true).is_none());
        assert!(keys("sc:a}b{", false).is_some());
    }

    #[test]
    fn replies_parse_into_positions_and_publications() {
        let pos = parse_position(&Value::Array(vec![
            Value::BulkString(b"7".to_vec()),
            Value::BulkString(b"Ep0ch123".to_vec()),
        ]))
        .unwrap();
        assert_eq!(pos, StreamPosition::new("Ep0ch123", 7));
        let read = parse_read(
            "chat/1",
            &Value::Array(vec![
                Value::BulkString(b"E".to_vec()),
                Value::BulkString(b"9".to_vec()),
                Value::Array(vec![
                    Value::Array(vec![
                        Value::BulkString(b"8".to_vec()),
                        Value::Int(1),
                        Value::BulkString(br#"{"a":1}"#.to_vec()),
                    ]),
                    Value::Array(vec![
                        Value::BulkString(b"9".to_vec()),
                        Value::Int(0),
                        Value::BulkString(Vec::new()),
                    ]),
                ]),
            ]),
        )
        .unwrap();
        assert_eq!(read.position, StreamPosition::new("E", 9));
        assert_eq!(read.publications.len(), 2);
        assert_eq!(read.publications[0].offset(), Some(8));
        assert_eq!(read.publications[0].raw_data().unwrap().get(), r#"{"a":1}"#);
        assert!(read.publications[1].raw_data().is_none());
        assert!(parse_read("c", &Value::Nil).is_err());
    }
}
