//! One connection to the backplane ("link"): a single Redis node with classic pub/sub, or
//! a Redis Cluster with sharded pub/sub. The connection task (`connection` module) owns
//! the link and does reconnection and resubscription the same way for both.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::Notify;

use crate::command::Publish;
use crate::shared::Shared;

/// Signals from the connection's reader to the task owning the link.
#[derive(Default)]
pub(crate) struct Signals {
    /// The connection is gone (standalone mode): reconnect.
    pub(crate) lost: Notify,
    /// Some cluster node connection dropped: check the link with a `PING` now.
    pub(crate) probe: Notify,
}

/// Opens links.
pub(crate) trait Connector: Send + Sync + 'static {
    /// The link type.
    type Link: Link;
    /// Open a link whose push messages go to `shared` and disconnection notices to
    /// `signals`.
    fn connect(
        &self,
        shared: Arc<Shared>,
        signals: Arc<Signals>,
    ) -> impl Future<Output = RedisResult<Self::Link>> + Send;
}

/// An open link.
pub(crate) trait Link: Send + 'static {
    fn subscribe(&mut self, channels: &[&str]) -> impl Future<Output = RedisResult<()>> + Send;
    fn unsubscribe(&mut self, channel: &str) -> impl Future<Output = RedisResult<()>> + Send;
    /// Publish in order; resolves when every message was accepted.
    fn publish(&mut self, batch: &[Publish]) -> impl Future<Output = RedisResult<()>> + Send;
    fn ping(&mut self) -> impl Future<Output = RedisResult<()>> + Send;
    /// Run a script (its keys must share one slot in a cluster).
    fn eval(
        &mut self,
        script: &redis::Script,
        keys: &[&str],
        args: &[Vec<u8>],
    ) -> impl Future<Output = RedisResult<Value>> + Send;
    /// Run a script once per call, in order; one reply per call, in the same order (an
    /// error reply fails only its own call). `Err` when the link itself failed. A single
    /// node pipelines the calls; a cluster runs them one after the other.
    fn eval_many(
        &mut self,
        script: &redis::Script,
        calls: &[ScriptCall<'_>],
    ) -> impl Future<Output = RedisResult<Vec<RedisResult<Value>>>> + Send;
}

/// One call of a script: its two keys and its arguments.
pub(crate) struct ScriptCall<'a> {
    pub(crate) keys: [&'a str; 2],
    pub(crate) args: &'a [Vec<u8>],
}

async fn eval_each<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    script: &redis::Script,
    calls: &[ScriptCall<'_>],
) -> RedisResult<Vec<RedisResult<Value>>> {
    let mut out = Vec::with_capacity(calls.len());
    for c in calls {
        match eval_on(conn, script, &c.keys, c.args).await {
            Err(e) if is_connection_error(&e) => return Err(e),
            reply => out.push(reply),
        }
    }
    Ok(out)
}

/// Pipeline one `EVALSHA` per call. A call the server answered `NOSCRIPT` (a restarted
/// or flushed Redis) did not run: the script is loaded and those calls are sent again.
async fn eval_pipelined<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    script: &redis::Script,
    calls: &[ScriptCall<'_>],
) -> RedisResult<Vec<RedisResult<Value>>> {
    let send = async |conn: &mut C, calls: &[&ScriptCall<'_>]| {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for c in calls {
            let cmd = pipe.cmd("EVALSHA").arg(script.get_hash()).arg(2);
            cmd.arg(c.keys[0]).arg(c.keys[1]);
            for a in c.args {
                cmd.arg(&a[..]);
            }
        }
        pipe.query_async::<Vec<Value>>(conn).await
    };
    let all: Vec<&ScriptCall<'_>> = calls.iter().collect();
    let mut replies = send(conn, &all).await?;
    let missing: Vec<usize> = (0..replies.len())
        .filter(|i| matches!(&replies[*i], Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript)))
        .collect();
    if !missing.is_empty() {
        script.prepare_invoke().load_async(conn).await?;
        let again: Vec<&ScriptCall<'_>> = missing.iter().map(|i| &calls[*i]).collect();
        for (i, reply) in missing.into_iter().zip(send(conn, &again).await?) {
            replies[i] = reply;
        }
    }
    Ok(replies
        .into_iter()
        .map(|v| match v {
            Value::ServerError(e) => Err(e.into()),
            v => Ok(v),
        })
        .collect())
}

async fn eval_on<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    script: &redis::Script,
    keys: &[&str],
    args: &[Vec<u8>],
) -> RedisResult<Value> {
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(*k);
    }
    for a in args {
        inv.arg(&a[..]);
    }
    inv.invoke_async(conn).await
}

