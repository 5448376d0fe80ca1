//! `bench idle`: N connected, authenticated sockets doing nothing. Server (and our
//! client's) memory per socket, and how fast they connected.

use std::time::Duration;

use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use tokio::time::Instant;

use super::process::{Usage, own_rss_bytes, rss_bytes};
use super::stats::Report;
use super::{BenchError, Ctx};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum AuthMode {
    /// Not authenticated.
    None,
    /// Invoke `login` with `{"username": ...}` (the bench servers answer with
    /// `#setAuthToken`).
    Login,
    /// Send a token signed with `--auth-key` in the handshake.
    Token,
}

/// Flags of `bench idle`.
#[derive(Debug, Args)]
pub(crate) struct IdleArgs {
    /// Sockets to open (each needs a file descriptor here and one in the server).
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// How the sockets authenticate (default: `token` with `--auth-key`, else `login`).
    #[arg(long, value_enum)]
    auth: Option<AuthMode>,
    /// Pause before each memory reading, in seconds.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Keep the sockets open this many seconds after measuring.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
}

/// The soft limit on open files of this process (`/proc/self/limits`).
pub(crate) fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Fail early, with a useful message, when `sockets` cannot be opened.
pub(crate) fn check_fd_limit(sockets: usize) -> Result<(), BenchError> {
    if let Some(limit) = open_files_limit()
        && sockets as u64 + 64 > limit
    {
        return Err(BenchError::Args(format!(
            "{sockets} sockets need about {} open files but the limit is {limit} (raise `ulimit -n`, here and for the server)",
            sockets + 64
        )));
    }
    Ok(())
}

pub(crate) async fn run(ctx: &Ctx, args: IdleArgs) -> Result<Report, BenchError> {
    if args.sockets == 0 {
        return Err(BenchError::Args("--sockets must be > 0".into()));
    }
    check_fd_limit(args.sockets)?;
    let auth = args.auth.unwrap_or(if ctx.has_auth_key() {
        AuthMode::Token
    } else {
        AuthMode::Login
    });
    if auth == AuthMode::Token && !ctx.has_auth_key() {
        return Err(BenchError::Args("--auth token needs --auth-key".into()));
    }
    let settle = Duration::from_secs_f64(args.settle.max(0.0));
    let mut report = Report::new("idle");
    report.param("url", ctx.url());
    report.param("sockets", args.sockets as u64);
    report.param(
        "auth",
        match auth {
            AuthMode::None => "none",
            AuthMode::Login => "login",
            AuthMode::Token => "token",
        },
    );

    let pid = ctx.server_pid();
    let server_before = pid.map(rss_bytes).transpose()?;
    let client_before = own_rss_bytes();
    let usage_before = Usage::now(pid);
    let token = if auth == AuthMode::Token {
        ctx.signed_token("bench")?
    } else {
        None
    };
    let started = Instant::now();
    let clients = ctx
        .connect_many(args.sockets, token.as_deref(), |i, client| async move {
            if auth == AuthMode::Login {
                client
                    .invoke_raw(
                        "login",
                        Some(
                            serde_json::value::to_raw_value(
                                &serde_json::json!({ "username": format!("bench-{i}") }),
                            )
                            .map_err(|e| BenchError::Args(e.to_string()))?,
                        ),
                        None,
                    )
                    .await?;
            }
            Ok(client)
        })
        .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let usage_after = Usage::now(pid);
    // `#setAuthToken` precedes the `login` answer on the wire; give stragglers a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut authenticated = 0;
    while auth != AuthMode::None && Instant::now() < deadline {
        authenticated = clients.iter().filter(|c| c.is_authenticated()).count();
        if authenticated == clients.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.metric("connect_total_s", elapsed, "s");
    report.metric(
        "connects_per_s",
        clients.len() as f64 / elapsed,
        "sockets/s",
    );
    report.metric("authenticated", authenticated as f64, "sockets");
    if let (Some(a), Some(b)) = (usage_before.server_cpu, usage_after.server_cpu) {
        report.metric("server_connect_cpu_s", b - a, "s");
        report.metric(
            "server_connect_cpu_us_each",
            (b - a) * 1e6 / clients.len() as f64,
            "µs",
        );
    }
    tokio::time::sleep(settle).await;
    if let (Some(pid), Some(before)) = (pid, server_before) {
        let after = rss_bytes(pid)?;
        report.metric("server_rss_before_mb", before as f64 / 1048576.0, "MiB");
        report.metric("server_rss_after_mb", after as f64 / 1048576.0, "MiB");
        report.metric(
            "server_bytes_per_socket",
            (after as f64 - before as f64) / clients.len() as f64,
            "B",
        );
    } else {
        report.note("no --server-pid: server memory not measured");
    }
    report.metric(
        "client_bytes_per_socket",
        (own_rss_bytes() as f64 - client_before as f64) / clients.len() as f64,
        "B",
    );
    if args.hold > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    }
    futures_util::stream::iter(clients)
        .for_each_concurrent(256, |c| async move { c.close().await })
        .await;
    Ok(report)
}
