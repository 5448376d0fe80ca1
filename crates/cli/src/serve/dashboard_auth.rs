//! State of the operator dashboard: the password, sessions (random tokens held in an
//! `HttpOnly; SameSite=Strict` cookie, each with its CSRF token) and per-IP failed-login
//! backoff. The pages are in [`super::dashboard`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::Request;
use hyper::body::Incoming;

/// Path prefix of every dashboard URL.
pub(crate) const PREFIX: &str = "/dashboard/";
/// Name of the session cookie.
pub(crate) const COOKIE: &str = "sc_dashboard";
/// A session ends this long after login.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once (the oldest go first).
const MAX_SESSIONS: usize = 64;
/// Failed logins from one IP allowed before the backoff starts.
pub(crate) const FREE_FAILURES: u32 = 3;
/// Longest wait imposed after failed logins.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(300);

struct Session {
    csrf: String,
    expires: Instant,
}

struct Failures {
    count: u32,
    /// No login attempt from this IP is checked before this instant.
    blocked_until: Instant,
}

/// Dashboard state: the password, live sessions and failed-login counters.
pub(crate) struct Dashboard {
    password: String,
    /// The effective configuration, secrets redacted (`--print-config`).
    pub(crate) config_toml: String,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

/// A fresh random token (256 bits, hex).
pub(crate) fn token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time comparison (length aside).
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Wait imposed after `count` failed logins: none for the first [`FREE_FAILURES`], then
/// 1 s doubling up to [`MAX_BACKOFF`].
pub(crate) fn backoff(count: u32) -> Duration {
    if count < FREE_FAILURES {
        return Duration::ZERO;
    }
    let exp = (count - FREE_FAILURES).min(16);
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

impl Dashboard {
    pub(crate) fn new(password: String, config_toml: String) -> Self {
        Self {
            password,
            config_toml,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The session of the request's cookie, if live: its CSRF token.
    pub(crate) fn session(&self, req: &Request<Incoming>) -> Option<String> {
        let given = cookie(req, COOKIE)?;
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.expires > now);
        sessions
            .iter()
            .find(|(t, _)| same(t.as_bytes(), given.as_bytes()))
            .map(|(_, s)| s.csrf.clone())
    }

    /// Check a login attempt; `Err(wait)` while the IP is backing off.
    pub(crate) fn try_login(&self, ip: IpAddr, password: &str) -> Result<Option<String>, Duration> {
        let now = Instant::now();
        {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = failures.get(&ip)
                && f.blocked_until > now
            {
                return Err(f.blocked_until - now);
            }
            if !same(password.as_bytes(), self.password.as_bytes()) {
                if failures.len() > 10_000 {
                    failures.retain(|_, f| f.blocked_until > now);
                }
                let f = failures.entry(ip).or_insert(Failures {
                    count: 0,
                    blocked_until: now,
                });
                f.count += 1;
                f.blocked_until = now + backoff(f.count);
                tracing::warn!(%ip, failures = f.count, "dashboard: wrong password");
                return Ok(None);
            }
            failures.remove(&ip);
        }
        let t = token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            t.clone(),
            Session {
                csrf: token(),
                expires: now + SESSION_TTL,
            },
        );
        tracing::info!(%ip, "dashboard: login");
        Ok(Some(t))
    }

    pub(crate) fn logout(&self, req: &Request<Incoming>) {
        if let Some(given) = cookie(req, COOKIE) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.retain(|t, _| !same(t.as_bytes(), given.as_bytes()));
        }
    }
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
}

/// `Set-Cookie` of a session (or of its removal with an empty token).
pub(crate) fn session_cookie(token: &str, secure: bool) -> String {
    let max_age = if token.is_empty() {
        0
    } else {
        SESSION_TTL.as_secs()
    };
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path={PREFIX}; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_after_the_free_attempts_and_is_capped() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::ZERO);
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(2));
        assert_eq!(backoff(100), MAX_BACKOFF);
    }

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (token(), token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn session_cookie_has_the_safety_flags() {
        let c = session_cookie("abc", false);
        assert!(c.contains("HttpOnly"));
        assert!(c.contains("SameSite=Strict"));
        assert!(c.contains("Path=/dashboard/"));
        assert!(!c.contains("Secure"));
        assert!(session_cookie("abc", true).contains("; Secure"));
    }

    #[test]
    fn wrong_passwords_back_off_per_ip() {
        let d = Dashboard::new("pw".into(), String::new());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            assert_eq!(d.try_login(ip, "nope"), Ok(None));
        }
        assert!(
            d.try_login(ip, "pw").is_err(),
            "blocked even with the right one"
        );
        assert!(matches!(d.try_login(other, "pw"), Ok(Some(_))));
    }
}
