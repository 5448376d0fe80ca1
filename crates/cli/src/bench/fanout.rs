//! `bench fanout`: S subscribers (one socket each) on one channel, one publisher
//! socket. Delivered messages/s and publish-to-receive latency (the publisher puts a
//! timestamp at the start of every payload), at saturation and at a fixed light rate.
//!
//! Saturation is closed-loop: the publisher keeps at most `--window` publications in
//! flight (published but not yet received by every subscriber), so the measurement
//! is the sustainable rate, not the speed of filling queues.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, ValueEnum};
use futures_util::{FutureExt, StreamExt};
use serde_json::value::RawValue;
use socketcluster_rs_client::{Client, ClientBuilder, Subscription};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::process::Usage;
use super::stats::{Histogram, Report};
use super::{BenchError, Ctx, Window, padding};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum FanoutMode {
    Saturation,
    Light,
    Both,
}

/// Flags of `bench fanout`.
#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    /// Subscriber sockets (one subscription each, all on the same channel).
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Which phases to run.
    #[arg(long, value_enum, default_value_t = FanoutMode::Both)]
    mode: FanoutMode,
    /// Publications per second in the light-rate phase.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Saturation: publications in flight (sent but not yet received by every
    /// subscriber). At most 1000 (each subscription buffers 1024 messages).
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// Channel name (default: a fresh `bench/fanout/<n>` per run).
    #[arg(long)]
    channel: Option<String>,
    /// Cross-instance fan-out: the publisher connects here instead of `--url`
    /// (e.g. instance A of a Redis/NATS backplane).
    #[arg(long)]
    publisher_url: Option<String>,
    /// Cross-instance fan-out: subscribers are spread round-robin over these servers
    /// (comma-separated) instead of `--url`.
    #[arg(long, value_delimiter = ',')]
    subscriber_urls: Vec<String>,
}

/// State shared by the publisher and the subscriber tasks.
struct Shared {
    /// Messages received by all subscribers since the start.
    delivered: AtomicU64,
    /// Inside the measured part of a phase: record latencies.
    measuring: AtomicBool,
    /// The publisher waits for `delivered` to reach `wake_at`.
    wake_at: AtomicU64,
    notify: Notify,
    /// Payloads whose timestamp could not be read.
    malformed: AtomicU64,
}

/// Microseconds at the start of a payload `{"t":<µs>,...}`.
fn timestamp_of(data: &str) -> Option<u64> {
    if let Some(rest) = data.strip_prefix("{\"t\":") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            return rest[..digits].parse().ok();
        }
    }
    let v: serde_json::Value = serde_json::from_str(data).ok()?;
    v.get("t")?.as_u64()
}

/// The publication data: `{"t":<µs>,"p":"xx…"}`, `size` bytes long when possible.
fn publication(t: u64, size: usize) -> Box<RawValue> {
    let head = format!("{{\"t\":{t},\"p\":");
    let pad = padding(size.saturating_sub(head.len() + 1));
    RawValue::from_string(format!("{head}\"{pad}\"}}")).expect("valid JSON")
}

