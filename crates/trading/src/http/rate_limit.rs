//! Rate limiting, as the article's API gateway does: per client IP, per
//! session, and tighter for login attempts. Over the limit a request gets a
//! 429 with `Retry-After` before any handler (or database) sees it.
//!
//! Each limiter is a GCRA (generic cell rate algorithm): one timestamp per
//! key, the "theoretical arrival time", instead of a bucket that needs a
//! refill task. State is per process: N instances allow N times the rate,
//! which is what a per-instance gateway does too.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};

use super::auth::bearer;
use super::error::ApiError;
use crate::app::AppState;

/// A rate: `per_sec` on average, up to `burst` at once. `per_sec == 0`
/// turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Requests per second allowed on average.
    pub per_sec: f64,
    /// Requests allowed back to back.
    pub burst: u32,
}

/// Past this many keys the map is swept of idle ones (a key is idle once
/// its theoretical arrival time has passed: it would start afresh anyway).
const SWEEP_ABOVE: usize = 50_000;

/// A GCRA limiter over hashed keys.
///
/// A std `Mutex` (not tokio's): it is held for a hash-map lookup and never
/// across an `.await`. Keys are hashed to `u64` with a per-process random
/// seed, so memory per client is a few words and a client cannot choose
/// keys that collide.
#[derive(Debug)]
pub struct Limiter {
    rate: Rate,
    interval: Duration,
    tolerance: Duration,
    hasher: RandomState,
    arrivals: Mutex<Arrivals>,
}

/// The limiter's state, under its lock.
#[derive(Debug)]
struct Arrivals {
    tat: HashMap<u64, Instant>,
    /// The size at which the next sweep runs: twice what the last one left
    /// (at least `SWEEP_ABOVE`), so that a flood of live keys costs one
    /// sweep per doubling rather than a full scan on every request.
    sweep_at: usize,
}

impl Limiter {
    /// A limiter at `rate` (`None` if the rate is 0: no limit).
    pub fn new(rate: Rate) -> Option<Limiter> {
        if rate.per_sec <= 0.0 || !rate.per_sec.is_finite() {
            return None;
        }
        let interval = Duration::from_secs_f64(1.0 / rate.per_sec);
        Some(Limiter {
            rate,
            interval,
            tolerance: interval * rate.burst.max(1),
            hasher: RandomState::new(),
            arrivals: Mutex::new(Arrivals {
                tat: HashMap::new(),
                sweep_at: SWEEP_ABOVE,
            }),
        })
    }

    /// The rate it enforces.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Admits one request for `key` at `now`, or says how long to wait.
    pub fn check(&self, key: impl Hash, now: Instant) -> Result<(), Duration> {
        let key = self.hasher.hash_one(key);
        let mut arrivals = match self.arrivals.lock() {
            Ok(guard) => guard,
            // A panic elsewhere while holding it cannot leave a timestamp
            // half written: keep using the map.
            Err(poisoned) => poisoned.into_inner(),
        };
        if arrivals.tat.len() > arrivals.sweep_at {
            arrivals.tat.retain(|_, tat| *tat > now);
            arrivals.sweep_at = (arrivals.tat.len() * 2).max(SWEEP_ABOVE);
        }
        let tat = arrivals.tat.get(&key).copied().unwrap_or(now).max(now);
        let next = tat + self.interval;
        if next.duration_since(now) > self.tolerance {
            return Err(next.duration_since(now) - self.tolerance);
        }
        arrivals.tat.insert(key, next);
        Ok(())
    }

    /// Keys held and the size of the next sweep (for tests).
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let a = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        (a.tat.len(), a.sweep_at)
    }
}

/// The service's limiters.
#[derive(Debug, Default)]
pub struct RateLimits {
    /// Every request, per client IP.
    pub per_ip: Option<Limiter>,
    /// Requests carrying a bearer token, per token.
    pub per_session: Option<Limiter>,
    /// `POST /api/sessions`, per client IP.
    pub login: Option<Limiter>,
    /// Peers whose `X-Real-IP` names the client (the gateway).
    pub trusted_proxies: Vec<IpAddr>,
}

/// The address a request is limited by: the peer's, or, when the peer is
/// a trusted proxy, the client address it passed on in `X-Real-IP`. A
/// missing or malformed header from a proxy leaves the proxy's own
/// address (one shared budget: fails closed, not open).
fn client_ip(req: &Request, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let named = req
        .headers()
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    Some(named.unwrap_or(peer))
}

fn retry_after(wait: Duration) -> ApiError {
    ApiError::TooManyRequests(wait.as_secs_f64().ceil().max(1.0) as u64)
}

