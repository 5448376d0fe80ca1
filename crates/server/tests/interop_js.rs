//! The real JavaScript client (`socketcluster-client` 20.0.2, and 14.3.2 with protocol
//! version 1) against this server, and the JS server (`socketcluster-server` 20.0.1)
//! as the oracle: the same scripted scenario must yield the same client events and the
//! same wire error names on both (docs/PROTOCOL.md 12).

use std::time::Duration;

use sc_test_support::{JsClient, JsServer, JsServerOptions, free_port, run_js_client, sign_hs256};
use serde_json::{Value, json};
use socketcluster_rs_server::auth::{AuthConfig, AuthKey, JwtAlgorithm, SignOptions};
use socketcluster_rs_server::middleware::HandshakeAction;
use socketcluster_rs_server::{
    Block, ErrorObject, InboundAction, InboundKind, ProtocolVersion, Request, Server, ServerConfig,
    ServerEvent,
};

const KEY: &str = "testkey";
const WAIT: Duration = Duration::from_secs(15);

fn config() -> ServerConfig {
    ServerConfig::default()
        .with_host("127.0.0.1")
        .with_port(0)
        .with_auth(AuthConfig::with_secret(KEY))
}

fn url(server: &Server) -> String {
    format!("ws://{}/socketcluster/", server.local_addr().unwrap())
}

/// A Rust server with the procedures of `interop/server.js` (interop/README.md).
async fn mirror_server(config: ServerConfig) -> Server {
    let server = Server::bind(config).await.expect("bind");
    install_mirror(&server);
    server
}

fn install_mirror(server: &Server) {
    server.procedure("echo", |mut req: Request| async move {
        let d = req.take_raw_data();
        req.respond_raw(d);
    });
    for name in ["fail", "error"] {
        server.procedure(name, |req: Request| async move {
            req.error(ErrorObject::new("CustomError", "it failed").with("extra", 42));
        });
    }
    server.procedure("neverAnswer", |req: Request| async move {
        drop(req); // dropping without an answer sends nothing, like JS
    });
    server.procedure("login", |req: Request| async move {
        let data: Value = req.data().unwrap_or(Value::Null);
        let mut claims = serde_json::Map::new();
        claims.insert("username".into(), data["username"].clone());
        if let Some(extra) = data["claims"].as_object() {
            for (k, v) in extra {
                claims.insert(k.clone(), v.clone());
            }
        }
        let mut opts = SignOptions::default();
        if let Some(e) = data["expiresIn"].as_u64() {
            opts = opts.expires_in(e);
        }
        let socket = req.socket().clone();
        // JS order on the wire: the reply, then #setAuthToken.
        req.respond(&"ok");
        let _ = socket.set_auth_token(&Value::Object(claims), opts).await;
    });
    server.procedure("logout", |req: Request| async move {
        req.socket().deauthenticate().await;
        req.end();
    });
    server.procedure("whoami", |req: Request| async move {
        let s = req.socket();
        let body = json!({
            "authState": if s.is_authenticated() { "authenticated" } else { "unauthenticated" },
            "authToken": s.auth_token().map(|c| Value::Object((*c).clone())),
        });
        req.respond(&body);
    });
    server.procedure("kick", |req: Request| async move {
        let data: Value = req.data().unwrap_or(Value::Null);
        let channel = data["channel"].as_str().map(str::to_owned);
        let message = data.get("message").cloned();
        let _ = req
            .socket()
            .kick_out(channel.as_deref(), message.as_ref())
            .await;
        req.end();
    });
    server.procedure("serverInvoke", |req: Request| async move {
        let data: Value = req.data().unwrap_or(Value::Null);
        let proc_name = data["procedure"].as_str().unwrap_or("").to_owned();
        let r = req.socket().invoke(&proc_name, &data["data"]).await;
        match r {
            Ok(v) => req.respond_raw(v),
            Err(socketcluster_rs_server::InvokeError::Remote(e)) => req.error(e),
            Err(e) => req.error(ErrorObject::new(e.name(), e.to_string())),
        }
    });
    server.procedure("disconnectMe", |req: Request| async move {
        let data: Value = req.data().unwrap_or(Value::Null);
        let socket = req.socket().clone();
        req.end();
        socket.disconnect(
            data["code"].as_u64().unwrap_or(1000) as u16,
            data["reason"].as_str().unwrap_or(""),
        );
    });
}

fn names(events: &[(String, Value)]) -> Vec<String> {
    events.iter().map(|(n, _)| n.clone()).collect()
}

fn first_event<'a>(events: &'a [(String, Value)], name: &str) -> &'a Value {
    &events
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} event in {events:?}"))
        .1
}

