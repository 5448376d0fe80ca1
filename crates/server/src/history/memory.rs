//! In-memory channel history, for the in-process broker: one stream per channel with an
//! epoch chosen at random when the stream is created (so a restarted server never
//! claims to continue an old stream), bounded by the rule's size and time-to-live.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use socketcluster_rs_protocol::RawValue;
use tokio::time::Instant;

use super::{HistoryRead, HistoryRule, StreamPosition, new_epoch};
use crate::channel::Publication;

struct Entry {
    expires: Instant,
    publication: Arc<Publication>,
}

struct Stream {
    epoch: Arc<str>,
    top: u64,
    entries: VecDeque<Entry>,
    ttl: Duration,
    /// Last publish or read.
    used: Instant,
}

impl Stream {
    fn new(ttl: Duration, now: Instant) -> Stream {
        Stream {
            epoch: new_epoch(),
            top: 0,
            entries: VecDeque::new(),
            ttl,
            used: now,
        }
    }

    /// Drop the entries whose time-to-live has passed; returns how many.
    fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        while self.entries.front().is_some_and(|e| e.expires <= now) {
            self.entries.pop_front();
        }
        if self.entries.is_empty() && self.entries.capacity() > 0 {
            self.entries = VecDeque::new();
        }
        before - self.entries.len()
    }

    fn position(&self) -> StreamPosition {
        StreamPosition::new(&*self.epoch, self.top)
    }
}

/// Counts of a sweep.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    pub(crate) expired: usize,
    pub(crate) forgotten: usize,
}

/// The histories of every channel with history on this server.
#[derive(Default)]
pub(crate) struct MemoryHistory {
    streams: RwLock<HashMap<Box<str>, Arc<Mutex<Stream>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryHistory {
    fn stream(&self, channel: &str, ttl: Duration, now: Instant) -> Arc<Mutex<Stream>> {
        if let Some(s) = self
            .streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(channel)
        {
            return s.clone();
        }
        self.streams
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(channel.into())
            .or_insert_with(|| Arc::new(Mutex::new(Stream::new(ttl, now))))
            .clone()
    }

    /// Append a publication to `channel`'s stream under `rule` and hand it to `deliver`,
    /// both under the stream's lock: publications of a channel get consecutive offsets
    /// and reach every subscriber in offset order, and a reader registered before it
    /// reads either finds a publication in the history or receives it live (or both).
    pub(crate) fn publish(
        &self,
        channel: &str,
        data: Option<Box<RawValue>>,
        rule: &HistoryRule,
        now: Instant,
        deliver: impl FnOnce(&Arc<Publication>),
    ) -> StreamPosition {
        let stream = self.stream(channel, rule.ttl, now);
        let mut s = lock(&stream);
        s.expire(now);
        s.ttl = rule.ttl;
        s.used = now;
        s.top += 1;
        let p = Publication::with_position(channel, data, s.top, s.epoch.clone());
        if s.entries.len() >= rule.size.max(1) {
            s.entries.pop_front();
        }
        s.entries.push_back(Entry {
            expires: now + rule.ttl,
            publication: p.clone(),
        });
        deliver(&p);
        s.position()
    }

    /// The stream's position and up to `limit` publications after `since` (all kept
    /// ones when `since` is `None`), oldest first. Reading a channel without a stream
    /// starts one (offset 0, a new epoch), so that later publications can be recovered
    /// from it.
    pub(crate) fn read(
        &self,
        channel: &str,
        rule: &HistoryRule,
        since: Option<u64>,
        limit: usize,
        now: Instant,
    ) -> HistoryRead {
        let stream = self.stream(channel, rule.ttl, now);
        let mut s = lock(&stream);
        s.expire(now);
        s.used = now;
        let after = since.unwrap_or(0);
        let publications = s
            .entries
            .iter()
            .map(|e| &e.publication)
            .filter(|p| p.offset().is_some_and(|o| o > after))
            .take(limit)
            .cloned()
            .collect();
        HistoryRead::new(s.position(), publications)
    }

    /// Free what the time-to-live allows: expired entries, and the streams that are
    /// empty, unused for their time-to-live and without a local subscriber
    /// (`subscribed`).
    pub(crate) fn sweep(&self, now: Instant, subscribed: impl Fn(&str) -> bool) -> Swept {
        let streams: Vec<(Box<str>, Arc<Mutex<Stream>>)> = self
            .streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut swept = Swept::default();
        let mut idle = Vec::new();
        for (name, stream) in streams {
            let mut s = lock(&stream);
            swept.expired += s.expire(now);
            if s.entries.is_empty() && s.used + s.ttl <= now && !subscribed(&name) {
                idle.push(name);
            }
        }
        if !idle.is_empty() {
            let mut map = self.streams.write().unwrap_or_else(|e| e.into_inner());
            for name in idle {
                // Used again since it was found idle: keep it.
                let still_idle = map.get(&name).is_some_and(|s| {
                    let s = lock(s);
                    s.entries.is_empty() && s.used + s.ttl <= now
                });
                if still_idle && !subscribed(&name) {
                    map.remove(&name);
                    swept.forgotten += 1;
                }
            }
        }
        swept
    }

    /// Publications held, over every channel.
    pub(crate) fn retained(&self) -> usize {
        self.streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|s| lock(s).entries.len())
            .sum()
    }

    /// Streams held.
    #[cfg(test)]
    pub(crate) fn streams(&self) -> usize {
        self.streams.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}
