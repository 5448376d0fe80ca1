//! Channels (docs/PROTOCOL.md 6): subscription options, channel state, and the
//! [`Subscription`] stream of publications.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use socketcluster_rs_protocol::{NotRecovered, StreamPosition};
use tokio::sync::watch;

use crate::error::SubscribeError;
use crate::watch::StateWatch;

/// The state of a channel (JS `pending` / `subscribed` / `unsubscribed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelState {
    /// Wanted, not (yet, or no longer) confirmed by the server.
    Pending,
    /// Confirmed by the server.
    Subscribed,
    /// Not in the client's channel table.
    Unsubscribed,
}

impl ChannelState {
    /// The JS spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelState::Pending => "pending",
            ChannelState::Subscribed => "subscribed",
            ChannelState::Unsubscribed => "unsubscribed",
        }
    }
}

impl fmt::Display for ChannelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options of [`Client::subscribe_with`](crate::Client::subscribe_with) (JS
/// `subscribe(name, {waitForAuth, data, priority})`).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Do not send `#subscribe` until the client is authenticated (sent on the wire as
    /// `"waitForAuth":true`). Default false.
    pub wait_for_auth: bool,
    /// Data sent inside `#subscribe` (when truthy), seen by server middleware.
    pub data: Option<Box<RawValue>>,
    /// Pending channels are (re)subscribed in descending priority; never sent. Default 0.
    pub priority: i64,
    /// On a channel with history (docs/PROTOCOL.md 14.16): the position to recover from
    /// on the first subscription, e.g. the last [`Message::position`] the application
    /// stored before it restarted. Later resubscriptions use the position the client
    /// reached. Default: none (the first subscription starts from now).
    pub recover_from: Option<StreamPosition>,
}

impl SubscribeOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `waitForAuth`.
    pub fn wait_for_auth(mut self, on: bool) -> Self {
        self.wait_for_auth = on;
        self
    }

    /// Set the priority.
    pub fn priority(mut self, priority: i64) -> Self {
        self.priority = priority;
        self
    }

    /// Recover from `position` on the first subscription (see
    /// [`SubscribeOptions::recover_from`]).
    pub fn recover_from(mut self, position: StreamPosition) -> Self {
        self.recover_from = Some(position);
        self
    }

    /// Set the subscription data.
    pub fn data<T: Serialize + ?Sized>(mut self, data: &T) -> Result<Self, serde_json::Error> {
        self.data = Some(serde_json::value::to_raw_value(data)?);
        Ok(self)
    }

    /// The `subscriptionOptions` object of events: what is sent minus `channel`.
    pub(crate) fn wire_options(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if self.wait_for_auth {
            m.insert("waitForAuth".into(), Value::Bool(true));
        }
        if let Some(d) = &self.data
            && let Ok(v) = serde_json::from_str::<Value>(d.get())
        {
            let truthy = !matches!(&v, Value::Null | Value::Bool(false))
                && v.as_f64() != Some(0.0)
                && v.as_str() != Some("");
            if truthy {
                m.insert("data".into(), v);
            }
        }
        m
    }
}

/// One publication received on a channel.
#[derive(Clone, Debug)]
pub struct Message {
    /// The channel.
    pub channel: String,
    /// The published data as raw JSON (`None` when the publisher sent none).
    pub data: Option<Box<RawValue>>,
    /// Offset and epoch, on a channel with history.
    position: Option<(u64, Arc<str>)>,
}

impl Message {
    pub(crate) fn new(
        channel: &str,
        data: Option<Box<RawValue>>,
        position: Option<(u64, Arc<str>)>,
    ) -> Message {
        Message {
            channel: channel.to_owned(),
            data,
            position,
        }
    }

    /// Its offset in the channel's stream, on a channel with history (docs/PROTOCOL.md
    /// 14.16): consecutive messages have consecutive offsets within an epoch.
    pub fn offset(&self) -> Option<u64> {
        self.position.as_ref().map(|(o, _)| *o)
    }

    /// The epoch of the channel's stream, on a channel with history.
    pub fn epoch(&self) -> Option<&str> {
        self.position.as_ref().map(|(_, e)| &**e)
    }

    /// Both: what to store to resume after this message later
    /// ([`SubscribeOptions::recover_from`]).
    pub fn position(&self) -> Option<StreamPosition> {
        self.position
            .as_ref()
            .map(|(o, e)| StreamPosition::new(&**e, *o))
    }
    /// The raw JSON text of the data (`None` when absent).
    pub fn data_str(&self) -> Option<&str> {
        self.data.as_deref().map(RawValue::get)
    }

    /// Deserialize the data (absent data deserializes from `null`).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data_str().unwrap_or("null"))
    }

    /// The data as a JSON value (`Null` when absent).
    pub fn value(&self) -> Value {
        self.deserialize().unwrap_or(Value::Null)
    }
}

