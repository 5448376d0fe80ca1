//! Several `socketcluster serve` instances sharing channels through Redis or NATS
//! (`--broker`), with real JS clients and our clients spread across them.
//!
//! The tests start their own `redis-server` / `nats-server` on free ports (Debian
//! packages `redis-server` and `nats-server`) and fail, never skip, when those are missing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use sc_test_support::backplane::{BackplaneServer, NatsServer, RedisServer};
use sc_test_support::{JsClient, free_port};
use serde_json::{Value, json};
use socketcluster_rs_client::Client;
use tokio::net::{TcpListener, TcpStream};

mod common;

use common::Serve;

const API_KEY: &str = "k";

/// `socketcluster serve` on `port` (0: a free one) with `broker` and the HTTP API.
async fn serve(broker: &str, port: u16) -> Serve {
    Serve::start(&[
        "--port",
        &port.to_string(),
        "--broker",
        broker,
        "--http-api-key",
        API_KEY,
    ])
    .await
}

async fn http_post(port: u16, path: &str, body: &Value) -> (u16, String) {
    common::http(port, "POST", path, Some(API_KEY), Some(&body.to_string())).await
}

async fn rust_client(url: String) -> Client {
    common::quick_reconnect(url, Duration::from_millis(100))
        .connect()
        .await
        .expect("connects")
}

/// Collect `n` publications of a Rust subscription as (publisher, seq).
async fn collect(mut sub: socketcluster_rs_client::Subscription, n: usize) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("publication within 30 s")
            .expect("subscription open");
        let v = m.value();
        got.push((
            v["from"].as_str().unwrap().to_owned(),
            v["seq"].as_u64().unwrap(),
        ));
    }
    got
}

/// Every publication exactly once, and each publisher's in publish order.
fn check_exactly_once_in_order(got: &[(String, u64)], publishers: &[&str], per: u64, who: &str) {
    assert_eq!(
        got.len() as u64,
        per * publishers.len() as u64,
        "{who}: {got:?}"
    );
    let mut by: HashMap<&str, Vec<u64>> = HashMap::new();
    for (p, s) in got {
        by.entry(p.as_str()).or_default().push(*s);
    }
    for p in publishers {
        assert_eq!(
            by.get(p).cloned().unwrap_or_default(),
            (1..=per).collect::<Vec<_>>(),
            "{who}: publisher {p}"
        );
    }
}