/// CL-4, SV-1, SV-27, SV-38, SV-43, CL-23, SV-48, SV-49, CL-22: connect, RPC with exact
/// payloads (unicode, nested, big integers, binary), errors, timeouts, pub/sub in both
/// directions, transmit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_v20_rpc_and_pubsub_with_exact_payloads() {
    let server = mirror_server(config()).await;
    let mut got_transmit = server.receiver_stream("myEvent");
    // Publish from the server once the client subscribed to "foo".
    let mut events = server.events();
    let ex = server.exchange();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let ServerEvent::Subscription { channel, .. } = ev
                && channel == "foo"
            {
                ex.publish("foo", &json!({"from": "server", "n": [1, 2]}))
                    .await
                    .unwrap();
            }
        }
    });
    let payload =
        json!({"u": "日本語 🎉 \u{2028}", "nested": {"a": [1, {"b": null}], "t": true}, "f": -0.5});
    let run = run_js_client(json!({
        "url": url(&server),
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "invoke", "procedure": "echo", "data": payload},
            {"op": "invoke", "procedure": "echo", "data": 9007199254740993u64},
            {"op": "invoke", "procedure": "fail", "data": null},
            {"op": "subscribe", "channel": "foo", "wait": true},
            {"op": "js", "code": "await socket.invokePublish('foo', Buffer.from([1,2,3])); return 'sent';"},
            {"op": "transmitPublish", "channel": "foo", "data": "hello"},
            {"op": "waitPublish", "channel": "foo", "count": 3},
            {"op": "invoke", "procedure": "neverAnswer", "data": 1, "ackTimeout": 300},
            {"op": "transmit", "event": "myEvent", "data": {"x": 1}},
            {"op": "invoke", "procedure": "echo", "data": "last"},
        ],
    }))
    .await;
    run.assert_all_ok_except(&[3, 8]);
    let events = run.client_events();
    let connect = first_event(&events, "connect");
    assert_eq!(connect["isAuthenticated"], false);
    assert!(connect.get("authError").is_none() || connect["authError"].is_null());
    assert_eq!(connect["pingTimeout"], 30000);
    assert_eq!(connect["id"].as_str().unwrap().len(), 20);
    assert_eq!(run.step_result(1), &payload);
    assert_eq!(run.step_result(2), &json!(9007199254740992u64));
    let fail = &run.step(3)["error"];
    assert_eq!(
        (fail["name"].as_str(), fail["extra"].as_i64()),
        (Some("CustomError"), Some(42))
    );
    assert_eq!(run.step(8)["error"]["name"], "TimeoutError");
    let pubs = run.publications("foo");
    assert!(
        pubs.contains(&json!({"from": "server", "n": [1, 2]})),
        "{pubs:?}"
    );
    let client_pubs: Vec<&Value> = pubs.iter().filter(|p| p.get("from").is_none()).collect();
    assert_eq!(
        client_pubs,
        [&json!({"base64": true, "data": "AQID"}), &json!("hello")]
    );
    use futures_util::StreamExt;
    let t = tokio::time::timeout(WAIT, got_transmit.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.data::<Value>().unwrap(), json!({"x": 1}));
}

