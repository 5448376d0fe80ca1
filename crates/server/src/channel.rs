//! Local channel registry and fan-out.
//!
//! A publication is encoded **once** into the `#publish` frame and the same shared bytes
//! are handed to every local subscriber's bounded outbound queue. The registry lock is
//! only held to look up (or rebuild, after a change) an immutable snapshot of a
//! channel's subscribers; nothing is sent while any lock is held.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::de::DeserializeOwned;
use socketcluster_protocol::RawValue;
use socketcluster_protocol::events::publish_frame;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::socket::SocketShared;

/// One published message: the channel, the data (raw JSON, never re-parsed by the
/// server), and the pre-encoded `#publish` frame shared by every recipient.
pub struct Publication {
    channel: Box<str>,
    data: Option<Box<RawValue>>,
    frame: Utf8Bytes,
}

impl fmt::Debug for Publication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publication")
            .field("channel", &self.channel)
            .field("bytes", &self.frame.len())
            .finish()
    }
}

impl Publication {
    /// Build a publication (encodes the frame).
    pub fn new(channel: &str, data: Option<Box<RawValue>>) -> Arc<Publication> {
        let frame = publish_frame(channel, data.as_deref());
        Arc::new(Publication {
            channel: channel.into(),
            data,
            frame: Utf8Bytes::from(frame),
        })
    }

    /// The channel name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The published data as raw JSON (`None` when the publisher sent none).
    pub fn raw_data(&self) -> Option<&RawValue> {
        self.data.as_deref()
    }

    /// The published data deserialized (absent data deserializes from `null`).
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.as_deref().map_or("null", RawValue::get))
    }

    /// The encoded `#publish` frame sent to subscribers.
    pub fn frame(&self) -> &str {
        self.frame.as_str()
    }

    pub(crate) fn frame_bytes(&self) -> Utf8Bytes {
        self.frame.clone()
    }
}

/// A server-side (exchange) subscriber's queue.
pub(crate) struct ExchangeSink {
    pub(crate) key: u64,
    pub(crate) tx: mpsc::Sender<Arc<Publication>>,
    pub(crate) dropped: AtomicU64,
}

/// Someone subscribed to a channel on this server.
#[derive(Clone)]
pub(crate) enum Subscriber {
    Socket(Arc<SocketShared>),
    Exchange(Arc<ExchangeSink>),
}

impl Subscriber {
    fn key(&self) -> u64 {
        match self {
            Subscriber::Socket(s) => s.key,
            Subscriber::Exchange(e) => e.key,
        }
    }

    fn deliver(&self, p: &Arc<Publication>) {
        match self {
            Subscriber::Socket(s) => s.deliver_publication(p),
            Subscriber::Exchange(e) => {
                if e.tx.try_send(p.clone()).is_err() {
                    e.dropped.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::exchange_dropped();
                }
            }
        }
    }
}

struct Entry {
    subs: Vec<Subscriber>,
    snapshot: Mutex<Option<Arc<[Subscriber]>>>,
}

/// Result of removing a subscriber.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Removed {
    NotSubscribed,
    Removed { last: bool },
}

/// channel -> local subscribers.
#[derive(Default)]
pub(crate) struct ChannelHub {
    map: RwLock<HashMap<Box<str>, Entry>>,
}

impl ChannelHub {
    /// Add a subscriber (adding the same subscriber twice is a no-op) and, when it is the channel's first, call `on_first` **while the
    /// map is still locked**. Broker calls made from `on_first` / `on_last` (which only
    /// enqueue work) therefore reach the broker in exactly the order the hub changed, so
    /// a concurrent last-leave / first-join can never leave a channel with local
    /// subscribers but no backplane subscription.
    pub(crate) fn add_then<R>(
        &self,
        channel: &str,
        sub: Subscriber,
        on_first: impl FnOnce() -> R,
    ) -> Option<R> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(channel) {
            Some(entry) => {
                let key = sub.key();
                if !entry.subs.iter().any(|s| s.key() == key) {
                    entry.subs.push(sub);
                    *entry.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                None
            }
            None => {
                map.insert(
                    channel.into(),
                    Entry {
                        subs: vec![sub],
                        snapshot: Mutex::new(None),
                    },
                );
                Some(on_first())
            }
        }
    }

    /// Remove the subscriber with `key` from `channel`.
    pub(crate) fn remove(&self, channel: &str, key: u64) -> Removed {
        self.remove_then(channel, key, || ()).0
    }

