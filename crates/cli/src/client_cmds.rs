//! Client commands: `invoke`, `transmit`, `publish`, `subscribe`, and the common flags.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use serde_json::Value;
use socketcluster_rs_client::{
    Client, ClientBuilder, ConnectError, Event, InvokeError, MemoryTokenStore, ProtocolVersion,
    ReauthReason, TokenRequest,
};

use crate::data::parse_data;

/// Flags shared by every client command (see `shared/CLI.md`).
#[derive(Debug, Args, Clone)]
pub(crate) struct ClientArgs {
    /// Server URL, ws:// or wss://.
    #[arg(
        long,
        env = "SOCKETCLUSTER_URL",
        default_value = "ws://127.0.0.1:8000/socketcluster/"
    )]
    url: String,
    /// Signed token sent in the handshake.
    #[arg(long, env = "SOCKETCLUSTER_AUTH_TOKEN")]
    auth_token: Option<String>,
    /// Shell command (`sh -c`) whose stdout is a fresh signed token; run whenever the
    /// client needs to (re)authenticate: the handshake reports the socket unauthenticated,
    /// the server removes the token, or the token is about to expire. The client
    /// authenticates with it before it (re)subscribes channels.
    #[arg(long, env = "SOCKETCLUSTER_TOKEN_COMMAND")]
    token_command: Option<String>,
    /// SocketCluster protocol version (1 for SocketCluster <= 14 servers).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    protocol_version: u8,
    /// Response timeout for invokes and publishes, in ms.
    #[arg(long, visible_alias = "timeout", default_value_t = 10_000)]
    ack_timeout: u64,
    /// Time allowed to open the WebSocket, in ms.
    #[arg(long, default_value_t = 20_000)]
    connect_timeout: u64,
    /// Auto-reconnect: base delay in ms.
    #[arg(long, default_value_t = 10_000)]
    reconnect_initial_delay: u64,
    /// Auto-reconnect: random extra delay up to this many ms.
    #[arg(long, default_value_t = 10_000)]
    reconnect_randomness: u64,
    /// Auto-reconnect: growth factor per attempt.
    #[arg(long, default_value_t = 1.5)]
    reconnect_multiplier: f64,
    /// Auto-reconnect: longest delay in ms.
    #[arg(long, default_value_t = 60_000)]
    reconnect_max_delay: u64,
    /// Prefix put before channel names on the wire and removed from received ones (JS
    /// `channelPrefix`).
    #[arg(long, env = "SOCKETCLUSTER_CHANNEL_PREFIX")]
    channel_prefix: Option<String>,
}

/// A failure of a client command: printed as `Name: message` on stderr, exit status 1.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    #[error("{0}")]
    Invoke(Box<InvokeError>),
    #[error("BadConnectionError: {0}")]
    Connect(Box<ConnectError>),
    #[error("Error: {0}")]
    Data(String),
}

impl From<InvokeError> for CommandError {
    fn from(e: InvokeError) -> Self {
        CommandError::Invoke(Box::new(e))
    }
}

impl From<ConnectError> for CommandError {
    fn from(e: ConnectError) -> Self {
        CommandError::Connect(Box::new(e))
    }
}

impl ClientArgs {
    fn builder(&self) -> ClientBuilder {
        let version = if self.protocol_version == 1 {
            ProtocolVersion::V1
        } else {
            ProtocolVersion::V2
        };
        let mut b = Client::builder(self.url.clone())
            .protocol_version(version)
            .ack_timeout(Duration::from_millis(self.ack_timeout))
            .connect_timeout(Duration::from_millis(self.connect_timeout))
            .reconnect_delays(
                Duration::from_millis(self.reconnect_initial_delay),
                Duration::from_millis(self.reconnect_randomness),
                self.reconnect_multiplier,
                Duration::from_millis(self.reconnect_max_delay),
            );
        if let Some(p) = &self.channel_prefix {
            b = b.channel_prefix(p.clone());
        }
        if let Some(t) = &self.auth_token {
            b = b.token_store(MemoryTokenStore::with_token(t.clone()));
        }
        if let Some(cmd) = &self.token_command {
            let cmd: Arc<str> = Arc::from(cmd.as_str());
            b = b.token_provider(move |req: TokenRequest| {
                let cmd = cmd.clone();
                async move { run_token_command(&cmd, &req.reason).await }
            });
        }
        b
    }

