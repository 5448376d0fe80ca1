//! `socketcluster bench`: a load generator built on our client, like `nats bench`.
//!
//! Scenarios, one module each:
//!
//! * `rpc` ([`rpc`]): sequential round trips and pipelined invokes;
//! * `fanout` ([`fanout`]): S subscribers on one channel, one publisher, at saturation
//!   and at a fixed light rate, with publish-to-receive latency;
//! * `channels` ([`channels`]): one socket subscribing to K channels;
//! * `idle` ([`idle`]): N connected, authenticated, idle sockets;
//! * `storm` ([`storm`]): N subscribed sockets, the server killed and restarted;
//! * `recovery` ([`recovery`]): N sockets on a channel with history miss M publications
//!   and recover them at once; server memory per retained publication;
//! * `soak` ([`soak`]): connect/subscribe/publish/disconnect churn at a steady rate,
//!   the server's RSS, file descriptors, threads and tasks sampled over time.
//!
//! Server memory and CPU come from `/proc/PID` of `--server-pid` (or of the server
//! `storm` starts itself). Every scenario prints a table, or with `--json` one JSON
//! object (`scenario`, `label`, `params`, `metrics`, `units`, `notes`) on one line.
//! Percentiles come from a log-linear histogram ([`stats`]).

mod channels;
mod fanout;
mod idle;
mod process;
mod recovery;
mod rpc;
mod soak;
mod stats;
mod storm;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use socketcluster_rs_client::{
    Client, ClientBuilder, ClientOptions, ConnectError, InvokeError, MemoryTokenStore,
    SubscribeError,
};
use tokio::time::Instant;

/// Flags of `socketcluster bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Flags every scenario understands (they may be given before or after the scenario).
#[derive(Clone, Debug, Args)]
pub(crate) struct CommonArgs {
    /// Server URL.
    #[arg(
        long,
        global = true,
        env = "SOCKETCLUSTER_URL",
        default_value = "ws://127.0.0.1:8000/socketcluster/"
    )]
    url: String,
    /// Measured time per phase, in seconds.
    #[arg(long, global = true, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up before each measured phase, in seconds (not counted).
    #[arg(long, global = true, default_value_t = 1.0)]
    warmup: f64,
    /// Payload size in bytes (RPC request data; publication data, timestamp included).
    #[arg(long, global = true, default_value_t = 64)]
    payload_size: usize,
    /// Print one JSON object instead of the table.
    #[arg(long, global = true)]
    json: bool,
    /// PID of the server process: its memory and CPU time are read from /proc/PID.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// HMAC key (HS256) of the server: sockets then send a signed token in their
    /// handshake (`idle --auth token`, `storm`).
    #[arg(long, global = true, env = "SOCKETCLUSTER_AUTH_KEY")]
    auth_key: Option<String>,
    /// Connection attempts in flight while opening many sockets.
    #[arg(long, global = true, default_value_t = 200)]
    connect_concurrency: usize,
    /// Response timeout for invokes and subscriptions, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    ack_timeout: u64,
    /// Free-form name of the target, copied into the output (e.g. `rust`, `js`).
    #[arg(long, global = true)]
    label: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Sequential round trips (latency) and pipelined invokes (throughput).
    Rpc(rpc::RpcArgs),
    /// S subscribers on one channel, one publisher: delivered messages/s and latency.
    Fanout(fanout::FanoutArgs),
    /// One socket subscribing to K channels: time and server memory per subscription.
    Channels(channels::ChannelsArgs),
    /// N connected, authenticated, idle sockets: server memory per socket.
    Idle(idle::IdleArgs),
    /// N subscribed sockets, server killed and restarted: time to resubscribe all, and
    /// server CPU seconds.
    Storm(storm::StormArgs),
    /// N sockets on a channel with history miss M publications and reconnect at once:
    /// time and server CPU until all recovered; server memory per retained publication.
    Recovery(recovery::RecoveryArgs),
    /// Connect/subscribe/publish/disconnect churn at `--rate` cycles/s for `--duration`
    /// seconds: the server's RSS, open fds, threads and tasks sampled, with a flatness
    /// verdict.
    Soak(soak::SoakArgs),
}

