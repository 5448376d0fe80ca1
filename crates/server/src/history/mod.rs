//! Channel history and recovery (docs/PROTOCOL.md 14.16), opt-in by channel pattern.
//!
//! On a channel with history, every publication takes the next `offset` of the
//! channel's stream and is kept for a while (at most [`HistoryRule::size`] publications,
//! each for at most [`HistoryRule::ttl`]); the stream's `epoch` changes whenever its
//! history may have been lost. A client that comes back with the position it reached
//! gets exactly the publications it missed, in order, before the reply to its
//! `#subscribe`, or an explicit "not recovered" (never a partial replay).
//!
//! The broker keeps the history ([`crate::broker::Broker::publish_with_history`],
//! [`crate::broker::Broker::history`]): in memory for the in-process broker
//! (`memory.rs`), in Redis for the Redis backplane. This module holds the configuration
//! and the two pure decisions every broker shares: whether a read recovers a position
//! ([`recover`]) and how the publications that arrived while it was read join it
//! (`merge`, crate-private).

mod memory;

use std::sync::Arc;
use std::time::Duration;

pub use socketcluster_rs_protocol::history::{NotRecovered, StreamPosition};

use crate::channel::Publication;
use crate::glob::glob_match;

pub(crate) use memory::MemoryHistory;

/// Which channels keep history, and how much.
///
/// ```
/// use std::time::Duration;
/// use socketcluster_rs_server::history::{HistoryConfig, HistoryRule};
/// let history = HistoryConfig::default()
///     .with_rule(HistoryRule::new("chat/*").with_size(200).with_ttl(Duration::from_secs(600)));
/// assert_eq!(history.rule_for("chat/42").map(|r| r.size), Some(200));
/// assert!(history.rule_for("news").is_none());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HistoryConfig {
    /// Channel patterns with history; the first rule whose pattern matches a channel
    /// applies to it. Default: none (no channel has history, as in JS).
    pub rules: Vec<HistoryRule>,
    /// The most publications one recovery replays; a client that missed more is told it
    /// was not recovered (`"reason":"limit"`). Default 300.
    pub max_recovery: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            rules: Vec::new(),
            max_recovery: 300,
        }
    }
}

impl HistoryConfig {
    /// Add a rule (after the existing ones).
    pub fn with_rule(mut self, rule: HistoryRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Set [`HistoryConfig::max_recovery`].
    pub fn with_max_recovery(mut self, max: usize) -> Self {
        self.max_recovery = max;
        self
    }

    /// The rule for `channel`, if it has history.
    pub fn rule_for(&self, channel: &str) -> Option<&HistoryRule> {
        self.rules.iter().find(|r| glob_match(&r.pattern, channel))
    }

    /// Whether any channel has history.
    pub fn is_enabled(&self) -> bool {
        !self.rules.is_empty()
    }
}

/// History of the channels matching one pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryRule {
    /// Channel name pattern (`*` matches any run of characters).
    pub pattern: String,
    /// Publications kept per channel (the oldest go first). Default 100.
    pub size: usize,
    /// How long each publication is kept; a channel whose history is empty and that
    /// nobody uses for this long is forgotten (its next publication starts a new epoch).
    /// Default 300 s.
    pub ttl: Duration,
}

impl HistoryRule {
    /// A rule with the default size (100) and time-to-live (300 s).
    pub fn new(pattern: impl Into<String>) -> Self {
        HistoryRule {
            pattern: pattern.into(),
            size: 100,
            ttl: Duration::from_secs(300),
        }
    }

    /// Set [`HistoryRule::size`] (at least 1).
    pub fn with_size(mut self, size: usize) -> Self {
        self.size = size.max(1);
        self
    }

    /// Set [`HistoryRule::ttl`].
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

/// What a history read returns: the stream's current position and the publications
/// after the asked offset that the history still holds, oldest first (at most the
/// asked limit).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HistoryRead {
    /// The stream's position: its epoch and the offset of its last publication.
    pub position: StreamPosition,
    /// Publications after the asked offset, in offset order, each with its position.
    pub publications: Vec<Arc<Publication>>,
}