/// SV-9, CL-14, SV-2/SV-11, CL-16, 3.6.2/3.6.3: login gives the JS client a token
/// (`authenticate` event), the token survives a reconnect, a bad `authenticate()` makes
/// it unauthenticated with `AuthTokenInvalidError`, server deauthentication is seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_auth_flow_and_reconnect_with_stored_token() {
    let server = mirror_server(config()).await;
    let run = run_js_client(json!({
        "url": url(&server),
        "options": {"autoReconnect": false},
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "invoke", "procedure": "login", "data": {"username": "bob"}},
            {"op": "waitEvent", "name": "authenticate"},
            {"op": "invoke", "procedure": "whoami"},
            {"op": "disconnect"},
            {"op": "connect"},
            {"op": "waitEvent", "name": "connect", "count": 2},
            {"op": "invoke", "procedure": "whoami"},
            {"op": "authenticate", "token": "bad.token.here"},
            {"op": "state"},
            {"op": "authenticate", "token": sign_hs256(&json!({"username": "kate"}), KEY)},
            {"op": "invoke", "procedure": "logout"},
            {"op": "waitEvent", "name": "removeAuthToken", "count": 2},
            {"op": "state"},
        ],
    }))
    .await;
    run.assert_all_ok_except(&[8]);
    assert_eq!(run.step_result(3)["authToken"]["username"], "bob");
    assert_eq!(run.step_result(7)["authState"], "authenticated");
    let events = run.client_events();
    let connects: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "connect")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(connects[1]["isAuthenticated"], true);
    let auth = first_event(&events, "authenticate");
    assert_eq!(auth["authToken"]["username"], "bob");
    let exp = auth["authToken"]["exp"].as_u64().unwrap();
    let iat = auth["authToken"]["iat"].as_u64().unwrap();
    assert_eq!(exp - iat, 86400);
    let err = &run.step(8)["error"];
    assert_eq!(
        (err["name"].as_str(), err["message"].as_str()),
        (Some("AuthTokenInvalidError"), Some("invalid token"))
    );
    assert_eq!(run.step_result(9)["authState"], "unauthenticated");
    assert_eq!(run.step_result(10)["isAuthenticated"], true);
    assert_eq!(run.step_result(13)["authState"], "unauthenticated");
    // only one unauthenticated -> authenticated change before the bad token (CL-14)
    let changes: Vec<String> = run
        .client_events_named("authStateChange")
        .iter()
        .map(|d| {
            format!(
                "{}>{}",
                d["oldAuthState"].as_str().unwrap(),
                d["newAuthState"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            "unauthenticated>authenticated",
            "authenticated>unauthenticated",
            "unauthenticated>authenticated",
            "authenticated>unauthenticated"
        ]
    );
}

const RSA_PRIVATE: &str = include_str!("keys/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("keys/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("keys/ec_private.pem");
const EC_PUBLIC: &str = include_str!("keys/ec_public.pem");

/// CL-6 / SV-3, 5.3, 11.3: stored tokens that are expired, signed with another key,
/// `alg: none`, or RS256-public-key-as-HMAC are rejected with the JS error, the JS
/// client receives `#removeAuthToken` and ends unauthenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_with_bad_stored_tokens() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let now = sc_test_support::unix_now();
    let hs = mirror_server(config()).await;
    let rsa_cfg = config().with_auth({
        let mut a = AuthConfig::default();
        a.key = AuthKey::Pem {
            private_key: RSA_PRIVATE.as_bytes().to_vec(),
            public_key: RSA_PUBLIC.as_bytes().to_vec(),
        };
        a.algorithm = Some(JwtAlgorithm::RS256);
        a
    });
    let rsa = mirror_server(rsa_cfg).await;
    let cases = vec![
        (
            &hs,
            sign_hs256(&json!({"username": "bob", "exp": now - 10}), KEY),
            "AuthTokenExpiredError",
            "jwt expired",
        ),
        (
            &hs,
            sign_hs256(&json!({"username": "bob"}), "wrongkey"),
            "AuthTokenInvalidError",
            "invalid signature",
        ),
        (
            &hs,
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(r#"{"username":"bob"}"#)
            ),
            "AuthTokenInvalidError",
            "jwt signature is required",
        ),
        (
            &rsa,
            sign_hs256(&json!({"username": "bob"}), RSA_PUBLIC),
            "AuthTokenInvalidError",
            "invalid algorithm",
        ),
    ];
    for (server, token, name, message) in cases {
        let run = run_js_client(json!({
            "url": url(server),
            "authToken": token,
            "options": {"autoReconnect": false},
            "steps": [
                {"op": "waitEvent", "name": "connect"},
                {"op": "waitEvent", "name": "removeAuthToken"},
                {"op": "state"},
            ],
        }))
        .await;
        run.assert_all_ok_except(&[]);
        let events = run.client_events();
        let connect = first_event(&events, "connect");
        assert_eq!(connect["isAuthenticated"], false);
        assert_eq!(connect["authError"]["name"], name, "{connect}");
        assert_eq!(connect["authError"]["message"], message, "{connect}");
        assert_eq!(connect["authError"]["isBadToken"], true);
        assert_eq!(run.step_result(2)["signedAuthToken"], Value::Null);
    }
    // and a valid RS256 token from our server is accepted by it
    let rs_token = rsa
        .sign_token(&json!({"username": "bob"}), &Default::default())
        .unwrap();
    let run = run_js_client(json!({
        "url": url(&rsa),
        "authToken": rs_token,
        "steps": [{"op": "waitEvent", "name": "connect"}, {"op": "invoke", "procedure": "whoami"}],
    }))
    .await;
    run.assert_all_ok_except(&[]);
    assert_eq!(run.step_result(1)["authToken"]["username"], "bob");
}

/// ES256 key pairs work end to end (sign on the server, verify on reconnect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_tokens_round_trip_through_the_js_client() {
    let mut a = AuthConfig::default();
    a.key = AuthKey::Pem {
        private_key: EC_PRIVATE.as_bytes().to_vec(),
        public_key: EC_PUBLIC.as_bytes().to_vec(),
    };
    let server = mirror_server(config().with_auth(a)).await;
    let run = run_js_client(json!({
        "url": url(&server),
        "options": {"autoReconnect": false},
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "invoke", "procedure": "login", "data": {"username": "ec"}},
            {"op": "waitEvent", "name": "authenticate"},
            {"op": "disconnect"},
            {"op": "connect"},
            {"op": "waitEvent", "name": "connect", "count": 2},
            {"op": "invoke", "procedure": "whoami"},
        ],
    }))
    .await;
    run.assert_all_ok_except(&[]);
    assert_eq!(run.step_result(6)["authToken"]["username"], "ec");
    let token = first_event(&run.client_events(), "authenticate")["signedAuthToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(token.starts_with("eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9."));
}

