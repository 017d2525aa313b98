//! Per-family counters, exported through the `metrics` facade.
//!
//! Labels are the family name and a small fixed set of results: never the key,
//! whose cardinality would swamp any metrics backend.
//!
//! Handles are registered once, when a family is opened, so the hot path is
//! an atomic add rather than a registry lookup. The consequence: install your
//! `metrics` recorder (e.g. the Prometheus exporter) *before* building the
//! cache, or the handles will point at the no-op recorder.
//!
//! Each family also keeps its own atomic totals, readable with
//! [`Family::stats`](crate::Family::stats) without any recorder.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `larder_cache_requests_total` | counter | `family`, `result` = `hit_l1` / `hit_l2` / `stale` / `miss` / `negative_hit` |
//! | `larder_refreshes_total` | counter | `family`, `result` = `ok` / `error` (background refreshes) |
//! | `larder_lease_waits_total`, `larder_lease_timeouts_total` | counter | `family` (waits for another process's load) |
//! | `larder_loader_timeouts_total` | counter | `family` (callers past the hard timeout) |
//! | `larder_loader_calls_total` | counter | `family` |
//! | `larder_loader_errors_total` | counter | `family` |
//! | `larder_loader_duration_seconds` | histogram | `family` |
//! | `larder_decode_errors_total` | counter | `family` |
//! | `larder_redis_errors_total` | counter | `family` |
//! | `larder_oversize_values_total` | counter | `family` |
//! | `larder_l1_evictions_total` | counter | (none: L1 is shared by all families) |
//! | `larder_write_behind_enqueued_total` | counter | `family` |
//! | `larder_write_behind_persisted_total` | counter | `family` |
//! | `larder_write_behind_retries_total` | counter | `family` |
//! | `larder_write_behind_dead_letters_total` | counter | `family` |
//! | `larder_write_behind_batch_size` | histogram | `family` |
//! | `larder_write_behind_queue_length` | gauge | `family` (entries waiting or in progress) |
//! | `larder_write_behind_lag_seconds` | gauge | `family` (age of the oldest) |
//! | `larder_bus_events_total`, `larder_bus_flushes_total{reason}`, `larder_bus_reconnects_total` | counter | the invalidation bus |
//! | `larder_redis_breaker_state` | gauge | 0 closed, 1 half-open, 2 open |
//! | `larder_redis_breaker_transitions_total` | counter | `to` = `open` / `half_open` / `closed` |
//! | `larder_redis_recoveries_total` | counter | recoveries after an outage (journal replayed, L1 flushed) |
//! | `larder_invalidations_deferred_total` | counter | `kind` = `key` / `tag` / `pattern` (waiting for Redis) |

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};

/// A snapshot of one family's counters since the cache was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FamilyStats {
    /// Values served from the in-process tier.
    pub hits_l1: u64,
    /// Values served from Redis.
    pub hits_l2: u64,
    /// Remembered "not found" answers served from either tier.
    pub negative_hits: u64,
    /// Values served past their TTL, within the family's grace window.
    pub stale_hits: u64,
    /// Background refreshes that loaded a value.
    pub refreshes: u64,
    /// Background refreshes whose load failed (the stale value was kept).
    pub refresh_failures: u64,
    /// Loads that waited for another process's lease.
    pub lease_waits: u64,
    /// Waits for another process's lease that timed out (then loaded here).
    pub lease_timeouts: u64,
    /// Callers that gave up on a load at the hard timeout.
    pub loader_timeouts: u64,
    /// Requests that had to wait for the loader (including those that shared
    /// another caller's load).
    pub misses: u64,
    /// Times the loader actually ran.
    pub loader_calls: u64,
    /// Times the loader returned an error.
    pub loader_errors: u64,
    /// Values in Redis that did not decode (and were deleted).
    pub decode_errors: u64,
    /// Redis commands that failed or timed out.
    pub redis_errors: u64,
    /// Values too large to cache.
    pub oversize: u64,
    /// Write-behind entries queued and not yet acknowledged, as the last
    /// worker poll in this process saw them (0 without a worker here).
    pub write_behind_pending: u64,
    /// Age of the oldest of those entries, in milliseconds (the lag).
    pub write_behind_lag_ms: u64,
}

