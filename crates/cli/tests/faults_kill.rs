//! `kill -9` faults (docs/RELIABILITY.md, "Faults"): an instance of three behind a load
//! balancer, the Redis server, the NATS server and the whole server during a reconnect
//! storm are killed with SIGKILL while clients publish and subscribe, and every
//! publication is accounted for against the promise (docs/PROTOCOL.md 14.16):
//!
//! * an acknowledged publication on a channel with history reaches every subscriber of
//!   the channel exactly once, in order, whichever instance dies;
//! * what cannot be delivered is reported (a failed publish, a `NotRecovered` recovery),
//!   never silently dropped; without history (NATS) the only loss allowed is what the
//!   NATS server held when it died, and only around the kill;
//! * no subscription is lost: every client is connected and subscribed at the end.
//!
//! The client count defaults to 1,000 (`FAULTS_CLIENTS` overrides it). The tests start
//! their own `redis-server` / `nats-server` on free ports and fail, never skip, when
//! those are missing.
//!
//! Each test prints its account (quoted in docs/RELIABILITY.md) on stderr.
#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use sc_test_support::backplane::{BackplaneServer, NatsServer, RedisServer};
use sc_test_support::free_port;
use serde_json::{Value, json};
use socketcluster_rs_client::{
    ChannelState, Client, ConnectionState, Event, NotRecovered, Recovery,
};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::Serve;

const API_KEY: &str = "k";
/// A generous deadline for each wait (the debug build, 2 shared cores).
const WAIT: Duration = Duration::from_secs(120);

/// How many clients (`FAULTS_CLIENTS`, default 1,000); ten share a channel.
fn clients() -> usize {
    std::env::var("FAULTS_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// Raise this process's soft limit of open files to its hard limit (with util-linux's
/// `prlimit`, no unsafe code): 1,000 clients through the balancer hold 3,000 descriptors
/// here, and the `serve` processes started afterwards inherit the limit.
fn raise_fd_limit() {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) else {
        return;
    };
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    let (Some(soft), Some(hard)) = (nums.first(), nums.get(1)) else {
        return;
    };
    if soft.parse::<u64>().unwrap_or(0) >= 16384 || soft == hard {
        return;
    }
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={hard}:{hard}"),
        ])
        .status();
    eprintln!("open files limit {soft} -> {hard}: {status:?}");
}

/// `socketcluster serve` on `port` with `broker`, the HTTP API and history on `chat/*`
/// (`history`: false for NATS, which cannot keep history).
async fn serve(port: u16, broker: Option<&str>, history: bool) -> Serve {
    let port = port.to_string();
    let mut args = vec!["--port", &port, "--http-api-key", API_KEY];
    if let Some(b) = broker {
        args.extend(["--broker", b]);
    }
    if history {
        args.extend(["--history", "chat/*", "--history-size", "1000"]);
    }
    Serve::start(&args).await
}

/// A TCP load balancer: connection `i` goes to backend `i % n`, or to the next one that
/// accepts when that one is down.
async fn balancer(backends: Vec<u16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let first = next.fetch_add(1, Ordering::Relaxed);
            let backends = backends.clone();
            tokio::spawn(async move {
                for i in 0..backends.len() {
                    let b = backends[(first + i) % backends.len()];
                    if let Ok(mut out) = TcpStream::connect(("127.0.0.1", b)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        return;
                    }
                }
            });
        }
    });
    port
}

/// What one client saw and did.
#[derive(Default)]
struct Log {
    /// Publications received on its channel: (publisher, seq).
    received: Vec<(usize, u64)>,
    /// Recovery outcomes reported for its channel.
    recoveries: Vec<Recovery>,
    disconnects: usize,
    /// Its own publications the server acknowledged: (seq, when the publish started).
    acked: Vec<(u64, Instant)>,
    /// Its own publications that failed with an error (at most once: may or may not
    /// have been delivered).
    failed: Vec<u64>,
}

