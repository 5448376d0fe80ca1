//! The [`Client`] handle: cheap to clone, `Send + Sync`; every operation is a message
//! to the connection task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;
use socketcluster_rs_protocol::CloseCode;
use tokio::sync::{oneshot, watch};

use crate::auth::{AuthState, AuthStatus};
use crate::channel::{ChannelState, SubscribeOptions, Subscription};
use crate::command::{Command, CommandSender, SendError};
use crate::connection::Connection;
use crate::connector::Dialer;
use crate::error::{ConnectError, InvokeError, SubscribeError, TransmitError};
use crate::events::{ConnectStatus, EventHub, Events};
use crate::options::{ClientBuilder, ClientOptions};
use crate::rpc::{Handler, Procedure, Receiver};
use crate::session::{ConnectionState, Session, Snapshot};
use crate::watch::StateWatch;

struct Inner {
    cmd: CommandSender,
    snapshot: watch::Receiver<Snapshot>,
    hub: EventHub,
    options: Arc<ClientOptions>,
    next_id: AtomicU64,
}

/// A SocketCluster client. Cloning is cheap; all clones drive the same connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use socketcluster_rs_client::Client;
/// use futures_util::StreamExt;
///
/// let client = Client::connect("ws://127.0.0.1:8000/socketcluster/").await?;
/// let answer: serde_json::Value = client.invoke("echo", &serde_json::json!({"hi": 1})).await?;
/// let mut sub = client.subscribe("news").await?;
/// while let Some(msg) = sub.next().await {
///     println!("{}: {:?}", msg.channel, msg.data_str());
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.options.url)
            .field("state", &self.state())
            .finish()
    }
}

fn to_raw<T: Serialize + ?Sized>(data: &T) -> Result<Box<RawValue>, serde_json::Error> {
    serde_json::value::to_raw_value(data)
}

impl ClientBuilder {
    /// Build the client and spawn its connection task (must be called inside a tokio
    /// runtime). With `auto_connect` (default) it starts connecting at once and keeps
    /// retrying per the reconnect policy, like the JS client; nothing is awaited.
    pub fn build(self) -> Result<Client, ConnectError> {
        Client::spawn(self.into_options())
    }

    /// Build the client and wait for the first handshake. Fails with the first attempt's
    /// error (the client is then closed); later drops are handled by auto-reconnect.
    pub async fn connect(self) -> Result<Client, ConnectError> {
        let mut options = self.into_options();
        options.auto_connect = false;
        let client = Client::spawn(options)?;
        client.connect_and_wait().await?;
        Ok(client)
    }
}

