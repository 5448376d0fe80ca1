//! Fault injection (docs/RELIABILITY.md, *Faults*): the client's `FileTokenStore` on a
//! read-only and on a full file system. Each fault is real: a tmpfs mounted read-only, or
//! 16 KiB filled to the last byte. Mounting needs root (CAP_SYS_ADMIN); without it these
//! tests fail with a message saying so instead of silently skipping.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use socketcluster_rs_client::{Client, Event, Events, FileTokenStore, MemoryTokenStore};
use socketcluster_rs_server::auth::SignOptions;
use socketcluster_rs_server::{Request, Server, ServerConfig};

/// A tmpfs mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(name: &str, options: &str) -> Tmpfs {
        let dir = std::env::temp_dir().join(format!("sc-faults-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the mount point");
        let fs = Tmpfs { dir };
        fs.run_mount(&["-t", "tmpfs", "-o", options, "tmpfs"]);
        fs
    }

    fn remount(&self, options: &str) {
        self.run_mount(&["-o", &format!("remount,{options}")]);
    }

    fn run_mount(&self, args: &[&str]) {
        let out = std::process::Command::new("mount")
            .args(args)
            .arg(&self.dir)
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "this fault test mounts a tmpfs (a real read-only or full file system) and needs \
             root or CAP_SYS_ADMIN; `mount {args:?} {}` failed: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A server with `echo` and `login` (which sets a signed token).
async fn server() -> (Server, String) {
    let server = Server::bind(ServerConfig::default().with_host("127.0.0.1").with_port(0))
        .await
        .expect("server binds");
    server.procedure("echo", |mut req: Request| async move {
        let data = req.take_raw_data();
        req.respond_raw(data);
    });
    let logins = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    server.procedure("login", move |req: Request| {
        // each login's token differs, even within the same second
        let n = logins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            let claims = serde_json::json!({"username": "alice", "login": n});
            match req
                .socket()
                .set_auth_token(&claims, SignOptions::default())
                .await
            {
                Ok(_) => req.end(),
                Err(e) => req.error(socketcluster_rs_server::ErrorObject::new(
                    "LoginError",
                    e.to_string(),
                )),
            }
        }
    });
    let url = format!("ws://{}/socketcluster/", server.local_addr().unwrap());
    (server, url)
}

/// Connect a client on `store`, with its event stream taken before the handshake.
async fn client_on(url: &str, store: FileTokenStore) -> (Client, Events) {
    let client = Client::builder(url)
        .token_store(store)
        .auto_connect(false)
        .build()
        .expect("client builds");
    let events = client.events();
    tokio::time::timeout(Duration::from_secs(20), client.connect_and_wait())
        .await
        .expect("handshake within 20 s")
        .expect("connects");
    (client, events)
}

/// Wait for the `error` event whose name is `name`; returns its text.
async fn error_event(events: &mut Events, name: &str) -> String {
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(e) = events.next().await {
            if let Event::Error(err) = &e {
                let text = format!("{err:?}");
                if text.contains(name) {
                    return text;
                }
            }
        }
        panic!("event stream ended before {name}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {name} error event within 20 s"))
}

/// What "keeps working" means: authenticated, RPC and pub/sub still answered.
async fn still_works(client: &Client, channel: &str) {
    assert!(client.is_authenticated(), "the session keeps its token");
    let echoed: String = client.invoke("echo", "ping").await.expect("echo answered");
    assert_eq!(echoed, "ping");
    let mut sub = client.subscribe(channel).await.expect("subscribe");
    client.publish(channel, "hello").await.expect("publish");
    let m = tokio::time::timeout(Duration::from_secs(20), sub.recv())
        .await
        .expect("publication within 20 s")
        .expect("subscription open");
    assert_eq!(m.data_str(), Some("\"hello\""));
}