impl Log {
    /// The client was told its channel's stream restarted (its history may be lost).
    fn told_new_epoch(&self) -> bool {
        self.recoveries.iter().any(|r| {
            matches!(
                r,
                Recovery::NotRecovered {
                    reason: NotRecovered::EpochChanged
                }
            )
        })
    }
}

struct Peer {
    id: usize,
    channel: String,
    client: Client,
    sub_state: Box<dyn Fn() -> ChannelState + Send + Sync>,
    log: Arc<Mutex<Log>>,
}

/// Client `id` on `url`, subscribed to `chat/<id % channels>`, logging everything.
async fn peer(id: usize, url: String, channels: usize) -> Peer {
    let channel = format!("chat/{}", id % channels);
    let client = common::quick_reconnect(url, Duration::from_millis(200))
        .connect()
        .await
        .expect("connects");
    let log = Arc::new(Mutex::new(Log::default()));
    let mut events = client.events();
    let mut sub = client.subscribe(&channel).await.expect("subscribe");
    sub.subscribed().await.expect("subscribed");
    let status = sub.status();
    {
        let log = log.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.recv().await {
                let v = m.value();
                let from = v["from"].as_u64().expect("from") as usize;
                let seq = v["seq"].as_u64().expect("seq");
                log.lock().unwrap().received.push((from, seq));
            }
        });
    }
    {
        let log = log.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                match e {
                    Event::Recovery { outcome, .. } => log.lock().unwrap().recoveries.push(outcome),
                    Event::Disconnect { .. } => log.lock().unwrap().disconnects += 1,
                    _ => {}
                }
            }
        });
    }
    Peer {
        id,
        channel,
        client,
        sub_state: Box::new(move || status.get().state),
        log,
    }
}

/// `n` peers, connected 100 at a time; peer `i` connects to `urls[i % urls.len()]`.
async fn peers(n: usize, urls: &[String]) -> Vec<Arc<Peer>> {
    let channels = (n / 10).max(1);
    let mut all = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let batch = chunk
            .iter()
            .map(|&i| peer(i, urls[i % urls.len()].clone(), channels));
        all.extend(join_all(batch).await.into_iter().map(Arc::new));
    }
    all
}

/// Publish `{from, seq}` on the peer's channel every `every` (the first after a stagger
/// of the peer's id), `count` times or until `stop`; one at a time, each awaited.
fn publish_series(
    peer: Arc<Peer>,
    count: u64,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stagger = every.as_millis() as u64 * (peer.id as u64 % 97) / 97;
        tokio::time::sleep(Duration::from_millis(stagger)).await;
        for seq in 1..=count {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let sent = Instant::now();
            let data = json!({"from": peer.id, "seq": seq});
            let r = tokio::time::timeout(
                Duration::from_secs(30),
                peer.client.publish(&peer.channel, &data),
            )
            .await;
            {
                let mut log = peer.log.lock().unwrap();
                match r {
                    Ok(Ok(())) => log.acked.push((seq, sent)),
                    _ => log.failed.push(seq),
                }
            }
            tokio::time::sleep(every).await;
        }
    })
}

fn total(peers: &[Arc<Peer>], f: impl Fn(&Log) -> usize) -> usize {
    peers.iter().map(|p| f(&p.log.lock().unwrap())).sum()
}

/// Wait until `cond` holds (polling every 50 ms), or panic with `what`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// The delivery account of one run.
#[derive(Debug, Default)]
struct Account {
    acked: usize,
    failed: usize,
    /// (subscriber, publisher, seq) acknowledged but never received, allowed by the rule.
    excused: usize,
    /// When each excused publication was sent.
    excused_sent: Vec<Instant>,
    /// The same, not allowed: the promise is broken.
    lost: Vec<(usize, usize, u64)>,
    /// (subscriber, publisher) pairs whose seqs were not strictly increasing.
    disorder: Vec<(usize, usize, Vec<u64>)>,
    /// Failed publications that were delivered anyway (at most once allows it).
    failed_but_delivered: usize,
}

