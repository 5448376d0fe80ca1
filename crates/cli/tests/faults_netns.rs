//! Fault injection (docs/RELIABILITY.md, *Faults*): half-open TCP. The client
//! (`socketcluster subscribe`) runs in a network namespace joined to the test's server by
//! a veth pair; taking the link down silently drops every packet (no FIN, no RST). The
//! server must free the socket within its ping timeout; the client must reconnect and
//! resubscribe when the link returns.
//!
//! Needs root (CAP_NET_ADMIN / CAP_SYS_ADMIN) and `ip netns`: without them the test
//! fails with a message naming the requirement, never silently skips.

use std::process::Stdio;
use std::time::{Duration, Instant};

use socketcluster_rs_server::{Server, ServerConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_socketcluster");

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("this fault test needs iproute2 (`ip`): {e}"));
    assert!(
        out.status.success(),
        "this fault test needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and `ip netns`: `ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace with one end of a veth pair; the other end stays here. Removed on drop.
struct NetNs {
    ns: String,
    host_if: String,
    host_ip: String,
}

impl NetNs {
    fn create() -> NetNs {
        let id = std::process::id() % 100_000;
        let octet = 16 + id % 200;
        let ns = format!("scfault{id}");
        let host_if = format!("scfh{id}");
        let ns_if = format!("scfn{id}");
        let host_ip = format!("10.213.{octet}.1");
        let net = NetNs {
            ns: ns.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
        };
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let peer = format!("10.213.{octet}.2/24");
        ip(&[
            "netns", "exec", &ns, "ip", "addr", "add", &peer, "dev", &ns_if,
        ]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", &ns_if, "up"]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        net
    }

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

async fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < deadline, "{what} not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stderr)] // the measured times, quoted in docs/RELIABILITY.md
async fn half_open_tcp_is_freed_by_the_server_and_the_client_reconnects_when_the_link_returns() {
    let net = NetNs::create();
    let ping_interval = Duration::from_millis(500);
    let ping_timeout = Duration::from_millis(2000);
    let server = Server::bind(
        ServerConfig::default()
            .with_host(net.host_ip.clone())
            .with_port(0)
            .with_ping_interval(ping_interval)
            .with_ping_timeout(ping_timeout),
    )
    .await
    .expect("server binds on the veth address");
    let url = format!("ws://{}/socketcluster/", server.local_addr().unwrap());
    let mut child = Command::new("ip")
        .args(["netns", "exec", &net.ns, BIN, "subscribe", "--url", &url])
        .args([
            "--reconnect-initial-delay",
            "300",
            "--reconnect-randomness",
            "0",
        ])
        .args(["--reconnect-max-delay", "1000", "--connect-timeout", "1500"])
        .arg("halfopen")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the client in the namespace");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let subscribed = |s: &Server| s.clients_count() == 1 && s.stats().channels == 1;
    wait_until("the client subscribes", Duration::from_secs(30), || {
        subscribed(&server)
    })
    .await;
    let mut next_line = async |expect: &str| {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{expect} printed within 20 s"))
            .expect("read stdout")
            .expect("client still running");
        assert!(line.contains(expect), "{line}");
    };
    server
        .exchange()
        .publish("halfopen", "before")
        .await
        .unwrap();
    next_line("before").await;
    let accepted = server.stats().connections_accepted;

    // Link down: no packet passes either way, nothing tells either side.
    net.link(false);
    let freed = wait_until(
        "the server frees the half-open socket",
        ping_interval + ping_timeout + Duration::from_secs(5),
        || server.clients_count() == 0,
    )
    .await;
    assert_eq!(server.stats().channels, 0, "its subscription is gone too");
    // Down for a while longer: the client's reconnect attempts fail in the meantime.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(server.clients_count(), 0);

    net.link(true);
    let back = wait_until(
        "the client reconnects and resubscribes",
        Duration::from_secs(30),
        || subscribed(&server),
    )
    .await;
    assert!(server.stats().connections_accepted > accepted);
    server
        .exchange()
        .publish("halfopen", "after")
        .await
        .unwrap();
    next_line("after").await;
    eprintln!(
        "half-open socket freed {freed:?} after link down; client back {back:?} after link up"
    );
    let _ = child.kill().await;
    server.shutdown().await;
}
