//! Subscribe decisions: a time-to-live cache and coalescing of identical requests in
//! flight, so a reconnect storm of many sockets resubscribing to the same channels
//! costs one backend call per distinct request.
//!
//! A request is identified by the channel, the subscription `data` and the socket's
//! token claims (without `iat`/`exp`). A decision answered with
//! `"cacheScope": "channel"` is shared by every socket subscribing to the channel with
//! the same data, whoever they are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use socketcluster_rs_server::WireError;
use tokio::sync::OnceCell;

type Decided = HashMap<Key, (Result<(), WireError>, Instant)>;

/// Request identity: (channel, data, claims); `claims` is `None` for the channel-wide
/// entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) channel: String,
    pub(crate) data: String,
    pub(crate) claims: Option<String>,
}

/// A decision: `Ok` allows, `Err` refuses with this error.
#[derive(Clone, Debug)]
pub(crate) struct Decision {
    pub(crate) result: Result<(), WireError>,
    /// How long it may be reused (zero: not cached).
    pub(crate) ttl: Duration,
    /// Shared by every socket (no claims in the key).
    pub(crate) channel_scope: bool,
}

pub(crate) struct SubscribeCache {
    capacity: usize,
    decided: Mutex<Decided>,
    in_flight: Mutex<HashMap<Key, Arc<OnceCell<Decision>>>>,
}

/// How a decision was obtained (metric label).
pub(crate) enum Source {
    Hit,
    Coalesced,
    Miss,
}

impl SubscribeCache {
    pub(crate) fn new(capacity: usize) -> Self {
        SubscribeCache {
            capacity,
            decided: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &Key) -> Option<Result<(), WireError>> {
        let now = Instant::now();
        let wide = Key {
            claims: None,
            ..key.clone()
        };
        let mut g = self.decided.lock().unwrap_or_else(|e| e.into_inner());
        for k in [&wide, key] {
            match g.get(k) {
                Some((r, until)) if *until > now => return Some(r.clone()),
                Some(_) => {
                    g.remove(k);
                }
                None => {}
            }
        }
        None
    }

    fn store(&self, key: &Key, d: &Decision) {
        if d.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let key = if d.channel_scope {
            Key {
                claims: None,
                ..key.clone()
            }
        } else {
            key.clone()
        };
        let now = Instant::now();
        let mut g = self.decided.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() >= self.capacity {
            g.retain(|_, (_, until)| *until > now);
            while g.len() >= self.capacity {
                let Some(k) = g.keys().next().cloned() else {
                    break;
                };
                g.remove(&k);
            }
        }
        g.insert(key, (d.result.clone(), now + d.ttl));
    }

    /// The decision for `key`: cached, or shared with an identical request in flight,
    /// or asked with `ask`.
    pub(crate) async fn decide<F, Fut>(&self, key: Key, ask: F) -> (Result<(), WireError>, Source)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Decision>,
    {
        if let Some(r) = self.cached(&key) {
            return (r, Source::Hit);
        }
        let cell = {
            let mut g = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match g.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let c = Arc::new(OnceCell::new());
                    g.insert(key.clone(), c.clone());
                    c
                }
            }
        };
        let mut asked = false;
        let d = cell
            .get_or_init(|| {
                asked = true;
                ask()
            })
            .await
            .clone();
        if asked {
            self.store(&key, &d);
            let mut g = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if g.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                g.remove(&key);
            }
        }
        let source = if asked {
            Source::Miss
        } else {
            Source::Coalesced
        };
        (d.result, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(ch: &str, claims: Option<&str>) -> Key {
        Key {
            channel: ch.into(),
            data: "null".into(),
            claims: claims.map(Into::into),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn identical_requests_in_flight_share_one_call_and_ttl_caches() {
        let cache = Arc::new(SubscribeCache::new(10));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .decide(key("a", Some("u1")), || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Decision {
                            result: Ok(()),
                            ttl: Duration::from_secs(5),
                            channel_scope: true,
                        }
                    })
                    .await
                    .0
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // channel scope: another user is served from the cache
        let (r, s) = cache
            .decide(key("a", Some("u2")), || async { panic!("must be cached") })
            .await;
        assert!(r.is_ok() && matches!(s, Source::Hit));
        tokio::time::advance(Duration::from_secs(6)).await;
        let (r, s) = cache
            .decide(key("a", Some("u2")), || async {
                Decision {
                    result: Err(WireError::new("No", "no")),
                    ttl: Duration::ZERO,
                    channel_scope: false,
                }
            })
            .await;
        assert!(r.is_err() && matches!(s, Source::Miss));
    }

    #[tokio::test(start_paused = true)]
    async fn token_scoped_decisions_are_per_user_and_capacity_is_bounded() {
        let cache = SubscribeCache::new(2);
        let deny = || async {
            Decision {
                result: Err(WireError::new("No", "no")),
                ttl: Duration::from_secs(60),
                channel_scope: false,
            }
        };
        assert!(cache.decide(key("a", Some("u1")), deny).await.0.is_err());
        let (r, s) = cache
            .decide(key("a", Some("u2")), || async {
                Decision {
                    result: Ok(()),
                    ttl: Duration::from_secs(60),
                    channel_scope: false,
                }
            })
            .await;
        assert!(r.is_ok() && matches!(s, Source::Miss));
        let (r, s) = cache
            .decide(key("a", Some("u1")), || async { panic!("cached") })
            .await;
        assert!(r.is_err() && matches!(s, Source::Hit));
        assert!(cache.decide(key("b", Some("u1")), deny).await.0.is_err());
        assert!(cache.decide(key("c", Some("u1")), deny).await.0.is_err());
        assert!(cache.decided.lock().unwrap().len() <= 2);
    }
}