/// Check every subscriber against every publisher of its channel. `excuse(subscriber,
/// publish time)` says whether a missing acknowledged publication is allowed.
fn account(peers: &[Arc<Peer>], excuse: impl Fn(&Peer, Instant) -> bool) -> Account {
    let mut by_channel: HashMap<&str, Vec<&Peer>> = HashMap::new();
    for p in peers {
        by_channel.entry(&p.channel).or_default().push(p);
    }
    let mut acc = Account::default();
    for p in peers {
        let log = p.log.lock().unwrap();
        acc.acked += log.acked.len();
        acc.failed += log.failed.len();
    }
    for group in by_channel.values() {
        for sub in group {
            let received = sub.log.lock().unwrap().received.clone();
            for publisher in group {
                let seqs: Vec<u64> = received
                    .iter()
                    .filter(|(from, _)| *from == publisher.id)
                    .map(|(_, s)| *s)
                    .collect();
                if seqs.windows(2).any(|w| w[0] >= w[1]) {
                    acc.disorder.push((sub.id, publisher.id, seqs.clone()));
                }
                let plog = publisher.log.lock().unwrap();
                for (seq, sent) in &plog.acked {
                    if !seqs.contains(seq) {
                        if excuse(sub, *sent) {
                            acc.excused += 1;
                            acc.excused_sent.push(*sent);
                        } else {
                            acc.lost.push((sub.id, publisher.id, *seq));
                        }
                    }
                }
                acc.failed_but_delivered += plog.failed.iter().filter(|s| seqs.contains(s)).count();
            }
        }
    }
    acc
}

/// How many acknowledged publications each subscriber is still missing.
fn missing(peers: &[Arc<Peer>], excuse: impl Fn(&Peer, Instant) -> bool) -> usize {
    account(peers, excuse).lost.len()
}

/// Every client connected and its channel subscribed.
fn all_subscribed(peers: &[Arc<Peer>]) -> bool {
    peers.iter().all(|p| {
        p.client.state() == ConnectionState::Open && (p.sub_state)() == ChannelState::Subscribed
    })
}

async fn http_get(port: u16, path: &str) -> Value {
    let (_, body) = common::http(port, "GET", path, None, None).await;
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

async fn sockets(port: u16) -> u64 {
    let (_, body) = common::http(port, "GET", "/api/stats", Some(API_KEY), None).await;
    serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)["sockets"]
        .as_u64()
        .unwrap_or(0)
}