/// Whether an error means the connection must be replaced (as opposed to an error reply
/// to one command).
pub(crate) fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

fn push_handler(
    shared: Arc<Shared>,
    signals: Arc<Signals>,
    cluster: bool,
) -> impl Fn(PushInfo) -> Result<(), Infallible> + Send + Sync + 'static {
    move |info: PushInfo| {
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                if let [Value::BulkString(channel), Value::BulkString(payload), ..] = &info.data[..]
                {
                    shared.on_message(channel, payload);
                }
            }
            PushKind::Disconnection if cluster => signals.probe.notify_one(),
            PushKind::Disconnection => signals.lost.notify_one(),
            _ => {}
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// One Redis server.

pub(crate) struct NodeConnector {
    pub(crate) client: redis::Client,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
}

impl Connector for NodeConnector {
    type Link = MultiplexedConnection;

    async fn connect(
        &self,
        shared: Arc<Shared>,
        signals: Arc<Signals>,
    ) -> RedisResult<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_push_sender(push_handler(shared, signals, false));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}

impl Link for MultiplexedConnection {
    async fn subscribe(&mut self, channels: &[&str]) -> RedisResult<()> {
        for chunk in channels.chunks(1000) {
            MultiplexedConnection::subscribe(self, chunk).await?;
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        MultiplexedConnection::unsubscribe(self, channel).await
    }

    async fn publish(&mut self, batch: &[Publish]) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        for p in batch {
            pipe.cmd("PUBLISH")
                .arg(&*p.channel)
                .arg(&p.payload[..])
                .ignore();
        }
        pipe.exec_async(self).await
    }

    async fn ping(&mut self) -> RedisResult<()> {
        redis::cmd("PING").exec_async(self).await
    }

    async fn eval(
        &mut self,
        script: &redis::Script,
        keys: &[&str],
        args: &[Vec<u8>],
    ) -> RedisResult<Value> {
        eval_on(self, script, keys, args).await
    }

    async fn eval_many(
        &mut self,
        script: &redis::Script,
        calls: &[ScriptCall<'_>],
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        if calls.len() == 1 {
            return eval_each(self, script, calls).await;
        }
        eval_pipelined(self, script, calls).await
    }
}

// ---------------------------------------------------------------------------------------
// Redis Cluster, sharded pub/sub.

pub(crate) struct ClusterConnector {
    pub(crate) seeds: Vec<redis::ConnectionInfo>,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
}

impl Connector for ClusterConnector {
    type Link = ClusterConnection;

    async fn connect(
        &self,
        shared: Arc<Shared>,
        signals: Arc<Signals>,
    ) -> RedisResult<ClusterConnection> {
        let client = redis::cluster::ClusterClientBuilder::new(self.seeds.clone())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout)
            .retries(2)
            .push_sender(push_handler(shared, signals, true))
            .build()?;
        client.get_async_connection().await
    }
}

impl Link for ClusterConnection {
    async fn subscribe(&mut self, channels: &[&str]) -> RedisResult<()> {
        // Each channel is routed to the node owning its slot.
        for ch in channels {
            self.ssubscribe(*ch).await?;
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        self.sunsubscribe(channel).await
    }

    async fn publish(&mut self, batch: &[Publish]) -> RedisResult<()> {
        // A pipeline must stay within one slot: split the batch into runs of the same
        // slot, sent one after the other (order is kept).
        let mut start = 0;
        while start < batch.len() {
            let slot = key_slot(batch[start].channel.as_bytes());
            let mut end = start + 1;
            while end < batch.len() && key_slot(batch[end].channel.as_bytes()) == slot {
                end += 1;
            }
            let mut pipe = redis::pipe();
            for p in &batch[start..end] {
                pipe.cmd("SPUBLISH")
                    .arg(&*p.channel)
                    .arg(&p.payload[..])
                    .ignore();
            }
            pipe.exec_async(self).await?;
            start = end;
        }
        Ok(())
    }

    async fn ping(&mut self) -> RedisResult<()> {
        redis::cmd("PING").exec_async(self).await
    }

    async fn eval(
        &mut self,
        script: &redis::Script,
        keys: &[&str],
        args: &[Vec<u8>],
    ) -> RedisResult<Value> {
        eval_on(self, script, keys, args).await
    }

    async fn eval_many(
        &mut self,
        script: &redis::Script,
        calls: &[ScriptCall<'_>],
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        eval_each(self, script, calls).await
    }
}

/// The Redis Cluster hash slot of a key (CRC16/XMODEM mod 16384, honouring `{hash tags}`).
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let key = match key.iter().position(|b| *b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|b| *b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(key) % 16384
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for b in bytes {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis() {
        // Values from the Redis Cluster specification / `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }
}
