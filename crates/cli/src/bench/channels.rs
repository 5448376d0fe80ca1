//! `bench channels`: one socket subscribes to K channels. Time per subscription, and
//! server (and our client's) memory per subscription.

use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::process::{Usage, own_rss_bytes, rss_bytes};
use super::stats::Report;
use super::{BenchError, Ctx};

/// Flags of `bench channels`.
#[derive(Debug, Args)]
pub(crate) struct ChannelsArgs {
    /// Channels to subscribe to (one socket). Mind the server's per-socket channel
    /// limit (`socketcluster serve --socket-channel-limit`).
    #[arg(long, default_value_t = 10_000)]
    channels: usize,
    /// Subscriptions waiting for their confirmation at once.
    #[arg(long, default_value_t = 1000)]
    in_flight: usize,
    /// Pause before each memory reading, in seconds.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
}

pub(crate) async fn run(ctx: &Ctx, args: ChannelsArgs) -> Result<Report, BenchError> {
    if args.channels == 0 || args.in_flight == 0 {
        return Err(BenchError::Args(
            "--channels and --in-flight must be > 0".into(),
        ));
    }
    let settle = Duration::from_secs_f64(args.settle.max(0.0));
    let mut report = Report::new("channels");
    report.param("url", ctx.url());
    report.param("channels", args.channels as u64);
    report.param("in_flight", args.in_flight as u64);

    let client = ctx.connect().await?;
    tokio::time::sleep(settle).await;
    let pid = ctx.server_pid();
    let server_before = pid.map(rss_bytes).transpose()?;
    let client_before = own_rss_bytes();
    let usage_before = Usage::now(pid);
    let prefix = format!("bench/channels/{}/", std::process::id());

    let started = Instant::now();
    let client_ref = &client;
    let prefix_ref = prefix.as_str();
    let subs: Vec<_> = futures_util::stream::iter(0..args.channels)
        .map(|i| async move {
            let sub = client_ref.subscribe(&format!("{prefix_ref}{i}")).await?;
            sub.subscribed().await?;
            Ok::<_, BenchError>(sub)
        })
        .buffer_unordered(args.in_flight)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let usage_after = Usage::now(pid);
    let subs: Vec<_> = subs.into_iter().collect::<Result<_, _>>()?;

    report.metric("subscribe_total_s", elapsed, "s");
    report.metric("subscriptions_per_s", subs.len() as f64 / elapsed, "subs/s");
    report.metric("subscribe_us_each", elapsed * 1e6 / subs.len() as f64, "µs");
    tokio::time::sleep(settle).await;
    if let (Some(pid), Some(before)) = (pid, server_before) {
        let after = rss_bytes(pid)?;
        let delta = after as f64 - before as f64;
        report.metric("server_rss_before_mb", before as f64 / 1048576.0, "MiB");
        report.metric("server_rss_after_mb", after as f64 / 1048576.0, "MiB");
        report.metric(
            "server_bytes_per_subscription",
            delta / subs.len() as f64,
            "B",
        );
        if let (Some(a), Some(b)) = (usage_before.server_cpu, usage_after.server_cpu) {
            report.metric("server_cpu_s", b - a, "s");
        }
    } else {
        report.note("no --server-pid: server memory not measured");
    }
    let client_after = own_rss_bytes();
    report.metric(
        "client_bytes_per_subscription",
        (client_after as f64 - client_before as f64) / subs.len() as f64,
        "B",
    );
    drop(subs);
    client.close().await;
    Ok(report)
}
