//! Part 2: channels (docs/PROTOCOL.md 6).

use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::{ChannelState, SubscribeOptions};

async fn ack(conn: &mut FakeConn, frame: &Value) {
    conn.send_json(json!({"rid": frame["cid"]})).await;
}

#[tokio::test(start_paused = true)]
async fn subscribe_confirms_and_delivers_publications() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b, &mut server).await;
    let mut events = client.events();
    let mut sub = client.subscribe("foo").await.unwrap();
    assert_eq!(sub.state(), ChannelState::Pending);
    let req = conn.recv_json().await;
    assert_eq!(
        req,
        json!({"event":"#subscribe","data":{"channel":"foo"},"cid":2})
    );
    ack(&mut conn, &req).await;
    sub.subscribed().await.unwrap();
    assert_eq!(client.channel_state("foo"), ChannelState::Subscribed);
    let names = event_names_until(&mut events, |e| e.name() == "subscribe").await;
    assert_eq!(
        names,
        [
            "subscribeRequest(foo)",
            "subscribeStateChange(foo)",
            "subscribe(foo)"
        ]
    );
    conn.send_json(json!({"event":"#publish","data":{"channel":"foo","data":{"n":1}}}))
        .await;
    conn.send_json(json!({"event":"#publish","data":{"channel":"other","data":2}}))
        .await;
    conn.send_json(json!({"event":"#publish","data":{"channel":"foo"}}))
        .await;
    let m = sub.recv().await.unwrap();
    assert_eq!(m.deserialize::<Value>().unwrap(), json!({"n":1}));
    let m = sub.recv().await.unwrap();
    assert!(m.data.is_none());
}

#[tokio::test(start_paused = true)]
async fn disconnect_makes_channels_pending_and_resubscribes_by_priority() {
    let (b, mut server) = builder();
    let client = b.build().unwrap();
    let _low = client
        .subscribe_with("low", SubscribeOptions::new().priority(1))
        .await
        .unwrap();
    let _plain = client.subscribe("plain").await.unwrap();
    let _high = client
        .subscribe_with(
            "high",
            SubscribeOptions::new()
                .priority(5)
                .data(&json!({"hello":1}))
                .unwrap(),
        )
        .await
        .unwrap();
    let (mut conn, _) = server.accept_handshake().await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let f = conn.recv_json().await;
        order.push(f["data"]["channel"].as_str().unwrap().to_owned());
        ack(&mut conn, &f).await;
    }
    assert_eq!(order, ["high", "low", "plain"]);
    while client.subscriptions(false).len() < 3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut events = client.events();
    conn.close(4100, "").await;
    let names = event_names_until(&mut events, |e| e.name() == "disconnect").await;
    assert_eq!(
        names,
        [
            "subscribeStateChange(low)",
            "unsubscribe(low)",
            "subscribeStateChange(plain)",
            "unsubscribe(plain)",
            "subscribeStateChange(high)",
            "unsubscribe(high)",
            "disconnect(4100)"
        ]
    );
    assert_eq!(client.channel_state("high"), ChannelState::Pending);
    let (mut conn, _) = server.accept_handshake().await;
    let f = conn.recv_json().await;
    assert_eq!(
        f,
        json!({"event":"#subscribe","data":{"channel":"high","data":{"hello":1}},"cid":6})
    );
}

#[tokio::test(start_paused = true)]
async fn subscribe_fail_removes_the_channel_and_ends_the_stream() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b, &mut server).await;
    let mut events = client.events();
    let mut sub = client.subscribe("nope").await.unwrap();
    let req = conn.recv_json().await;
    conn.send_json(
        json!({"rid": req["cid"], "error": {"message":"No sub","name":"SubBlockedError"}}),
    )
    .await;
    let e = wait_event(&mut events, |e| e.name() == "subscribeFail").await;
    let Event::SubscribeFail { error, channel, .. } = e else {
        unreachable!()
    };
    assert_eq!(
        (channel.as_str(), error.name()),
        ("nope", "SubBlockedError")
    );
    assert!(sub.recv().await.is_none());
    let err = sub.subscribed().await.unwrap_err();
    assert!(matches!(err, crate::SubscribeError::Rejected(_)));
    assert_eq!(client.channel_state("nope"), ChannelState::Unsubscribed);
}

