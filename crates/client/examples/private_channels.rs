//! Private channels that survive expired tokens and server restarts: the token provider
//! is awaited, and `#authenticate` completes, before any channel is resubscribed.
//!
//! ```text
//! node interop/server.js '{"port":8000,"authKey":"secret","privatePattern":"private/*",
//!                          "publisher":{"channel":"private/feed","intervalMs":1000}}'
//! cargo run -p socketcluster-client --example private_channels -- ws://127.0.0.1:8000/socketcluster/
//! ```
//!
//! In a real application the provider would call your login service (or run a
//! command, like `socketcluster subscribe --token-command`); here it asks the server's
//! `login` procedure through a second, short-lived connection.

use std::time::Duration;

use futures_util::StreamExt;
use socketcluster_rs_client::{Client, Event, FileTokenStore, SubscribeOptions, TokenRequest};

async fn fetch_token(
    url: String,
    request: TokenRequest,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    tracing::info!(reason = ?request.reason, "fetching a fresh token");
    let login = Client::builder(url).auto_reconnect(false).connect().await?;
    let mut events = login.events();
    let _: String = login
        .invoke(
            "login",
            &serde_json::json!({"username": "alice", "expiresIn": 60}),
        )
        .await?;
    let token = loop {
        match events.next().await {
            Some(Event::Authenticate {
                signed_token: Some(t),
                ..
            }) => break t,
            Some(_) => continue,
            None => return Err("login connection closed".into()),
        }
    };
    login.close().await;
    Ok(token)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:8000/socketcluster/".to_owned());

    let provider_url = url.clone();
    let client = Client::builder(url)
        // The token survives process restarts (written atomically, mode 0600).
        .token_store(FileTokenStore::new(
            std::env::temp_dir().join("sc-example-token"),
        ))
        // Called when the handshake says "unauthenticated" (no token, expired, unknown
        // key), when the server removes the token, and shortly before `exp`.
        .token_provider(move |req: TokenRequest| fetch_token(provider_url.clone(), req))
        .reauth_margin(Duration::from_secs(10))
        .reconnect_delays(
            Duration::from_secs(1),
            Duration::from_secs(1),
            1.5,
            Duration::from_secs(10),
        )
        .connect()
        .await?;

    let mut events = client.events();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            match &e {
                Event::SubscribeFail { channel, error, .. } => {
                    tracing::warn!(%channel, %error, "subscription failed for good")
                }
                other => tracing::info!(event = other.name(), channel = ?other.channel(), "event"),
            }
        }
    });

    let mut feed = client
        .subscribe_with("private/feed", SubscribeOptions::new().priority(10))
        .await?;
    while let Some(msg) = feed.next().await {
        tracing::info!(data = ?msg.data_str(), "private/feed");
    }
    tracing::info!(reason = ?feed.end_reason(), "subscription ended");
    Ok(())
}