async fn wait_backplane(port: u16, state: &str) {
    tokio::time::timeout(WAIT, async {
        loop {
            if http_get(port, "/health").await["backplane"]["state"] == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the backplane never became {state}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_instance_of_three_loses_no_acknowledged_publication() {
    raise_fd_limit();
    let n = clients();
    let redis = RedisServer::start();
    let ports = [free_port(), free_port(), free_port()];
    let mut a = serve(ports[0], Some(&redis.url()), true).await;
    let b = serve(ports[1], Some(&redis.url()), true).await;
    let c = serve(ports[2], Some(&redis.url()), true).await;
    let lb = balancer(ports.to_vec()).await;
    let peers = peers(n, &[format!("ws://127.0.0.1:{lb}/socketcluster/")]).await;
    let on_a = sockets(a.port).await as usize;
    assert!(on_a * 4 > n, "the balancer spread the clients: {on_a} on A");

    // Everyone publishes 8 times, one per second; A dies after a quarter of them.
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = peers
        .iter()
        .map(|p| publish_series(p.clone(), 8, Duration::from_secs(1), stop.clone()))
        .collect();
    until("2 acknowledged publications per client", || {
        total(&peers, |l| l.acked.len()) >= 2 * n
    })
    .await;
    a.child.kill().await.unwrap(); // SIGKILL: no close frames, no cleanup
    for p in publishers {
        tokio::time::timeout(WAIT, p)
            .await
            .expect("publishers finish")
            .unwrap();
    }
    until("every client back and subscribed", || {
        all_subscribed(&peers)
    })
    .await;
    until("every acknowledged publication delivered", || {
        missing(&peers, |_, _| false) == 0
    })
    .await;

    let acc = account(&peers, |_, _| false);
    eprintln!(
        "kill one of three, {n} clients ({on_a} on the killed one): acked {}, failed {}, \
         failed but delivered {}, missing {}",
        acc.acked,
        acc.failed,
        acc.failed_but_delivered,
        acc.lost.len()
    );
    assert!(acc.lost.is_empty() && acc.disorder.is_empty(), "{acc:?}");
    assert!(acc.acked >= 7 * n, "most publications succeeded: {acc:?}");
    let moved: Vec<_> = peers
        .iter()
        .filter(|p| p.log.lock().unwrap().disconnects > 0)
        .collect();
    assert!(
        moved.len() >= on_a,
        "every client of A noticed: {} of {on_a}",
        moved.len()
    );
    for p in &moved {
        let log = p.log.lock().unwrap();
        assert!(
            log.recoveries
                .iter()
                .all(|r| matches!(r, Recovery::Recovered { .. })),
            "client {} recovered from another instance: {:?}",
            p.id,
            log.recoveries
        );
    }
    // Nothing lingers: the survivors hold exactly the n sockets.
    let survivors = sockets(b.port).await + sockets(c.port).await;
    assert_eq!(survivors, n as u64);
    for p in &peers {
        p.client.close().await;
    }
}

/// The backplane server dies (SIGKILL) and comes back empty while clients publish on
/// three instances; `history`: whether the channels keep history (Redis).
async fn backplane_killed(mut backplane: impl BackplaneServer, history: bool) {
    raise_fd_limit();
    let n = clients();
    let url = backplane.url();
    let instances = [
        serve(0, Some(&url), history).await,
        serve(0, Some(&url), history).await,
        serve(0, Some(&url), history).await,
    ];
    let urls: Vec<String> = instances.iter().map(Serve::url).collect();
    let peers = peers(n, &urls).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = peers
        .iter()
        .map(|p| publish_series(p.clone(), u64::MAX, Duration::from_secs(1), stop.clone()))
        .collect();
    until("2 acknowledged publications per client", || {
        total(&peers, |l| l.acked.len()) >= 2 * n
    })
    .await;
    let killed = Instant::now();
    backplane.kill();
    for s in &instances {
        wait_backplane(s.port, "disconnected").await;
    }
    // The outage is reported to publishers: their publications fail.
    let failed_before = total(&peers, |l| l.failed.len());
    until("publications failing during the outage", || {
        total(&peers, |l| l.failed.len()) >= failed_before + n / 2
    })
    .await;
    backplane.restart();
    for s in &instances {
        wait_backplane(s.port, "connected").await;
    }
    let back = Instant::now();
    // Three more rounds after the backplane is back everywhere.
    let acked_back = total(&peers, |l| l.acked.len());
    until("3 more rounds after the restart", || {
        total(&peers, |l| l.acked.len()) >= acked_back + 3 * n
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        tokio::time::timeout(WAIT, p)
            .await
            .expect("publishers stop")
            .unwrap();
    }
    // What the backplane held when it died may be missing: with history, only what was
    // published just before the kill (the history died with it), and only where the
    // client was told (a new epoch); publications on the restarted backplane that a
    // subscriber's server missed because it subscribed again later are recovered from
    // the new stream's start. Without history (NATS: at most once), anything published
    // from just before the kill until every instance is subscribed again.
    let window = |sub: &Peer, sent: Instant| {
        let from = sent + Duration::from_secs(2) >= killed;
        if history {
            from && sent <= killed && sub.log.lock().unwrap().told_new_epoch()
        } else {
            from && sent <= back
        }
    };
    until("every acknowledged publication delivered", || {
        missing(&peers, window) == 0
    })
    .await;
    let acc = account(&peers, window);
    let ms = |t: Instant, from: Instant| {
        t.checked_duration_since(from).map_or_else(
            || -(from.duration_since(t).as_millis() as i64),
            |d| d.as_millis() as i64,
        )
    };
    let mut around: Vec<(i64, i64)> = acc
        .excused_sent
        .iter()
        .map(|t| (ms(*t, killed), ms(*t, back)))
        .collect();
    around.sort_unstable();
    around.dedup();
    eprintln!(
        "backplane killed ({}), {n} clients: acked {}, failed {}, failed but delivered {}, \
         missing but excused {} (published at ms after the kill / after back everywhere: {around:?})",
        if history { "redis, history" } else { "nats" },
        acc.acked,
        acc.failed,
        acc.failed_but_delivered,
        acc.excused,
    );
    assert!(acc.lost.is_empty() && acc.disorder.is_empty(), "{acc:?}");
    assert_eq!(
        total(&peers, |l| l.disconnects),
        0,
        "no client was disconnected"
    );
    assert!(all_subscribed(&peers));
    if history {
        // The restarted Redis is empty: a new epoch, which every subscriber is told.
        for p in &peers {
            let log = p.log.lock().unwrap();
            assert!(
                log.told_new_epoch(),
                "client {} was told its channel's history restarted: {:?}",
                p.id,
                log.recoveries
            );
        }
    }
    for p in &peers {
        p.client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_loses_nothing_silently() {
    backplane_killed(RedisServer::start(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_nats_loses_nothing_outside_the_outage() {
    backplane_killed(NatsServer::start(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_during_a_reconnect_storm_loses_no_subscription() {
    raise_fd_limit();
    let n = clients();
    let port = free_port();
    let mut server = serve(port, None, true).await;
    let url = server.url();
    let peers = peers(n, &[url]).await;
    let channels = (n / 10).max(1);
    let publish_round = |round: u64| async move {
        for ch in 0..channels {
            let body = json!({"channel": format!("chat/{ch}"), "data": {"from": usize::MAX, "seq": round}});
            let (status, body) = common::http(
                port,
                "POST",
                "/api/publish",
                Some(API_KEY),
                Some(&body.to_string()),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    publish_round(1).await;
    until("round 1 everywhere", || {
        peers
            .iter()
            .all(|p| p.log.lock().unwrap().received.len() == 1)
    })
    .await;

    server.child.kill().await.unwrap();
    until("every client noticed", || {
        peers.iter().all(|p| p.log.lock().unwrap().disconnects >= 1)
    })
    .await;
    // Back, and killed again while the clients are still coming back.
    let mut server = serve(port, None, true).await;
    let at_kill = tokio::time::timeout(WAIT, async {
        loop {
            let s = sockets(port).await;
            if s >= 20 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("clients come back");
    server.child.kill().await.unwrap();
    assert!(
        (at_kill as usize) < n,
        "killed during the storm: {at_kill} of {n} were back"
    );
    let server = serve(port, None, true).await;
    until("every client back and subscribed", || {
        all_subscribed(&peers)
    })
    .await;
    assert_eq!(sockets(port).await, n as u64, "one socket per client");
    publish_round(2).await;
    until("round 2 everywhere", || {
        peers
            .iter()
            .all(|p| p.log.lock().unwrap().received.len() >= 2)
    })
    .await;
    for p in &peers {
        let log = p.log.lock().unwrap();
        let seqs: Vec<u64> = log.received.iter().map(|(_, s)| *s).collect();
        assert_eq!(seqs, [1, 2], "client {}: each round once", p.id);
        // The history died with the process: the client was told, not left to guess.
        assert!(
            log.told_new_epoch(),
            "client {}: {:?}",
            p.id,
            log.recoveries
        );
    }
    eprintln!("server killed during the storm with {at_kill} of {n} clients back");
    for p in &peers {
        p.client.close().await;
    }
    drop(server);
}