/// Errors of `socketcluster bench`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    #[error("invalid arguments: {0}")]
    Args(String),
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<ConnectError>,
    },
    #[error("invoke failed: {0}")]
    Invoke(Box<InvokeError>),
    #[error("subscribe failed: {0}")]
    Subscribe(Box<SubscribeError>),
    #[error("cannot read {0}: {1}")]
    Proc(String, std::io::Error),
    #[error("cannot start `{0}`: {1}")]
    Spawn(String, std::io::Error),
    #[error("the server at {0} did not start listening")]
    ServerNotReady(String),
    #[error("cannot sign a token: {0}")]
    Token(#[from] crate::token::TokenError),
    #[error("timed out: {0}")]
    Timeout(String),
}

impl From<InvokeError> for BenchError {
    fn from(e: InvokeError) -> Self {
        BenchError::Invoke(Box::new(e))
    }
}

impl From<SubscribeError> for BenchError {
    fn from(e: SubscribeError) -> Self {
        BenchError::Subscribe(Box::new(e))
    }
}

pub(crate) async fn run(args: BenchArgs) -> Result<ExitCode, BenchError> {
    let ctx = Ctx::new(args.common)?;
    let report = match args.scenario {
        Scenario::Rpc(a) => rpc::run(&ctx, a).await?,
        Scenario::Fanout(a) => fanout::run(&ctx, a).await?,
        Scenario::Channels(a) => channels::run(&ctx, a).await?,
        Scenario::Idle(a) => idle::run(&ctx, a).await?,
        Scenario::Storm(a) => storm::run(&ctx, a).await?,
        Scenario::Recovery(a) => recovery::run(&ctx, a).await?,
        Scenario::Soak(a) => soak::run(&ctx, a).await?,
    };
    let label = ctx.common.label.as_deref();
    if ctx.common.json {
        println!("{}", report.to_json(label));
    } else {
        print!("{}", report.to_table(label));
    }
    Ok(ExitCode::SUCCESS)
}

/// What scenarios share: the flags and a client factory.
pub(crate) struct Ctx {
    common: CommonArgs,
}

impl Ctx {
    fn new(common: CommonArgs) -> Result<Ctx, BenchError> {
        if !(common.duration > 0.0 && common.duration.is_finite()) {
            return Err(BenchError::Args("--duration must be > 0".into()));
        }
        if !(common.warmup >= 0.0 && common.warmup.is_finite()) {
            return Err(BenchError::Args("--warmup must be >= 0".into()));
        }
        if common.connect_concurrency == 0 {
            return Err(BenchError::Args("--connect-concurrency must be > 0".into()));
        }
        Ok(Ctx { common })
    }

    pub(crate) fn url(&self) -> &str {
        &self.common.url
    }

