//! Abuse limits of an internet-facing server (docs/RELIABILITY.md, Limits): connections
//! and upgrades per remote IP (HTTP 429), inbound messages and bytes per second per
//! socket (throttled, then closed with 1008). Each with a raw client and a control
//! client that is not affected.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use socketcluster_rs_server::{Limits, RateLimit};

fn per_ip(limits: Limits) -> Limits {
    // The test clients connect from 127.0.0.1, exempt by default.
    limits.per_ip_limits_on_loopback(true)
}

#[tokio::test]
async fn connections_per_ip_are_limited_with_429() {
    let limits = per_ip(
        Limits::default()
            .max_connections_per_ip(Some(2))
            .handshake_rate_per_ip(None),
    );
    let server = start(config().with_limits(limits)).await;
    let a = open(&server).await;
    let _b = open(&server).await;
    let refused = Raw::connect_with_origin(&url(&server), "http://x.org").await;
    assert_eq!(
        refused.err(),
        Some((429, "Too many connections from this address".to_owned()))
    );
    assert_eq!(server.stats().http_rejections, 1);
    // a connection that ends frees its place
    drop(a);
    eventually(|| server.clients_count() == 1).await;
    let mut c = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = Raw::connect_with_origin(&url(&server), "http://x.org").await {
            c = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = c.expect("a freed place is given to a new connection");
    assert_eq!(c.handshake(None).await["rid"], 1);
}

#[tokio::test]
async fn handshakes_per_second_per_ip_are_limited_with_429() {
    let limits = per_ip(Limits::default().handshake_rate_per_ip(Some(RateLimit {
        per_second: 1,
        burst: 3,
    })));
    let server = start(config().with_limits(limits)).await;
    // Connect as fast as possible until refused: the burst (3) is admitted, plus at most
    // one more per second that passed meanwhile (however slow this machine is).
    let started = std::time::Instant::now();
    let mut admitted = Vec::new();
    let refusal = loop {
        match Raw::connect_with_origin(&url(&server), "http://x.org").await {
            Ok(c) => admitted.push(c),
            Err(e) => break e,
        }
        assert!(admitted.len() < 100, "never refused");
    };
    let elapsed = started.elapsed().as_secs() as usize;
    assert_eq!(
        refusal,
        (429, "Too many handshakes from this address".to_owned())
    );
    assert!(admitted.len() >= 3, "{} admitted", admitted.len());
    assert!(
        admitted.len() <= 3 + elapsed + 1,
        "{} admitted in {elapsed} s",
        admitted.len()
    );
    // the connections already open are not affected
    let first = &mut admitted[0];
    assert_eq!(first.handshake(None).await["rid"], 1);
    assert_eq!(first.invoke("echo", json!("fine"), 2).await["data"], "fine");
}

/// By default loopback clients are exempt from the per-IP limits (local benchmarks, a
/// reverse proxy on the same host).
#[tokio::test]
async fn loopback_is_exempt_from_per_ip_limits_by_default() {
    let limits = Limits::default()
        .max_connections_per_ip(Some(1))
        .handshake_rate_per_ip(Some(RateLimit {
            per_second: 1,
            burst: 1,
        }));
    let server = start(config().with_limits(limits)).await;
    let mut all = Vec::new();
    for _ in 0..5 {
        all.push(open(&server).await);
    }
    eventually(|| server.clients_count() == 5).await;
}

/// A socket that keeps sending over its message rate is throttled, then closed with
/// 1008 once it has been throttled for `throttle_close_after`.
#[tokio::test]
async fn a_socket_over_its_message_rate_is_throttled_then_closed_with_1008() {
    let limits = Limits::default()
        .inbound_rate(Some(RateLimit {
            per_second: 20,
            burst: 5,
        }))
        .throttle_close_after(Duration::from_millis(300));
    let server = start(config().with_limits(limits)).await;
    let mut control = open(&server).await;
    let mut flood = open(&server).await;
    // 100 messages at 20/s would take 5 s: the socket is closed long before.
    for i in 0..100u64 {
        flood
            .send(&json!({"event":"noreply","data":i,"cid":10+i}).to_string())
            .await;
    }
    assert_eq!(
        flood.closed().await,
        (1008, "Inbound rate limit exceeded".to_owned())
    );
    assert_eq!(
        control.invoke("echo", json!("fine"), 2).await["data"],
        "fine"
    );
}

#[tokio::test]
async fn a_socket_over_its_byte_rate_is_throttled_then_closed_with_1008() {
    let limits = Limits::default()
        .inbound_byte_rate(Some(RateLimit {
            per_second: 2000,
            burst: 2000,
        }))
        .throttle_close_after(Duration::from_millis(300));
    let server = start(config().with_limits(limits)).await;
    let mut control = open(&server).await;
    let mut flood = open(&server).await;
    let big = "b".repeat(1000);
    for i in 0..40u64 {
        flood
            .send(&json!({"event":"noreply","data":big,"cid":10+i}).to_string())
            .await;
    }
    assert_eq!(
        flood.closed().await,
        (1008, "Inbound rate limit exceeded".to_owned())
    );
    assert_eq!(
        control.invoke("echo", json!("fine"), 2).await["data"],
        "fine"
    );
}

/// A client that bursts and then pauses is throttled but never closed.
#[tokio::test]
async fn bursts_within_the_rate_are_throttled_but_not_closed() {
    let limits = Limits::default()
        .inbound_rate(Some(RateLimit {
            per_second: 100,
            burst: 10,
        }))
        .throttle_close_after(Duration::from_millis(500));
    let server = start(config().with_limits(limits)).await;
    let mut c = open(&server).await;
    for round in 0..3u64 {
        // 15 messages against a burst of 10: the last ones wait for the bucket
        for i in 0..15u64 {
            let cid = 10 + round * 100 + i;
            c.send(&json!({"event":"echo","data":i,"cid":cid}).to_string())
                .await;
        }
        for i in 0..15u64 {
            assert_eq!(c.json().await["rid"], 10 + round * 100 + i);
        }
        // a pause long enough to refill the bucket
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(server.clients_count(), 1);
}
