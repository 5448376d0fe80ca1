//! The instances of a cluster (docs/PROTOCOL.md 14.18): with a backplane, every `serve`
//! publishes a heartbeat with its figures every second on the internal channel
//! [`CHANNEL`] (and a `leaving` message when it shuts down); every instance keeps the
//! table of the instances it hears from, dropping one after [`EXPIRY`] without a
//! heartbeat. The table is served at `/api/instances` and on the dashboard's Overview.
//! Clients can neither subscribe nor publish to the channel ([`block_clients`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use socketcluster_rs_server::middleware::{Block, InboundAction};
use socketcluster_rs_server::{Server, StatsSnapshot};
use tokio::time::Instant;

/// The internal channel of the heartbeats. Reserved: clients get
/// `InternalChannelError` when they subscribe or publish to it.
pub(crate) const CHANNEL: &str = "#sc-cluster/instances";
/// Heartbeat period.
pub(crate) const PERIOD: Duration = Duration::from_secs(1);
/// An instance not heard from for this long is dropped from the table.
pub(crate) const EXPIRY: Duration = Duration::from_secs(5);

type Probe = Arc<dyn Fn() -> Value + Send + Sync>;

struct Entry {
    figures: Value,
    seen: Instant,
}

/// The table of the instances seen, this one included.
pub(crate) struct Instances {
    id: String,
    address: String,
    started: Instant,
    table: Mutex<BTreeMap<String, Entry>>,
    /// Whether this instance listens to [`CHANNEL`] (which then counts as a channel).
    listening: AtomicBool,
}

fn millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Instances {
    /// A table for this instance, listening on `address`.
    pub(crate) fn new(address: String) -> Arc<Self> {
        let id = format!("{:016x}", rand::random::<u64>());
        Arc::new(Instances {
            id,
            address,
            started: Instant::now(),
            table: Mutex::new(BTreeMap::new()),
            listening: AtomicBool::new(false),
        })
    }

    /// This instance's id (random, stable for the process).
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The server's channel count without the internal [`CHANNEL`].
    pub(crate) fn visible_channels(&self, channels: usize) -> usize {
        channels.saturating_sub(usize::from(self.listening.load(Ordering::Relaxed)))
    }

    /// Every instance seen in the last [`EXPIRY`], this one first, with `lastSeenMs`
    /// (milliseconds since its last heartbeat) and `self`.
    pub(crate) fn snapshot(&self) -> Value {
        self.snapshot_at(Instant::now())
    }

    fn snapshot_at(&self, now: Instant) -> Value {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.retain(|id, e| *id == self.id || now.duration_since(e.seen) < EXPIRY);
        let mut list: Vec<Value> = table
            .iter()
            .map(|(id, e)| {
                let mut v = e.figures.clone();
                v["lastSeenMs"] = json!(now.duration_since(e.seen).as_millis() as u64);
                v["self"] = json!(*id == self.id);
                v
            })
            .collect();
        list.sort_by_key(|v| !v["self"].as_bool().unwrap_or(false));
        json!({ "self": self.id, "instances": list })
    }

    fn put(&self, id: String, figures: Value) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.insert(
            id,
            Entry {
                figures,
                seen: Instant::now(),
            },
        );
    }

    fn remove(&self, id: &str) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.remove(id);
    }

    /// A heartbeat received on [`CHANNEL`] (own echoes ignored).
    fn receive(&self, data: Option<&str>) {
        let Some(v) = data.and_then(|d| serde_json::from_str::<Value>(d).ok()) else {
            return;
        };
        let Some(id) = v["id"].as_str().map(str::to_owned) else {
            return;
        };
        if id == self.id {
            return;
        }
        match v["type"].as_str() {
            Some("heartbeat") => self.put(id, v),
            Some("leaving") => {
                tracing::info!(instance = %id, "instance left the cluster");
                self.remove(&id);
            }
            _ => {}
        }
    }

    fn figures(&self, server: &Server, last: Option<&StatsSnapshot>, bp: Option<&Probe>) -> Value {
        let s = server.stats();
        let rate =
            |now: u64, f: fn(&StatsSnapshot) -> u64| last.map_or(0, |l| now.saturating_sub(f(l)));
        let authenticated = super::metrics::authenticated_sockets(server);
        json!({
            "type": "heartbeat",
            "id": self.id,
            "address": self.address,
            "version": env!("CARGO_PKG_VERSION"),
            "uptimeSecs": self.started.elapsed().as_secs(),
            "sentAt": millis_now(),
            "sockets": s.clients,
            "authenticatedSockets": authenticated,
            "channels": self.visible_channels(s.channels),
            "messagesInPerSec": rate(s.messages_received, |l| l.messages_received),
            "messagesOutPerSec": rate(s.messages_sent, |l| l.messages_sent),
            "bytesInPerSec": rate(s.bytes_received, |l| l.bytes_received),
            "bytesOutPerSec": rate(s.bytes_sent, |l| l.bytes_sent),
            "backplane": bp.map_or(Value::Null, |p| p()),
        })
    }
}

