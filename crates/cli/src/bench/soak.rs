//! `bench soak`: connect / subscribe / publish / disconnect churn at a steady rate for
//! `--duration` seconds, sampling the server's RSS, open file descriptors, threads
//! (`/proc/PID` of `--server-pid`) and live tokio tasks (`/metrics` of `socketcluster
//! serve`, gauge `socketcluster_runtime_alive_tasks`) every `--sample-every` seconds.
//!
//! Each churn cycle is one fresh socket: connect (handshake), subscribe to one of
//! `--channels` channels, publish one message there with acknowledgement, wait until
//! its own publication comes back, close. The table of samples is printed as it is
//! taken (stderr with `--json`); the report gives first / last / max of each series
//! and a least-squares slope with a flatness verdict.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::process::{host_port, rss_bytes};
use super::stats::Report;
use super::{BenchError, Ctx, payload};

/// Flags of `bench soak`.
#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// Churn cycles started per second (connect, subscribe, publish, receive, close).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds between two samples of the server's resources.
    #[arg(long, default_value_t = 10.0)]
    sample_every: f64,
    /// Channels the cycles spread over (`soak-0`, `soak-1`, ...).
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// Cycles in flight at most; a tick finding them all busy is counted as skipped.
    #[arg(long, default_value_t = 500)]
    max_in_flight: usize,
    /// `/metrics` URL of the server (`http://host:port/metrics`; default: derived from
    /// `--url`). Tasks are reported as n/a when it cannot be read.
    #[arg(long)]
    metrics_url: Option<String>,
}

/// One reading of the server's resources.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: f64,
    rss_mib: f64,
    fds: f64,
    threads: f64,
    tasks: f64,
    sockets: f64,
    cycles: u64,
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
}

/// Number of entries of `/proc/PID/fd`.
fn open_fds(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/fd");
    let dir = std::fs::read_dir(&path).map_err(|e| BenchError::Proc(path, e))?;
    Ok(dir.count() as u64)
}

/// `Threads:` of `/proc/PID/status`.
fn threads(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| BenchError::Proc(path.clone(), e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| BenchError::Proc(path, std::io::Error::other("no Threads line")))
}

/// `GET` a plain-HTTP URL with HTTP/1.0 and return the body (enough for `/metrics`).
async fn http_get(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(authority).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let ok = head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200");
        ok.then(|| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}

/// The value of an unlabelled metric in Prometheus text.
fn prom_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Least-squares slope of `ys` against `xs` (0 with fewer than two points).
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return 0.0;
    }
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let num: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

/// Flat when the growth the slope predicts over the whole run stays within 10 % of the
/// first reading plus `abs` (allocator and runtime noise).
fn is_flat(first: f64, growth: f64, abs: f64) -> bool {
    growth <= first.abs() * 0.10 + abs
}

fn print_row(json: bool, row: &str) {
    if json {
        eprintln!("{row}");
    } else {
        println!("{row}");
    }
}

async fn cycle(ctx: &Ctx, channel: String, data: &serde_json::value::RawValue) -> bool {
    let Ok(client) = ctx.connect().await else {
        return false;
    };
    let ok = async {
        let mut sub = client.subscribe(&channel).await.ok()?;
        client
            .publish_raw(&channel, Some(data.to_owned()))
            .await
            .ok()?;
        // Our own publication (or another cycle's on the same channel) comes back.
        tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .ok()??;
        Some(())
    }
    .await
    .is_some();
    client.close().await;
    ok
}

