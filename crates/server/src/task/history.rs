//! Subscribing to a channel with history (docs/PROTOCOL.md 14.16): read the stream's
//! position (and, when the client sent one, the publications after its position), then
//! send, in this order: the replayed publications, the `#subscribe` reply with the
//! position and the recovery's outcome, and the publications that arrived while the
//! history was read. The socket was registered with the channel *before* the read and
//! its publications of the channel were kept aside since (`SocketShared::start_recovery`),
//! so nothing published meanwhile is missed; `history::merge` drops what the read
//! already holds.

use socketcluster_rs_protocol::history::SubscribeReply;
use socketcluster_rs_protocol::{Cid, ResponsePacket};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::broker::BrokerError;
use crate::events::ServerEvent;
use crate::history::{HistoryRead, StreamPosition, merge};

use super::SocketTask;
use super::step::Resume;

impl SocketTask {
    /// Read the history of `channel` for a subscription (the socket is registered and
    /// its publications of the channel are kept aside).
    pub(super) fn read_history(
        &mut self,
        cid: Cid,
        channel: String,
        recover: Option<StreamPosition>,
    ) {
        let Some(rule) = self.server.config.history.rule_for(&channel) else {
            // Not a history channel (any more): nothing to read.
            return self.history_read(
                cid,
                channel,
                recover,
                Err(BrokerError("the channel has no history".into())),
            );
        };
        let since = recover.as_ref().map(|p| p.offset);
        // One more than the most a recovery replays, to see that there are too many.
        let limit = match &recover {
            Some(_) => self.server.config.history.max_recovery.saturating_add(1),
            None => 0,
        };
        let fut = self.server.broker.history(&channel, rule, since, limit);
        self.start_step(Box::pin(async move {
            Resume::History {
                cid,
                channel,
                recover,
                result: fut.await,
            }
        }));
    }

    /// The history was read: replay, reply, then what arrived meanwhile.
    pub(super) fn history_read(
        &mut self,
        cid: Cid,
        channel: String,
        recover: Option<StreamPosition>,
        result: Result<HistoryRead, BrokerError>,
    ) {
        crate::metrics::subscription(result.is_ok());
        let read = match result {
            Ok(read) => read,
            Err(e) => {
                return self.subscribe_failed(
                    cid,
                    &channel,
                    format!("Failed to read the history of the {channel} channel - {e}"),
                );
            }
        };
        let max = self.server.config.history.max_recovery;
        let shared = self.shared.clone();
        let (recovery, replayed) = shared.finish_recovery(&channel, |buffered| {
            let merged = merge(recover.as_ref(), &read, buffered, max);
            for p in &merged.before_reply {
                shared.send_publication(p);
            }
            let reply = SubscribeReply {
                position: merged.reply_position.clone(),
                recovery: merged.recovery,
            };
            let frame = ResponsePacket::ok(cid, Some(reply.to_raw())).encode();
            shared.send_frame_in_order(Utf8Bytes::from(frame));
            for p in &merged.after_reply {
                shared.send_publication(p);
            }
            (merged.recovery, merged.before_reply.len())
        });
        if let Some(outcome) = recovery {
            crate::metrics::recovery(outcome.is_ok(), replayed);
            tracing::debug!(
                socket = %self.shared.id,
                channel = %channel,
                recovered = outcome.is_ok(),
                replayed,
                reason = outcome.err().map(|r| r.as_str()),
                "subscription recovery"
            );
        }
        self.emit(ServerEvent::Subscription {
            socket: self.socket.clone(),
            channel,
        });
    }
}