    /// Connect and wait for the first handshake (one-shot commands fail fast).
    async fn connect(&self) -> Result<Client, CommandError> {
        Ok(self.builder().connect().await?)
    }
}

/// Run the `--token-command`; its trimmed stdout is the token.
async fn run_token_command(cmd: &str, reason: &ReauthReason) -> Result<String, String> {
    tracing::info!(?reason, "running --token-command");
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        // The client abandons a command that takes longer than its provider timeout.
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run --token-command: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "--token-command exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if token.is_empty() {
        return Err("--token-command printed no token".to_owned());
    }
    Ok(token)
}

fn data_arg(arg: Option<&str>) -> Result<Value, CommandError> {
    parse_data(arg)
        .map(|d| d.unwrap_or(Value::Null))
        .map_err(|e| CommandError::Data(format!("cannot read DATA: {e}")))
}

pub(crate) fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) is not an error worth a panic.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `socketcluster invoke PROCEDURE [DATA]`.
#[derive(Debug, Args)]
pub(crate) struct InvokeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Procedure name.
    procedure: String,
    /// JSON data (text that is not JSON is sent as a string; `-` reads stdin).
    data: Option<String>,
}

pub(crate) async fn invoke(args: InvokeArgs) -> Result<ExitCode, CommandError> {
    let data = data_arg(args.data.as_deref())?;
    let client = args.client.connect().await?;
    let result: Result<Value, InvokeError> = client.invoke(&args.procedure, &data).await;
    client.close().await;
    let value = result?;
    print_line(&serde_json::to_string(&value).unwrap_or_else(|_| "null".into()));
    Ok(ExitCode::SUCCESS)
}

/// `socketcluster transmit EVENT [DATA]`.
#[derive(Debug, Args)]
pub(crate) struct TransmitArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Event (receiver) name.
    event: String,
    /// JSON data.
    data: Option<String>,
}