/// Drop the connection and wait for the next handshake; the events until then (debug
/// text).
async fn reconnected(client: &Client, events: &mut Events) -> Vec<String> {
    client.reconnect();
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut seen = Vec::new();
        while let Some(e) = events.next().await {
            if matches!(e, Event::Connect { .. }) {
                return seen;
            }
            seen.push(format!("{e:?}"));
        }
        panic!("event stream ended before connect");
    })
    .await
    .expect("reconnected within 20 s")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_token_store_on_a_read_only_disk_reports_errors_and_keeps_working() {
    let (server, url) = server().await;
    // A valid token, stored on a file system that is then made read-only.
    let first = Client::builder(&url)
        .token_store(MemoryTokenStore::new())
        .connect()
        .await
        .expect("connects");
    first
        .invoke::<serde_json::Value, _>("login", &())
        .await
        .expect("login");
    let token = first.signed_auth_token().expect("token set");
    first.close().await;
    let fs = Tmpfs::mount("ro", "size=64k");
    std::fs::write(fs.path("token"), &token).expect("write the token");
    fs.remount("ro");
    assert!(
        std::fs::write(fs.path("probe"), "x").is_err(),
        "really read-only"
    );

    // Loading works: the handshake is authenticated with the stored token.
    let (client, mut events) = client_on(&url, FileTokenStore::new(fs.path("token"))).await;
    assert!(
        client.is_authenticated(),
        "authenticated from the read-only file"
    );
    // A new token cannot be saved: a clear error event, no panic, the session goes on.
    client
        .invoke::<serde_json::Value, _>("login", &())
        .await
        .expect("login");
    let err = error_event(&mut events, "FailedToSaveTokenError").await;
    assert!(err.contains("Read-only file system"), "{err}");
    still_works(&client, "ro").await;
    // A reconnect uses the new token, not the one the file still holds.
    let new_token = client.signed_auth_token().expect("new token");
    assert_ne!(new_token, token);
    reconnected(&client, &mut events).await;
    assert_eq!(client.signed_auth_token().as_deref(), Some(&*new_token));
    assert!(client.is_authenticated());
    // Deauthenticating cannot delete the file either: reported the same way.
    client.deauthenticate().await;
    let err = error_event(&mut events, "FailedToRemoveTokenError").await;
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!client.is_authenticated());
    // ... and a reconnect does not log back in with the file's stale token.
    reconnected(&client, &mut events).await;
    assert!(!client.is_authenticated(), "deauthenticated stays so");
    assert_eq!(std::fs::read_to_string(fs.path("token")).unwrap(), token);
    let echoed: String = client.invoke("echo", "after").await.expect("echo answered");
    assert_eq!(echoed, "after");
    assert_eq!(entries(&fs.dir), ["token"], "nothing written");
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_token_store_on_a_full_disk_reports_an_error_and_keeps_working() {
    let (server, url) = server().await;
    let fs = Tmpfs::mount("full", "size=16k");
    // Fill it: the write stops with ENOSPC at the size of the file system.
    let filler = vec![0u8; 64 * 1024];
    let full = std::fs::write(fs.path("filler"), &filler).expect_err("the disk fills up");
    assert_eq!(full.raw_os_error(), Some(28), "ENOSPC: {full}");

    let (client, mut events) = client_on(&url, FileTokenStore::new(fs.path("token"))).await;
    assert!(!client.is_authenticated());
    client
        .invoke::<serde_json::Value, _>("login", &())
        .await
        .expect("login");
    let err = error_event(&mut events, "FailedToSaveTokenError").await;
    assert!(err.contains("No space left on device"), "{err}");
    still_works(&client, "full").await;
    // A reconnect keeps the token the disk could not take.
    let seen = reconnected(&client, &mut events).await;
    assert!(client.is_authenticated(), "the unsaved token is used");
    assert!(
        seen.iter()
            .any(|e| e.contains("FailedToSaveTokenError") && e.contains("No space left")),
        "the save is tried again: {seen:?}"
    );
    // The temporary file of the failed atomic write was removed; no partial token.
    assert_eq!(entries(&fs.dir), ["filler"]);
    client.close().await;
    server.shutdown().await;
}
