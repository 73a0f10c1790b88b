//! `AuthThrottle`: a brake on key guessing. Key lookups that find no key are counted per
//! client address in a one-minute window; a client over `security.auth_failures_per_minute`
//! gets 429 for any key the cache does not know, without a database lookup. Memory is
//! bounded: at most `MAX_CLIENTS` windows, each gone a minute after it opened.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
const MAX_CLIENTS: u64 = 100_000;

/// A client as the throttle counts it: an IPv4 address, an IPv6 /64, or `None` for every
/// Unix-socket client together.
pub type ClientAddr = Option<IpAddr>;

struct Window {
    opened: Instant,
    failures: AtomicU32,
}

pub struct AuthThrottle {
    windows: moka::future::Cache<ClientAddr, Arc<Window>>,
    /// Failures per window; 0 turns the throttle off.
    limit: u32,
}

impl AuthThrottle {
    pub fn new(limit: u32) -> Self {
        Self {
            windows: moka::future::Cache::builder()
                .max_capacity(MAX_CLIENTS)
                .time_to_live(WINDOW)
                .build(),
            limit,
        }
    }

    /// The throttle's client for a peer address (`None`: a Unix-socket peer).
    pub fn client_of(peer: Option<SocketAddr>) -> ClientAddr {
        Some(match peer?.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        })
    }

    /// Whole seconds until `client` may present unknown keys again, if it is over the limit.
    pub async fn blocked_for(&self, client: ClientAddr) -> Option<u64> {
        if self.limit == 0 {
            return None;
        }
        let window = self.windows.get(&client).await?;
        let left = WINDOW.checked_sub(window.opened.elapsed())?;
        (window.failures.load(Ordering::Relaxed) >= self.limit)
            .then(|| (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1))
    }

    /// Counts a lookup by `client` that found no key.
    pub async fn record_failure(&self, client: ClientAddr) {
        if self.limit == 0 {
            return;
        }
        let window = self
            .windows
            .get_with(client, async {
                Arc::new(Window {
                    opened: Instant::now(),
                    failures: AtomicU32::new(0),
                })
            })
            .await;
        window.failures.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix::test]
    async fn a_client_is_blocked_after_the_limit_and_others_are_not() {
        let throttle = AuthThrottle::new(3);
        let a = AuthThrottle::client_of(Some("10.0.0.1:5000".parse().unwrap()));
        let b = AuthThrottle::client_of(Some("10.0.0.2:5000".parse().unwrap()));
        for _ in 0..2 {
            throttle.record_failure(a).await;
        }
        assert_eq!(throttle.blocked_for(a).await, None);
        throttle.record_failure(a).await;
        let secs = throttle.blocked_for(a).await.expect("blocked");
        assert!((1..=60).contains(&secs), "{secs}");
        assert_eq!(throttle.blocked_for(b).await, None);
        assert_eq!(throttle.blocked_for(None).await, None);
    }

    #[actix::test]
    async fn zero_turns_it_off() {
        let throttle = AuthThrottle::new(0);
        for _ in 0..10 {
            throttle.record_failure(None).await;
        }
        assert_eq!(throttle.blocked_for(None).await, None);
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let one = AuthThrottle::client_of(Some("[2001:db8:1:2:aaaa::1]:1".parse().unwrap()));
        let two = AuthThrottle::client_of(Some("[2001:db8:1:2:bbbb::9]:2".parse().unwrap()));
        assert_eq!(one, two);
        let mapped = AuthThrottle::client_of(Some("[::ffff:10.0.0.1]:1".parse().unwrap()));
        assert_eq!(mapped, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(AuthThrottle::client_of(None), None);
    }
}
