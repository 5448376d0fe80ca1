//! `bench recovery`: channel history (docs/PROTOCOL.md 14.16). N sockets subscribed to
//! a channel with history disconnect; M publications are made; every socket reconnects
//! at once and recovers them. How long until every socket has recovered, and how many
//! CPU seconds the server spent on it. Before that, on the fresh server: server memory per
//! retained publication (publications kept in the history of many channels).
//!
//! The server must keep history for the channels (`bench_server --history 'bench/*'`, or
//! `socketcluster serve --history 'bench/*'`) with a size and recovery limit of at least
//! M.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use socketcluster_rs_client::{Client, ConnectionState, Event, Recovery, Subscription};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::process::{cpu_seconds, rss_bytes};
use super::stats::Report;
use super::{BenchError, Ctx, payload};

/// Flags of `bench recovery`.
#[derive(Debug, Args)]
pub(crate) struct RecoveryArgs {
    /// Subscribed sockets.
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Publications each socket misses while disconnected.
    #[arg(long, default_value_t = 100)]
    missed: u64,
    /// Channel (must have history on the server). Default: `bench/history/<pid>`.
    #[arg(long)]
    channel: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Memory phase: channels filled with publications (0 skips the phase).
    #[arg(long, default_value_t = 1000)]
    memory_channels: usize,
    /// Memory phase: publications per channel (keep it within the history size).
    #[arg(long, default_value_t = 100)]
    memory_per_channel: usize,
}

#[derive(Default)]
struct Progress {
    messages: AtomicU64,
    recovered: AtomicU64,
    not_recovered: AtomicU64,
    notify: Notify,
}

async fn count_messages(mut sub: Subscription, progress: Arc<Progress>) {
    while sub.recv().await.is_some() {
        progress.messages.fetch_add(1, Ordering::Relaxed);
        progress.notify.notify_one();
    }
}

async fn count_recoveries(client: Client, progress: Arc<Progress>) {
    let mut events = client.events();
    drop(client);
    while let Some(e) = events.next().await {
        if let Event::Recovery { outcome, .. } = e {
            match outcome {
                Recovery::Recovered { .. } => &progress.recovered,
                _ => &progress.not_recovered,
            }
            .fetch_add(1, Ordering::Relaxed);
            progress.notify.notify_one();
        }
    }
}

async fn wait_until(deadline: Instant, notify: &Notify, mut done: impl FnMut() -> bool) -> bool {
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), notify.notified()).await;
    }
    true
}

