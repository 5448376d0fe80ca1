//! The dashboard in a real browser: headless Chromium (Debian `chromium` and
//! `chromium-driver`, installed by the test when missing) driven over WebDriver against
//! `socketcluster serve --dashboard` on port 0. Login (wrong password refused, right one
//! accepted), the overview's socket count rising as clients connect, a publication
//! appearing in the channel view, publishing from the dashboard reaching a real JS
//! client, and disconnecting a socket found by its `sub` claim from the sockets view.
//!
//! `DASHBOARD_SCREENSHOTS=1 cargo test -p socketcluster-rs-cli --test dashboard_browser`
//! also writes the README's screenshots to `docs/dashboard/*.png`.

// the measured latencies are printed for the report (`--nocapture`)
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use sc_test_support::JsClient;
use serde_json::{Value, json};
use socketcluster_rs_client::{Client, ConnectionState};

mod common;
mod webdriver;

use common::{Serve, client_with_claims};
use webdriver::Browser;

const PASSWORD: &str = "dashboard pass";
const AUTH_KEY: &str = "jwt-signing-secret-2";

async fn client(port: u16, claims: Option<Value>) -> Client {
    client_with_claims(port, AUTH_KEY, claims).await
}

async fn screenshot(browser: &Browser, name: &str) {
    if std::env::var_os("DASHBOARD_SCREENSHOTS").is_none() {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), browser.screenshot().await).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_watches_and_disconnects_a_socket() {
    let serve = Serve::start(&[
        "--port",
        "0",
        "--auth-key",
        AUTH_KEY,
        "--dashboard",
        "--dashboard-password",
        PASSWORD,
    ])
    .await;
    let port = serve.port;
    let base = format!("http://127.0.0.1:{port}/dashboard/");
    let b = Browser::start().await;

    // login: the wrong password is refused, the right one opens the overview
    b.goto(&base).await;
    b.type_into("#password", "not the password").await;
    screenshot(&b, "login").await;
    b.click("#login-submit").await;
    assert!(
        b.wait_for("document.getElementById('login-error') && document.getElementById('login-error').textContent.includes('Wrong password')").await,
        "the wrong password is refused"
    );
    assert!(
        !b.wait_for_quick("document.getElementById('overview') !== null")
            .await
    );
    b.type_into("#password", PASSWORD).await;
    b.click("#login-submit").await;
    assert!(b.wait_for("document.getElementById('stat-sockets') && document.getElementById('stat-sockets').textContent === '0'").await,
        "the overview shows 0 sockets: {}", b.text("body").await);

    // the socket count rises as clients connect
    let start = Instant::now();
    let anon = client(port, None).await;
    let victim = client(port, Some(json!({"sub": 42}))).await;
    assert!(
        b.wait_for("document.getElementById('stat-sockets').textContent === '2'")
            .await,
        "the overview shows 2 sockets"
    );
    let rise = start.elapsed();
    assert!(
        b.wait_for("document.getElementById('stat-authenticatedSockets').textContent === '1'")
            .await
    );
    // the instances table (no backplane: just this one) shows the same count
    assert!(
        b.wait_for("[...document.querySelectorAll('#instance-list .instance-sockets')].map(e => e.textContent).join() === '2'")
            .await,
        "the instances table shows this instance with 2 sockets"
    );
    println!(
        "socket count shown {} ms after the clients connected",
        rise.as_millis()
    );
    assert!(
        rise < Duration::from_secs(3),
        "shown within the 1 s tick: {rise:?}"
    );
    screenshot(&b, "overview").await;

    // channels: a real JS subscriber, a publication appearing live, a test publish
    let js = JsClient::spawn(json!({
        "url": serve.url(),
        "steps": [
            {"op": "subscribe", "channel": "news", "wait": true},
            {"op": "js", "code": "log({event: 'ready'})"},
            {"op": "waitPublish", "channel": "news", "count": 2, "timeoutMs": 20000}
        ]
    }))
    .await;
    js.wait_event(
        |v| v["event"] == "log" && v["data"]["event"] == "ready",
        Duration::from_secs(20),
    )
    .await;
    b.click("#nav-channels").await;
    b.type_into("#channel-search", "new").await;
    b.click("tr[data-channel='news']").await;
    assert!(
        b.wait_for("document.getElementById('channel-view').dataset.ready === 'true'")
            .await
    );
    let start = Instant::now();
    anon.publish("news", &json!({"n": 7}))
        .await
        .expect("publish");
    assert!(
        b.wait_for("document.getElementById('channel-feed').textContent.includes('{\"n\":7}')")
            .await,
        "the publication appears in the channel view"
    );
    println!(
        "publication shown {} ms after publish",
        start.elapsed().as_millis()
    );
    b.type_into("#publish-data", "{\"from\":\"dashboard\"}")
        .await;
    b.click("#publish-submit").await;
    assert!(
        b.wait_for("document.getElementById('publish-result').textContent === 'published'")
            .await
    );
    screenshot(&b, "channel").await;
    let run = js.wait_exit().await;
    run.assert_all_ok();
    assert_eq!(
        run.publications("news"),
        vec![json!({"n": 7}), json!({"from": "dashboard"})]
    );

    // sockets: find the misbehaving user by claim and disconnect it
    b.click("#nav-sockets").await;
    b.type_into("#socket-search", "sub=42").await;
    b.click("#socket-search-submit").await;
    let id = victim.id().expect("connected");
    let row = format!("tr[data-socket='{id}']");
    b.find(&row).await;
    assert!(
        b.text("#socket-summary").await.starts_with("1 shown"),
        "only the user's socket"
    );
    screenshot(&b, "sockets").await;
    b.click(&format!("{row} button.disconnect")).await;
    assert!(
        b.wait_for(
            "document.getElementById('socket-result').textContent.includes('\"disconnected\":1')"
        )
        .await,
        "the dashboard reports the disconnect: {}",
        b.text("#socket-result").await
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while victim.state() == ConnectionState::Open {
        assert!(Instant::now() < deadline, "the client sees the disconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.click("#nav-overview").await;
    assert!(
        b.wait_for("document.getElementById('stat-sockets').textContent === '1'")
            .await
    );

    b.click("#nav-config").await;
    assert!(b.wait_for("document.getElementById('config-text').textContent.includes('dashboard-password = \"<redacted>\"')").await);
    screenshot(&b, "config").await;

    // log out: back to the login page
    b.click("#logout button").await;
    assert!(
        b.wait_for("document.getElementById('password') !== null")
            .await
    );
    b.quit().await;
}