async fn subscriber(
    ctx: Arc<CtxTime>,
    mut sub: Subscription,
    shared: Arc<Shared>,
    latency: Arc<Mutex<Histogram>>,
) {
    while let Some(first) = sub.recv().await {
        let mut n = 1u64;
        {
            let measuring = shared.measuring.load(Ordering::Relaxed);
            let mut h = latency.lock().unwrap_or_else(|e| e.into_inner());
            let mut take = |data: Option<&str>| {
                if !measuring {
                    return;
                }
                match data.and_then(timestamp_of) {
                    Some(t) => h.record(ctx.now_micros().saturating_sub(t)),
                    None => {
                        shared.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            };
            take(first.data_str());
            // Drain what is already queued without yielding, then publish the count
            // once for the whole batch.
            while let Some(Some(m)) = sub.recv().now_or_never() {
                n += 1;
                take(m.data_str());
            }
        }
        let total = shared.delivered.fetch_add(n, Ordering::AcqRel) + n;
        if total >= shared.wake_at.load(Ordering::Acquire) {
            shared.notify.notify_one();
        }
    }
}

/// The time origin, shareable with subscriber tasks.
struct CtxTime {
    epoch: Instant,
}

impl CtxTime {
    fn now_micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

struct Phase {
    published: u64,
    delivered_in_window: u64,
    lost: u64,
    latency: Histogram,
    usage: (Usage, Usage),
}

/// Readings at the start and the end of the measured part.
async fn sample(
    window: Window,
    shared: Arc<Shared>,
    pid: Option<u32>,
) -> ((u64, Usage), (u64, Usage)) {
    tokio::time::sleep_until(window.measure_start).await;
    shared.measuring.store(true, Ordering::Relaxed);
    let a = (shared.delivered.load(Ordering::Acquire), Usage::now(pid));
    tokio::time::sleep_until(window.end).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let b = (shared.delivered.load(Ordering::Acquire), Usage::now(pid));
    (a, b)
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    ctx: &Ctx,
    time: &CtxTime,
    publisher: &Client,
    channel: &str,
    subscribers: u64,
    shared: &Arc<Shared>,
    histograms: &[Arc<Mutex<Histogram>>],
    rate: Option<f64>,
    window_size: u64,
) -> Result<Phase, BenchError> {
    let delivered_before = shared.delivered.load(Ordering::Acquire);
    let window = Window::starting_now(ctx);
    let sampler = tokio::spawn(sample(window, shared.clone(), ctx.server_pid()));
    let size = ctx.payload_size();
    let mut published = 0u64;
    let start = Instant::now();
    let publish = |published: &mut u64| -> Result<(), BenchError> {
        let data = publication(time.now_micros(), size);
        publisher
            .transmit_publish(channel, &data)
            .map_err(|e| BenchError::Args(format!("publish failed: {e}")))?;
        *published += 1;
        Ok(())
    };
    match rate {
        None => {
            'outer: while Instant::now() < window.end {
                // Closed loop: wait while more than `window_size` publications are not yet
                // received by every subscriber; resume when half of them are.
                loop {
                    let sent = delivered_before + published * subscribers;
                    let delivered = shared.delivered.load(Ordering::Acquire);
                    if sent.saturating_sub(delivered) <= window_size * subscribers {
                        break;
                    }
                    let target = sent - (window_size / 2) * subscribers;
                    let notified = shared.notify.notified();
                    shared.wake_at.store(target, Ordering::Release);
                    if shared.delivered.load(Ordering::Acquire) < target {
                        let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
                    }
                    shared.wake_at.store(u64::MAX, Ordering::Release);
                    if Instant::now() >= window.end {
                        break 'outer;
                    }
                }
                publish(&mut published)?;
            }
        }
        Some(rate) => {
            while Instant::now() < window.end {
                let due = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
                while published < due {
                    publish(&mut published)?;
                }
                let next = start + Duration::from_secs_f64(published as f64 / rate);
                tokio::time::sleep_until(next.min(window.end)).await;
            }
        }
    }
    let (a, b) = sampler
        .await
        .map_err(|e| BenchError::Timeout(format!("sampler: {e}")))?;
    // Drain: everything published should arrive.
    let expected = delivered_before + published * subscribers;
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    while shared.delivered.load(Ordering::Acquire) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lost = expected.saturating_sub(shared.delivered.load(Ordering::Acquire));
    let mut latency = Histogram::default();
    for h in histograms {
        let taken = std::mem::take(&mut *h.lock().unwrap_or_else(|e| e.into_inner()));
        latency.merge(&taken);
    }
    Ok(Phase {
        published,
        delivered_in_window: b.0 - a.0,
        lost,
        latency,
        usage: (a.1, b.1),
    })
}

fn phase_metrics(report: &mut Report, prefix: &str, p: &Phase, secs: f64) {
    let delivered_per_s = p.delivered_in_window as f64 / secs;
    report.metric(
        format!("{prefix}_delivered_per_s"),
        delivered_per_s,
        "msgs/s",
    );
    report.metric(format!("{prefix}_published"), p.published as f64, "msgs");
    report.latency(prefix, &p.latency);
    report.metric(
        format!("{prefix}_latency_samples"),
        p.latency.count() as f64,
        "msgs",
    );
    report.metric(format!("{prefix}_lost"), p.lost as f64, "msgs");
    let (a, b) = p.usage;
    report.metric(
        format!("{prefix}_client_cpu_s"),
        b.client_cpu - a.client_cpu,
        "s",
    );
    if let (Some(sa), Some(sb)) = (a.server_cpu, b.server_cpu) {
        let cpu = sb - sa;
        report.metric(format!("{prefix}_server_cpu_s"), cpu, "s");
        report.metric(
            format!("{prefix}_delivered_per_server_cpu_s"),
            p.delivered_in_window as f64 / cpu,
            "msgs/cpu-s",
        );
    }
}

pub(crate) async fn run(ctx: &Ctx, args: FanoutArgs) -> Result<Report, BenchError> {
    if args.subscribers == 0 {
        return Err(BenchError::Args("--subscribers must be > 0".into()));
    }
    if args.window == 0 || args.window > 1000 {
        return Err(BenchError::Args("--window must be within 1..=1000".into()));
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err(BenchError::Args("--rate must be > 0".into()));
    }
    let channel = args
        .channel
        .clone()
        .unwrap_or_else(|| format!("bench/fanout/{}", std::process::id()));
    let mut report = Report::new("fanout");
    report.param("url", ctx.url());
    report.param("subscribers", args.subscribers as u64);
    report.param("channel", channel.as_str());
    report.param("payload_size", ctx.payload_size() as u64);
    report.param("duration_s", ctx.duration().as_secs_f64());
    report.param("warmup_s", ctx.warmup().as_secs_f64());

    let shared = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        wake_at: AtomicU64::new(u64::MAX),
        notify: Notify::new(),
        malformed: AtomicU64::new(0),
    });
    let time = Arc::new(CtxTime {
        epoch: Instant::now(),
    });
    let channel_ref = channel.as_str();
    if let Some(p) = &args.publisher_url {
        report.param("publisher_url", p.as_str());
    }
    if !args.subscriber_urls.is_empty() {
        report.param("subscriber_urls", args.subscriber_urls.join(",").as_str());
    }
    let subs = ctx
        .connect_many_at(
            args.subscribers,
            None,
            &args.subscriber_urls,
            |_, client| async move {
                let sub = client.subscribe(channel_ref).await?;
                sub.subscribed().await?;
                Ok((client, sub))
            },
        )
        .await?;
    let mut clients = Vec::with_capacity(subs.len());
    let mut histograms = Vec::with_capacity(subs.len());
    let mut tasks = Vec::with_capacity(subs.len());
    for (client, sub) in subs {
        let h = Arc::new(Mutex::new(Histogram::default()));
        histograms.push(h.clone());
        tasks.push(tokio::spawn(subscriber(
            time.clone(),
            sub,
            shared.clone(),
            h,
        )));
        clients.push(client);
    }
    let publisher = match &args.publisher_url {
        Some(url) => {
            ctx.connect_with(ClientBuilder::from_options(ctx.options_for(url)))
                .await?
        }
        None => ctx.connect().await?,
    };
    let n = args.subscribers as u64;

    if args.mode != FanoutMode::Light {
        report.param("window", args.window);
        let p = run_phase(
            ctx,
            &time,
            &publisher,
            &channel,
            n,
            &shared,
            &histograms,
            None,
            args.window,
        )
        .await?;
        phase_metrics(&mut report, "sat", &p, ctx.duration().as_secs_f64());
    }
    if args.mode != FanoutMode::Saturation {
        report.param("rate", args.rate);
        let p = run_phase(
            ctx,
            &time,
            &publisher,
            &channel,
            n,
            &shared,
            &histograms,
            Some(args.rate),
            args.window,
        )
        .await?;
        phase_metrics(&mut report, "light", &p, ctx.duration().as_secs_f64());
    }
    let malformed = shared.malformed.load(Ordering::Relaxed);
    if malformed > 0 {
        report.note(format!("{malformed} payloads without a readable timestamp"));
    }

    publisher.close().await;
    futures_util::stream::iter(clients)
        .for_each_concurrent(256, |c| async move { c.close().await })
        .await;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_read_back() {
        let p = publication(123_456, 64);
        assert_eq!(p.get().len(), 64);
        assert_eq!(timestamp_of(p.get()), Some(123_456));
        assert_eq!(timestamp_of("{\"p\":\"x\",\"t\":7}"), Some(7));
        assert_eq!(timestamp_of("\"nope\""), None);
    }
}