pub(crate) async fn run(ctx: &Ctx, args: RecoveryArgs) -> Result<Report, BenchError> {
    if args.sockets == 0 || args.missed == 0 {
        return Err(BenchError::Args(
            "--sockets and --missed must be > 0".into(),
        ));
    }
    let timeout = Duration::from_secs_f64(args.timeout.max(1.0));
    let channel = args
        .channel
        .clone()
        .unwrap_or_else(|| format!("bench/history/{}", std::process::id()));
    let mut report = Report::new("recovery");
    report.param("sockets", args.sockets as u64);
    report.param("missed", args.missed);
    report.param("channel", channel.as_str());

    // Memory first, on a server that has not yet held (and freed) the recovery phase's
    // sockets: freed memory would be reused by the histories and hide their cost.
    let publisher = ctx.connect().await?;
    if args.memory_channels > 0 && args.memory_per_channel > 0 {
        memory_phase(ctx, &args, &publisher, &mut report).await?;
    }

    let progress = Arc::new(Progress::default());
    let channel_ref = channel.as_str();
    let subscribed = ctx
        .connect_many(args.sockets, None, |_, client: Client| async move {
            let sub = client.subscribe(channel_ref).await?;
            sub.subscribed().await?;
            Ok((client, sub))
        })
        .await?;
    let mut clients = Vec::with_capacity(subscribed.len());
    let mut tasks = Vec::new();
    for (client, sub) in subscribed {
        tasks.push(tokio::spawn(count_messages(sub, progress.clone())));
        tasks.push(tokio::spawn(count_recoveries(
            client.clone(),
            progress.clone(),
        )));
        clients.push(client);
    }

    // Every socket goes away (code 1000: no automatic reconnect)...
    for c in &clients {
        c.disconnect(1000, Some("bench"));
    }
    let deadline = Instant::now() + timeout;
    while clients.iter().any(|c| c.state() != ConnectionState::Closed) {
        if Instant::now() >= deadline {
            return Err(BenchError::Timeout("sockets did not disconnect".into()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... misses M publications ...
    let data = payload(ctx.payload_size());
    for _ in 0..args.missed {
        publisher.publish_raw(&channel, Some(data.clone())).await?;
    }
    let before = progress.messages.load(Ordering::Acquire);
    // ... and every socket comes back at once.
    let pid = ctx.server_pid();
    let cpu_before = pid.map(cpu_seconds).transpose()?;
    let started = Instant::now();
    for c in &clients {
        c.connect_now();
    }
    let n = clients.len() as u64;
    let want = before + n * args.missed;
    let all = wait_until(started + timeout, &progress.notify, || {
        progress.recovered.load(Ordering::Acquire) + progress.not_recovered.load(Ordering::Acquire)
            >= n
            && progress.messages.load(Ordering::Acquire) >= want
    })
    .await;
    let elapsed = started.elapsed();
    let cpu_after = pid.map(cpu_seconds).transpose()?;
    let recovered = progress.recovered.load(Ordering::Acquire);
    let replayed = progress.messages.load(Ordering::Acquire) - before;
    report.metric("recovered_sockets", recovered as f64, "sockets");
    report.metric(
        "not_recovered_sockets",
        progress.not_recovered.load(Ordering::Acquire) as f64,
        "sockets",
    );
    report.metric("replayed_publications", replayed as f64, "msgs");
    report.metric("all_recovered_s", elapsed.as_secs_f64(), "s");
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        report.metric("server_cpu_s", b - a, "s");
        report.metric(
            "server_cpu_us_per_replayed",
            (b - a) * 1e6 / replayed.max(1) as f64,
            "µs",
        );
    }
    if !all {
        report.note(format!(
            "only {recovered} of {n} sockets recovered ({replayed} of {} publications) within {:.0} s",
            n * args.missed,
            timeout.as_secs_f64()
        ));
    }
    futures_util::stream::iter(clients)
        .for_each_concurrent(256, |c| async move { c.close().await })
        .await;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
    }
    publisher.close().await;
    Ok(report)
}

/// Server memory per retained publication: fill the history of many channels.
async fn memory_phase(
    ctx: &Ctx,
    args: &RecoveryArgs,
    publisher: &Client,
    report: &mut Report,
) -> Result<(), BenchError> {
    let Some(pid) = ctx.server_pid() else {
        report.note("memory phase skipped: no --server-pid".to_owned());
        return Ok(());
    };
    let base = format!("bench/history/mem/{}", std::process::id());
    let data = payload(ctx.payload_size());
    // Warm the channel registry and allocator first, then measure the publications only.
    for i in 0..args.memory_channels {
        publisher
            .publish_raw(&format!("{base}/{i}"), Some(data.clone()))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(pid)?;
    let mut published = 0u64;
    for _ in 1..args.memory_per_channel {
        let calls = (0..args.memory_channels).map(|i| {
            let ch = format!("{base}/{i}");
            let data = data.clone();
            async move { publisher.publish_raw(&ch, Some(data)).await }
        });
        let results: Vec<_> = futures_util::stream::iter(calls)
            .buffer_unordered(64)
            .collect()
            .await;
        for r in results {
            r?;
            published += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_bytes(pid)?;
    report.param("memory_channels", args.memory_channels as u64);
    report.param("memory_per_channel", args.memory_per_channel as u64);
    report.metric(
        "server_bytes_per_retained_publication",
        rss_after.saturating_sub(rss_before) as f64 / published.max(1) as f64,
        "B",
    );
    Ok(())
}