pub(crate) async fn run(ctx: &Ctx, args: SoakArgs) -> Result<Report, BenchError> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err(BenchError::Args("--rate must be > 0".into()));
    }
    if !(args.sample_every > 0.0 && args.sample_every.is_finite()) {
        return Err(BenchError::Args("--sample-every must be > 0".into()));
    }
    if args.channels == 0 || args.max_in_flight == 0 {
        return Err(BenchError::Args(
            "--channels and --max-in-flight must be > 0".into(),
        ));
    }
    let Some(pid) = ctx.server_pid() else {
        return Err(BenchError::Args(
            "bench soak needs --server-pid (its RSS, fds and threads are sampled)".into(),
        ));
    };
    let metrics_url = args
        .metrics_url
        .clone()
        .or_else(|| host_port(ctx.url()).map(|hp| format!("http://{hp}/metrics")));
    let mut report = Report::new("soak");
    report.param("url", ctx.url());
    report.param("rate", args.rate);
    report.param("duration_s", ctx.duration().as_secs_f64());
    report.param("sample_every_s", args.sample_every);
    report.param("channels", args.channels as u64);

    let counters = Arc::new(Counters::default());
    let in_flight = Arc::new(Semaphore::new(args.max_in_flight));
    let data: Arc<serde_json::value::RawValue> = Arc::from(payload(ctx.payload_size()));
    let ctx_shared = Arc::new(Ctx {
        common: ctx.common.clone(),
    });

    let started = Instant::now();
    let warm_end = started + ctx.warmup();
    let end = warm_end + ctx.duration();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sample_every = Duration::from_secs_f64(args.sample_every);
    let mut next_sample = warm_end;
    let mut samples: Vec<Sample> = Vec::new();
    let mut n = 0usize;
    let json = ctx.common.json;
    print_row(
        json,
        &format!(
            "{:>8} {:>9} {:>6} {:>7} {:>7} {:>7} {:>9}",
            "t_s", "rss_MiB", "fds", "threads", "tasks", "sockets", "cycles"
        ),
    );
    loop {
        let now = Instant::now();
        if now >= next_sample {
            let metrics = match &metrics_url {
                Some(u) => http_get(u).await,
                None => None,
            };
            let m = |name| {
                metrics
                    .as_deref()
                    .and_then(|t| prom_value(t, name))
                    .unwrap_or(f64::NAN)
            };
            let s = Sample {
                at: (now - warm_end).as_secs_f64(),
                rss_mib: rss_bytes(pid)? as f64 / (1024.0 * 1024.0),
                fds: open_fds(pid)? as f64,
                threads: threads(pid)? as f64,
                tasks: m("socketcluster_runtime_alive_tasks"),
                sockets: m("socketcluster_sockets"),
                cycles: counters.ok.load(Ordering::Relaxed),
            };
            print_row(
                json,
                &format!(
                    "{:>8.0} {:>9.1} {:>6} {:>7} {:>7} {:>7} {:>9}",
                    s.at, s.rss_mib, s.fds, s.threads, s.tasks, s.sockets, s.cycles
                ),
            );
            samples.push(s);
            if now >= end {
                break;
            }
            next_sample = (next_sample + sample_every).min(end);
        }
        tokio::select! {
            _ = tick.tick() => {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    counters.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let channel = format!("soak-{}", n % args.channels);
                n += 1;
                let (c, d, cx) = (counters.clone(), data.clone(), ctx_shared.clone());
                tokio::spawn(async move {
                    let ok = cycle(&cx, channel, &d).await;
                    let counter = if ok { &c.ok } else { &c.failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            _ = tokio::time::sleep_until(next_sample) => {}
        }
    }
    // Let the cycles in flight finish (bounded).
    let _ = tokio::time::timeout(
        Duration::from_secs(15),
        in_flight.acquire_many(args.max_in_flight as u32),
    )
    .await;

    let ok = counters.ok.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    report.metric("cycles", ok as f64, "");
    report.metric("cycles_failed", failed as f64, "");
    report.metric(
        "cycles_skipped",
        counters.skipped.load(Ordering::Relaxed) as f64,
        "",
    );
    // The rate over the measured window: the first sample is taken when the warm-up ends.
    let warm_cycles = samples.first().map_or(0, |s| s.cycles);
    report.metric("warmup_cycles", warm_cycles as f64, "");
    report.metric(
        "cycle_rate",
        ok.saturating_sub(warm_cycles) as f64 / ctx.duration().as_secs_f64(),
        "/s",
    );
    let xs: Vec<f64> = samples.iter().map(|s| s.at).collect();
    let run_s = ctx.duration().as_secs_f64();
    let mut all_flat = true;
    type Get = fn(&Sample) -> f64;
    let series: [(&str, &str, &str, f64, Get); 4] = [
        ("rss", "MiB", "MiB/h", 8.0, |s| s.rss_mib),
        ("fds", "", "/h", 16.0, |s| s.fds),
        ("threads", "", "/h", 2.0, |s| s.threads),
        ("tasks", "", "/h", 32.0, |s| s.tasks),
    ];
    for (name, unit, slope_unit, abs, get) in series {
        let ys: Vec<f64> = samples.iter().map(get).collect();
        if ys.iter().any(|y| !y.is_finite()) {
            report.note(format!("{name}: not available (no /metrics gauge)"));
            continue;
        }
        let first = ys.first().copied().unwrap_or(f64::NAN);
        let last = ys.last().copied().unwrap_or(f64::NAN);
        let max = ys.iter().copied().fold(f64::MIN, f64::max);
        let k = slope(&xs, &ys) * 3600.0;
        report.metric(format!("{name}_first"), first, unit);
        report.metric(format!("{name}_last"), last, unit);
        report.metric(format!("{name}_max"), max, unit);
        report.metric(format!("{name}_slope_per_hour"), k, slope_unit);
        let flat = is_flat(first, k / 3600.0 * run_s, abs);
        all_flat &= flat;
        report.note(format!("{name}: {}", if flat { "flat" } else { "GROWING" }));
    }
    report.note(if all_flat {
        "verdict: flat (growth predicted by the slope over the run within 10 % of the first sample + noise)".to_owned()
    } else {
        "verdict: NOT flat".to_owned()
    });
    if json {
        // [t_s, rss_MiB, fds, threads, tasks, sockets]; in the table they were printed
        // as rows while running.
        let rows: Vec<_> = samples
            .iter()
            .map(|s| json!([s.at, s.rss_mib, s.fds, s.threads, s.tasks, s.sockets]))
            .collect();
        report.param("samples", json!(rows));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_a_constant() {
        assert!((slope(&[0.0, 1.0, 2.0], &[1.0, 3.0, 5.0]) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[0.0, 1.0, 2.0], &[4.0, 4.0, 4.0]), 0.0);
        assert_eq!(slope(&[0.0], &[4.0]), 0.0);
    }

    #[test]
    fn prometheus_values_are_found_by_exact_name() {
        let t = "# HELP a x\na_total 3\na 7\nb{x=\"1\"} 2\n";
        assert_eq!(prom_value(t, "a"), Some(7.0));
        assert_eq!(prom_value(t, "a_total"), Some(3.0));
        assert_eq!(prom_value(t, "c"), None);
    }

    #[test]
    fn flatness_allows_noise_but_not_growth() {
        assert!(is_flat(100.0, 12.0, 8.0));
        assert!(!is_flat(100.0, 40.0, 8.0));
    }
}