impl Client {
    /// A builder with the JS defaults.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// Connect with default options and wait for the first handshake.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), socketcluster_rs_client::ConnectError> {
    /// let client = socketcluster_rs_client::Client::connect("ws://127.0.0.1:8000/socketcluster/").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: impl Into<String>) -> Result<Client, ConnectError> {
        ClientBuilder::new(url).connect().await
    }

    pub(crate) fn spawn(options: ClientOptions) -> Result<Client, ConnectError> {
        let dialer = Dialer::new(&options)?;
        let options = Arc::new(options);
        let (cmd_tx, cmd_rx) = crate::command::channel(options.command_capacity);
        let (hub, events_tx) = EventHub::new(options.event_capacity);
        let (snap_tx, snap_rx) = watch::channel(Snapshot::initial(options.auto_connect));
        let session = Session::new(options.clone(), cmd_tx.downgrade(), events_tx, snap_tx);
        let conn = Connection::new(options.clone(), session, dialer, cmd_rx, hub.clone());
        tokio::spawn(conn.run());
        Ok(Client {
            inner: Arc::new(Inner {
                cmd: cmd_tx,
                snapshot: snap_rx,
                hub,
                options,
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// Send a command without waiting (a data-carrying one fails when the command
    /// channel is full: see [`ClientOptions::command_capacity`]).
    fn send(&self, cmd: Command) -> Result<(), SendError> {
        self.inner.cmd.try_send(cmd)
    }

    /// Send a command, waiting for room in the command channel.
    async fn send_wait(&self, cmd: Command) -> Result<(), SendError> {
        self.inner.cmd.send(cmd).await
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The options the client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    // ------------------------------------------------------------ lifecycle

    /// The connection state.
    pub fn state(&self) -> ConnectionState {
        self.inner.snapshot.borrow().state
    }

    /// A watch of the connection state.
    ///
    /// ```no_run
    /// # async fn demo(client: socketcluster_rs_client::Client) {
    /// let mut state = client.state_watch();
    /// while let Some(s) = state.changed().await {
    ///     tracing::info!(state = s.as_str(), "connection state");
    /// }
    /// # }
    /// ```
    pub fn state_watch(&self) -> StateWatch<ConnectionState> {
        let (tx, rx) = watch::channel(self.state());
        let mut snap = self.inner.snapshot.clone();
        tokio::spawn(async move {
            while snap.changed().await.is_ok() {
                let s = snap.borrow_and_update().state;
                tx.send_if_modified(|v| {
                    let changed = *v != s;
                    *v = s;
                    changed
                });
                if tx.is_closed() {
                    break;
                }
            }
        });
        StateWatch::new(rx)
    }

    /// The socket id of the current connection.
    pub fn id(&self) -> Option<String> {
        self.inner
            .snapshot
            .borrow()
            .status
            .as_ref()
            .and_then(|s| s.id.clone())
    }

    /// The handshake status of the current connection (`None` while not open).
    pub fn status(&self) -> Option<ConnectStatus> {
        self.inner.snapshot.borrow().status.clone()
    }

    /// The delay of the scheduled reconnect, if one is pending.
    pub fn pending_reconnect(&self) -> Option<Duration> {
        self.inner.snapshot.borrow().pending_reconnect
    }

    /// Connection attempts since the last successful handshake.
    pub fn connect_attempts(&self) -> u32 {
        self.inner.snapshot.borrow().connect_attempts
    }

    /// A stream of events from now on.
    ///
    /// ```no_run
    /// # async fn demo(client: socketcluster_rs_client::Client) {
    /// use futures_util::StreamExt;
    /// let mut events = client.events();
    /// while let Some(e) = events.next().await {
    ///     tracing::info!(event = e.name(), "client event");
    /// }
    /// # }
    /// ```
    pub fn events(&self) -> Events {
        self.inner.hub.subscribe()
    }

    /// Start connecting if closed (cancels a pending reconnect). Does nothing when
    /// connecting or open.
    pub fn connect_now(&self) {
        let _ = self.send(Command::Connect { done: None });
    }

    /// Connect if needed and wait until the handshake completes (or the attempt fails).
    pub async fn connect_and_wait(&self) -> Result<(), ConnectError> {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Connect { done: Some(tx) }).is_err() {
            return Err(ConnectError::Closed);
        }
        rx.await.unwrap_or(Err(ConnectError::Closed))
    }

    /// Close the connection with `code` and `reason` (JS `disconnect`). The close-code
    /// policy still applies: 1000 and >= 4500 do not reconnect, other codes do. While
    /// closed, cancels a pending reconnect.
    pub fn disconnect(&self, code: u16, reason: Option<&str>) {
        let _ = self.send(Command::Disconnect {
            code: CloseCode(code),
            reason: reason.map(str::to_owned),
        });
    }

    /// Disconnect (code 1000 by default) and connect again at once.
    pub fn reconnect(&self) {
        self.reconnect_with(1000, None);
    }

    /// Disconnect with `code`/`reason` and connect again at once.
    pub fn reconnect_with(&self, code: u16, reason: Option<&str>) {
        let _ = self.send(Command::Reconnect {
            code: CloseCode(code),
            reason: reason.map(str::to_owned),
        });
    }

    /// Close gracefully for good: close frame 1000, pending calls fail with
    /// [`InvokeError::Closed`], every stream ends, the task stops.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Close { done: tx }).is_ok() {
            let _ = rx.await;
        }
    }

    /// Whether [`close`](Self::close) was called (or every handle dropped).
    pub fn is_closed(&self) -> bool {
        self.inner.snapshot.borrow().terminated
    }

    // ------------------------------------------------------------ RPC

    /// Send an event without expecting an answer.
    pub fn transmit<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<(), TransmitError> {
        let data = to_raw(data).map_err(TransmitError::Serialize)?;
        self.transmit_raw(event, Some(data))
    }

    /// Send an event with raw data (or none: `{"event":"x"}`).
    ///
    /// Fails with [`TransmitError::Full`] (and sends nothing) when
    /// [`ClientOptions::command_capacity`] commands are already waiting for the
    /// connection task.
    pub fn transmit_raw(
        &self,
        event: &str,
        data: Option<Box<RawValue>>,
    ) -> Result<(), TransmitError> {
        self.send(Command::Transmit {
            event: event.to_owned(),
            data,
        })
        .map_err(|e| match e {
            SendError::Full => TransmitError::Full,
            SendError::Closed => TransmitError::Closed,
        })
    }

    /// Invoke a procedure and deserialize the answer (absent data deserializes from
    /// `null`).
    ///
    /// ```no_run
    /// # async fn demo(client: socketcluster_rs_client::Client) -> Result<(), socketcluster_rs_client::InvokeError> {
    /// let echoed: Vec<u32> = client.invoke("echo", &[1, 2, 3]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn invoke<T: DeserializeOwned, D: Serialize + ?Sized>(
        &self,
        procedure: &str,
        data: &D,
    ) -> Result<T, InvokeError> {
        self.invoke_with_timeout(procedure, data, None).await
    }

    /// [`invoke`](Self::invoke) with a per-call timeout (default: the ack timeout).
    pub async fn invoke_with_timeout<T: DeserializeOwned, D: Serialize + ?Sized>(
        &self,
        procedure: &str,
        data: &D,
        timeout: Option<Duration>,
    ) -> Result<T, InvokeError> {
        let data = to_raw(data).map_err(InvokeError::Serialize)?;
        let r = self.invoke_raw(procedure, Some(data), timeout).await?;
        serde_json::from_str(r.as_deref().map_or("null", RawValue::get))
            .map_err(InvokeError::Deserialize)
    }

    /// Invoke with raw data; returns the raw answer (`None` for `{"rid":n}`).
    pub async fn invoke_raw(
        &self,
        procedure: &str,
        data: Option<Box<RawValue>>,
        timeout: Option<Duration>,
    ) -> Result<Option<Box<RawValue>>, InvokeError> {
        let (tx, rx) = oneshot::channel();
        if self
            .send_wait(Command::Invoke {
                event: procedure.to_owned(),
                data,
                timeout,
                reply: tx,
            })
            .await
            .is_err()
        {
            return Err(InvokeError::Closed);
        }
        rx.await.unwrap_or(Err(InvokeError::Closed))
    }

    /// A stream of the events the server transmits under `event`.
    pub fn receiver(&self, event: &str) -> Receiver {
        let (tx, rx) = crate::queue::bounded(self.inner.options.buffer_capacity);
        let id = self.next_id();
        let _ = self.send(Command::AddHandler {
            name: event.to_owned(),
            id,
            handler: Handler::Receiver(tx),
        });
        Receiver {
            name: event.to_owned(),
            id,
            rx,
            link: Box::new(self.inner.cmd.clone()),
        }
    }

    /// A stream of the server's invokes of `procedure`, to answer.
    ///
    /// ```no_run
    /// # async fn demo(client: socketcluster_rs_client::Client) {
    /// use futures_util::StreamExt;
    /// let mut requests = client.procedure("clientProc");
    /// while let Some(req) = requests.next().await {
    ///     let _ = req.respond("client says hi");
    /// }
    /// # }
    /// ```
    pub fn procedure(&self, procedure: &str) -> Procedure {
        let (tx, rx) = crate::queue::bounded(self.inner.options.buffer_capacity);
        let id = self.next_id();
        let _ = self.send(Command::AddHandler {
            name: procedure.to_owned(),
            id,
            handler: Handler::Procedure(tx),
        });
        Procedure {
            name: procedure.to_owned(),
            id,
            rx,
            link: Box::new(self.inner.cmd.clone()),
        }
    }

    // ------------------------------------------------------------ channels

    /// Subscribe to `channel` (returns at once; see [`Subscription::subscribed`] to wait
    /// for the server's confirmation).
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, SubscribeError> {
        self.subscribe_with(channel, SubscribeOptions::default())
            .await
    }

    /// Subscribe with options (`waitForAuth`, `data`, `priority`).
    ///
    /// ```no_run
    /// # async fn demo(client: socketcluster_rs_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use socketcluster_rs_client::SubscribeOptions;
    /// let sub = client
    ///     .subscribe_with("private/feed", SubscribeOptions::new().wait_for_auth(true).priority(5))
    ///     .await?;
    /// sub.subscribed().await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_with(
        &self,
        channel: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        let (tx, rx) = crate::queue::bounded(self.inner.options.buffer_capacity);
        let (rtx, rrx) = oneshot::channel();
        let id = self.next_id();
        if self
            .send_wait(Command::Subscribe {
                channel: channel.to_owned(),
                options,
                consumer_id: id,
                tx,
                reply: rtx,
            })
            .await
            .is_err()
        {
            return Err(SubscribeError::Closed);
        }
        let status = rrx.await.map_err(|_| SubscribeError::Closed)?;
        Ok(Subscription {
            channel: channel.to_owned(),
            id,
            rx,
            status,
            link: Box::new(self.inner.cmd.clone()),
        })
    }

    /// Unsubscribe `channel`: every [`Subscription`] of it ends; `#unsubscribe` is sent
    /// if connected.
    pub fn unsubscribe(&self, channel: &str) {
        let _ = self.send(Command::Unsubscribe {
            channel: channel.to_owned(),
        });
    }

    /// The state of `channel` (`Unsubscribed` when not in the table).
    pub fn channel_state(&self, channel: &str) -> ChannelState {
        self.inner
            .snapshot
            .borrow()
            .channels
            .get(channel)
            .copied()
            .unwrap_or(ChannelState::Unsubscribed)
    }

    /// Channels in the table: subscribed ones, plus pending ones if `include_pending`.
    pub fn subscriptions(&self, include_pending: bool) -> Vec<String> {
        self.inner
            .snapshot
            .borrow()
            .channels
            .iter()
            .filter(|(_, s)| include_pending || **s == ChannelState::Subscribed)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Send `#subscribe` for every pending channel (needed when
    /// `auto_subscribe_on_connect` is off).
    pub fn process_pending_subscriptions(&self) {
        let _ = self.send(Command::ProcessPending);
    }

    /// Publish with acknowledgement (`#publish` invoke).
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<(), InvokeError> {
        let data = to_raw(data).map_err(InvokeError::Serialize)?;
        self.publish_raw(channel, Some(data)).await
    }

    /// Publish raw data with acknowledgement.
    pub async fn publish_raw(
        &self,
        channel: &str,
        data: Option<Box<RawValue>>,
    ) -> Result<(), InvokeError> {
        let channel = self.inner.options.wire_channel(channel);
        let d = socketcluster_rs_protocol::reserved::publish_data(&channel, data.as_deref());
        self.invoke_raw(socketcluster_rs_protocol::reserved::PUBLISH, Some(d), None)
            .await
            .map(|_| ())
    }

    /// Publish without acknowledgement (`#publish` transmit).
    pub fn transmit_publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<(), TransmitError> {
        let data = to_raw(data).map_err(TransmitError::Serialize)?;
        let channel = self.inner.options.wire_channel(channel);
        let d = socketcluster_rs_protocol::reserved::publish_data(&channel, Some(&data));
        self.transmit_raw(socketcluster_rs_protocol::reserved::PUBLISH, Some(d))
    }

    // ------------------------------------------------------------ auth

    /// The auth state.
    pub fn auth_state(&self) -> AuthState {
        self.inner.snapshot.borrow().auth_state
    }

    /// Whether the client is authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.auth_state() == AuthState::Authenticated
    }

    /// The signed token (JWT) the client is authenticated with.
    pub fn signed_auth_token(&self) -> Option<String> {
        self.inner.snapshot.borrow().signed_token.clone()
    }

    /// The decoded (unverified) claims of that token.
    pub fn auth_token(&self) -> Option<Value> {
        self.inner.snapshot.borrow().claims.clone()
    }

    /// Authenticate with a signed token (`#authenticate`). The token is stored even when
    /// the server answers `isAuthenticated: false`, like the JS client.
    pub async fn authenticate(&self, token: &str) -> Result<AuthStatus, InvokeError> {
        let (tx, rx) = oneshot::channel();
        if self
            .send_wait(Command::Authenticate {
                token: token.to_owned(),
                reply: tx,
            })
            .await
            .is_err()
        {
            return Err(InvokeError::Closed);
        }
        rx.await.unwrap_or(Err(InvokeError::Closed))
    }

    /// Remove the stored token, tell the server (`#removeAuthToken`) and become
    /// unauthenticated. Channels are not unsubscribed.
    pub async fn deauthenticate(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Deauthenticate { done: tx }).is_ok() {
            let _ = rx.await;
        }
    }

    // ------------------------------------------------------------ batching

    /// Buffer outgoing packets and flush them as one array every `batch_interval`.
    pub fn start_batching(&self) {
        let _ = self.send(Command::StartBatching);
    }

    /// Flush the batch and stop batching.
    pub fn stop_batching(&self) {
        let _ = self.send(Command::StopBatching);
    }

    /// Discard the batch and stop batching.
    pub fn cancel_batching(&self) {
        let _ = self.send(Command::CancelBatching);
    }
}