/// Refuse client `#subscribe` and `#publish` on [`CHANNEL`].
pub(crate) fn block_clients(server: &Server) {
    server.add_inbound_middleware(|action: InboundAction| async move {
        if action.channel() == Some(CHANNEL) {
            return Err(Block::error(
                "InternalChannelError",
                format!("{CHANNEL} is internal to the cluster"),
            ));
        }
        Ok(action)
    });
}

/// Keep this instance's figures in the table every [`PERIOD`]; with a backplane
/// (`backplane` set), also publish them and listen to the other instances. When `stop`
/// is cancelled, publish `leaving` and end.
pub(crate) async fn run(
    instances: Arc<Instances>,
    server: Server,
    backplane: Option<Probe>,
    stop: tokio_util::sync::CancellationToken,
) {
    let clustered = backplane.is_some();
    let mut sub = None;
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<StatsSnapshot> = None;
    loop {
        if clustered && sub.is_none() {
            // bounded, so that a backplane outage never holds up the heartbeats or shutdown
            match tokio::time::timeout(PERIOD, server.exchange().subscribe(CHANNEL)).await {
                Ok(Ok(s)) => {
                    sub = Some(s);
                    instances.listening.store(true, Ordering::Relaxed);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot listen to the cluster heartbeats"),
                Err(_) => tracing::debug!("cluster heartbeat subscription pending"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {
                let v = instances.figures(&server, last.as_ref(), backplane.as_ref());
                last = Some(server.stats());
                instances.put(instances.id.clone(), v.clone());
                let exchange = server.exchange();
                if clustered
                    && let Ok(Err(e)) = tokio::time::timeout(PERIOD, exchange.publish(CHANNEL, &v)).await
                {
                    tracing::debug!(error = %e, "heartbeat not published");
                }
            }
            p = async { sub.as_mut().expect("guarded").recv().await }, if sub.is_some() => {
                match p {
                    Some(p) => instances.receive(p.raw_data().map(|d| d.get())),
                    None => {
                        sub = None;
                        instances.listening.store(false, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    if clustered {
        let leaving = json!({"type": "leaving", "id": instances.id});
        let exchange = server.exchange();
        let publish = exchange.publish(CHANNEL, &leaving);
        if tokio::time::timeout(Duration::from_secs(2), publish)
            .await
            .is_err()
        {
            tracing::debug!("leaving message not published in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_kept_until_expiry_or_leaving() {
        let t = Instances::new("127.0.0.1:1".into());
        t.receive(Some(r#"{"type":"heartbeat","id":"a","sockets":3}"#));
        t.receive(Some(r#"{"type":"heartbeat","id":"b","sockets":1}"#));
        t.receive(Some(&format!(
            r#"{{"type":"heartbeat","id":"{}"}}"#,
            t.id()
        )));
        t.receive(Some("not json"));
        assert_eq!(t.snapshot()["instances"].as_array().unwrap().len(), 2);
        t.receive(Some(r#"{"type":"leaving","id":"b"}"#));
        let s = t.snapshot();
        assert_eq!(s["instances"].as_array().unwrap().len(), 1);
        assert_eq!(s["instances"][0]["sockets"], 3);
        let later = Instant::now() + EXPIRY + Duration::from_millis(1);
        assert_eq!(
            t.snapshot_at(later)["instances"].as_array().unwrap().len(),
            0
        );
    }
}
