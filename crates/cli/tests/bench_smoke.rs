//! Smoke test of `socketcluster bench`: the `rpc` and `fanout` scenarios run for about a
//! second each against an in-process server and print JSON with the expected fields.
//! Only the shape and non-zero throughput are checked, never timings (benchmarks are
//! not tests; `bench/compare` is the benchmark).

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use socketcluster_rs_server::{Request, Server, ServerConfig};
use tokio::process::Command;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_socketcluster");

async fn echo_server() -> (Server, String) {
    let server = Server::bind(ServerConfig::default().with_host("127.0.0.1").with_port(0))
        .await
        .expect("server binds");
    server.procedure("echo", |mut req: Request| async move {
        let data = req.take_raw_data();
        req.respond_raw(data);
    });
    let addr = server.local_addr().expect("bound");
    (server, format!("ws://{addr}/socketcluster/"))
}

/// Run `socketcluster bench <args> --json` and parse its one line of output.
async fn bench(url: &str, args: &[&str]) -> Value {
    let mut cmd = Command::new(BIN);
    cmd.arg("bench")
        .args(args)
        .args(["--url", url, "--json", "--duration", "1", "--warmup", "0.2"])
        .arg("--server-pid")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("bench finished within 60 s")
        .expect("bench ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().expect("one line of output");
    serde_json::from_str(line).expect("the output is JSON")
}

fn metric(v: &Value, key: &str) -> f64 {
    v["metrics"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("metric {key} missing in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_rpc_reports_round_trips_and_pipelined_invokes_as_json() {
    let (server, url) = echo_server().await;
    let v = bench(&url, &["rpc", "--in-flight", "8", "--label", "smoke"]).await;
    assert_eq!(v["scenario"], "rpc");
    assert_eq!(v["label"], "smoke");
    assert_eq!(v["params"]["in_flight"], 8);
    assert!(metric(&v, "seq_rps") > 0.0, "{v}");
    assert!(metric(&v, "pipelined_invokes_per_s") > 0.0, "{v}");
    for key in [
        "seq_p50_ms",
        "seq_p99_ms",
        "pipelined_p50_ms",
        "pipelined_p99_ms",
        "pipelined_client_cpu_s",
        "pipelined_server_cpu_s",
    ] {
        assert!(metric(&v, key) >= 0.0, "{key} in {v}");
    }
    assert_eq!(metric(&v, "seq_errors"), 0.0);
    assert_eq!(metric(&v, "pipelined_errors"), 0.0);
    assert_eq!(v["units"]["pipelined_invokes_per_s"], "invokes/s");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_fanout_reports_deliveries_and_latency_as_json() {
    let (server, url) = echo_server().await;
    let v = bench(&url, &["fanout", "--subscribers", "5", "--rate", "50"]).await;
    assert_eq!(v["scenario"], "fanout");
    assert_eq!(v["params"]["subscribers"], 5);
    assert!(metric(&v, "sat_delivered_per_s") > 0.0, "{v}");
    assert!(metric(&v, "light_delivered_per_s") > 0.0, "{v}");
    assert!(metric(&v, "sat_latency_samples") > 0.0, "{v}");
    assert!(
        metric(&v, "light_p99_ms") >= metric(&v, "light_p50_ms"),
        "{v}"
    );
    assert_eq!(metric(&v, "sat_lost"), 0.0, "{v}");
    assert_eq!(metric(&v, "light_lost"), 0.0, "{v}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_recovery_reports_every_socket_recovered_and_the_retained_memory() {
    use socketcluster_rs_server::{HistoryConfig, HistoryRule};
    let config = ServerConfig::default()
        .with_host("127.0.0.1")
        .with_port(0)
        .with_history(
            HistoryConfig::default().with_rule(HistoryRule::new("bench/*").with_size(100)),
        );
    let server = Server::bind(config).await.expect("server binds");
    let url = format!("ws://{}/socketcluster/", server.local_addr().unwrap());
    let v = bench(
        &url,
        &[
            "recovery",
            "--sockets",
            "20",
            "--missed",
            "10",
            "--memory-channels",
            "10",
            "--memory-per-channel",
            "10",
        ],
    )
    .await;
    assert_eq!(v["scenario"], "recovery");
    assert_eq!(metric(&v, "recovered_sockets"), 20.0, "{v}");
    assert_eq!(metric(&v, "not_recovered_sockets"), 0.0, "{v}");
    assert_eq!(metric(&v, "replayed_publications"), 200.0, "{v}");
    assert!(metric(&v, "server_cpu_s") >= 0.0, "{v}");
    assert!(
        metric(&v, "server_bytes_per_retained_publication") >= 0.0,
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_soak_samples_server_resources_and_gives_a_verdict() {
    // A real `serve` process: its /proc entry and its /metrics (task gauge) are sampled.
    let serve = common::Serve::start(&["--port", "0"]).await;
    let pid = serve.child.id().expect("running").to_string();
    let url = serve.url();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "bench",
        "soak",
        "--url",
        &url,
        "--json",
        "--server-pid",
        &pid,
    ])
    .args(["--duration", "3", "--warmup", "0.5", "--sample-every", "1"])
    .args(["--rate", "20", "--channels", "3"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("bench soak finished within 60 s")
        .expect("bench ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench soak failed: {stderr}\n{stdout}"
    );
    // The sample table goes to stderr with --json.
    assert!(stderr.contains("rss_MiB"), "{stderr}");
    let v: Value = serde_json::from_str(stdout.lines().last().expect("output")).expect("JSON");
    assert_eq!(v["scenario"], "soak");
    let samples = v["params"]["samples"].as_array().expect("samples");
    assert!(samples.len() >= 3, "{v}");
    assert!(metric(&v, "cycles") >= 10.0, "{v}");
    assert_eq!(metric(&v, "cycles_failed"), 0.0, "{v}");
    assert!(metric(&v, "rss_first") > 1.0, "{v}");
    assert!(metric(&v, "fds_max") >= 3.0, "{v}");
    assert!(metric(&v, "threads_max") >= 1.0, "{v}");
    // The task gauge of serve's /metrics was read.
    assert!(metric(&v, "tasks_max") >= 1.0, "{v}");
    let notes = v["notes"].to_string();
    assert!(notes.contains("verdict:"), "{v}");
}
