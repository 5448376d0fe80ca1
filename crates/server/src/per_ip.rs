//! Limits per remote IP address ([`crate::Limits::max_connections_per_ip`],
//! [`crate::Limits::handshake_rate_per_ip`]): live WebSocket connections and WebSocket
//! upgrades per second. A refused upgrade gets HTTP 429. Loopback addresses are exempt
//! unless [`crate::Limits::per_ip_limits_on_loopback`] is set. IPv6 addresses count per
//! /64 network (one subscriber usually has a whole /64), IPv4-mapped ones as IPv4.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::limits::{Bucket, Limits, RateLimit};

/// Entries kept before the table is pruned of addresses without connections whose
/// upgrade budget has refilled.
const PRUNE_MIN: usize = 4096;

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections_per_ip` live connections already.
    Connections,
    /// `handshake_rate_per_ip` exceeded.
    HandshakeRate,
}

impl Refusal {
    /// The limit's name in metrics.
    pub(crate) fn limit(self) -> &'static str {
        match self {
            Refusal::Connections => "connections_per_ip",
            Refusal::HandshakeRate => "handshake_rate_per_ip",
        }
    }

    /// The body of the HTTP 429 answer.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refusal::Connections => "Too many connections from this address",
            Refusal::HandshakeRate => "Too many handshakes from this address",
        }
    }
}

#[derive(Default)]
struct Entry {
    conns: usize,
    upgrades: Option<Bucket>,
}

/// See the module docs.
pub(crate) struct PerIp {
    max_conns: Option<usize>,
    rate: Option<RateLimit>,
    on_loopback: bool,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    prune_at: usize,
}

impl PerIp {
    pub(crate) fn new(limits: &Limits) -> Self {
        PerIp {
            max_conns: limits.max_connections_per_ip,
            rate: limits.handshake_rate_per_ip,
            on_loopback: limits.per_ip_limits_on_loopback,
            table: Mutex::new(Table {
                entries: HashMap::new(),
                prune_at: PRUNE_MIN,
            }),
        }
    }

    /// Whether `ip` is subject to the limits at all.
    fn applies(&self, ip: IpAddr) -> bool {
        (self.max_conns.is_some() || self.rate.is_some())
            && (self.on_loopback || !ip.to_canonical().is_loopback())
    }

    /// Admit a WebSocket upgrade from `ip`: `Ok(Some(ip))` when it was counted (pass it
    /// to [`PerIp::release`] when the connection ends), `Ok(None)` when the address is
    /// not limited.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Option<IpAddr>, Refusal> {
        if !self.applies(ip) {
            return Ok(None);
        }
        let ip = key(ip);
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if t.entries.len() >= t.prune_at {
            t.entries
                .retain(|_, e| e.conns > 0 || e.upgrades.as_mut().is_some_and(|b| !b.is_full()));
            t.prune_at = (t.entries.len() * 2).max(PRUNE_MIN);
        }
        let e = t.entries.entry(ip).or_default();
        if let Some(max) = self.max_conns
            && e.conns >= max
        {
            return Err(Refusal::Connections);
        }
        if let Some(rate) = self.rate
            && !e
                .upgrades
                .get_or_insert_with(|| Bucket::new(rate))
                .try_take()
        {
            return Err(Refusal::HandshakeRate);
        }
        e.conns += 1;
        Ok(Some(ip))
    }

    /// A connection counted by [`PerIp::admit`] has ended.
    pub(crate) fn release(&self, ip: IpAddr) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = t.entries.get_mut(&ip) {
            e.conns = e.conns.saturating_sub(1);
            if e.conns == 0 && e.upgrades.is_none() {
                t.entries.remove(&ip);
            }
        }
    }

    /// [`PerIp::admit`] for an upgrade from `addr` (none: not limited), as a guard that
    /// releases the connection unless [`Admission::keep`] hands it on. A refusal is
    /// counted in the `limit_exceeded` metric and logged.
    pub(crate) fn admission(
        &self,
        addr: Option<std::net::SocketAddr>,
    ) -> Result<Admission<'_>, Refusal> {
        let Some(addr) = addr else {
            return Ok(Admission {
                per_ip: self,
                ip: None,
            });
        };
        self.admit(addr.ip())
            .map(|ip| Admission { per_ip: self, ip })
            .inspect_err(|refusal| {
                let limit = refusal.limit();
                crate::metrics::limit_exceeded(limit);
                tracing::info!(remote = %addr.ip(), limit, "upgrade refused by a per-IP limit");
            })
    }

    /// Live connections counted for `ip`.
    #[cfg(test)]
    fn conns(&self, ip: IpAddr) -> usize {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.entries.get(&ip).map_or(0, |e| e.conns)
    }
}

/// The address an IP is counted under: IPv4 (also IPv4-mapped) as is, IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// An admitted upgrade (see [`PerIp::admission`]).
pub(crate) struct Admission<'a> {
    per_ip: &'a PerIp,
    ip: Option<IpAddr>,
}

impl Admission<'_> {
    /// The connection goes on: the caller releases the address when it ends.
    pub(crate) fn keep(mut self) -> Option<IpAddr> {
        self.ip.take()
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if let Some(ip) = self.ip.take() {
            self.per_ip.release(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(conns: Option<usize>, rate: Option<RateLimit>, on_loopback: bool) -> Limits {
        Limits::default()
            .max_connections_per_ip(conns)
            .handshake_rate_per_ip(rate)
            .per_ip_limits_on_loopback(on_loopback)
    }

    #[tokio::test(start_paused = true)]
    async fn connections_and_upgrade_rate_are_limited_per_address() {
        let rate = RateLimit {
            per_second: 1,
            burst: 3,
        };
        let p = PerIp::new(&limits(Some(2), Some(rate), false));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(p.admit(a), Ok(Some(a)));
        assert_eq!(p.admit(a), Ok(Some(a)));
        assert_eq!(p.admit(a), Err(Refusal::Connections));
        assert_eq!(p.admit(b), Ok(Some(b)), "other addresses are not affected");
        p.release(a);
        // the third upgrade of `a` uses its last token; the next one waits a second
        assert_eq!(p.admit(a), Ok(Some(a)));
        p.release(a);
        assert_eq!(p.admit(a), Err(Refusal::HandshakeRate));
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert_eq!(p.admit(a), Ok(Some(a)));
        assert_eq!(p.conns(a), 2);
        // loopback is exempt unless asked for; IPv4-mapped addresses count as IPv4
        let lo: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(p.admit(lo), Ok(None));
        }
        // IPv6 addresses of one /64 share their limits
        let six = PerIp::new(&limits(Some(1), None, false));
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::7".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let net = six.admit(x).unwrap().unwrap();
        assert_eq!(net, "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_eq!(six.admit(y), Err(Refusal::Connections));
        assert!(six.admit(z).unwrap().is_some());
        six.release(net);
        assert!(six.admit(y).unwrap().is_some());
        let strict = PerIp::new(&limits(Some(1), None, true));
        assert_eq!(strict.admit(lo), Ok(Some("127.0.0.1".parse().unwrap())));
        assert_eq!(strict.admit(lo), Err(Refusal::Connections));
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_forgets_idle_addresses() {
        let rate = RateLimit {
            per_second: 1000,
            burst: 1,
        };
        let p = PerIp::new(&limits(None, Some(rate), false));
        for i in 0..(PRUNE_MIN as u32 * 3) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(p.admit(ip).is_ok());
            p.release(ip);
            tokio::time::advance(std::time::Duration::from_millis(1)).await;
        }
        let len = p.table.lock().unwrap().entries.len();
        assert!(len <= PRUNE_MIN * 2, "{len} entries kept");
    }
}
