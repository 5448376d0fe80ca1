//! A TCP proxy on loopback whose connections a test can cut, and which can refuse new
//! ones for a while: the network failures a client must survive.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy to one target address. Stops (cutting every connection) on drop.
pub struct TcpProxy {
    port: u16,
    target: Arc<Mutex<SocketAddr>>,
    cuts: watch::Sender<u64>,
    refusing: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listen on 127.0.0.1 (a free port) and forward every connection to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("local addr").port();
        let (cuts, _) = watch::channel(0u64);
        let refusing = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let target = Arc::new(Mutex::new(target));
        let (c2, r2, a2, t2) = (
            cuts.clone(),
            refusing.clone(),
            accepted.clone(),
            target.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if r2.load(Ordering::SeqCst) {
                    // Accepted by the kernel; closed at once with a reset.
                    let _ = inbound.set_zero_linger();
                    drop(inbound);
                    continue;
                }
                a2.fetch_add(1, Ordering::SeqCst);
                let mut cut = c2.subscribe();
                cut.borrow_and_update();
                let target = *t2.lock().unwrap_or_else(|e| e.into_inner());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {
                            // Both sides see a reset, as when a link fails.
                            let _ = inbound.set_zero_linger();
                            let _ = outbound.set_zero_linger();
                        }
                    }
                });
            }
        });
        TcpProxy {
            port,
            target,
            cuts,
            refusing,
            accepted,
            task,
        }
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cut every current connection (both sides get a reset).
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Refuse new connections (reset at once) while `on`.
    pub fn set_refusing(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    /// Forward new connections to `target` from now on (current ones are untouched).
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
