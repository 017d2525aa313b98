//! What the dashboard shows: once a second, a sample of requests/s,
//! latency p50/p99, database queries/s, hit rate per family, the Redis
//! breaker and the write-behind backlog, kept for the last two minutes.
//!
//! Computed here from larder's own counters (`Family::stats`) and two
//! process-wide counters, so the page needs no Prometheus server.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use larder::FamilyStats;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::app::AppState;

/// Samples kept (one per [`INTERVAL`]).
pub const KEEP: usize = 120;

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Every database query, counted by `Db::bounded` (and the `/metrics`
/// counter beside it).
pub static DB_QUERIES: AtomicU64 = AtomicU64::new(0);

/// One second of the service.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = StatsPoint)]
pub struct Point {
    /// Unix milliseconds at the end of the second.
    pub t: u64,
    /// Requests answered.
    pub requests_per_sec: f64,
    /// Median latency (`null` without requests).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency.
    pub p99_ms: Option<f64>,
    /// Database queries.
    pub db_queries_per_sec: f64,
    /// Per family: share of lookups answered without the loader, from 0
    /// to 1 (`null` when the family served no reads).
    pub hit_rate: BTreeMap<String, Option<f64>>,
    /// `none`, `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    /// Write-behind entries waiting.
    pub write_behind_pending: u64,
    /// Age of the oldest.
    pub write_behind_lag_ms: u64,
}

/// Request latencies of the current second and the kept samples.
///
/// std `Mutex`es: each is held for a histogram record or a deque push,
/// never across an `.await`. The latencies are sharded by thread: every
/// request records one, and with a single histogram the runtime's workers
/// met on its lock often enough to park on it (a futex wait and a context
/// switch, per the ceiling bench's profile); with a shard each they never
/// do, and the sampler merges the shards once a second.
pub struct Live {
    requests: AtomicU64,
    latency: [Mutex<Histogram<u64>>; SHARDS],
    points: Mutex<VecDeque<Point>>,
}

/// Latency shards: more than the workers a small machine runs.
const SHARDS: usize = 8;

/// Microseconds, 1 µs to 1 h, 2 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("constant histogram bounds are valid")
}

/// This thread's latency shard: threads take them in turn.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

impl Default for Live {
    fn default() -> Self {
        Live {
            requests: AtomicU64::new(0),
            latency: std::array::from_fn(|_| Mutex::new(latency_histogram())),
            points: Mutex::new(VecDeque::with_capacity(KEEP)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    /// Records one answered request.
    pub fn record(&self, took: Duration) {
        self.requests.fetch_add(1, Relaxed);
        let us = (took.as_micros() as u64).clamp(1, 3_600_000_000);
        let _ = lock(&self.latency[shard()]).record(us);
    }

    /// The latencies recorded since the last call, all shards merged; the
    /// shards start over.
    fn take_latencies(&self) -> Histogram<u64> {
        let mut all = latency_histogram();
        for shard in &self.latency {
            let mut h = lock(shard);
            // Same bounds: cannot fail.
            let _ = all.add(&*h);
            h.reset();
        }
        all
    }

    /// The kept samples, oldest first.
    pub fn points(&self) -> Vec<Point> {
        lock(&self.points).iter().cloned().collect()
    }
}

/// The Redis breaker as the dashboard and `/readyz` name it: `none`
/// (no Redis), `closed`, `open` or `half_open`.
pub fn redis_state(app: &AppState) -> &'static str {
    match app.cache.redis_breaker() {
        None => "none",
        Some(larder::BreakerState::Closed) => "closed",
        Some(larder::BreakerState::Open) => "open",
        Some(larder::BreakerState::HalfOpen) => "half_open",
    }
}

/// Starts the once-a-second sampler; it stops when the handle is dropped.
pub fn spawn(app: AppState) -> Sampler {
    Sampler(tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_db = DB_QUERIES.load(Relaxed);
        let mut last_families: Vec<(String, FamilyStats)> = app.family_stats();
        tick.tick().await;
        loop {
            tick.tick().await;
            let requests = app.live.requests.swap(0, Relaxed);
            let (p50, p99) = {
                let h = app.live.take_latencies();
                if h.is_empty() {
                    (None, None)
                } else {
                    (
                        Some(h.value_at_quantile(0.5) as f64 / 1000.0),
                        Some(h.value_at_quantile(0.99) as f64 / 1000.0),
                    )
                }
            };
            let db = DB_QUERIES.load(Relaxed);
            let families = app.family_stats();
            let mut hit_rate = BTreeMap::new();
            let (mut pending, mut lag) = (0, 0);
            for (name, now) in &families {
                let before = last_families
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, s)| *s)
                    .unwrap_or_default();
                let lookups = now.requests().saturating_sub(before.requests());
                let misses = now.misses.saturating_sub(before.misses);
                hit_rate.insert(
                    name.clone(),
                    (lookups > 0).then(|| (lookups - misses.min(lookups)) as f64 / lookups as f64),
                );
                pending += now.write_behind_pending;
                lag = lag.max(now.write_behind_lag_ms);
            }
            let point = Point {
                t: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                requests_per_sec: requests as f64,
                p50_ms: p50,
                p99_ms: p99,
                db_queries_per_sec: db.saturating_sub(last_db) as f64,
                hit_rate,
                breaker: redis_state(&app),
                write_behind_pending: pending,
                write_behind_lag_ms: lag,
            };
            last_db = db;
            last_families = families;
            let mut points = lock(&app.live.points);
            if points.len() == KEEP {
                points.pop_front();
            }
            points.push_back(point);
        }
    }))
}

/// The running sampler; dropping it stops it.
pub struct Sampler(JoinHandle<()>);

impl Drop for Sampler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_from_every_thread_are_merged_once() {
        let live = std::sync::Arc::new(Live::default());
        let threads: Vec<_> = (0..2 * SHARDS as u64)
            .map(|t| {
                let live = live.clone();
                std::thread::spawn(move || {
                    for i in 0..1_000 {
                        live.record(Duration::from_micros(100 + t * 1_000 + i % 10));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let all = live.take_latencies();
        assert_eq!(all.len(), 2 * SHARDS as u64 * 1_000);
        assert!(all.min() >= 100 && all.max() >= (2 * SHARDS as u64 - 1) * 1_000);
        assert_eq!(live.requests.load(Relaxed), 2 * SHARDS as u64 * 1_000);
        assert!(live.take_latencies().is_empty(), "the shards start over");
    }
}
