//! `bench rpc`: sequential round trips (latency) and pipelined invokes (throughput).

use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::value::RawValue;
use socketcluster_rs_client::{Client, ClientBuilder, InvokeError};
use tokio::time::Instant;

use super::process::Usage;
use super::stats::{Histogram, Report};
use super::{BenchError, Ctx, Window, payload};

/// Where the RPC client runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ClientRuntime {
    /// Its own single-threaded runtime (like the JS client's event loop).
    Current,
    /// The bench's multi-threaded runtime.
    Shared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum RpcMode {
    Sequential,
    Pipelined,
    Both,
}

/// Flags of `bench rpc`.
#[derive(Debug, Args)]
pub(crate) struct RpcArgs {
    /// Which phases to run.
    #[arg(long, value_enum, default_value_t = RpcMode::Both)]
    mode: RpcMode,
    /// Invokes kept in flight per socket in the pipelined phase.
    #[arg(long, default_value_t = 100)]
    in_flight: usize,
    /// Sockets in the pipelined phase (the sequential phase uses one).
    #[arg(long, default_value_t = 1)]
    sockets: usize,
    /// Runtime of the invoking clients: `current` (one thread with a single-threaded
    /// runtime, like the JS client's event loop) or `shared` (the bench's
    /// multi-threaded runtime; adds cross-thread wakeups to every round trip).
    #[arg(long, value_enum, default_value_t = ClientRuntime::Current)]
    client_runtime: ClientRuntime,
    /// Procedure to invoke with the payload (the bench servers' `echo` answers with it).
    #[arg(long, default_value = "echo")]
    procedure: String,
}

/// What one invoking loop measured.
#[derive(Default)]
struct LoopResult {
    latency: Histogram,
    completed: u64,
    errors: u64,
}

/// Invoke back to back until the window ends; count and time the invokes that start
/// inside the measured part.
async fn invoke_loop(
    client: Client,
    procedure: String,
    data: Box<RawValue>,
    window: Window,
) -> Result<LoopResult, BenchError> {
    let mut r = LoopResult::default();
    loop {
        let t0 = Instant::now();
        if t0 >= window.end {
            return Ok(r);
        }
        let outcome = client
            .invoke_raw(&procedure, Some(data.clone()), None)
            .await;
        match outcome {
            Ok(_) => {
                if window.in_window(t0) {
                    r.latency.record(t0.elapsed().as_micros() as u64);
                    r.completed += 1;
                }
            }
            Err(InvokeError::Closed) => return Err(InvokeError::Closed.into()),
            Err(_) => {
                r.errors += 1;
                if r.errors > 1000 && r.completed == 0 {
                    // Nothing works (no such procedure?): stop instead of spinning.
                    tokio::time::sleep_until(window.end).await;
                }
            }
        }
    }
}

/// CPU readings at the start and the end of the measured part.
async fn sample_usage(window: Window, server_pid: Option<u32>) -> (Usage, Usage) {
    tokio::time::sleep_until(window.measure_start).await;
    let a = Usage::now(server_pid);
    tokio::time::sleep_until(window.end).await;
    let b = Usage::now(server_pid);
    (a, b)
}

fn cpu_metrics(report: &mut Report, prefix: &str, ops: u64, a: Usage, b: Usage) {
    let client = b.client_cpu - a.client_cpu;
    report.metric(format!("{prefix}_client_cpu_s"), client, "s");
    report.metric(
        format!("{prefix}_per_client_cpu_s"),
        ops as f64 / client,
        "invokes/cpu-s",
    );
    if let (Some(sa), Some(sb)) = (a.server_cpu, b.server_cpu) {
        let server = sb - sa;
        report.metric(format!("{prefix}_server_cpu_s"), server, "s");
        report.metric(
            format!("{prefix}_per_server_cpu_s"),
            ops as f64 / server,
            "invokes/cpu-s",
        );
    }
}

/// Run `fut` on the bench's runtime, or on a fresh single-threaded runtime in a thread
/// of its own.
async fn on_runtime<T, F>(rt: ClientRuntime, fut: F) -> Result<T, BenchError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, BenchError>> + Send + 'static,
{
    match rt {
        ClientRuntime::Shared => fut.await,
        ClientRuntime::Current => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let r = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(fut),
                    Err(e) => Err(BenchError::Args(format!("runtime: {e}"))),
                };
                let _ = tx.send(r);
            });
            rx.await
                .map_err(|_| BenchError::Timeout("client thread ended".into()))?
        }
    }
}