/// How a recovery went (docs/PROTOCOL.md 14.16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovery {
    /// Every publication missed since the position the client had reached was delivered
    /// (this many), before any later one, each once.
    Recovered {
        /// How many were replayed.
        publications: u64,
    },
    /// Publications may have been missed and were not replayed; the client continues
    /// from the stream's current position. The application should fall back to its own
    /// source of truth for what happened meanwhile.
    NotRecovered {
        /// Why.
        reason: NotRecovered,
    },
}

/// Observable status of one channel.
#[derive(Clone, Debug)]
pub struct ChannelStatus {
    /// Current state.
    pub state: ChannelState,
    /// Why the channel was removed, once it is `Unsubscribed`.
    pub ended: Option<SubscribeError>,
    /// On a channel with history: how the last recovery went (also reported as
    /// [`Event::Recovery`](crate::Event::Recovery)).
    pub last_recovery: Option<Recovery>,
}

/// How a [`Subscription`] reaches the connection task (implemented by its command
/// channel).
pub(crate) trait ChannelLink: Send + Sync {
    /// Unsubscribe the channel.
    fn unsubscribe(&self, channel: &str);
    /// One consumer of the channel is gone.
    fn drop_consumer(&self, channel: &str, id: u64);
}

/// A subscription: a [`Stream`] of [`Message`]s on one channel that survives
/// reconnects (the channel goes back to pending and is resubscribed after the next
/// handshake). The stream ends when the channel is unsubscribed
/// ([`Subscription::unsubscribe`], [`Client::unsubscribe`](crate::Client::unsubscribe)),
/// when the server kicks the client out, rejects the subscription, or when the client
/// is closed. Dropping the last `Subscription` of a channel unsubscribes it.
///
/// Overflow policy: each subscription buffers up to `buffer_capacity` messages (default
/// 1024). When the buffer is full, newly arriving messages for this subscription are
/// dropped and [`Event::SlowConsumer`](crate::Event::SlowConsumer) is emitted.
pub struct Subscription {
    pub(crate) channel: String,
    pub(crate) id: u64,
    pub(crate) rx: crate::queue::Queue<Message>,
    pub(crate) status: watch::Receiver<ChannelStatus>,
    pub(crate) link: Box<dyn ChannelLink>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("state", &self.state())
            .finish()
    }
}

impl Subscription {
    /// The channel name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The channel's current state.
    pub fn state(&self) -> ChannelState {
        self.status.borrow().state
    }

    /// Why the subscription ended, once it has.
    pub fn end_reason(&self) -> Option<SubscribeError> {
        self.status.borrow().ended.clone()
    }

    /// A watch of this channel's status (state changes are observable with
    /// `changed().await`).
    pub fn status(&self) -> StateWatch<ChannelStatus> {
        StateWatch::new(self.status.clone())
    }

    /// Wait until the server has confirmed the subscription. Fails when the channel is
    /// removed first (`subscribeFail` → [`SubscribeError::Rejected`], kick-out,
    /// unsubscribe, close).
    pub async fn subscribed(&self) -> Result<(), SubscribeError> {
        let mut rx = self.status.clone();
        loop {
            {
                let s = rx.borrow_and_update();
                match s.state {
                    ChannelState::Subscribed => return Ok(()),
                    ChannelState::Unsubscribed => {
                        return Err(s.ended.clone().unwrap_or(SubscribeError::Unsubscribed));
                    }
                    ChannelState::Pending => {}
                }
            }
            if rx.changed().await.is_err() {
                let s = rx.borrow();
                return match s.state {
                    ChannelState::Subscribed => Ok(()),
                    _ => Err(s.ended.clone().unwrap_or(SubscribeError::Closed)),
                };
            }
        }
    }

    /// The next message (`None` once the subscription has ended).
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// Unsubscribe the channel (every `Subscription` of it ends).
    pub fn unsubscribe(self) {
        self.link.unsubscribe(&self.channel);
    }

    /// Turn into a stream of deserialized values.
    pub fn typed<T: DeserializeOwned>(self) -> TypedSubscription<T> {
        TypedSubscription {
            inner: self,
            _t: PhantomData,
        }
    }
}

impl Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.link.drop_consumer(&self.channel, self.id);
    }
}

/// A [`Subscription`] yielding deserialized values.
pub struct TypedSubscription<T> {
    inner: Subscription,
    _t: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for TypedSubscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<T: DeserializeOwned> TypedSubscription<T> {
    /// The underlying subscription.
    pub fn get_ref(&self) -> &Subscription {
        &self.inner
    }
}

impl<T: DeserializeOwned> Stream for TypedSubscription<T> {
    type Item = Result<T, serde_json::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.rx.poll_recv(cx) {
            Poll::Ready(Some(m)) => Poll::Ready(Some(m.deserialize())),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