/// SV-67, SV-71, SV-54 (UnauthorizedSubscribeError), SV-61, SV-62: middleware blocks
/// reach the JS client as the JS errors and close codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_sees_middleware_blocks_as_js_errors() {
    let server = mirror_server(config().with_auth_channels(vec!["private/*".into()])).await;
    server.add_inbound_middleware(|a: InboundAction| async move {
        match a.kind() {
            InboundKind::Invoke { procedure } if procedure == "blocked" => {
                Err(Block::error("BlockedInvokeError", "Invoke blocked"))
            }
            InboundKind::PublishIn { channel } if channel == "nopub" => {
                Err(Block::error("BlockedError", "Publish blocked"))
            }
            _ => Ok(a),
        }
    });
    server.add_handshake_middleware(|a: HandshakeAction| async move {
        match a.socket.request().query_param("mode").as_deref() {
            Some("4501") => Err(Block::error(
                "InvalidAuthQueryHandshakeError",
                "AG handshake failed because of invalid query auth parameters",
            )
            .with_status_code(4501)),
            Some("lazy") => Err(Block::error(
                "TooLazyHandshakeError",
                "AG handshake failed because the server was too lazy",
            )),
            _ => Ok(()),
        }
    });
    let run = run_js_client(json!({
        "url": url(&server),
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "invoke", "procedure": "blocked", "data": 1},
            {"op": "publish", "channel": "nopub", "data": 1},
            {"op": "subscribe", "channel": "private/x"},
            {"op": "waitEvent", "name": "subscribeFail"},
            {"op": "publish", "channel": "private/x", "data": 1},
        ],
    }))
    .await;
    assert_eq!(run.step(1)["error"]["name"], "BlockedInvokeError");
    assert_eq!(run.step(2)["error"]["name"], "BlockedError");
    assert_eq!(run.step(5)["error"]["name"], "UnauthorizedPublishError");
    let fail = &run.client_events_named("subscribeFail")[0];
    assert_eq!(fail["error"]["name"], "UnauthorizedSubscribeError");
    assert_eq!(fail["channel"], "private/x");

    for (mode, code, reason) in [
        (
            "4501",
            4501,
            "InvalidAuthQueryHandshakeError: AG handshake failed because of invalid query auth parameters",
        ),
        (
            "lazy",
            4008,
            "TooLazyHandshakeError: AG handshake failed because the server was too lazy",
        ),
    ] {
        let run = run_js_client(json!({
            "url": format!("{}?mode={mode}", url(&server)),
            "options": {"autoReconnect": false},
            "steps": [{"op": "waitEvent", "name": "connectAbort"}],
        }))
        .await;
        let abort = &run.client_events_named("connectAbort")[0];
        assert_eq!(abort["code"], code);
        assert_eq!(abort["reason"], reason);
    }
}

/// SV-53, 7.3, SV-58: kick-out and a server → client invoke seen by the JS client, which
/// stays connected across several ping intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_kick_out_server_invoke_and_pings() {
    let server = mirror_server(
        config()
            .with_ping_interval(Duration::from_millis(300))
            .with_ping_timeout(Duration::from_millis(1000)),
    )
    .await;
    let run = run_js_client(json!({
        "url": url(&server),
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "procedure", "name": "clientProc", "answer": "client says hi"},
            {"op": "invoke", "procedure": "serverInvoke", "data": {"procedure": "clientProc", "data": {"x": 1}}},
            {"op": "subscribe", "channel": "kickme", "wait": true},
            {"op": "invoke", "procedure": "kick", "data": {"channel": "kickme", "message": "You were kicked"}},
            {"op": "waitEvent", "name": "kickOut"},
            {"op": "sleep", "ms": 2000},
            {"op": "state"},
        ],
    }))
    .await;
    run.assert_all_ok_except(&[]);
    assert_eq!(run.step_result(2), &json!("client says hi"));
    let kick = &run.client_events_named("kickOut")[0];
    assert_eq!(
        kick,
        &json!({"channel": "kickme", "message": "You were kicked"})
    );
    assert_eq!(run.step_result(7)["state"], "open");
    assert_eq!(run.step_result(7)["pingTimeout"], 1000);
    assert!(run.client_events_named("disconnect").len() <= 1);
    let names = names(&run.client_events());
    let before_end: Vec<&String> = names.iter().take_while(|n| *n != "disconnect").collect();
    assert!(!before_end.iter().any(|n| *n == "error"), "{names:?}");
}