pub(crate) async fn transmit(args: TransmitArgs) -> Result<ExitCode, CommandError> {
    let data = data_arg(args.data.as_deref())?;
    let client = args.client.connect().await?;
    let sent = client.transmit(&args.event, &data);
    // close() is graceful: what was queued is written before the close frame.
    client.close().await;
    sent.map_err(|e| CommandError::Data(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

/// `socketcluster publish CHANNEL [DATA]`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Channel name.
    channel: String,
    /// JSON data.
    data: Option<String>,
}

pub(crate) async fn publish(args: PublishArgs) -> Result<ExitCode, CommandError> {
    let data = data_arg(args.data.as_deref())?;
    let client = args.client.connect().await?;
    let result = client.publish(&args.channel, &data).await;
    client.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `socketcluster subscribe CHANNEL...`.
#[derive(Debug, Args)]
pub(crate) struct SubscribeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Exit 0 after this many publications (all channels together).
    #[arg(long)]
    count: Option<u64>,
    /// Subscribe only once authenticated (`waitForAuth`).
    #[arg(long)]
    wait_for_auth: bool,
    /// On channels with history: add `offset` and `epoch` to every printed line and report
    /// each recovery on stderr (the client always recovers what it missed while
    /// disconnected; docs/PROTOCOL.md 14.16).
    #[arg(long)]
    recover: bool,
    /// Resume from a stored position `EPOCH:OFFSET` (one channel only; implies
    /// `--recover`): the publications after it are printed first. A position of another
    /// epoch (the history was lost) is reported as not recovered, and what the current
    /// stream holds is printed from its start.
    #[arg(long, value_name = "EPOCH:OFFSET")]
    from: Option<String>,
    /// Channels.
    #[arg(required = true)]
    channels: Vec<String>,
}

/// `EPOCH:OFFSET`.
fn parse_position(text: &str) -> Result<socketcluster_rs_client::StreamPosition, CommandError> {
    let bad = || CommandError::Data(format!("--from must be EPOCH:OFFSET, got {text:?}"));
    let (epoch, offset) = text.rsplit_once(':').ok_or_else(bad)?;
    if epoch.is_empty() {
        return Err(bad());
    }
    let offset = offset.parse().map_err(|_| bad())?;
    Ok(socketcluster_rs_client::StreamPosition::new(epoch, offset))
}

pub(crate) async fn subscribe(args: SubscribeArgs) -> Result<ExitCode, CommandError> {
    // Like the JS client: connect in the background and keep retrying, so a subscriber
    // started before its server (or across restarts) just waits.
    let from = args.from.as_deref().map(parse_position).transpose()?;
    if from.is_some() && args.channels.len() != 1 {
        return Err(CommandError::Data(
            "--from takes one channel (a position belongs to one channel's stream)".into(),
        ));
    }
    let positions = args.recover || from.is_some();
    let client = args.client.builder().build()?;
    let mut events = client.events();
    let mut streams = Vec::new();
    for ch in &args.channels {
        let mut opts =
            socketcluster_rs_client::SubscribeOptions::default().wait_for_auth(args.wait_for_auth);
        if let Some(p) = &from {
            opts = opts.recover_from(p.clone());
        }
        let sub = client
            .subscribe_with(ch, opts)
            .await
            .map_err(|e| CommandError::Data(e.to_string()))?;
        streams.push(sub);
    }
    let mut publications = futures_util::stream::select_all(streams);
    let mut seen: u64 = 0;
    let mut events_open = true;
    if args.count == Some(0) {
        client.close().await;
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        tokio::select! {
            // Events first: what happened to a subscription (a recovery, a failure) is
            // reported before the publications that follow it.
            biased;
            ev = events.next(), if events_open => match ev {
                Some(ev) => report_event(&ev, positions),
                None => events_open = false,
            },
            msg = publications.next() => {
                let Some(msg) = msg else {
                    // every subscription ended (rejected, kicked out)
                    client.close().await;
                    return Ok(ExitCode::from(1));
                };
                // The data is printed as the publisher's JSON text, never re-encoded.
                let channel = serde_json::to_string(&msg.channel).unwrap_or_default();
                let position = match (positions, msg.offset(), msg.epoch()) {
                    (true, Some(o), Some(e)) => format!(
                        ",\"offset\":{o},\"epoch\":{}",
                        serde_json::to_string(e).unwrap_or_default()
                    ),
                    _ => String::new(),
                };
                print_line(&format!(
                    "{{\"channel\":{channel},\"data\":{}{position}}}",
                    msg.data_str().unwrap_or("null")
                ));
                seen += 1;
                if args.count.is_some_and(|n| seen >= n) {
                    client.close().await;
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
}

/// Subscription failures and state changes go to stderr.
fn report_event(ev: &Event, recoveries: bool) {
    match ev {
        Event::Recovery { channel, outcome } if recoveries => match outcome {
            socketcluster_rs_client::Recovery::Recovered { publications } => {
                eprintln!("recovered {channel}: {publications} missed publication(s) replayed");
            }
            socketcluster_rs_client::Recovery::NotRecovered { reason } => {
                eprintln!("not recovered {channel}: {reason}");
            }
            _ => {}
        },
        Event::SubscribeFail { channel, error, .. } => {
            eprintln!("subscribeFail {channel}: {error}");
        }
        Event::Subscribe { channel, .. } => eprintln!("subscribed {channel}"),
        Event::KickOut { channel, .. } => eprintln!("kickOut {channel}"),
        Event::Connect { status, .. } => eprintln!(
            "connected{}",
            if status.is_authenticated {
                " (authenticated)"
            } else {
                ""
            }
        ),
        Event::Disconnect { code, reason } => eprintln!("disconnected: {code} {reason}"),
        Event::ConnectAbort { code, reason } => eprintln!("connection failed: {code} {reason}"),
        Event::ReauthenticationFailed { error, retry_in } => match retry_in {
            Some(d) => eprintln!(
                "re-authentication failed: {error}; retrying in {:.1} s",
                d.as_secs_f64()
            ),
            None => eprintln!("re-authentication failed: {error}"),
        },
        _ => tracing::debug!(event = ev.name(), "client event"),
    }
}
