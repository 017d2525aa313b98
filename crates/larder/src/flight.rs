//! Single-flight: at most one load per key per process at a time.
//!
//! The first caller to miss a key creates the load as a shared future and
//! records a weak handle to it; every caller that misses the same key while it
//! runs awaits that future instead of loading again. N concurrent callers on a
//! cold key cause one L2 read and at most one loader call, and all of them get
//! its value, or its error.
//!
//! The load is driven by whoever waits on it: usually the first caller, in
//! its own task, so a lone miss costs no task spawn and no cross-thread
//! wake-up. If that caller is cancelled (its HTTP client hung up, a timeout
//! fired), the others keep polling the same future and the load carries on.
//! Only when every waiter has given up is the load dropped, and with it its
//! entry here (the map holds a weak handle, so an abandoned load cannot leak).
//! Because any waiter may drive it, from any task, loaders must be
//! `Send + 'static`: clone the pool or client handle into the closure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, WeakShared};

use crate::Error;
use crate::tier::memory::AnyValue;

/// The key a refresh runs under in the flight map, beside the key's reads.
pub(crate) fn refresh_key(key: &str) -> String {
    // `#` is escaped in every part and absent from templates and namespaces,
    // so this cannot be another key.
    format!("{key}{REFRESH}")
}

const REFRESH: &str = "#refresh";

/// Where a value came from, for the hit/miss counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// L1 (found by the load task's re-check).
    L1,
    /// L2.
    L2,
    /// The loader.
    Loader,
}

/// The result of a load, shared by every caller that waited on it.
#[derive(Clone)]
pub(crate) struct Lookup {
    /// The value, or `None` for "not found" (fresh from the loader, or a
    /// remembered negative entry).
    pub value: Option<AnyValue>,
    pub source: Source,
    /// Past its TTL, served within the family's grace window.
    pub stale: bool,
}

pub(crate) type Outcome = Result<Lookup, Error>;
pub(crate) type SharedOutcome = Shared<BoxFuture<'static, Outcome>>;
type WeakOutcome = WeakShared<BoxFuture<'static, Outcome>>;
pub(crate) type BatchOutcome = Result<HashMap<String, Lookup>, Error>;

/// The in-flight loads of one cache.
///
/// A std `Mutex`, not a tokio one: it is held only to look up or insert a map
/// entry, never across an `.await`, and a std lock is much cheaper for that.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Flight>>,
    /// Writes in progress, per key: a write voided by a later write or
    /// invalidation (here or, through the bus, in another process) must not
    /// put its value in L1, which may already be older than Redis's.
    writes: Mutex<HashMap<String, Vec<WriteFlag>>>,
    next_id: AtomicU64,
}

/// One write in progress: its id and its void flag.
type WriteFlag = (u64, Arc<AtomicBool>);

/// A write in progress; see [`Flights::begin_write`].
pub(crate) struct WriteGuard {
    flights: Arc<Flights>,
    key: String,
    id: u64,
    void: Arc<AtomicBool>,
}

impl WriteGuard {
    /// Whether a later write or invalidation of the key happened meanwhile.
    pub fn is_void(&self) -> bool {
        self.void.load(Ordering::Acquire)
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        let mut writes = self.flights.lock_writes();
        if let Some(list) = writes.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                writes.remove(&self.key);
            }
        }
    }
}

/// One running load of one key.
struct Flight {
    id: u64,
    outcome: WeakOutcome,
    /// Set when the key is invalidated or written while the load runs: the
    /// load may have read the old row, so it must not fill the cache.
    void: Arc<AtomicBool>,
}

/// Removes a flight's keys from the map when its load ends: normally, by a
/// panic in the loader, or because every waiter gave up.
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    id: u64,
    keys: Vec<(String, Arc<AtomicBool>)>,
}

impl FlightGuard {
    /// Whether `key` was invalidated or written since this load started, in
    /// which case its result must not be stored.
    pub fn is_void(&self, key: &str) -> bool {
        self.keys
            .iter()
            .any(|(k, void)| k == key && void.load(Ordering::Acquire))
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        for (key, _) in &self.keys {
            if map.get(key).is_some_and(|f| f.id == self.id) {
                map.remove(key);
            }
        }
    }
}