/// SV-56: with pingTimeout 500 and pings every 5 s the JS client sees a 4000/4001 close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_disconnects_when_pings_are_too_rare() {
    let server = mirror_server(
        config()
            .with_ping_interval(Duration::from_millis(5000))
            .with_ping_timeout(Duration::from_millis(500)),
    )
    .await;
    let run = run_js_client(json!({
        "url": url(&server),
        "options": {"autoReconnect": false},
        "disconnectAtEnd": false,
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "waitEvent", "name": "disconnect", "timeoutMs": 3000},
        ],
    }))
    .await;
    run.assert_all_ok_except(&[]);
    let d = &run.client_events_named("disconnect")[0];
    assert!(d["code"] == 4000 || d["code"] == 4001, "{d}");
}

/// Fault test: the server restarts on the same port with the same key; the JS client
/// reconnects by itself and its stored token is still accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_reconnects_after_server_restart_with_same_key() {
    let port = free_port();
    let cfg = config().with_port(port);
    let server = mirror_server(cfg.clone()).await;
    let client = JsClient::spawn(json!({
        "url": format!("ws://127.0.0.1:{port}/socketcluster/"),
        "options": {"autoReconnectOptions": {"initialDelay": 200, "randomness": 100, "maxDelay": 1000}},
        "interactive": true,
        "timeoutMs": 40000,
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "invoke", "procedure": "login", "data": {"username": "bob"}},
            {"op": "waitEvent", "name": "authenticate"},
        ],
    }))
    .await;
    client
        .wait_event(|l| l["event"] == "step" && l["i"] == 2, WAIT)
        .await;
    server.shutdown().await;
    drop(server);
    let d = client.wait_client_event("disconnect", WAIT).await;
    assert_eq!(d["data"]["code"], 1001);
    let server2 = {
        let mut attempt = 0;
        loop {
            match Server::bind(cfg.clone()).await {
                Ok(s) => break s,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebind failed: {e}"),
            }
        }
    };
    install_mirror(&server2);
    // the first `connect` line is the one before the restart
    let first = client.wait_client_event("connect", WAIT).await;
    assert_eq!(first["data"]["isAuthenticated"], false);
    let connect = client
        .wait_client_event("connect", Duration::from_secs(30))
        .await;
    assert_eq!(connect["data"]["isAuthenticated"], true, "{connect}");
    let who = client
        .run_step(json!({"op": "invoke", "procedure": "whoami"}), WAIT)
        .await;
    assert_eq!(who["result"]["authToken"]["username"], "bob");
    let run = client.wait_exit().await;
    assert!(run.is_done(), "{}", run.dump());
}

/// 1.4 / 11.7: the v14 client (protocol version 1) against this server in version-1
/// mode: handshake, RPC, pub/sub, login, pings `#1`/`#2` across several intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_v14_with_protocol_version_1() {
    let server = mirror_server(
        config()
            .with_protocol_version(ProtocolVersion::V1)
            .with_ping_interval(Duration::from_millis(300))
            .with_ping_timeout(Duration::from_millis(1500)),
    )
    .await;
    let run = run_js_client(json!({
        "url": url(&server),
        "version": "14",
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "invoke", "procedure": "echo", "data": {"v": 14}},
            {"op": "subscribe", "channel": "v1chan", "wait": true},
            {"op": "publish", "channel": "v1chan", "data": "v1 data"},
            {"op": "waitPublish", "channel": "v1chan"},
            {"op": "invoke", "procedure": "login", "data": {"username": "old"}},
            {"op": "waitEvent", "name": "authenticate"},
            {"op": "invoke", "procedure": "fail"},
            {"op": "sleep", "ms": 1500},
            {"op": "state"},
        ],
    }))
    .await;
    run.assert_all_ok_except(&[7]);
    assert_eq!(run.step_result(1), &json!({"v": 14}));
    assert_eq!(run.publications("v1chan"), [json!("v1 data")]);
    assert_eq!(run.step(7)["error"]["name"], "CustomError");
    assert_eq!(run.step_result(9)["state"], "open");
}

