//! The local channel registry and fan-out: channel -> local subscribers (sockets and
//! exchange subscriptions).
//!
//! The registry lock is only held to look up (or rebuild, after a change) an immutable
//! snapshot of a channel's subscribers; nothing is sent while any lock is held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use tokio::sync::mpsc;

use crate::channel::Publication;
use crate::socket::SocketShared;

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

/// The local subscribers of one channel. A single subscriber (by far the most common
/// case: one socket per channel) is stored inline, with no allocation of its own.
enum Subs {
    One(Subscriber),
    Many(Box<Many>),
}

/// Two or more subscribers, plus the immutable snapshot deliveries iterate.
struct Many {
    list: Vec<Subscriber>,
    /// Built by the first delivery after a change; every change (made under the map's
    /// write lock, hence `&mut`) resets it.
    snapshot: OnceLock<Arc<[Subscriber]>>,
}

impl Subs {
    fn as_slice(&self) -> &[Subscriber] {
        match self {
            Subs::One(s) => std::slice::from_ref(s),
            Subs::Many(m) => &m.list,
        }
    }

    /// Add `sub` unless a subscriber with its key is already there.
    fn push(&mut self, sub: Subscriber) {
        let key = sub.key();
        match self {
            Subs::One(s) if s.key() == key => {}
            Subs::One(s) => {
                let list = vec![s.clone(), sub];
                *self = Subs::Many(Box::new(Many {
                    list,
                    snapshot: OnceLock::new(),
                }));
            }
            Subs::Many(m) => {
                if !m.list.iter().any(|s| s.key() == key) {
                    m.list.push(sub);
                    m.snapshot.take();
                }
            }
        }
    }

    /// Remove the subscriber with `key`: `None` when absent, else whether none is left.
    fn remove(&mut self, key: u64) -> Option<bool> {
        match self {
            Subs::One(s) => (s.key() == key).then_some(true),
            Subs::Many(m) => {
                let pos = m.list.iter().position(|s| s.key() == key)?;
                m.list.remove(pos);
                if let [only] = m.list.as_slice() {
                    *self = Subs::One(only.clone());
                } else {
                    m.snapshot.take();
                }
                Some(false)
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        match self {
            Subs::One(s) => Snapshot::One(s.clone()),
            Subs::Many(m) => Snapshot::Many(
                m.snapshot
                    .get_or_init(|| Arc::from(m.list.as_slice()))
                    .clone(),
            ),
        }
    }
}

/// A channel's subscribers as taken under the read lock, iterated after releasing it.
enum Snapshot {
    One(Subscriber),
    Many(Arc<[Subscriber]>),
}

impl Snapshot {
    fn as_slice(&self) -> &[Subscriber] {
        match self {
            Snapshot::One(s) => std::slice::from_ref(s),
            Snapshot::Many(list) => list,
        }
    }
}

/// Result of removing a subscriber.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Removed {
    NotSubscribed,
    Removed { last: bool },
}

/// channel -> local subscribers. The channel name is an `Arc<str>` shared with the
/// subscribed sockets' views, so each name is stored once.
pub(crate) struct ChannelHub {
    map: RwLock<HashMap<Arc<str>, Subs>>,
    /// The next subscriber key (sockets and exchange subscriptions).
    next_key: AtomicU64,
}

impl Default for ChannelHub {
    fn default() -> Self {
        ChannelHub {
            map: RwLock::default(),
            next_key: AtomicU64::new(1),
        }
    }
}

impl ChannelHub {
    /// A key for a new subscriber, unique in this hub.
    pub(crate) fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

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
        self.subscribe_then(channel, sub, on_first).1
    }

