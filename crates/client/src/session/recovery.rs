//! Stream positions and recovery (docs/PROTOCOL.md 14.16): on a channel with history
//! (the server sends positions only there), the client remembers the position it
//! reached, sends it with every resubscription, drops publications it already has,
//! notices when the live stream jumps (a server lost its backplane link for a while) and
//! then asks again from where it is, recovers a restarted stream (a new epoch) from its
//! start when it missed the start, and reports each recovery's outcome. Against a
//! server without history (a JS server) nothing here does anything.

use std::sync::Arc;

use socketcluster_rs_protocol::{NotRecovered, ResponsePacket, StreamPosition, SubscribeReply};

use super::Session;
use crate::channel::Recovery;
use crate::events::Event;

/// The position a channel's subscriber reached in the channel's stream.
#[derive(Clone, Debug)]
pub(crate) struct Reached {
    pub(crate) epoch: Arc<str>,
    pub(crate) offset: u64,
}

impl Reached {
    pub(crate) fn to_position(&self) -> StreamPosition {
        StreamPosition::new(&*self.epoch, self.offset)
    }
}

/// A channel's recovery state (part of its entry in the channel table).
#[derive(Debug, Default)]
pub(crate) struct ChannelStream {
    /// The last position accepted (from a publication or a `#subscribe` reply).
    pub(crate) reached: Option<Reached>,
    /// The `#subscribe` in flight asked to recover from `reached`.
    pub(crate) recovering: bool,
    /// Publications accepted since that request was sent (the replay, when it succeeds).
    pub(crate) replayed: u64,
    /// A jump was seen while no request could be sent: ask again when one can (with the
    /// pending channels).
    pub(crate) resync: bool,
    /// The request in flight asks for a restarted stream from its start: if its answer is
    /// "epoch" again (the stream restarted once more), the client does not ask a third time
    /// but continues from the answer's position (no request loop against a stream that
    /// keeps restarting).
    pub(crate) restart_asked: bool,
}

/// What to do with a publication that carries a position.
pub(crate) enum Accept {
    /// Deliver it, with its position for the application.
    Deliver(u64, Arc<str>),
    /// Drop it: the subscriber has it already, or it follows a gap that a recovery will
    /// fill.
    Drop,
}

impl ChannelStream {
    /// The position to send with the next `#subscribe`, if one is known.
    pub(crate) fn recover_from(&self) -> Option<StreamPosition> {
        self.reached.as_ref().map(Reached::to_position)
    }

    /// A `#subscribe` asking to recover (`recovering`) or not was sent.
    pub(crate) fn request_sent(&mut self, recovering: bool) {
        self.recovering = recovering;
        self.replayed = 0;
        self.resync = false;
    }
}

impl Session {
    /// Check a publication at `offset` of `epoch` on `channel` against what the
    /// subscriber reached (see the module docs).
    pub(super) fn accept_position(&mut self, channel: &str, offset: u64, epoch: &str) -> Accept {
        let Some(entry) = self.channels.get_mut(channel) else {
            return Accept::Drop;
        };
        let in_flight = entry.request_in_flight();
        let stream = &mut entry.stream;
        let (accepted, epoch_changed) = match &mut stream.reached {
            Some(r) if *r.epoch == *epoch => {
                if offset <= r.offset {
                    // Already delivered (a replay overlapping what arrived live).
                    return Accept::Drop;
                }
                if offset > r.offset + 1 {
                    // A jump: publications were missed. Before the reply to a request in
                    // flight, its replay covers them; otherwise ask again.
                    tracing::info!(
                        channel,
                        from = r.offset,
                        to = offset,
                        "publications missed; recovering"
                    );
                    if !in_flight {
                        self.resync(channel);
                    }
                    return Accept::Drop;
                }
                r.offset = offset;
                (r.epoch.clone(), false)
            }
            other => {
                let changed = other.is_some() && !in_flight;
                let e: Arc<str> = Arc::from(epoch);
                if changed && offset > 1 {
                    // The stream restarted and this subscriber missed its first
                    // publications (e.g. its server subscribed to a restarted backplane
                    // after other servers had published on it): the old stream's loss is
                    // reported, the new stream is recovered from its start like any other
                    // jump (the replay includes this publication).
                    *other = Some(Reached {
                        epoch: e,
                        offset: 0,
                    });
                    stream.restart_asked = true;
                    tracing::info!(
                        channel,
                        to = offset,
                        "new epoch; recovering it from its start"
                    );
                    self.report(
                        channel,
                        Recovery::NotRecovered {
                            reason: NotRecovered::EpochChanged,
                        },
                    );
                    self.resync(channel);
                    return Accept::Drop;
                }
                *other = Some(Reached {
                    epoch: e.clone(),
                    offset,
                });
                (e, changed)
            }
        };
        if stream.recovering {
            stream.replayed += 1;
        }
        if epoch_changed {
            // The stream restarted (its history may be lost): continuity is broken.
            self.report(
                channel,
                Recovery::NotRecovered {
                    reason: NotRecovered::EpochChanged,
                },
            );
        }
        Accept::Deliver(offset, accepted)
    }

    /// A confirmed `#subscribe` of a channel: adopt the reply's position and report the
    /// recovery's outcome. Returns true when the stream restarted (a new epoch) and already
    /// holds publications this subscriber has not seen: the caller then asks for the new
    /// stream from its start (the old stream's loss is reported either way).
    pub(super) fn on_subscribed_position(&mut self, channel: &str, r: &ResponsePacket) -> bool {
        let Some(entry) = self.channels.get_mut(channel) else {
            return false;
        };
        let stream = &mut entry.stream;
        let asked = std::mem::take(&mut stream.recovering);
        let replayed = std::mem::take(&mut stream.replayed);
        let Some(reply) = SubscribeReply::parse(r.data.as_deref()) else {
            return false;
        };
        let asked_restart = std::mem::take(&mut stream.restart_asked);
        let new_epoch_missed = matches!(reply.recovery, Some(Err(NotRecovered::EpochChanged)))
            && reply.position.offset > 0
            && !asked_restart;
        stream.restart_asked = new_epoch_missed;
        stream.reached = Some(Reached {
            epoch: Arc::from(reply.position.epoch.as_str()),
            // From the new stream's start: live publications past it are held back (a
            // jump) until the replay.
            offset: if new_epoch_missed {
                0
            } else {
                reply.position.offset
            },
        });
        let outcome = match reply.recovery {
            Some(Ok(())) => Recovery::Recovered {
                publications: replayed,
            },
            Some(Err(reason)) => Recovery::NotRecovered { reason },
            None if asked => Recovery::NotRecovered {
                reason: NotRecovered::Other,
            },
            None => return false,
        };
        self.report(channel, outcome);
        new_epoch_missed
    }

    /// Tell the application how a recovery went (event and channel status).
    fn report(&mut self, channel: &str, outcome: Recovery) {
        if let Some(entry) = self.channels.get_mut(channel) {
            entry
                .status
                .send_modify(|s| s.last_recovery = Some(outcome));
        }
        self.emit(Event::Recovery {
            channel: channel.to_owned(),
            outcome,
        });
    }

    /// Ask the server again for the publications after the position reached (a jump in
    /// the live stream): a new `#subscribe` with the position on the subscribed channel,
    /// now if one may be sent, else as soon as one may.
    pub(super) fn resync(&mut self, channel: &str) {
        let allowed = self.subscriptions_allowed();
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        if !entry.request_idle() {
            return;
        }
        if allowed {
            self.send_subscribe(channel);
        } else {
            entry.stream.resync = true;
        }
    }
}