async fn three_instances_share_channels(backplane: &impl BackplaneServer) {
    let url = backplane.url();
    let a = serve(&url, 0).await;
    let b = serve(&url, 0).await;
    let c = serve(&url, 0).await;
    const PER: u64 = 25;
    // JS subscribers on A and B, Rust subscribers on B and C.
    let js_steps = |n: u64| {
        json!([
            {"op": "subscribe", "channel": "room", "wait": true},
            {"op": "js", "code": "log({event: 'ready'})"},
            {"op": "waitPublish", "channel": "room", "count": n, "timeoutMs": 30000}
        ])
    };
    let js_a = JsClient::spawn(json!({"url": a.url(), "steps": js_steps(2 * PER)})).await;
    let js_b = JsClient::spawn(json!({"url": b.url(), "steps": js_steps(2 * PER)})).await;
    let rb = rust_client(b.url()).await;
    let rc = rust_client(c.url()).await;
    let sub_b = rb.subscribe("room").await.unwrap();
    let sub_c = rc.subscribe("room").await.unwrap();
    sub_b.subscribed().await.unwrap();
    sub_c.subscribed().await.unwrap();
    for js in [&js_a, &js_b] {
        js.wait_event(
            |v| v["event"] == "log" && v["data"]["event"] == "ready",
            Duration::from_secs(20),
        )
        .await;
    }
    // Two publishers: a Rust client on A and the HTTP API of C, concurrently.
    let pa = rust_client(a.url()).await;
    let p1 = tokio::spawn(async move {
        for seq in 1..=PER {
            pa.publish("room", &json!({"from": "client-on-a", "seq": seq}))
                .await
                .expect("publish");
        }
    });
    let c_port = c.port;
    let p2 = tokio::spawn(async move {
        for seq in 1..=PER {
            let (status, body) = http_post(
                c_port,
                "/api/publish",
                &json!({"channel": "room", "data": {"from": "http-on-c", "seq": seq}}),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
    });
    let (g_b, g_c) = tokio::join!(
        collect(sub_b, 2 * PER as usize),
        collect(sub_c, 2 * PER as usize)
    );
    p1.await.unwrap();
    p2.await.unwrap();
    let pubs = ["client-on-a", "http-on-c"];
    check_exactly_once_in_order(&g_b, &pubs, PER, "rust on B");
    check_exactly_once_in_order(&g_c, &pubs, PER, "rust on C");
    for (name, js) in [("js on A", js_a), ("js on B", js_b)] {
        let run = js.wait_exit().await;
        run.assert_all_ok();
        let got: Vec<(String, u64)> = run
            .publications("room")
            .iter()
            .map(|v| {
                (
                    v["from"].as_str().unwrap().to_owned(),
                    v["seq"].as_u64().unwrap(),
                )
            })
            .collect();
        check_exactly_once_in_order(&got, &pubs, PER, name);
    }
    // nothing extra arrives afterwards (exactly once)
    let extra = tokio::time::timeout(Duration::from_millis(300), async {
        let mut s = rc.subscribe("room").await.unwrap();
        s.next().await
    })
    .await;
    assert!(extra.is_err(), "unexpected extra publication: {extra:?}");
    drop((a, b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_channels_over_redis() {
    let redis = RedisServer::start();
    three_instances_share_channels(&redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_channels_over_nats() {
    let nats = NatsServer::start();
    three_instances_share_channels(&nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_channel_names_route_exactly_over_nats() {
    let nats = NatsServer::start();
    let a = serve(&nats.url(), 0).await;
    let b = serve(&nats.url(), 0).await;
    let names = [
        "a.b",
        "a.*",
        "a.>",
        "a",
        "with space",
        "tab\tname",
        "ünïcødé/ch",
        ">",
        "*",
        "",
    ];
    let sub_client = rust_client(a.url()).await;
    let mut subs = Vec::new();
    for n in names.iter().filter(|n| !n.is_empty()) {
        let s = sub_client.subscribe(n).await.unwrap();
        s.subscribed().await.unwrap();
        subs.push((n.to_string(), s));
    }
    for n in names.iter().filter(|n| !n.is_empty()) {
        let (status, body) =
            http_post(b.port, "/api/publish", &json!({"channel": n, "data": n})).await;
        assert_eq!(status, 200, "{body}");
    }
    for (name, mut s) in subs {
        let m = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("delivered")
            .unwrap();
        assert_eq!(
            m.value(),
            json!(name),
            "channel {name:?} got another channel's message"
        );
        let extra = tokio::time::timeout(Duration::from_millis(100), s.next()).await;
        assert!(
            extra.is_err(),
            "channel {name:?} got more than its own message: {extra:?}"
        );
    }
}

/// A tiny TCP load balancer: each new connection goes to the first backend that accepts.
async fn load_balancer(backends: Vec<u16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backends = Arc::new(backends);
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let backends = backends.clone();
            tokio::spawn(async move {
                for b in backends.iter() {
                    if let Ok(mut out) = TcpStream::connect(("127.0.0.1", *b)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_instance_move_to_another_and_resubscribe() {
    let redis = RedisServer::start();
    let (pa, pb) = (free_port(), free_port());
    let mut a = serve(&redis.url(), pa).await;
    let b = serve(&redis.url(), pb).await;
    let c = serve(&redis.url(), 0).await;
    let lb = load_balancer(vec![pa, pb]).await;
    let lb_url = format!("ws://127.0.0.1:{lb}/socketcluster/");
    // both clients land on A through the balancer
    let ours = rust_client(lb_url.clone()).await;
    let mut sub = ours.subscribe("news").await.unwrap();
    sub.subscribed().await.unwrap();
    let js = JsClient::spawn(json!({
        "url": lb_url,
        "options": {"autoReconnectOptions": {"initialDelay": 100, "randomness": 100}},
        "steps": [
            {"op": "subscribe", "channel": "news", "wait": true},
            {"op": "js", "code": "log({event: 'ready'})"},
            {"op": "waitEvent", "name": "disconnect"},
            {"op": "waitEvent", "name": "subscribe", "count": 2, "timeoutMs": 30000},
            {"op": "waitPublish", "channel": "news", "count": 1, "timeoutMs": 30000}
        ]
    }))
    .await;
    js.wait_event(
        |v| v["event"] == "log" && v["data"]["event"] == "ready",
        Duration::from_secs(20),
    )
    .await;
    // A unrelated subscriber on C is unaffected by A's death.
    let other = rust_client(c.url()).await;
    let mut other_sub = other.subscribe("news").await.unwrap();
    other_sub.subscribed().await.unwrap();
    let other_disconnects = Arc::new(AtomicUsize::new(0));
    {
        let n = other_disconnects.clone();
        let mut ev = other.events();
        tokio::spawn(async move {
            while let Some(e) = ev.next().await {
                if matches!(e, socketcluster_rs_client::Event::Disconnect { .. }) {
                    n.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    a.child.kill().await.unwrap(); // SIGKILL: no graceful close
    // Both reconnect through the balancer to B and resubscribe; publish from C until
    // our client has the message.
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let _ = http_post(
                c.port,
                "/api/publish",
                &json!({"channel": "news", "data": "after failover"}),
            )
            .await;
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await
            {
                return m;
            }
        }
    })
    .await
    .expect("our client resubscribed on another instance");
    assert_eq!(got.value(), json!("after failover"));
    let run = js.wait_exit().await;
    run.assert_all_ok();
    assert_eq!(run.publications("news")[0], json!("after failover"));
    assert!(
        tokio::time::timeout(Duration::from_secs(5), other_sub.next())
            .await
            .is_ok()
    );
    assert_eq!(
        other_disconnects.load(Ordering::SeqCst),
        0,
        "C's clients are unaffected"
    );
    drop((b, c));
}

async fn http_get(port: u16, path: &str) -> (u16, Value) {
    let (status, body) = common::http(port, "GET", path, None, None).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn wait_backplane(port: u16, state: &str) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (_, v) = http_get(port, "/health").await;
            if v["backplane"]["state"] == state {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("backplane never became {state}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backplane_restart_is_reported_and_recovered_without_client_disconnects() {
    let redis_port = free_port();
    let redis = RedisServer::start_on(redis_port);
    let a = serve(&redis.url(), 0).await;
    let b = serve(&redis.url(), 0).await;
    let ca = rust_client(a.url()).await;
    let cb = rust_client(b.url()).await;
    let mut sa = ca.subscribe("live").await.unwrap();
    let mut sb = cb.subscribe("live").await.unwrap();
    sa.subscribed().await.unwrap();
    sb.subscribed().await.unwrap();
    let disconnects = Arc::new(AtomicUsize::new(0));
    for c in [&ca, &cb] {
        let n = disconnects.clone();
        let mut ev = c.events();
        tokio::spawn(async move {
            while let Some(e) = ev.next().await {
                if matches!(e, socketcluster_rs_client::Event::Disconnect { .. }) {
                    n.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    let (status, v) = http_get(a.port, "/health").await;
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")), "{v}");

    drop(redis); // the backplane goes away
    wait_backplane(a.port, "disconnected").await;
    let (status, v) = http_get(a.port, "/health").await;
    assert_eq!(status, 200, "still serving local traffic");
    assert_eq!(v["status"], "degraded");
    // a publication during the outage is reported as failed, never a silent success ...
    let (status, body) = http_post(
        a.port,
        "/api/publish",
        &json!({"channel": "live", "data": "outage"}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let err = ca
        .publish("live", &"outage-client")
        .await
        .expect_err("client publish fails");
    assert_eq!(err.name(), "BrokerError", "{err}");

    let _redis = RedisServer::start_on(redis_port); // ... and it comes back
    wait_backplane(a.port, "connected").await;
    wait_backplane(b.port, "connected").await;
    let (status, body) = http_post(
        b.port,
        "/api/publish",
        &json!({"channel": "live", "data": "recovered"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for s in [&mut sa, &mut sb] {
        // local delivery of the failed publications may have happened; skip to ours
        let got = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                let m = s.next().await.expect("open");
                if m.value() == json!("recovered") {
                    return;
                }
            }
        })
        .await;
        assert!(got.is_ok(), "publication after recovery arrives everywhere");
    }
    assert_eq!(
        disconnects.load(Ordering::SeqCst),
        0,
        "clients saw no disconnect"
    );
}