/// The oracle: one scripted JS-client scenario against the JS server and against this
/// server yields the same client event sequence, the same step outcomes and the same
/// wire error names (docs/PROTOCOL.md 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_scenario_same_events_as_the_js_server() {
    let js = JsServer::start(JsServerOptions {
        auth_key: Some(KEY.into()),
        private_pattern: Some("private/*".into()),
        ..Default::default()
    })
    .await;
    let rust = mirror_server(
        config()
            .with_auth_channels(vec!["private/*".into()])
            .with_auth_channels_kick_out(false),
    )
    .await;
    let scenario = |url: String| {
        json!({
            "url": url,
            "options": {"autoReconnect": false},
            "steps": [
                {"op": "waitEvent", "name": "connect"},
                {"op": "invoke", "procedure": "echo", "data": {"a": [1, "é"]}},
                {"op": "invoke", "procedure": "fail"},
                {"op": "subscribe", "channel": "foo", "wait": true},
                {"op": "publish", "channel": "foo", "data": "x"},
                {"op": "waitPublish", "channel": "foo"},
                {"op": "subscribe", "channel": "private/a"},
                {"op": "waitEvent", "name": "subscribeFail"},
                {"op": "publish", "channel": "private/a", "data": 1},
                {"op": "invoke", "procedure": "login", "data": {"username": "bob"}},
                {"op": "waitEvent", "name": "authenticate"},
                {"op": "subscribe", "channel": "private/a", "wait": true},
                {"op": "invoke", "procedure": "whoami"},
                {"op": "invoke", "procedure": "neverAnswer", "ackTimeout": 200},
                {"op": "authenticate", "token": "bad.token.here"},
                {"op": "waitEvent", "name": "removeAuthToken"},
                {"op": "unsubscribe", "channel": "foo"},
                {"op": "authenticate", "token": sign_hs256(&json!({"username": "kate"}), KEY)},
                {"op": "invoke", "procedure": "kick", "data": {"channel": "private/a", "message": "bye"}},
                {"op": "waitEvent", "name": "kickOut"},
                {"op": "invoke", "procedure": "logout"},
                {"op": "waitEvent", "name": "removeAuthToken", "count": 2},
                {"op": "invoke", "procedure": "disconnectMe", "data": {"code": 4321, "reason": "custom reason"}},
                {"op": "waitEvent", "name": "disconnect"},
            ],
            "disconnectAtEnd": false,
        })
    };
    let (js_run, rust_run) = tokio::join!(
        run_js_client(scenario(js.url())),
        run_js_client(scenario(url(&rust)))
    );
    let outcome = |run: &sc_test_support::JsClientRun| -> Vec<Value> {
        (0..24)
            .map(|i| {
                let s = run.step(i);
                if s["ok"] == true {
                    json!({"ok": true})
                } else if s["error"]["name"].as_str().is_some_and(|n| n.starts_with("Unauthorized")) {
                    // the harness's own middleware error: same name, its own message
                    json!({"ok": false, "name": s["error"]["name"]})
                } else {
                    json!({"ok": false, "name": s["error"]["name"], "message": s["error"]["message"]})
                }
            })
            .collect()
    };
    assert_eq!(
        outcome(&rust_run),
        outcome(&js_run),
        "\nRUST:\n{}\nJS:\n{}",
        rust_run.dump(),
        js_run.dump()
    );
    let strip = |run: &sc_test_support::JsClientRun| -> Vec<Value> {
        run.client_events()
            .into_iter()
            .map(|(name, d)| {
                let mut v = json!({"name": name});
                for k in [
                    "code",
                    "reason",
                    "channel",
                    "oldAuthState",
                    "newAuthState",
                    "isAuthenticated",
                    "oldChannelState",
                    "newChannelState",
                ] {
                    if let Some(x) = d.get(k) {
                        v[k] = x.clone();
                    }
                }
                if let Some(e) = d.get("error").and_then(|e| e.get("name")) {
                    v["error"] = e.clone();
                }
                v
            })
            .collect()
    };
    assert_eq!(
        strip(&rust_run),
        strip(&js_run),
        "\nRUST:\n{}\nJS:\n{}",
        rust_run.dump(),
        js_run.dump()
    );
    assert_eq!(rust_run.publications("foo"), js_run.publications("foo"));
    // whoami: same state and claim names (iat/exp values differ by the clock)
    let who = |run: &sc_test_support::JsClientRun| {
        let r = run.step_result(12).clone();
        let keys: Vec<String> = r["authToken"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        (
            r["authState"].clone(),
            r["authToken"]["username"].clone(),
            keys,
        )
    };
    assert_eq!(who(&rust_run), who(&js_run));
}

trait AssertExcept {
    fn assert_all_ok_except(&self, allowed_failures: &[usize]);
}
impl AssertExcept for sc_test_support::JsClientRun {
    fn assert_all_ok_except(&self, allowed: &[usize]) {
        assert!(self.is_done(), "{}", self.dump());
        for l in &self.lines {
            if l["event"] == "step" && l["ok"] != true {
                let i = l["i"].as_u64().unwrap() as usize;
                assert!(
                    allowed.contains(&i),
                    "step {i} failed: {l}\n{}",
                    self.dump()
                );
            }
        }
    }
}

/// The client's `message` events (inbound frames as received), pings left out.
fn client_messages(run: &sc_test_support::JsClientRun) -> Vec<Value> {
    run.client_events_named("message")
        .into_iter()
        .filter_map(|d| d["message"].as_str().map(str::to_owned))
        .filter(|m| !m.is_empty())
        .map(|m| serde_json::from_str(&m).unwrap_or(Value::String(m)))
        .collect()
}