    /// [`ChannelHub::add_then`], also returning the hub's shared copy of the channel
    /// name (for the subscriber's own bookkeeping, so the name is stored once).
    pub(crate) fn subscribe_then<R>(
        &self,
        channel: &str,
        sub: Subscriber,
        on_first: impl FnOnce() -> R,
    ) -> (Arc<str>, Option<R>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(subs) = map.get_mut(channel) {
            subs.push(sub);
            let name = map
                .get_key_value(channel)
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| channel.into());
            return (name, None);
        }
        let name: Arc<str> = channel.into();
        map.insert(name.clone(), Subs::One(sub));
        (name, Some(on_first()))
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
        let Some(subs) = map.get_mut(channel) else {
            return (Removed::NotSubscribed, None);
        };
        match subs.remove(key) {
            None => (Removed::NotSubscribed, None),
            Some(true) => {
                map.remove(channel);
                (Removed::Removed { last: true }, Some(on_last()))
            }
            Some(false) => (Removed::Removed { last: false }, None),
        }
    }

    fn snapshot(&self, channel: &str) -> Option<Snapshot> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(channel).map(Subs::snapshot)
    }

    /// Deliver to every local subscriber of the publication's channel; returns how many.
    pub(crate) fn deliver(&self, p: &Arc<Publication>) -> usize {
        let Some(snapshot) = self.snapshot(p.channel()) else {
            return 0;
        };
        let subs = snapshot.as_slice();
        for s in subs {
            s.deliver(p);
        }
        crate::metrics::publications_out(subs.len());
        subs.len()
    }

    /// Whether the channel has any local subscriber.
    pub(crate) fn is_subscribed(&self, channel: &str) -> bool {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.contains_key(channel)
    }

    /// Whether the channel has any exchange (server-side) subscriber.
    pub(crate) fn has_exchange_subscriber(&self, channel: &str) -> bool {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(channel).is_some_and(|subs| {
            subs.as_slice()
                .iter()
                .any(|s| matches!(s, Subscriber::Exchange(_)))
        })
    }

    /// Channels with their local subscriber counts (sockets, exchange subscribers).
    pub(crate) fn channels(&self) -> Vec<(String, usize, usize)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(String, usize, usize)> = map
            .iter()
            .map(|(k, subs)| {
                let subs = subs.as_slice();
                let sockets = subs
                    .iter()
                    .filter(|s| matches!(s, Subscriber::Socket(_)))
                    .count();
                (k.to_string(), sockets, subs.len() - sockets)
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

    fn keys(hub: &ChannelHub, channel: &str) -> Vec<u64> {
        hub.snapshot(channel).map_or_else(Vec::new, |s| {
            s.as_slice().iter().map(Subscriber::key).collect()
        })
    }

    #[test]
    fn one_subscriber_inline_many_with_a_snapshot_refreshed_on_change() {
        let hub = ChannelHub::default();
        let p = Publication::new("c", None);
        assert_eq!(hub.deliver(&p), 0);
        let (name, first) = hub.subscribe_then("c", sink(1), || ());
        assert!(first.is_some());
        assert_eq!(hub.deliver(&p), 1);
        // later subscribers share the hub's copy of the name
        let (again, first) = hub.subscribe_then("c", sink(2), || ());
        assert!(first.is_none() && Arc::ptr_eq(&name, &again));
        assert_eq!(keys(&hub, "c"), [1, 2]);
        let held = hub.snapshot("c").unwrap();
        hub.add_then("c", sink(3), || ());
        hub.add_then("c", sink(3), || ());
        assert_eq!(hub.deliver(&p), 3);
        // a snapshot taken before a change is immutable
        assert_eq!(held.as_slice().len(), 2);
        assert_eq!(hub.remove("c", 2), Removed::Removed { last: false });
        assert_eq!(keys(&hub, "c"), [1, 3]);
        assert_eq!(hub.remove("c", 1), Removed::Removed { last: false });
        assert_eq!(keys(&hub, "c"), [3]);
        assert_eq!(hub.remove("c", 1), Removed::NotSubscribed);
        assert_eq!(hub.remove("c", 3), Removed::Removed { last: true });
        assert_eq!(hub.deliver(&p), 0);
        assert_eq!(hub.len(), 0);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_channel_costs_one_name_and_a_32_byte_map_slot() {
        // (name, subscribers) as stored in the map: a single subscriber is inline.
        assert_eq!(std::mem::size_of::<(Arc<str>, Subs)>(), 32);
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
