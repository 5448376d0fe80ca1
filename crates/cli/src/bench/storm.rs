//! `bench storm`: N sockets subscribed; the server is killed (SIGKILL, like a crash)
//! and started again. How long until every socket has reconnected and resubscribed,
//! and how many CPU seconds the new server spent on it.
//!
//! The bench runs the server itself (`--server-cmd`), so it can restart it and read its
//! CPU time from `/proc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use socketcluster_rs_client::{ChannelState, ClientBuilder, MemoryTokenStore, Subscription};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::idle::check_fd_limit;
use super::process::{ServerProcess, cpu_seconds, host_port, rss_bytes, wait_listening};
use super::stats::Report;
use super::{BenchError, Ctx};

/// Flags of `bench storm`.
#[derive(Debug, Args)]
pub(crate) struct StormArgs {
    /// Subscribed sockets.
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Distinct channels (socket i subscribes to `bench/storm/<i mod channels>`).
    #[arg(long, default_value_t = 100)]
    channels: usize,
    /// Shell command that runs the server listening at `--url`; the bench starts it,
    /// kills it once every socket is subscribed, and starts it again.
    #[arg(long)]
    server_cmd: String,
    /// Reconnect backoff of the sockets: initial delay (ms).
    #[arg(long, default_value_t = 0)]
    reconnect_initial_delay: u64,
    /// Reconnect backoff of the sockets: random extra delay, up to (ms). Spreads the
    /// storm over this window.
    #[arg(long, default_value_t = 1000)]
    reconnect_randomness: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
}

/// Resolves once the subscription went away and came back (the status watch changed
/// and reads `Subscribed` again).
async fn resubscribed(sub: Subscription, count: Arc<AtomicUsize>, notify: Arc<Notify>) {
    let mut status = sub.status();
    status.latest();
    loop {
        let Some(current) = status.changed().await else {
            return;
        };
        match current.state {
            ChannelState::Subscribed => {
                count.fetch_add(1, Ordering::AcqRel);
                notify.notify_one();
                // Keep the subscription (and so the channel) alive until the end.
                let _ = status.changed().await;
                return;
            }
            ChannelState::Pending => {}
            ChannelState::Unsubscribed => return,
        }
    }
}

pub(crate) async fn run(ctx: &Ctx, args: StormArgs) -> Result<Report, BenchError> {
    if args.sockets == 0 || args.channels == 0 {
        return Err(BenchError::Args(
            "--sockets and --channels must be > 0".into(),
        ));
    }
    check_fd_limit(args.sockets)?;
    let addr = host_port(ctx.url())
        .ok_or_else(|| BenchError::Args(format!("cannot read host:port of {}", ctx.url())))?;
    let timeout = Duration::from_secs_f64(args.timeout.max(1.0));
    let mut report = Report::new("storm");
    report.param("url", ctx.url());
    report.param("sockets", args.sockets as u64);
    report.param("channels", args.channels as u64);
    report.param("reconnect_initial_delay_ms", args.reconnect_initial_delay);
    report.param("reconnect_randomness_ms", args.reconnect_randomness);

    let server = ServerProcess::spawn(&args.server_cmd)?;
    wait_listening(&addr, Duration::from_secs(30)).await?;
    let token = ctx.signed_token("bench")?;
    report.param("authenticated", token.is_some());

    let started = Instant::now();
    let token_ref = token.as_deref();
    let channels = args.channels;
    let reconnect = (
        Duration::from_millis(args.reconnect_initial_delay),
        Duration::from_millis(args.reconnect_randomness),
    );
    let subs: Vec<_> = futures_util::stream::iter(0..args.sockets)
        .map(|i| async move {
            let mut o = ctx.options();
            if let Some(t) = token_ref {
                o.token_store = Arc::new(MemoryTokenStore::with_token(t));
            }
            let builder = ClientBuilder::from_options(o).reconnect_delays(
                reconnect.0,
                reconnect.1,
                1.5,
                Duration::from_secs(60),
            );
            let client = ctx.connect_with(builder).await?;
            let sub = client
                .subscribe(&format!("bench/storm/{}", i % channels))
                .await?;
            sub.subscribed().await?;
            Ok::<_, BenchError>((client, sub))
        })
        .buffer_unordered(ctx.common.connect_concurrency)
        .collect()
        .await;
    let subs: Vec<_> = subs.into_iter().collect::<Result<_, _>>()?;
    report.metric("initial_connect_s", started.elapsed().as_secs_f64(), "s");

    let count = Arc::new(AtomicUsize::new(0));
    let notify = Arc::new(Notify::new());
    let mut clients = Vec::with_capacity(subs.len());
    let mut watchers = Vec::with_capacity(subs.len());
    for (client, sub) in subs {
        watchers.push(tokio::spawn(resubscribed(
            sub,
            count.clone(),
            notify.clone(),
        )));
        clients.push(client);
    }

    let killed = Instant::now();
    server.kill().await;
    let server = ServerProcess::spawn(&args.server_cmd)?;
    let spawned = Instant::now();
    wait_listening(&addr, Duration::from_secs(30)).await?;
    let ready = Instant::now();
    let cpu_ready = cpu_seconds(server.pid)?;

    let deadline = ready + timeout;
    while count.load(Ordering::Acquire) < clients.len() && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(50), notify.notified()).await;
    }
    let done = Instant::now();
    let cpu_done = cpu_seconds(server.pid)?;
    let rss = rss_bytes(server.pid)?;
    let resubscribed = count.load(Ordering::Acquire);

    report.metric("resubscribed", resubscribed as f64, "sockets");
    report.metric("server_start_s", (ready - spawned).as_secs_f64(), "s");
    report.metric(
        "kill_to_all_resubscribed_s",
        (done - killed).as_secs_f64(),
        "s",
    );
    report.metric(
        "ready_to_all_resubscribed_s",
        (done - ready).as_secs_f64(),
        "s",
    );
    report.metric("server_cpu_s", cpu_done - cpu_ready, "s");
    report.metric("server_cpu_incl_startup_s", cpu_done, "s");
    report.metric(
        "server_cpu_us_per_socket",
        (cpu_done - cpu_ready) * 1e6 / clients.len() as f64,
        "µs",
    );
    report.metric("server_rss_after_mb", rss as f64 / 1048576.0, "MiB");
    if resubscribed < clients.len() {
        report.note(format!(
            "only {resubscribed} of {} sockets resubscribed within {:.0} s",
            clients.len(),
            timeout.as_secs_f64()
        ));
    }

    futures_util::stream::iter(clients)
        .for_each_concurrent(256, |c| async move { c.close().await })
        .await;
    for w in watchers {
        let _ = tokio::time::timeout(Duration::from_secs(1), w).await;
    }
    server.kill().await;
    Ok(report)
}