impl FamilyStats {
    /// All requests.
    pub fn requests(&self) -> u64 {
        self.hits_l1 + self.hits_l2 + self.negative_hits + self.stale_hits + self.misses
    }

    /// Share of requests answered without the loader, in `[0, 1]`; `None`
    /// before the first request. The article's rule of thumb: below 0.8,
    /// rethink what you cache and for how long.
    pub fn hit_rate(&self) -> Option<f64> {
        let total = self.requests();
        (total > 0).then(|| (total - self.misses) as f64 / total as f64)
    }
}

#[derive(Default)]
struct Totals {
    hits_l1: AtomicU64,
    hits_l2: AtomicU64,
    negative_hits: AtomicU64,
    stale_hits: AtomicU64,
    refreshes: AtomicU64,
    refresh_failures: AtomicU64,
    lease_waits: AtomicU64,
    lease_timeouts: AtomicU64,
    loader_timeouts: AtomicU64,
    misses: AtomicU64,
    loader_calls: AtomicU64,
    loader_errors: AtomicU64,
    decode_errors: AtomicU64,
    redis_errors: AtomicU64,
    oversize: AtomicU64,
    wb_pending: AtomicU64,
    wb_lag_ms: AtomicU64,
}

/// How one request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    HitL1,
    HitL2,
    NegativeHit,
    Stale,
    Miss,
}

impl Outcome {
    /// The `result` label of `larder_cache_requests_total`.
    fn label(self) -> &'static str {
        match self {
            Outcome::HitL1 => "hit_l1",
            Outcome::HitL2 => "hit_l2",
            Outcome::NegativeHit => "negative_hit",
            Outcome::Stale => "stale",
            Outcome::Miss => "miss",
        }
    }
}

/// The metric handles and totals of one family.
pub(crate) struct FamilyMetrics {
    /// The family's name, for trace events.
    family: Box<str>,
    hit_l1: Counter,
    hit_l2: Counter,
    negative_hit: Counter,
    stale: Counter,
    miss: Counter,
    refresh_ok: Counter,
    refresh_failed: Counter,
    lease_waits: Counter,
    lease_timeouts: Counter,
    loader_timeouts: Counter,
    loader_calls: Counter,
    loader_errors: Counter,
    loader_seconds: Histogram,
    decode_errors: Counter,
    redis_errors: Counter,
    oversize: Counter,
    wb_enqueued: Counter,
    wb_persisted: Counter,
    wb_retries: Counter,
    wb_dead: Counter,
    wb_batch: Histogram,
    wb_queue: Gauge,
    wb_lag: Gauge,
    totals: Totals,
}

/// Registers descriptions once per process; harmless to repeat.
pub(crate) fn describe() {
    metrics::describe_gauge!(
        "larder_redis_breaker_state",
        "Circuit breaker in front of Redis: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        "larder_redis_breaker_transitions_total",
        "Circuit breaker transitions, by the state entered."
    );
    describe_counter!(
        "larder_redis_recoveries_total",
        "Recoveries after a Redis outage: deferred invalidations replayed, L1 flushed."
    );
    describe_counter!(
        "larder_invalidations_deferred_total",
        "Invalidations that could not reach Redis and wait to be replayed, by kind."
    );
    describe_counter!(
        "larder_cache_requests_total",
        "Cache requests by family and result (hit_l1, hit_l2, stale, miss, negative_hit)."
    );
    describe_counter!(
        "larder_loader_calls_total",
        "Loader (database) calls by family."
    );
    describe_counter!(
        "larder_loader_errors_total",
        "Loader calls that returned an error."
    );
    describe_histogram!(
        "larder_loader_duration_seconds",
        metrics::Unit::Seconds,
        "Time spent in the loader."
    );
    describe_counter!(
        "larder_decode_errors_total",
        "Values in Redis that did not decode and were treated as misses."
    );
    describe_counter!(
        "larder_redis_errors_total",
        "Redis commands that failed or timed out."
    );
    describe_counter!(
        "larder_oversize_values_total",
        "Values over the family's max_value_size, returned uncached."
    );
    describe_counter!(
        "larder_l1_evictions_total",
        "L1 entries evicted to stay within the byte budget."
    );
    describe_counter!(
        "larder_write_behind_enqueued_total",
        "Writes queued by write_behind."
    );
    describe_counter!(
        "larder_write_behind_persisted_total",
        "Queued writes persisted by a worker."
    );
    describe_counter!(
        "larder_write_behind_retries_total",
        "Queued writes scheduled for a retry."
    );
    describe_counter!(
        "larder_write_behind_dead_letters_total",
        "Queued writes moved to the dead-letter stream."
    );
    describe_histogram!(
        "larder_write_behind_batch_size",
        "Writes per persisted batch, after coalescing."
    );
    describe_gauge!(
        "larder_write_behind_queue_length",
        "Writes waiting or in progress."
    );
    describe_gauge!(
        "larder_write_behind_lag_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest queued write."
    );
    describe_counter!(
        "larder_bus_events_total",
        "Invalidations from other processes applied to L1."
    );
    describe_counter!(
        "larder_bus_flushes_total",
        "Whole-L1 flushes because invalidations may have been missed."
    );
    describe_counter!(
        "larder_bus_reconnects_total",
        "Reconnections of the invalidation bus listener."
    );
}

