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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, WeakShared};

use crate::Error;
use crate::tier::memory::AnyValue;

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
    map: Mutex<HashMap<String, (u64, WeakOutcome)>>,
    next_id: AtomicU64,
}

/// Removes a flight's keys from the map when its load ends: normally, by a
/// panic in the loader, or because every waiter gave up.
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    id: u64,
    keys: Vec<String>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        for key in &self.keys {
            if map.get(key).is_some_and(|(id, _)| *id == self.id) {
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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, WeakOutcome)>> {
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
        if let Some(flight) = map.get(key).and_then(|(_, weak)| weak.upgrade()) {
            return flight;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let guard = FlightGuard {
            flights: Arc::clone(self),
            id,
            keys: vec![key.to_owned()],
        };
        let flight = share(start(guard));
        if let Some(weak) = flight.downgrade() {
            map.insert(key.to_owned(), (id, weak));
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
            match map.get(key).and_then(|(_, weak)| weak.upgrade()) {
                Some(flight) => out.push(Some(flight)),
                None => {
                    out.push(None);
                    owned.push(i);
                }
            }
        }
        if !owned.is_empty() {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let guard = FlightGuard {
                flights: Arc::clone(self),
                id,
                keys: owned.iter().map(|&i| keys[i].clone()).collect(),
            };
            let batch = share(start(owned.clone(), guard));
            for i in owned {
                let key = keys[i].clone();
                let batch = batch.clone();
                let flight = async move {
                    let all = batch.await?;
                    all.get(&key).cloned().ok_or(Error::LoaderPanicked)
                }
                .boxed()
                .shared();
                if let Some(weak) = flight.downgrade() {
                    map.insert(keys[i].clone(), (id, weak));
                }
                out[i] = Some(flight);
            }
        }
        out.into_iter().flatten().collect()
    }

    /// How many callers are waiting on the load of `key` (0 if none runs).
    pub fn waiters(&self, key: &str) -> usize {
        let flight = self.lock().get(key).and_then(|(_, weak)| weak.upgrade());
        flight
            .and_then(|f| f.strong_count())
            // Not counting the handle just upgraded here.
            .map_or(0, |n| n.saturating_sub(1))
    }
}