/// SV-54 (docs/PROTOCOL.md 8.5, 12.2): JS client and this server both `batchOnHandshake`:
/// the client's 20 `#subscribe`s reach the server as one 20-element array, the
/// SUBSCRIBE middleware still runs 20 times, the blocked channel gets `subscribeFail`
/// with the middleware's error name, a publish after the subscriptions is received,
/// and the client receives first the (non-array) handshake reply, then one 20-element
/// array of responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_and_server_batch_on_handshake_sv54() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let server = mirror_server(config().with_batch_on_handshake(true)).await;
    let raw: Arc<Mutex<Vec<String>>> = Arc::default();
    let raw2 = raw.clone();
    server.add_inbound_raw_middleware(move |a: socketcluster_rs_server::InboundRawAction| {
        raw2.lock().unwrap().push(a.message().to_owned());
        async move { Ok(a) }
    });
    let subscribes = Arc::new(AtomicUsize::new(0));
    let subs2 = subscribes.clone();
    server.add_inbound_middleware(move |a: InboundAction| {
        let blocked = match a.kind() {
            InboundKind::Subscribe { channel } => {
                subs2.fetch_add(1, Ordering::SeqCst);
                channel == "ch-12"
            }
            _ => false,
        };
        async move {
            if blocked {
                Err(Block::error(
                    "UnauthorizedSubscribeError",
                    "Not allowed to subscribe to ch-12",
                ))
            } else {
                Ok(a)
            }
        }
    });
    let mut steps: Vec<Value> = (0..20)
        .map(|i| {
            if i == 10 {
                json!({"op": "subscribe", "channel": format!("ch-{i}"), "options": {"data": {"foo": 123}}})
            } else {
                json!({"op": "subscribe", "channel": format!("ch-{i}")})
            }
        })
        .collect();
    steps.extend([
        json!({"op": "connect"}),
        json!({"op": "waitEvent", "name": "subscribe", "count": 19}),
        json!({"op": "waitEvent", "name": "subscribeFail"}),
        json!({"op": "publish", "channel": "ch-19", "data": "after-subscribe"}),
        json!({"op": "waitPublish", "channel": "ch-19"}),
    ]);
    let run = run_js_client(json!({
        "url": url(&server),
        "options": {"autoConnect": false, "autoReconnect": false, "batchOnHandshake": true},
        "logMessages": true,
        "steps": steps,
    }))
    .await;
    run.assert_all_ok();
    // Server side: the handshake, then one 20-element array (pongs left out).
    let inbound: Vec<Value> = raw
        .lock()
        .unwrap()
        .iter()
        .filter(|m| !m.is_empty())
        .map(|m| serde_json::from_str(m).unwrap())
        .collect();
    assert_eq!(inbound[0]["event"], "#handshake", "{inbound:?}");
    let batch = inbound[1]
        .as_array()
        .expect("second inbound message is an array");
    assert_eq!(batch.len(), 20, "{batch:?}");
    assert_eq!(
        batch[10]["data"],
        json!({"channel": "ch-10", "data": {"foo": 123}})
    );
    assert_eq!(subscribes.load(Ordering::SeqCst), 20);
    let fail = &run.client_events_named("subscribeFail")[0];
    assert_eq!(fail["channel"], "ch-12");
    assert_eq!(fail["error"]["name"], "UnauthorizedSubscribeError");
    assert_eq!(run.publications("ch-19"), [json!("after-subscribe")]);
    // Client side: handshake reply (not an array), then all 20 responses in one array.
    let received = client_messages(&run);
    assert!(received[0].is_object(), "{received:?}");
    assert_eq!(received[0]["rid"], 1);
    let replies = received[1].as_array().expect("second message is an array");
    assert_eq!(replies.len(), 20, "{replies:?}");
    assert!(
        replies.iter().all(|r| r.get("rid").is_some()),
        "{replies:?}"
    );
    assert_eq!(replies[12]["error"]["name"], "UnauthorizedSubscribeError");
}

/// SV-55 (docs/PROTOCOL.md 8.5, 12.2): both sides `batchOnHandshake`, client `autoConnect`
/// false: `subscribe('foo')` then `transmitPublish('foo','bar')` before connecting ->
/// the publication is received (order preserved through both batches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_batched_subscribe_then_publish_is_received_sv55() {
    let server = mirror_server(config().with_batch_on_handshake(true)).await;
    let run = run_js_client(json!({
        "url": url(&server),
        "options": {"autoConnect": false, "autoReconnect": false, "batchOnHandshake": true},
        "logMessages": true,
        "steps": [
            {"op": "subscribe", "channel": "foo"},
            {"op": "transmitPublish", "channel": "foo", "data": "bar"},
            {"op": "connect"},
            {"op": "waitPublish", "channel": "foo"},
        ],
    }))
    .await;
    run.assert_all_ok();
    assert_eq!(run.publications("foo"), [json!("bar")]);
    // The subscribe reply and the publication went out batched.
    let received = client_messages(&run);
    assert!(received[0].is_object(), "{received:?}");
    assert!(
        received[1..].iter().any(|m| m
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["event"] == "#publish"))),
        "{received:?}"
    );
}