#[tokio::test(start_paused = true)]
async fn kick_out_ends_the_subscription_without_sending_unsubscribe() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b, &mut server).await;
    let mut sub = client.subscribe("kickme").await.unwrap();
    let req = conn.recv_json().await;
    ack(&mut conn, &req).await;
    sub.subscribed().await.unwrap();
    let mut events = client.events();
    conn.send_json(json!({"event":"#kickOut","data":{"channel":"never","message":"x"}}))
        .await;
    conn.send_json(
        json!({"event":"#kickOut","data":{"channel":"kickme","message":"You were kicked"}}),
    )
    .await;
    let names = event_names_until(&mut events, |e| e.name() == "unsubscribe").await;
    assert_eq!(
        names,
        [
            "kickOut(kickme)",
            "subscribeStateChange(kickme)",
            "unsubscribe(kickme)"
        ]
    );
    assert!(sub.recv().await.is_none());
    assert!(matches!(
        sub.end_reason(),
        Some(crate::SubscribeError::KickedOut)
    ));
    // nothing was sent for the kick-out: the next frame is this invoke
    let c2 = client.clone();
    tokio::spawn(async move { c2.invoke_raw("after", None, None).await });
    assert_eq!(conn.recv_json().await["event"], "after");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_subscription_unsubscribes() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b, &mut server).await;
    let a = client.subscribe("ch").await.unwrap();
    let b2 = client.subscribe("ch").await.unwrap();
    let req = conn.recv_json().await;
    ack(&mut conn, &req).await;
    a.subscribed().await.unwrap();
    drop(a);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(client.channel_state("ch"), ChannelState::Subscribed);
    drop(b2);
    assert_eq!(
        conn.recv_json().await,
        json!({"event":"#unsubscribe","data":"ch"})
    );
    assert_eq!(client.channel_state("ch"), ChannelState::Unsubscribed);
}

#[tokio::test(start_paused = true)]
async fn publications_for_a_pending_channel_are_delivered() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b, &mut server).await;
    let mut sub = client
        .subscribe_with("priv", SubscribeOptions::new().wait_for_auth(true))
        .await
        .unwrap();
    conn.send_json(json!({"event":"#publish","data":{"channel":"priv","data":"x"}}))
        .await;
    assert_eq!(
        sub.recv().await.unwrap().deserialize::<String>().unwrap(),
        "x"
    );
    assert_eq!(sub.state(), ChannelState::Pending);
}

#[tokio::test(start_paused = true)]
async fn slow_consumer_drops_new_messages_and_reports_it() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b.buffer_capacity(2), &mut server).await;
    let mut events = client.events();
    let mut sub = client.subscribe("fast").await.unwrap();
    let req = conn.recv_json().await;
    ack(&mut conn, &req).await;
    for i in 0..5 {
        conn.send_json(json!({"event":"#publish","data":{"channel":"fast","data":i}}))
            .await;
    }
    let e = wait_event(&mut events, |e| e.name() == "slowConsumer").await;
    assert!(matches!(e, Event::SlowConsumer { ref name, dropped: 1 } if name == "fast"));
    assert_eq!(sub.recv().await.unwrap().deserialize::<i32>().unwrap(), 0);
    assert_eq!(sub.recv().await.unwrap().deserialize::<i32>().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn publish_is_acknowledged_and_transmit_publish_is_fire_and_forget() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b, &mut server).await;
    let c2 = client.clone();
    let p = tokio::spawn(async move { c2.publish("foo", &json!({"a":1})).await });
    let f = conn.recv_json().await;
    assert_eq!(
        f,
        json!({"event":"#publish","data":{"channel":"foo","data":{"a":1}},"cid":2})
    );
    ack(&mut conn, &f).await;
    p.await.unwrap().unwrap();
    client.transmit_publish("foo", "pub1").unwrap();
    assert_eq!(
        conn.recv_json().await,
        json!({"event":"#publish","data":{"channel":"foo","data":"pub1"}})
    );
}

