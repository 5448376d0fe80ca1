//! Echo server on the server crate's own WebSocket layer, for Autobahn|Testsuite's
//! `fuzzingclient` (see `scripts/autobahn.sh`).
//!
//! `cargo run -p socketcluster-rs-server --features ws-internals --example autobahn_echo -- [PORT]`
//! (default 9001; binds 127.0.0.1). Messages up to 64 MiB (Autobahn's 9.x cases send
//! up to 16 MiB).

use socketcluster_rs_server::ws_internals::echo;

const MAX_MESSAGE: usize = 64 << 20;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(9001);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!(addr = %listener.local_addr()?, "autobahn echo server listening");
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            if let Err(e) = echo(tcp, MAX_MESSAGE).await {
                tracing::debug!(error = %e, "connection failed");
            }
        });
    }
}