    /// Remove the subscriber with `key` and, when it was the channel's last, call
    /// `on_last` while the map is still locked (see [`ChannelHub::add_then`]).
    pub(crate) fn remove_then<R>(
        &self,
        channel: &str,
        key: u64,
        on_last: impl FnOnce() -> R,
    ) -> (Removed, Option<R>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = map.get_mut(channel) else {
            return (Removed::NotSubscribed, None);
        };
        let Some(pos) = entry.subs.iter().position(|s| s.key() == key) else {
            return (Removed::NotSubscribed, None);
        };
        entry.subs.remove(pos);
        if entry.subs.is_empty() {
            map.remove(channel);
            (Removed::Removed { last: true }, Some(on_last()))
        } else {
            *entry.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = None;
            (Removed::Removed { last: false }, None)
        }
    }

    fn snapshot(&self, channel: &str) -> Option<Arc<[Subscriber]>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let entry = map.get(channel)?;
        let mut snap = entry.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            snap.get_or_insert_with(|| Arc::from(entry.subs.clone().into_boxed_slice()))
                .clone(),
        )
    }

    /// Deliver to every local subscriber of the publication's channel; returns how many.
    pub(crate) fn deliver(&self, p: &Arc<Publication>) -> usize {
        let Some(subs) = self.snapshot(p.channel()) else {
            return 0;
        };
        for s in subs.iter() {
            s.deliver(p);
        }
        crate::metrics::publications_out(subs.len());
        subs.len()
    }

    /// Whether the channel has any exchange (server-side) subscriber.
    pub(crate) fn has_exchange_subscriber(&self, channel: &str) -> bool {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(channel)
            .is_some_and(|e| e.subs.iter().any(|s| matches!(s, Subscriber::Exchange(_))))
    }

    /// Channels with their local subscriber counts (sockets, exchange subscribers).
    pub(crate) fn channels(&self) -> Vec<(String, usize, usize)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(String, usize, usize)> = map
            .iter()
            .map(|(k, e)| {
                let sockets = e
                    .subs
                    .iter()
                    .filter(|s| matches!(s, Subscriber::Socket(_)))
                    .count();
                (k.to_string(), sockets, e.subs.len() - sockets)
            })
            .collect();
        v.sort();
        v
    }

    /// Number of channels with at least one local subscriber.
    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::sync::atomic::AtomicU64;

    use super::*;

    fn sink(key: u64) -> Subscriber {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        Subscriber::Exchange(Arc::new(ExchangeSink {
            key,
            tx,
            dropped: AtomicU64::new(0),
        }))
    }

    #[test]
    fn broker_calls_follow_first_join_and_last_leave_in_hub_order() {
        let hub = ChannelHub::default();
        let log = StdMutex::new(Vec::new());
        let record = |what: &str| log.lock().unwrap().push(what.to_owned());
        assert!(hub.add_then("c", sink(1), || record("subscribe")).is_some());
        assert!(hub.add_then("c", sink(2), || record("subscribe")).is_none());
        // the same subscriber twice is a no-op
        assert!(hub.add_then("c", sink(2), || record("subscribe")).is_none());
        assert_eq!(hub.remove_then("c", 1, || record("unsubscribe")).1, None);
        assert_eq!(
            hub.remove_then("c", 2, || record("unsubscribe")),
            (Removed::Removed { last: true }, Some(()))
        );
        assert_eq!(
            hub.remove_then("c", 2, || record("unsubscribe")).0,
            Removed::NotSubscribed
        );
        // a new first subscriber after the last left subscribes again
        assert!(hub.add_then("c", sink(3), || record("subscribe")).is_some());
        assert_eq!(
            *log.lock().unwrap(),
            ["subscribe", "unsubscribe", "subscribe"]
        );
    }

    #[test]
    fn concurrent_join_and_leave_leave_the_broker_consistent() {
        // Whatever the interleaving, the broker's last call matches the hub's state.
        for _ in 0..200 {
            let hub = Arc::new(ChannelHub::default());
            let log = Arc::new(StdMutex::new(Vec::<bool>::new()));
            hub.add_then("c", sink(1), || log.lock().unwrap().push(true));
            let (h1, l1) = (hub.clone(), log.clone());
            let leave = std::thread::spawn(move || {
                h1.remove_then("c", 1, || l1.lock().unwrap().push(false));
            });
            let (h2, l2) = (hub.clone(), log.clone());
            let join = std::thread::spawn(move || {
                h2.add_then("c", sink(2), || l2.lock().unwrap().push(true));
            });
            leave.join().unwrap();
            join.join().unwrap();
            let subscribed_in_broker = *log.lock().unwrap().last().unwrap();
            let has_local = hub.snapshot("c").is_some();
            assert_eq!(subscribed_in_broker, has_local);
        }
    }
}