#[tokio::test(start_paused = true)]
async fn auto_subscribe_off_waits_for_process_pending_subscriptions() {
    let (b, mut server) = builder();
    let client = b.auto_subscribe_on_connect(false).build().unwrap();
    let _sub = client.subscribe("later").await.unwrap();
    let mut events = client.events();
    let (mut conn, _) = server.accept_handshake().await;
    let e = wait_event(&mut events, |e| e.name() == "connect").await;
    let _late = client.subscribe("later2").await.unwrap();
    client.transmit("marker", &1).unwrap();
    assert_eq!(conn.recv_json().await["event"], "marker");
    let Event::Connect { pending, .. } = e else {
        unreachable!()
    };
    pending.process();
    let a = conn.recv_json().await;
    let b2 = conn.recv_json().await;
    assert_eq!(a["data"]["channel"], "later");
    assert_eq!(b2["data"]["channel"], "later2");
}

/// JS `channelPrefix`: names carry the prefix on the wire (subscribe, publish,
/// unsubscribe) and lose it on the way in (publications, kick-outs).
#[tokio::test(start_paused = true)]
async fn channel_prefix_is_on_the_wire_only() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b.channel_prefix("app1/"), &mut server).await;
    let mut events = client.events();
    let mut sub = client.subscribe("news").await.unwrap();
    let req = conn.recv_json().await;
    assert_eq!(
        req,
        json!({"event":"#subscribe","data":{"channel":"app1/news"},"cid":2})
    );
    ack(&mut conn, &req).await;
    sub.subscribed().await.unwrap();
    assert_eq!(client.subscriptions(false), ["news"]);
    conn.send_json(json!({"event":"#publish","data":{"channel":"app1/news","data":7}}))
        .await;
    let m = sub.recv().await.unwrap();
    assert_eq!((m.channel.as_str(), m.data_str()), ("news", Some("7")));
    client.transmit_publish("news", &json!("hi")).unwrap();
    assert_eq!(
        conn.recv_json().await,
        json!({"event":"#publish","data":{"channel":"app1/news","data":"hi"}})
    );
    conn.send_json(json!({"event":"#kickOut","data":{"channel":"app1/news","message":"bye"}}))
        .await;
    let names = event_names_until(&mut events, |e| e.name() == "unsubscribe").await;
    assert!(names.contains(&"kickOut(news)".to_owned()), "{names:?}");
    assert!(sub.recv().await.is_none());
    // A new subscription, unsubscribed by the application: `#unsubscribe` with the prefix.
    let sub2 = client.subscribe("sport").await.unwrap();
    let req = conn.recv_json().await;
    assert_eq!(req["data"]["channel"], "app1/sport");
    ack(&mut conn, &req).await;
    sub2.subscribed().await.unwrap();
    client.unsubscribe("sport");
    assert_eq!(
        conn.recv_json().await,
        json!({"event":"#unsubscribe","data":"app1/sport"})
    );
}

/// JS `timestampRequests`: every connection attempt carries `t=<ms since the epoch>`.
#[tokio::test]
async fn timestamp_requests_put_the_time_in_the_url() {
    let (b, mut server) = builder();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let _client = b.query("a", "1").timestamp_requests(true).build().unwrap();
    let (_conn, uri) = server.accept_uri().await;
    let (path, query) = uri.split_once('?').expect("a query");
    assert_eq!(path, "/socketcluster/");
    let pairs: Vec<(&str, &str)> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    assert_eq!(pairs[0], ("a", "1"));
    assert_eq!(pairs[1].0, "t");
    let t: u128 = pairs[1].1.parse().unwrap();
    assert!(t >= before && t < before + 60_000, "{t} vs {before}");
}