impl HistoryRead {
    /// A read result.
    pub fn new(position: StreamPosition, publications: Vec<Arc<Publication>>) -> Self {
        HistoryRead {
            position,
            publications,
        }
    }
}

/// Whether `read` (made with `since = from.offset` and a limit of at least
/// `max_recovery + 1`) lets a client at `from` recover: every publication after
/// `from.offset` up to the stream's position, with no gap, in the same epoch, and no more
/// than `max_recovery` of them. Never a partial answer: on `Err` nothing is replayed.
pub fn recover<'a>(
    from: &StreamPosition,
    read: &'a HistoryRead,
    max_recovery: usize,
) -> Result<&'a [Arc<Publication>], NotRecovered> {
    let top = &read.position;
    if from.epoch != top.epoch {
        return Err(NotRecovered::EpochChanged);
    }
    if from.offset > top.offset {
        return Err(NotRecovered::Ahead);
    }
    let missed = top.offset - from.offset;
    if missed > max_recovery as u64 {
        return Err(NotRecovered::TooMany);
    }
    let wanted: Vec<_> = read
        .publications
        .iter()
        .filter(|p| {
            p.offset()
                .is_some_and(|o| o > from.offset && o <= top.offset)
        })
        .collect();
    let contiguous = wanted.len() as u64 == missed
        && wanted
            .iter()
            .zip(from.offset + 1..)
            .all(|(p, o)| p.offset() == Some(o));
    if !contiguous {
        return Err(NotRecovered::Trimmed);
    }
    let start = read
        .publications
        .iter()
        .position(|p| p.offset() == Some(from.offset + 1))
        .unwrap_or(read.publications.len());
    Ok(&read.publications[start..start + missed as usize])
}

/// What a subscriber gets when its subscription to a channel with history completes:
/// `before_reply` (the replayed publications), then the reply with `reply_position`, then
/// `after_reply` (publications that arrived live while the history was read, those past
/// the read's position only, in order).
#[derive(Debug)]
pub(crate) struct Merged {
    pub(crate) before_reply: Vec<Arc<Publication>>,
    pub(crate) reply_position: StreamPosition,
    pub(crate) recovery: Option<Result<(), NotRecovered>>,
    pub(crate) after_reply: Vec<Arc<Publication>>,
}

/// Join a history read with the publications buffered while it was made (the
/// subscriber was registered *before* the read, so every publication after the read's
/// position is among them; some before it may be too, and are dropped).
pub(crate) fn merge(
    requested: Option<&StreamPosition>,
    read: &HistoryRead,
    buffered: Vec<Arc<Publication>>,
    max_recovery: usize,
) -> Merged {
    let (before_reply, recovery) = match requested {
        None => (Vec::new(), None),
        Some(from) => match recover(from, read, max_recovery) {
            Ok(replay) => (replay.to_vec(), Some(Ok(()))),
            Err(why) => (Vec::new(), Some(Err(why))),
        },
    };
    let top = &read.position;
    let mut after_reply: Vec<_> = buffered
        .into_iter()
        .filter(|p| {
            p.epoch() != Some(top.epoch.as_str()) || p.offset().is_some_and(|o| o > top.offset)
        })
        .collect();
    // Arrival order is offset order within an epoch; keep it, dropping duplicates.
    let mut seen = std::collections::HashSet::new();
    after_reply.retain(|p| seen.insert((p.epoch().map(str::to_owned), p.offset())));
    Merged {
        before_reply,
        reply_position: top.clone(),
        recovery,
        after_reply,
    }
}

/// A new random epoch, for brokers that keep history: 8 characters from `[A-Za-z0-9]`.
pub fn new_epoch_string() -> String {
    new_epoch().to_string()
}

/// A new random epoch: 8 characters from `[A-Za-z0-9]`.
pub(crate) fn new_epoch() -> Arc<str> {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let s: String = (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    Arc::from(s)
}

#[cfg(test)]
mod tests;