/// SV-26, SV-23 (docs/PROTOCOL.md 3.6.1, 12.2): the JS client sends an empty binary frame
/// before its `#handshake`: with `strict_handshake` false it is tolerated and the client
/// connects (status with an id); with the default it closes with 4009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_empty_binary_frame_before_handshake_sv26() {
    let scenario = |url: String| {
        json!({
            "url": url,
            "options": {"autoConnect": false, "autoReconnect": false},
            "steps": [
                {"op": "js", "code": "socket.connect(); let t = socket.transport; let ws = t.socket; \
                    ws.onopen = () => { ws.send(Buffer.alloc(0)); t._onOpen(); }; return 'patched';"},
                {"op": "waitEvent", "name": "close", "timeoutMs": 3000},
                {"op": "state"},
            ],
            "disconnectAtEnd": true,
        })
    };
    let lenient = mirror_server(config().with_strict_handshake(false)).await;
    let strict = mirror_server(config()).await;
    let (lenient_run, strict_run) = tokio::join!(
        run_js_client(json!({
            "url": url(&lenient),
            "options": {"autoConnect": false, "autoReconnect": false},
            "steps": [
                {"op": "js", "code": "socket.connect(); let t = socket.transport; let ws = t.socket; \
                    ws.onopen = () => { ws.send(Buffer.alloc(0)); t._onOpen(); }; return 'patched';"},
                {"op": "waitEvent", "name": "connect"},
                {"op": "invoke", "procedure": "echo", "data": "still open"},
                {"op": "state"},
            ],
        })),
        run_js_client(scenario(url(&strict)))
    );
    lenient_run.assert_all_ok();
    let connect = first_event(&lenient_run.client_events(), "connect").clone();
    assert_eq!(connect["id"].as_str().map(str::len), Some(20), "{connect}");
    assert_eq!(lenient_run.step_result(2), &json!("still open"));
    assert_eq!(lenient_run.step_result(3)["state"], "open");
    assert!(
        lenient_run
            .client_events_named("close")
            .iter()
            .all(|c| c["code"] == 1000),
        "{}",
        lenient_run.dump()
    );
    strict_run.assert_all_ok();
    let close = first_event(&strict_run.client_events(), "close").clone();
    assert_eq!(close["code"], 4009, "{}", strict_run.dump());
}

/// SV-6 counterpart on the wire (docs/PROTOCOL.md 3.6.4, 5.6): `deauthenticate_with`
/// `reject_on_failed_delivery` invokes `#removeAuthToken` with a cid; the JS client
/// acknowledges it and the call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_acknowledges_remove_auth_token_invoke() {
    use socketcluster_rs_server::auth::DeauthenticateOptions;
    let server = mirror_server(config()).await;
    server.procedure("logoutConfirm", |req: Request| async move {
        let r = req
            .socket()
            .deauthenticate_with(DeauthenticateOptions::default().reject_on_failed_delivery(true))
            .await;
        match r {
            Ok(()) => req.respond(&"confirmed"),
            Err(e) => req.error(ErrorObject::new(e.name(), e.to_string())),
        }
    });
    let run = run_js_client(json!({
        "url": url(&server),
        "logMessages": true,
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "invoke", "procedure": "login", "data": {"username": "bob"}},
            {"op": "waitEvent", "name": "authenticate"},
            {"op": "invoke", "procedure": "logoutConfirm"},
            {"op": "waitEvent", "name": "removeAuthToken"},
            {"op": "state"},
        ],
    }))
    .await;
    run.assert_all_ok();
    assert_eq!(run.step_result(3), &json!("confirmed"));
    assert_eq!(run.step_result(5)["authState"], "unauthenticated");
    let received = client_messages(&run);
    let remove = received
        .iter()
        .find(|m| m["event"] == "#removeAuthToken")
        .expect("#removeAuthToken received");
    assert!(remove["cid"].is_u64(), "{remove}");
    assert!(remove.get("data").is_none(), "{remove}");
}

/// JS `socket.procedure(name)`: a per-socket stream answers the JS client's invoke with
/// that socket's own id (no server-wide handler is registered for the name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_invoke_answered_by_a_per_socket_procedure_stream() {
    use futures_util::StreamExt;
    let server = mirror_server(config()).await;
    // Registered by handshake middleware, so before the client can invoke anything.
    server.add_handshake_middleware(|a: HandshakeAction| async move {
        let mut requests = a.socket.procedure("whichSocket");
        tokio::spawn(async move {
            while let Some(req) = requests.next().await {
                let id = req.socket().id().to_owned();
                req.respond(&id);
            }
        });
        Ok(())
    });
    let run = run_js_client(json!({
        "url": url(&server),
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "invoke", "procedure": "whichSocket", "data": null, "ackTimeout": 5000},
        ],
    }))
    .await;
    run.assert_all_ok_except(&[]);
    let events = run.client_events();
    let id = first_event(&events, "connect")["id"].clone();
    assert_eq!(run.step_result(1), &id);
}
