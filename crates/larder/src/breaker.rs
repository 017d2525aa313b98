//! The circuit breaker in front of Redis.
//!
//! Every Redis command already runs under a short timeout, but a Redis that
//! hangs still costs each request that timeout, and a burst of requests
//! piles up behind it. After `failure_threshold` failures in a row (timeouts,
//! I/O errors, a server that is loading or read-only) the breaker *opens*:
//! commands fail at once, without touching the network, so reads go
//! L1 → loader and writes skip Redis. After `open_for` it lets one command
//! through as a probe (*half-open*): success closes it, failure opens it
//! again for twice as long (up to `max_open_for`). An error *reply* (`ERR`,
//! `NOSCRIPT`, ...) is a healthy Redis answering, and counts as success.
//!
//! Closing after an outage is a *recovery*: the cache replays the
//! invalidations it could not deliver and flushes L1 (see `recovery.rs`).
//!
//! State lives behind a std `Mutex`: it is held for a few instructions and
//! never across an `.await`, which a tokio mutex would only make slower.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// When the breaker opens, and for how long.
///
/// ```
/// use larder::{BreakerSettings, Cache};
/// use std::time::Duration;
///
/// let builder = Cache::builder().redis_breaker(BreakerSettings {
///     failure_threshold: 3,
///     open_for: Duration::from_millis(500),
///     max_open_for: Duration::from_secs(10),
/// });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Failures in a row that open the breaker (default 5; 0 turns the
    /// breaker off).
    pub failure_threshold: u32,
    /// How long it stays open before probing (default 1 s).
    pub open_for: Duration,
    /// The longest it stays open, as failed probes double `open_for`
    /// (default 5 s: the longest a recovered Redis goes unused).
    pub max_open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failure_threshold: 5,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(5),
        }
    }
}

/// Where the breaker stands; see [`Cache::redis_breaker`](crate::Cache::redis_breaker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Redis is answering: commands go through.
    Closed,
    /// Redis failed repeatedly: commands fail at once, without network I/O.
    Open,
    /// One probe command is testing Redis; the others fail at once.
    HalfOpen,
}

impl BreakerState {
    /// The value of the `larder_redis_breaker_state` gauge: 0 closed,
    /// 1 half-open, 2 open.
    pub fn as_gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

#[derive(Debug)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant, open_for: Duration },
    HalfOpen { since: Instant, open_for: Duration },
}

/// Whether a command may run, and in what role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Run it; its outcome feeds the failure count.
    Go,
    /// Run it as the half-open probe; its outcome decides the state.
    Probe,
    /// Fail it now.
    Reject,
}

/// A circuit breaker. One per Redis tier.
pub(crate) struct Breaker {
    phase: Mutex<Phase>,
    settings: BreakerSettings,
    /// A probe that has not reported after this long is presumed lost (its
    /// future was dropped) and another is let through.
    probe_deadline: Duration,
    /// Woken on every recovery (open → closed). Shared by the breakers of
    /// a cluster's masters, so that one task hears every recovery.
    recovered: Arc<Notify>,
    /// The cluster master this breaker guards (`None`: the only server).
    node: Option<Arc<str>>,
}

impl Breaker {
    pub fn new(settings: BreakerSettings, op_timeout: Duration) -> Self {
        let breaker = Breaker {
            phase: Mutex::new(Phase::Closed { failures: 0 }),
            settings,
            probe_deadline: op_timeout * 2 + Duration::from_millis(100),
            recovered: Arc::new(Notify::new()),
            node: None,
        };
        breaker.publish(BreakerState::Closed);
        breaker
    }