impl FamilyMetrics {
    pub fn new(family: &str) -> Self {
        let family = family.to_owned();
        let requests = |result: &'static str| counter!("larder_cache_requests_total", "family" => family.clone(), "result" => result);
        FamilyMetrics {
            family: family.clone().into_boxed_str(),
            hit_l1: requests(Outcome::HitL1.label()),
            hit_l2: requests(Outcome::HitL2.label()),
            negative_hit: requests(Outcome::NegativeHit.label()),
            stale: requests(Outcome::Stale.label()),
            miss: requests(Outcome::Miss.label()),
            refresh_ok: counter!("larder_refreshes_total", "family" => family.clone(), "result" => "ok"),
            refresh_failed: counter!("larder_refreshes_total", "family" => family.clone(), "result" => "error"),
            lease_waits: counter!("larder_lease_waits_total", "family" => family.clone()),
            lease_timeouts: counter!("larder_lease_timeouts_total", "family" => family.clone()),
            loader_timeouts: counter!("larder_loader_timeouts_total", "family" => family.clone()),
            loader_calls: counter!("larder_loader_calls_total", "family" => family.clone()),
            loader_errors: counter!("larder_loader_errors_total", "family" => family.clone()),
            loader_seconds: histogram!("larder_loader_duration_seconds", "family" => family.clone()),
            decode_errors: counter!("larder_decode_errors_total", "family" => family.clone()),
            redis_errors: counter!("larder_redis_errors_total", "family" => family.clone()),
            oversize: counter!("larder_oversize_values_total", "family" => family.clone()),
            wb_enqueued: counter!("larder_write_behind_enqueued_total", "family" => family.clone()),
            wb_persisted: counter!("larder_write_behind_persisted_total", "family" => family.clone()),
            wb_retries: counter!("larder_write_behind_retries_total", "family" => family.clone()),
            wb_dead: counter!("larder_write_behind_dead_letters_total", "family" => family.clone()),
            wb_batch: histogram!("larder_write_behind_batch_size", "family" => family.clone()),
            wb_queue: gauge!("larder_write_behind_queue_length", "family" => family.clone()),
            wb_lag: gauge!("larder_write_behind_lag_seconds", "family" => family),
            totals: Totals::default(),
        }
    }

    #[inline]
    pub fn request(&self, outcome: Outcome) {
        // Which tier answered, as an event on the caller's span (a request's,
        // exported as a span event by an OpenTelemetry layer). Off, this is
        // one check of the callsite's cached interest: no fields evaluated,
        // nothing allocated.
        tracing::debug!(
            target: "larder::request",
            family = &*self.family,
            tier = outcome.label(),
            "cache answer"
        );
        let (c, t) = match outcome {
            Outcome::HitL1 => (&self.hit_l1, &self.totals.hits_l1),
            Outcome::HitL2 => (&self.hit_l2, &self.totals.hits_l2),
            Outcome::NegativeHit => (&self.negative_hit, &self.totals.negative_hits),
            Outcome::Stale => (&self.stale, &self.totals.stale_hits),
            Outcome::Miss => (&self.miss, &self.totals.misses),
        };
        c.increment(1);
        t.fetch_add(1, Relaxed);
    }

