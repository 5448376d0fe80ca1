//! Invoke, transmit and answer server requests.
//!
//! ```text
//! cargo run -p socketcluster-client --example rpc -- ws://127.0.0.1:8000/socketcluster/
//! ```
//! (`node interop/server.js '{"port":8000}'` is a suitable server: it has `echo`,
//! `error` and `serverInvoke` procedures.)

use std::time::Duration;

use serde_json::{Value, json};
use socketcluster_rs_client::{Client, InvokeErrorKind};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:8000/socketcluster/".to_owned());

    let client = Client::builder(url)
        .ack_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    tracing::info!(id = ?client.id(), "connected");

    // Typed invoke.
    let echoed: Value = client.invoke("echo", &json!({"hello": "wörld 🎉"})).await?;
    tracing::info!(%echoed, "echo answered");

    // Remote errors keep the peer's name, message and extra fields.
    match client.invoke::<Value, _>("error", &Value::Null).await {
        Err(e) if e.kind() == InvokeErrorKind::Remote => {
            tracing::info!(name = e.name(), error = %e, "remote error")
        }
        other => tracing::info!(?other, "unexpected"),
    }

    // Per-call timeout.
    let err = client
        .invoke_with_timeout::<Value, _>("neverAnswer", &1, Some(Duration::from_millis(300)))
        .await
        .unwrap_err();
    tracing::info!(%err, "as expected");

    // Answer the server's invokes of `clientProc`.
    let mut requests = client.procedure("clientProc");
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            let _ = req.respond("client says hi");
        }
    });
    let answer: Value = client
        .invoke(
            "serverInvoke",
            &json!({"procedure": "clientProc", "data": {"x": 1}}),
        )
        .await?;
    tracing::info!(%answer, "the server got our answer");

    // Fire and forget.
    client.transmit("someEvent", &json!({"a": 1}))?;

    client.close().await;
    Ok(())
}
