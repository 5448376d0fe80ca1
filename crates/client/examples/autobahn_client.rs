//! Echo client for Autobahn|Testsuite's `fuzzingserver` (see `scripts/autobahn.sh
//! --client`). The client's WebSocket layer is tokio-tungstenite: this example opens
//! each case with the configuration the client uses (`connector::ws_config`: 8 KiB
//! read buffer, 8 KiB write buffer, tungstenite's default 64 MiB message / 16 MiB frame
//! limits) and echoes every text and binary message, per Autobahn's case protocol
//! (`getCaseCount`, `runCase?case=N&agent=A`, `updateReports?agent=A`).
//!
//! `cargo run -p socketcluster-rs-client --example autobahn_client -- [ws://127.0.0.1:9001]`

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const AGENT: &str = "socketcluster-rs-client";

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(usize::MAX)
}

async fn connect(
    url: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config()), true).await?;
    Ok(ws)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:9001".to_owned());
    let mut ws = connect(&format!("{base}/getCaseCount")).await?;
    let count: u32 = match ws.next().await {
        Some(Ok(Message::Text(t))) => t.parse()?,
        other => return Err(format!("unexpected case count: {other:?}").into()),
    };
    let _ = ws.close(None).await;
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={AGENT}");
        let Ok(mut ws) = connect(&url).await else {
            continue;
        };
        while let Some(msg) = ws.next().await {
            let echoed = match msg {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => ws.send(m).await,
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if echoed.is_err() {
                break;
            }
        }
    }
    let mut ws = connect(&format!("{base}/updateReports?agent={AGENT}")).await?;
    let _ = ws.close(None).await;
    while ws.next().await.is_some() {}
    Ok(())
}