    /// The breaker of one cluster master; its recoveries wake `recovered`.
    pub fn for_node(
        settings: BreakerSettings,
        op_timeout: Duration,
        node: &Arc<str>,
        recovered: Arc<Notify>,
    ) -> Self {
        let breaker = Breaker {
            phase: Mutex::new(Phase::Closed { failures: 0 }),
            settings,
            probe_deadline: op_timeout * 2 + Duration::from_millis(100),
            recovered,
            node: Some(Arc::clone(node)),
        };
        breaker.publish(BreakerState::Closed);
        breaker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks to run one command.
    pub fn admit(&self) -> Admission {
        if self.settings.failure_threshold == 0 {
            return Admission::Go;
        }
        let mut phase = self.lock();
        let now = Instant::now();
        match *phase {
            Phase::Closed { .. } => Admission::Go,
            Phase::Open { until, open_for } if now >= until => {
                *phase = Phase::HalfOpen {
                    since: now,
                    open_for,
                };
                drop(phase);
                self.publish(BreakerState::HalfOpen);
                Admission::Probe
            }
            Phase::HalfOpen { since, open_for }
                if now.duration_since(since) > self.probe_deadline =>
            {
                *phase = Phase::HalfOpen {
                    since: now,
                    open_for,
                };
                Admission::Probe
            }
            Phase::Open { .. } | Phase::HalfOpen { .. } => Admission::Reject,
        }
    }

    /// Reports how an admitted command went: `healthy` if Redis answered
    /// (even with an error reply).
    pub fn record(&self, admission: Admission, healthy: bool) {
        if self.settings.failure_threshold == 0 || admission == Admission::Reject {
            return;
        }
        let mut phase = self.lock();
        let now = Instant::now();
        let changed = match (&mut *phase, healthy) {
            (Phase::Closed { failures }, true) => {
                *failures = 0;
                None
            }
            (Phase::Closed { failures }, false) => {
                *failures += 1;
                (*failures >= self.settings.failure_threshold).then(|| {
                    let open_for = self.settings.open_for;
                    *phase = Phase::Open {
                        until: now + open_for,
                        open_for,
                    };
                    BreakerState::Open
                })
            }
            (Phase::HalfOpen { .. }, true) if admission == Admission::Probe => {
                *phase = Phase::Closed { failures: 0 };
                Some(BreakerState::Closed)
            }
            (Phase::HalfOpen { open_for, .. }, false) if admission == Admission::Probe => {
                let open_for = (*open_for * 2).min(self.settings.max_open_for);
                *phase = Phase::Open {
                    until: now + open_for,
                    open_for,
                };
                Some(BreakerState::Open)
            }
            // A command admitted before the breaker opened, finishing late:
            // the probe decides, not it.
            _ => None,
        };
        drop(phase);
        if let Some(state) = changed {
            self.publish(state);
            match state {
                BreakerState::Open => {
                    tracing::warn!(
                        node = self.node.as_deref().unwrap_or("redis"),
                        "redis circuit breaker open: serving from L1 and loaders, skipping redis"
                    )
                }
                BreakerState::Closed => {
                    tracing::info!(
                        node = self.node.as_deref().unwrap_or("redis"),
                        "redis circuit breaker closed: redis answers again"
                    );
                    self.recovered.notify_waiters();
                }
                BreakerState::HalfOpen => {}
            }
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// What is woken at each recovery, for a task that outlives a borrow.
    pub fn recovered_handle(&self) -> Arc<Notify> {
        Arc::clone(&self.recovered)
    }

    fn publish(&self, state: BreakerState) {
        match &self.node {
            // One gauge per master; `larder_redis_breaker_state` carries the
            // worst of them (set by the cluster's slot-map refresher).
            Some(node) => {
                metrics::gauge!("larder_redis_node_breaker_state", "node" => node.to_string())
                    .set(state.as_gauge())
            }
            None => metrics::gauge!("larder_redis_breaker_state").set(state.as_gauge()),
        }
        let to = match state {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        };
        metrics::counter!("larder_redis_breaker_transitions_total", "to" => to).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, open_for: Duration) -> Breaker {
        Breaker::new(
            BreakerSettings {
                failure_threshold: threshold,
                open_for,
                max_open_for: open_for * 4,
            },
            Duration::from_millis(50),
        )
    }

    #[test]
    fn opens_after_the_threshold_of_failures_in_a_row() {
        let b = breaker(3, Duration::from_secs(60));
        for _ in 0..2 {
            assert_eq!(b.admit(), Admission::Go);
            b.record(Admission::Go, false);
        }
        // A success resets the count.
        b.record(Admission::Go, true);
        for _ in 0..2 {
            b.record(Admission::Go, false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(Admission::Go, false);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Reject);
    }

    #[test]
    fn half_opens_for_one_probe_which_decides() {
        let b = breaker(1, Duration::ZERO);
        b.record(Admission::Go, false);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.admit(), Admission::Reject, "one probe at a time");
        // A late command from before does not close it.
        b.record(Admission::Go, true);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(Admission::Probe, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_doubles_the_open_time_up_to_the_cap() {
        let b = breaker(1, Duration::from_millis(1));
        b.record(Admission::Go, false);
        let mut last = Duration::from_millis(1);
        for _ in 0..5 {
            // Wait out the open time (bounded: at most 4 ms).
            while b.admit() != Admission::Probe {
                std::thread::yield_now();
            }
            b.record(Admission::Probe, false);
            let open_for = match *b.lock() {
                Phase::Open { open_for, .. } => open_for,
                ref other => panic!("{other:?}"),
            };
            assert!(
                open_for >= last && open_for <= Duration::from_millis(4),
                "{open_for:?}"
            );
            last = open_for;
        }
        assert_eq!(last, Duration::from_millis(4));
    }

    #[test]
    fn a_lost_probe_is_replaced() {
        let b = breaker(1, Duration::ZERO);
        b.record(Admission::Go, false);
        assert_eq!(b.admit(), Admission::Probe);
        // The probe's future is dropped and never reports.
        std::thread::sleep(Duration::from_millis(250)); // past the 200 ms probe deadline
        assert_eq!(b.admit(), Admission::Probe);
    }

    #[test]
    fn threshold_zero_turns_it_off() {
        let b = breaker(0, Duration::from_secs(60));
        for _ in 0..100 {
            b.record(Admission::Go, false);
        }
        assert_eq!(b.admit(), Admission::Go);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