/// The 429 for `req` if it is over a limit (checked by the front
/// layer, `front.rs`, before any handler or extractor: a limited
/// request costs a map lookup, not a session lookup or a query).
/// Operational endpoints (health, readiness, metrics) are never limited: a
/// monitor must not be locked out by the traffic it watches.
pub fn check(app: &AppState, req: &Request) -> Option<Response> {
    let path = req.uri().path();
    if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return None;
    }
    let now = Instant::now();
    // Behind a proxy every peer is the proxy: trust it to name the client
    // (`LARDER_TRUSTED_PROXIES`), or the limits become one shared budget.
    let limits = &app.limits;
    let ip = client_ip(req, &limits.trusted_proxies);
    if req.method() == Method::POST
        && path == "/api/sessions"
        && let Some(login) = &limits.login
        && let Err(wait) = login.check(("login", ip), now)
    {
        metrics::counter!("trading_rate_limited_total", "limit" => "login").increment(1);
        return Some(retry_after(wait).into_response());
    }
    if let Some(per_ip) = &limits.per_ip
        && let Err(wait) = per_ip.check(("ip", ip), now)
    {
        metrics::counter!("trading_rate_limited_total", "limit" => "ip").increment(1);
        return Some(retry_after(wait).into_response());
    }
    if let Some(per_session) = &limits.per_session
        && let Some(token) = bearer(req.headers())
    {
        let is_service = app
            .service_token
            .as_deref()
            .is_some_and(|s| crate::session::constant_time_eq(token.as_bytes(), s.as_bytes()));
        if !is_service && let Err(wait) = per_session.check(("session", token), now) {
            metrics::counter!("trading_rate_limited_total", "limit" => "session").increment(1);
            return Some(retry_after(wait).into_response());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(peer: &str, real_ip: Option<&str>) -> Request {
        let mut req = Request::new(axum::body::Body::empty());
        let peer: SocketAddr = format!("{peer}:4000").parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        if let Some(ip) = real_ip {
            req.headers_mut().insert("x-real-ip", ip.parse().unwrap());
        }
        req
    }

    #[test]
    fn many_live_keys_are_swept_once_per_doubling_and_idle_ones_forgotten() {
        let limiter = Limiter::new(Rate {
            per_sec: 1.0,
            burst: 1,
        })
        .unwrap();
        let t0 = Instant::now();
        // A flood of distinct clients, all live (each just sent a request).
        for k in 0..(SWEEP_ABOVE as u64 + 10) {
            assert!(limiter.check(k, t0).is_ok());
        }
        let (held, sweep_at) = limiter.held();
        assert_eq!(held, SWEEP_ABOVE + 10, "live keys are kept");
        assert!(
            sweep_at >= 2 * held - 20,
            "the next sweep waits for the map to double ({sweep_at})"
        );
        // Much later every key is idle: the next sweep forgets them all.
        // Much later every one of them is idle: enough new clients to pass
        // the sweep size, and the sweep forgets the idle ones.
        let later = t0 + Duration::from_secs(10);
        let late = (sweep_at - held + 2) as u64;
        for k in 0..late {
            assert!(limiter.check(("late", k), later).is_ok());
        }
        let (held, sweep_at) = limiter.held();
        assert_eq!(held as u64, late, "only the late clients are left");
        assert_eq!(sweep_at, (2 * (held - 1)).max(SWEEP_ABOVE));
    }

    #[test]
    fn only_a_trusted_proxy_names_the_client() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // From the proxy: the client it names.
        assert_eq!(
            client_ip(&from("127.0.0.1", Some("10.1.2.3")), &[proxy]),
            ip("10.1.2.3")
        );
        assert_eq!(
            client_ip(&from("127.0.0.1", Some(" ::1 ")), &[proxy]),
            ip("::1")
        );
        // From anyone else, the header is the client's own claim: ignored.
        assert_eq!(
            client_ip(&from("10.9.9.9", Some("10.1.2.3")), &[proxy]),
            ip("10.9.9.9")
        );
        // No proxy trusted: never read.
        assert_eq!(
            client_ip(&from("127.0.0.1", Some("10.1.2.3")), &[]),
            ip("127.0.0.1")
        );
        // A proxy that sent nothing usable: its own address.
        assert_eq!(
            client_ip(&from("127.0.0.1", Some("not an ip")), &[proxy]),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_ip(&from("127.0.0.1", None), &[proxy]),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn allows_the_burst_then_the_rate() {
        let limiter = Limiter::new(Rate {
            per_sec: 10.0,
            burst: 5,
        })
        .unwrap();
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(limiter.check("a", t0).is_ok(), "request {i} of the burst");
        }
        let wait = limiter.check("a", t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another key has its own budget.
        assert!(limiter.check("b", t0).is_ok());
        // One interval later, one more request fits.
        assert!(limiter.check("a", t0 + Duration::from_millis(100)).is_ok());
        assert!(limiter.check("a", t0 + Duration::from_millis(100)).is_err());
        // After a long pause the whole burst is back.
        let later = t0 + Duration::from_secs(10);
        for _ in 0..5 {
            assert!(limiter.check("a", later).is_ok());
        }
    }

    #[test]
    fn zero_rate_means_no_limiter() {
        assert!(
            Limiter::new(Rate {
                per_sec: 0.0,
                burst: 1
            })
            .is_none()
        );
    }

    #[test]
    fn memory_stays_bounded_under_many_keys() {
        let limiter = Limiter::new(Rate {
            per_sec: 1000.0,
            burst: 1,
        })
        .unwrap();
        let t0 = Instant::now();
        for i in 0..(SWEEP_ABOVE * 3) {
            // Each key idle by the time the next ones arrive.
            let _ = limiter.check(i, t0 + Duration::from_millis(i as u64));
        }
        let len = limiter.held().0;
        assert!(len <= SWEEP_ABOVE + 1, "{len} keys kept");
    }
}