    pub fn loader_call(&self, took: Duration, ok: bool) {
        self.loader_calls.increment(1);
        self.totals.loader_calls.fetch_add(1, Relaxed);
        self.loader_seconds.record(took.as_secs_f64());
        if !ok {
            self.loader_errors.increment(1);
            self.totals.loader_errors.fetch_add(1, Relaxed);
        }
    }

    pub fn refresh(&self, ok: bool) {
        if ok {
            self.refresh_ok.increment(1);
            self.totals.refreshes.fetch_add(1, Relaxed);
        } else {
            self.refresh_failed.increment(1);
            self.totals.refresh_failures.fetch_add(1, Relaxed);
        }
    }

    pub fn lease_wait(&self) {
        self.lease_waits.increment(1);
        self.totals.lease_waits.fetch_add(1, Relaxed);
    }

    pub fn lease_timeout(&self) {
        self.lease_timeouts.increment(1);
        self.totals.lease_timeouts.fetch_add(1, Relaxed);
    }

    pub fn loader_timeout(&self) {
        self.loader_timeouts.increment(1);
        self.totals.loader_timeouts.fetch_add(1, Relaxed);
    }

    pub fn decode_error(&self) {
        self.decode_errors.increment(1);
        self.totals.decode_errors.fetch_add(1, Relaxed);
    }

    pub fn redis_error(&self) {
        self.redis_errors.increment(1);
        self.totals.redis_errors.fetch_add(1, Relaxed);
    }

    pub fn oversize(&self) {
        self.oversize.increment(1);
        self.totals.oversize.fetch_add(1, Relaxed);
    }

    pub fn write_behind_enqueued(&self) {
        self.wb_enqueued.increment(1);
    }

    pub fn write_behind_persisted(&self, n: usize) {
        self.wb_persisted.increment(n as u64);
    }

    pub fn write_behind_retry(&self) {
        self.wb_retries.increment(1);
    }

    pub fn write_behind_dead_letter(&self) {
        self.wb_dead.increment(1);
    }

    pub fn write_behind_batch(&self, n: usize) {
        self.wb_batch.record(n as f64);
    }

    pub fn write_behind_backlog(&self, len: u64, oldest: Duration) {
        self.wb_queue.set(len as f64);
        self.wb_lag.set(oldest.as_secs_f64());
        self.totals.wb_pending.store(len, Relaxed);
        self.totals
            .wb_lag_ms
            .store(oldest.as_millis().min(u64::MAX as u128) as u64, Relaxed);
    }

    pub fn snapshot(&self) -> FamilyStats {
        let t = &self.totals;
        FamilyStats {
            hits_l1: t.hits_l1.load(Relaxed),
            hits_l2: t.hits_l2.load(Relaxed),
            negative_hits: t.negative_hits.load(Relaxed),
            stale_hits: t.stale_hits.load(Relaxed),
            refreshes: t.refreshes.load(Relaxed),
            refresh_failures: t.refresh_failures.load(Relaxed),
            lease_waits: t.lease_waits.load(Relaxed),
            lease_timeouts: t.lease_timeouts.load(Relaxed),
            loader_timeouts: t.loader_timeouts.load(Relaxed),
            misses: t.misses.load(Relaxed),
            loader_calls: t.loader_calls.load(Relaxed),
            loader_errors: t.loader_errors.load(Relaxed),
            decode_errors: t.decode_errors.load(Relaxed),
            redis_errors: t.redis_errors.load(Relaxed),
            oversize: t.oversize.load(Relaxed),
            write_behind_pending: t.wb_pending.load(Relaxed),
            write_behind_lag_ms: t.wb_lag_ms.load(Relaxed),
        }
    }
}