/// Makes a load shareable, turning a panic in the loader into an error for
/// every waiter (the guard inside unwinds and clears the flight).
fn share<T: Clone + Send + 'static>(
    load: BoxFuture<'static, Result<T, Error>>,
) -> Shared<BoxFuture<'static, Result<T, Error>>> {
    AssertUnwindSafe(load)
        .catch_unwind()
        .map(|caught| caught.unwrap_or(Err(Error::LoaderPanicked)))
        .boxed()
        .shared()
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight>> {
        // A panic while holding this lock can only come from a bug in a map
        // operation; the map itself stays consistent, so keep using it.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins the load of `key` if one is running; otherwise makes
    /// `start(guard)` the load. The load must keep `guard` alive until it has
    /// filled the cache, so that a caller arriving later finds either the
    /// flight or the filled value.
    pub fn join_or_start(
        self: &Arc<Self>,
        key: &str,
        start: impl FnOnce(FlightGuard) -> BoxFuture<'static, Outcome>,
    ) -> SharedOutcome {
        let mut map = self.lock();
        if let Some(flight) = map.get(key).and_then(|f| f.outcome.upgrade()) {
            return flight;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let void = Arc::new(AtomicBool::new(false));
        let guard = FlightGuard {
            flights: Arc::clone(self),
            id,
            keys: vec![(key.to_owned(), Arc::clone(&void))],
        };
        let flight = share(start(guard));
        if let Some(outcome) = flight.downgrade() {
            map.insert(key.to_owned(), Flight { id, outcome, void });
        }
        flight
    }

    /// The batch form, for `get_many`: joins the keys already in flight and
    /// starts one task for all the others. `start` receives the keys it owns
    /// (indices into `keys`) and must return a lookup for each of them.
    ///
    /// Returns one shared outcome per entry of `keys`.
    pub fn join_or_start_many(
        self: &Arc<Self>,
        keys: &[String],
        start: impl FnOnce(Vec<usize>, FlightGuard) -> BoxFuture<'static, BatchOutcome>,
    ) -> Vec<SharedOutcome> {
        let mut map = self.lock();
        let mut out: Vec<Option<SharedOutcome>> = Vec::with_capacity(keys.len());
        let mut owned = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match map.get(key).and_then(|f| f.outcome.upgrade()) {
                Some(flight) => out.push(Some(flight)),
                None => {
                    out.push(None);
                    owned.push(i);
                }
            }
        }
        if !owned.is_empty() {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let voids: Vec<Arc<AtomicBool>> = owned
                .iter()
                .map(|_| Arc::new(AtomicBool::new(false)))
                .collect();
            let guard = FlightGuard {
                flights: Arc::clone(self),
                id,
                keys: owned
                    .iter()
                    .zip(&voids)
                    .map(|(&i, v)| (keys[i].clone(), Arc::clone(v)))
                    .collect(),
            };
            let batch = share(start(owned.clone(), guard));
            for (i, void) in owned.into_iter().zip(voids) {
                let key = keys[i].clone();
                let batch = batch.clone();
                let flight = async move {
                    let all = batch.await?;
                    all.get(&key).cloned().ok_or(Error::Internal(
                        "a batch load returned no answer for one of its keys",
                    ))
                }
                .boxed()
                .shared();
                if let Some(outcome) = flight.downgrade() {
                    map.insert(keys[i].clone(), Flight { id, outcome, void });
                }
                out[i] = Some(flight);
            }
        }
        out.into_iter().flatten().collect()
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<WriteFlag>>> {
        self.writes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Voids the load of `key` in progress, if any: it still answers the
    /// callers already waiting on it (they asked before the change), but it
    /// does not fill the cache, and new callers start a fresh load. Writes of
    /// `key` in progress are voided too: they keep their value out of L1.
    pub fn void(&self, key: &str) {
        self.void_loads(key);
        if let Some(writes) = self.lock_writes().get(key) {
            for (_, void) in writes {
                void.store(true, Ordering::Release);
            }
        }
    }

    /// Voids the loads (and refreshes) of `key` in progress, not its
    /// writes: what a write does once its value is in Redis, for the loads
    /// that started while it was on its way (they may have read the value
    /// it replaced).
    pub fn void_loads(&self, key: &str) {
        let mut map = self.lock();
        for k in [key.to_owned(), refresh_key(key)] {
            if let Some(flight) = map.remove(&k) {
                flight.void.store(true, Ordering::Release);
            }
        }
    }

    /// [`void`](Self::void) for every load and write whose key matches.
    pub fn void_matching(&self, mut matches: impl FnMut(&str) -> bool) {
        self.lock().retain(|key, flight| {
            let hit = matches(key.strip_suffix(REFRESH).unwrap_or(key));
            if hit {
                flight.void.store(true, Ordering::Release);
            }
            !hit
        });
        for (key, writes) in self.lock_writes().iter() {
            if matches(key) {
                for (_, void) in writes {
                    void.store(true, Ordering::Release);
                }
            }
        }
    }

    /// Voids every load and write in progress.
    pub fn void_all(&self) {
        self.void_matching(|_| true);
    }

    /// Starts a write of `key`: voids what is in progress for it (loads and
    /// earlier writes), and registers this one so that what comes after can
    /// void it in turn.
    pub fn begin_write(self: &Arc<Self>, key: &str) -> WriteGuard {
        self.void(key);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let void = Arc::new(AtomicBool::new(false));
        self.lock_writes()
            .entry(key.to_owned())
            .or_default()
            .push((id, Arc::clone(&void)));
        WriteGuard {
            flights: Arc::clone(self),
            key: key.to_owned(),
            id,
            void,
        }
    }

    /// Whether a load of `key` is running.
    pub fn is_running(&self, key: &str) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|f| f.outcome.upgrade().is_some())
    }

    /// How many callers are waiting on the load of `key` (0 if none runs).
    pub fn waiters(&self, key: &str) -> usize {
        let flight = self.lock().get(key).and_then(|f| f.outcome.upgrade());
        flight
            .and_then(|f| f.strong_count())
            // Not counting the handle just upgraded here.
            .map_or(0, |n| n.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_write_or_invalidation_voids_earlier_writes() {
        let flights = Arc::new(Flights::default());
        let first = flights.begin_write("k");
        let second = flights.begin_write("k");
        assert!(first.is_void(), "the later write wins L1");
        assert!(!second.is_void());
        let other = flights.begin_write("other");
        flights.void("k");
        assert!(
            second.is_void(),
            "an invalidation voids the write in progress"
        );
        assert!(!other.is_void(), "other keys are untouched");
        flights.void_matching(|k| k.starts_with("oth"));
        assert!(other.is_void());
        drop((first, second, other));
        assert!(
            flights.lock_writes().is_empty(),
            "finished writes deregister"
        );
    }
}
