//! The real JS clients (socketcluster-client 20.0.2, and 14.3.2 with protocol version 1)
//! against this server with channel history on (docs/PROTOCOL.md 14.16): the extra
//! `offset`/`epoch` fields of `#publish` and the position in the `#subscribe` reply
//! change nothing they show. The same scenario runs on a channel with history
//! (`chat/1`) and one without (`news/1`); every event and every publication must be the
//! same on both.

use std::time::Duration;

use sc_test_support::JsClient;
use serde_json::{Value, json};
use socketcluster_rs_server::auth::AuthConfig;
use socketcluster_rs_server::{HistoryConfig, HistoryRule, ProtocolVersion, Server, ServerConfig};

const WAIT: Duration = Duration::from_secs(15);

async fn server(version: ProtocolVersion) -> Server {
    let config = ServerConfig::default()
        .with_host("127.0.0.1")
        .with_port(0)
        .with_protocol_version(version)
        .with_auth(AuthConfig::with_secret("testkey"))
        .with_history(HistoryConfig::default().with_rule(HistoryRule::new("chat/*")));
    Server::bind(config).await.expect("bind")
}

async fn publish_both(server: &Server, from: u64, to: u64) {
    for n in from..=to {
        for ch in ["chat/1", "news/1"] {
            let data =
                serde_json::value::to_raw_value(&json!({"n": n, "text": "hé \"q\""})).unwrap();
            server.exchange().publish_raw(ch, Some(data)).await.unwrap();
        }
    }
}

async fn step(client: &JsClient, step: Value) -> Value {
    let r = client.run_step(step.clone(), WAIT).await;
    assert_eq!(r["ok"], true, "{step} -> {r}");
    r["result"].clone()
}

/// What the client showed about `channel`, with the channel name replaced.
fn seen(lines: &[Value], channel: &str) -> (Vec<String>, Vec<Value>) {
    let mut events = Vec::new();
    let mut data = Vec::new();
    for l in lines {
        let mentions = l["data"]["channel"] == channel || l["channel"] == channel;
        if l["event"] == "client" && mentions {
            let mut d = l["data"].clone();
            d["channel"] = json!("X");
            if d["subscriptionOptions"]["channel"] == channel {
                // v14 repeats the name in the options.
                d["subscriptionOptions"]["channel"] = json!("X");
            }
            events.push(format!("{} {d}", l["name"].as_str().unwrap_or("")));
        }
        if l["event"] == "publish" && l["channel"] == channel {
            data.push(l["data"].clone());
        }
    }
    (events, data)
}

async fn same_on_both_channels(js_version: &str, protocol: ProtocolVersion) {
    let server = server(protocol).await;
    let client = JsClient::spawn(json!({
        "url": format!("ws://{}/socketcluster/", server.local_addr().unwrap()),
        "version": js_version,
        "options": {"autoReconnectOptions": {"initialDelay": 100, "randomness": 100}},
        "interactive": true,
        "steps": [{"op": "waitEvent", "name": "connect"}],
        "timeoutMs": 60000,
    }))
    .await;
    for ch in ["chat/1", "news/1"] {
        step(
            &client,
            json!({"op": "subscribe", "channel": ch, "wait": true}),
        )
        .await;
    }
    publish_both(&server, 1, 3).await;
    for ch in ["chat/1", "news/1"] {
        step(
            &client,
            json!({"op": "waitPublish", "channel": ch, "count": 3}),
        )
        .await;
    }
    // Reconnect: both channels are resubscribed (ours answers chat/1 with a position).
    step(&client, json!({"op": "disconnect", "code": 4000})).await;
    step(&client, json!({"op": "connect"})).await;
    step(
        &client,
        json!({"op": "waitEvent", "name": "subscribe", "count": 4}),
    )
    .await;
    publish_both(&server, 4, 5).await;
    for ch in ["chat/1", "news/1"] {
        step(
            &client,
            json!({"op": "waitPublish", "channel": ch, "count": 5}),
        )
        .await;
    }
    // Publications the client makes itself, with acknowledgement, on both.
    for ch in ["chat/1", "news/1"] {
        step(
            &client,
            json!({"op": "publish", "channel": ch, "data": {"n": 6}}),
        )
        .await;
        step(
            &client,
            json!({"op": "waitPublish", "channel": ch, "count": 6}),
        )
        .await;
    }
    let run = client.wait_exit().await;
    assert!(run.status.success(), "{}", run.dump());
    let (chat_events, chat_data) = seen(&run.lines, "chat/1");
    let (news_events, news_data) = seen(&run.lines, "news/1");
    assert_eq!(chat_data.len(), 6, "{}", run.dump());
    assert_eq!(chat_data, news_data, "the same data");
    assert_eq!(chat_events, news_events, "the same events");
    assert!(
        chat_events
            .iter()
            .filter(|e| e.starts_with("subscribe "))
            .count()
            == 2,
        "{chat_events:?}"
    );
}

#[tokio::test]
async fn js_client_v20_sees_no_difference_on_a_channel_with_history() {
    same_on_both_channels("20", ProtocolVersion::V2).await;
}

#[tokio::test]
async fn js_client_v14_sees_no_difference_on_a_channel_with_history() {
    same_on_both_channels("14", ProtocolVersion::V1).await;
}