async fn connect(builder: ClientBuilder, url: String) -> Result<Client, BenchError> {
    builder
        .connect()
        .await
        .map_err(|source| BenchError::Connect {
            url,
            source: Box::new(source),
        })
}

pub(crate) async fn run(ctx: &Ctx, args: RpcArgs) -> Result<Report, BenchError> {
    if args.in_flight == 0 || args.sockets == 0 {
        return Err(BenchError::Args(
            "--in-flight and --sockets must be > 0".into(),
        ));
    }
    let mut report = Report::new("rpc");
    report.param("url", ctx.url());
    report.param("procedure", args.procedure.as_str());
    report.param("payload_size", ctx.payload_size() as u64);
    report.param("duration_s", ctx.duration().as_secs_f64());
    report.param("warmup_s", ctx.warmup().as_secs_f64());
    let data = payload(ctx.payload_size());

    report.param(
        "client_runtime",
        match args.client_runtime {
            ClientRuntime::Current => "current-thread",
            ClientRuntime::Shared => "shared",
        },
    );
    let (warmup, duration, pid) = (ctx.warmup(), ctx.duration(), ctx.server_pid());

    if args.mode != RpcMode::Pipelined {
        let builder = ClientBuilder::from_options(ctx.options());
        let (procedure, data) = (args.procedure.clone(), data.clone());
        let url = ctx.url().to_owned();
        let sequential = async move {
            let client = connect(builder, url).await?;
            // Fail fast (with the server's error) when the procedure does not answer.
            client
                .invoke_raw(&procedure, Some(data.clone()), Some(Duration::from_secs(5)))
                .await?;
            let window = Window::starting_in(warmup, duration);
            let (r, usage) = tokio::join!(
                invoke_loop(client.clone(), procedure, data, window),
                sample_usage(window, pid)
            );
            client.close().await;
            Ok::<_, BenchError>((r?, usage, window))
        };
        let (r, (a, b), window) = on_runtime(args.client_runtime, sequential).await?;
        report.metric(
            "seq_rps",
            r.completed as f64 / window.secs(),
            "round-trips/s",
        );
        report.latency("seq", &r.latency);
        report.metric("seq_errors", r.errors as f64, "errors");
        cpu_metrics(&mut report, "seq", r.completed, a, b);
    }

    if args.mode != RpcMode::Sequential {
        report.param("in_flight", args.in_flight as u64);
        report.param("sockets", args.sockets as u64);
        let builders: Vec<_> = (0..args.sockets)
            .map(|_| ClientBuilder::from_options(ctx.options()))
            .collect();
        let (procedure, data) = (args.procedure.clone(), data.clone());
        let (url, in_flight) = (ctx.url().to_owned(), args.in_flight);
        let pipelined = async move {
            let mut clients = Vec::with_capacity(builders.len());
            for b in builders {
                let c = connect(b, url.clone()).await?;
                c.invoke_raw(&procedure, Some(data.clone()), Some(Duration::from_secs(5)))
                    .await?;
                clients.push(c);
            }
            let window = Window::starting_in(warmup, duration);
            let mut tasks = Vec::with_capacity(clients.len() * in_flight);
            for c in &clients {
                for _ in 0..in_flight {
                    tasks.push(tokio::spawn(invoke_loop(
                        c.clone(),
                        procedure.clone(),
                        data.clone(),
                        window,
                    )));
                }
            }
            let usage = sample_usage(window, pid).await;
            let mut total = LoopResult::default();
            for t in tasks {
                let r = t
                    .await
                    .map_err(|e| BenchError::Timeout(format!("invoke task: {e}")))??;
                total.latency.merge(&r.latency);
                total.completed += r.completed;
                total.errors += r.errors;
            }
            for c in clients {
                c.close().await;
            }
            Ok::<_, BenchError>((total, usage, window))
        };
        let (total, (a, b), window) = on_runtime(args.client_runtime, pipelined).await?;
        report.metric(
            "pipelined_invokes_per_s",
            total.completed as f64 / window.secs(),
            "invokes/s",
        );
        report.latency("pipelined", &total.latency);
        report.metric("pipelined_errors", total.errors as f64, "errors");
        cpu_metrics(&mut report, "pipelined", total.completed, a, b);
    }
    Ok(report)
}
