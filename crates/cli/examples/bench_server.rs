//! The benchmark server (Rust side of the pair; `interop/bench_server.js` is the JS
//! side with the same application logic).
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/bench_server --port 8000 --auth-key KEY
//! ```
//!
//! * procedure `echo`: answers with the request data (never parsed: raw JSON);
//! * procedure `login`: `set_auth_token({"username": <data.username>})`, then an empty
//!   acknowledgement;
//! * tokens sent in `#handshake` are verified with the same key (HS256);
//! * clients may publish; ping every 8 s, ping timeout 30 s (the JS defaults);
//! * no per-socket channel limit (the JS server has none).
//!
//! Prints `listening addr=HOST:PORT` on stderr once it accepts connections; stops on
//! SIGINT / SIGTERM.
#![allow(clippy::print_stderr)]

use std::time::Duration;

use clap::Parser;
use socketcluster_rs_server::auth::{AuthConfig, SignOptions};
use socketcluster_rs_server::{
    ErrorObject, HistoryConfig, HistoryRule, Limits, Request, Server, ServerConfig,
};

/// Flags.
#[derive(Debug, Parser)]
struct Args {
    /// Listen port (0: any free port).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// HMAC key (HS256) for signing and verifying tokens.
    #[arg(long)]
    auth_key: String,
    /// Worker threads of the runtime (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Busy polling window in µs after each inbound message (`ServerConfig::busy_poll`;
    /// 0: off, the default and the setting compared with the JS server).
    #[arg(long, default_value_t = 0)]
    busy_poll_us: u64,
    /// Channel pattern with history (repeatable; `ServerConfig::history`). Default: none.
    #[arg(long)]
    history: Vec<String>,
    /// Publications kept per channel with history (also the recovery limit).
    #[arg(long, default_value_t = 100)]
    history_size: usize,
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = ServerConfig::default()
        .with_host(args.host)
        .with_port(args.port)
        .with_auth(AuthConfig::with_secret(args.auth_key))
        .with_allow_client_publish(true)
        .with_ping_interval(Duration::from_millis(8_000))
        .with_ping_timeout(Duration::from_millis(30_000))
        .with_limits(Limits::default().socket_channel_limit(None))
        .with_busy_poll((args.busy_poll_us > 0).then(|| Duration::from_micros(args.busy_poll_us)))
        .with_history(args.history.iter().fold(
            HistoryConfig::default().with_max_recovery(args.history_size),
            |h, p| h.with_rule(HistoryRule::new(p.clone()).with_size(args.history_size)),
        ));
    let server = Server::new(config)?;
    server.procedure("echo", |mut req: Request| async move {
        let data = req.take_raw_data();
        req.respond_raw(data);
    });
    server.procedure("login", |req: Request| async move {
        let username = req
            .data::<serde_json::Value>()
            .ok()
            .and_then(|d| d.get("username").cloned())
            .unwrap_or(serde_json::Value::Null);
        let claims = serde_json::json!({ "username": username });
        match req
            .socket()
            .set_auth_token(&claims, SignOptions::default())
            .await
        {
            Ok(_) => req.end(),
            Err(e) => req.error(ErrorObject::new("LoginError", e.to_string())),
        }
    });
    let addr = server.listen().await?;
    eprintln!("listening addr={addr}");
    shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let result = match rt.build() {
        Ok(rt) => rt.block_on(serve(args)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_server: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
