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
    /// Add a subscriber; returns whether it is the channel's first local subscriber.
    /// Adding the same subscriber twice is a no-op (returns false).
    pub(crate) fn add(&self, channel: &str, sub: Subscriber) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(channel) {
            Some(entry) => {
                let key = sub.key();
                if !entry.subs.iter().any(|s| s.key() == key) {
                    entry.subs.push(sub);
                    *entry.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                false
            }
            None => {
                map.insert(
                    channel.into(),
                    Entry {
                        subs: vec![sub],
                        snapshot: Mutex::new(None),
                    },
                );
                true
            }
        }
    }

    /// Remove the subscriber with `key` from `channel`.
    pub(crate) fn remove(&self, channel: &str, key: u64) -> Removed {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = map.get_mut(channel) else {
            return Removed::NotSubscribed;
        };
        let Some(pos) = entry.subs.iter().position(|s| s.key() == key) else {
            return Removed::NotSubscribed;
        };
        entry.subs.remove(pos);
        if entry.subs.is_empty() {
            map.remove(channel);
            Removed::Removed { last: true }
        } else {
            *entry.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = None;
            Removed::Removed { last: false }
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