    pub(crate) fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.common.duration)
    }

    pub(crate) fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.common.warmup)
    }

    pub(crate) fn server_pid(&self) -> Option<u32> {
        self.common.server_pid
    }

    pub(crate) fn payload_size(&self) -> usize {
        self.common.payload_size
    }

    /// Client options for the bench: the JS defaults except a small event buffer (a
    /// load generator does not read most events; 1024 pre-allocated event slots per
    /// client would dominate our own memory with thousands of sockets).
    pub(crate) fn options(&self) -> ClientOptions {
        self.options_for(&self.common.url)
    }

    /// [`Ctx::options`] for another server (cross-instance scenarios).
    pub(crate) fn options_for(&self, url: &str) -> ClientOptions {
        let mut o = ClientOptions::new(url.to_owned());
        o.ack_timeout = Duration::from_millis(self.common.ack_timeout);
        o.event_capacity = 16;
        o
    }

    /// A token signed with `--auth-key` (HS256, like `socketcluster token`).
    pub(crate) fn signed_token(&self, username: &str) -> Result<Option<String>, BenchError> {
        let Some(key) = &self.common.auth_key else {
            return Ok(None);
        };
        let mut claims = serde_json::Map::new();
        claims.insert("username".into(), username.into());
        Ok(Some(crate::token::sign(claims, key, "HS256", 86_400)?))
    }

    pub(crate) fn has_auth_key(&self) -> bool {
        self.common.auth_key.is_some()
    }

    /// Connect one client and wait for its handshake.
    pub(crate) async fn connect_with(&self, builder: ClientBuilder) -> Result<Client, BenchError> {
        builder
            .connect()
            .await
            .map_err(|source| BenchError::Connect {
                url: self.common.url.clone(),
                source: Box::new(source),
            })
    }

    pub(crate) async fn connect(&self) -> Result<Client, BenchError> {
        self.connect_with(ClientBuilder::from_options(self.options()))
            .await
    }

    /// Connect `n` clients, `--connect-concurrency` at a time; `setup` runs on each
    /// new client (authenticate, subscribe...) before it counts as done.
    pub(crate) async fn connect_many<F, Fut, T>(
        &self,
        n: usize,
        token: Option<&str>,
        setup: F,
    ) -> Result<Vec<T>, BenchError>
    where
        F: Fn(usize, Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, BenchError>>,
    {
        self.connect_many_at(n, token, &[], setup).await
    }

    /// [`Ctx::connect_many`] spreading the clients round-robin over `urls` (the main
    /// `--url` when empty).
    pub(crate) async fn connect_many_at<F, Fut, T>(
        &self,
        n: usize,
        token: Option<&str>,
        urls: &[String],
        setup: F,
    ) -> Result<Vec<T>, BenchError>
    where
        F: Fn(usize, Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, BenchError>>,
    {
        let setup = &setup;
        let results: Vec<Result<T, BenchError>> = futures_util::stream::iter(0..n)
            .map(|i| async move {
                let mut o = match urls.len() {
                    0 => self.options(),
                    k => self.options_for(&urls[i % k]),
                };
                if let Some(t) = token {
                    o.token_store = Arc::new(MemoryTokenStore::with_token(t));
                }
                let client = self.connect_with(ClientBuilder::from_options(o)).await?;
                setup(i, client).await
            })
            .buffer_unordered(self.common.connect_concurrency)
            .collect()
            .await;
        results.into_iter().collect()
    }
}

/// A JSON string of exactly `size` bytes (at least `""`).
pub(crate) fn padding(size: usize) -> String {
    "x".repeat(size.saturating_sub(2))
}

/// Raw JSON data of exactly `size` bytes (at least 2).
pub(crate) fn payload(size: usize) -> Box<RawValue> {
    let text = format!("\"{}\"", padding(size));
    RawValue::from_string(text).expect("a string of 'x' is valid JSON")
}

/// The warm-up, measured and end instants of one phase starting now.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) measure_start: Instant,
    pub(crate) end: Instant,
}

impl Window {
    pub(crate) fn starting_now(ctx: &Ctx) -> Window {
        Window::starting_in(ctx.warmup(), ctx.duration())
    }

    pub(crate) fn starting_in(warmup: Duration, duration: Duration) -> Window {
        let measure_start = Instant::now() + warmup;
        Window {
            measure_start,
            end: measure_start + duration,
        }
    }

    pub(crate) fn in_window(&self, t: Instant) -> bool {
        t >= self.measure_start && t < self.end
    }

    pub(crate) fn secs(&self) -> f64 {
        (self.end - self.measure_start).as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_requested_size() {
        assert_eq!(payload(64).get().len(), 64);
        assert_eq!(payload(0).get(), "\"\"");
    }
}
