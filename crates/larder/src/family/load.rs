//! The load paths.
//!
//! A miss in both tiers becomes one load across all processes: the first
//! process takes the key's *lease* in Redis (`SET <key>:lease <token> NX`),
//! loads, and fills with a script that stores the value only if it still
//! holds the lease. An invalidation or a write deletes the lease, so a load
//! that read the row before the change cannot store it afterwards (the
//! leases of "Scaling Memcache at Facebook", NSDI 2013). The other processes
//! wait for the fill's notification (not a fixed sleep), bounded by the
//! family's `lease_wait`, after which they load for themselves, uncached.
//!
//! Stale values (past the TTL, within the grace window) are refreshed in the
//! background by a load of their own (`Mode::Refresh`), also behind the lease.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ctx::{Ctx, L2Answer, Seen};
use crate::Error;
use crate::codec::{Encoded, Meta};
use crate::error::{BoxError, SourceError};
use crate::flight::{
    BatchOutcome, FlightGuard, Lookup, Outcome, SharedOutcome, Source, refresh_key,
};
use crate::metrics::Outcome as Counted;
use crate::scripts;
use crate::tier::memory::AnyValue;
use crate::tier::redis::Batch;

/// Rounds of "the lease is taken: wait for its fill, look again" before a
/// load gives up on the lease and loads uncached.
const LEASE_ROUNDS: usize = 3;

/// How much longer than the entry being refreshed early a value in Redis
/// must stay fresh to count as another process's refresh of it (rather than
/// the same fill, read back through a clock of millisecond resolution).
pub(crate) const EARLY_REFRESH_MARGIN: Duration = Duration::from_millis(20);

/// How a load treats what the tiers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A read: any usable value will do, stale ones included.
    Read,
    /// A refresh: only a value fresh for longer than `keep_if_fresh_for`
    /// will do (another process refreshed it first); otherwise load.
    Refresh { keep_if_fresh_for: Duration },
}

impl Mode {
    /// Whether a value found in Redis answers this load.
    fn accepts(self, lookup: &Lookup, life: &crate::tier::memory::Lifetime) -> bool {
        match self {
            Mode::Read => true,
            Mode::Refresh { keep_if_fresh_for } => {
                !lookup.stale && life.fresh.is_none_or(|left| left > keep_if_fresh_for)
            }
        }
    }
}

/// The outcome of asking for a key's lease.
enum Lease {
    Held(String),
    Busy,
    /// A fill landed since the caller looked: look again.
    Changed,
    Unavailable,
}

/// A loaded entry on its way to both tiers.
struct Fill {
    key: String,
    encoded: Option<Encoded>,
    ttl: Option<Duration>,
    value: Option<AnyValue>,
    /// The lease this load holds: only then may it store in Redis.
    lease: Option<String>,
    load_us: u32,
}

impl Ctx {
    fn lease_key(key: &str) -> String {
        format!("{key}:lease")
    }

    /// Asks for `key`'s lease, as one who found `seen` there.
    async fn acquire_lease(&self, key: &str, seen: &Seen) -> Lease {
        let Some(l2) = &self.shared.l2 else {
            return Lease::Unavailable;
        };
        let token = format!("{:016x}", rand::random::<u64>());
        let orphans = self.shared.orphaned_leases.take(key);
        let mut invocation = scripts::LEASE.prepare_invoke();
        invocation
            .key(key)
            .key(Self::lease_key(key))
            .arg(&token)
            .arg(self.policy().lease_ttl().as_millis() as u64)
            .arg(seen.as_slice());
        for token in &orphans {
            invocation.arg(token);
        }
        match l2.run_script::<i64>("lease", key, &invocation).await {
            Ok(1) => Lease::Held(token),
            Ok(2) => Lease::Changed,
            Ok(_) => Lease::Busy,
            Err(_) => {
                // The script may have run and its reply been lost: if so,
                // the lease is ours, and nobody will fill it.
                self.core.metrics.redis_error();
                let mut tokens = orphans;
                tokens.push(token);
                self.shared.orphaned_leases.keep_all(key, tokens);
                Lease::Unavailable
            }
        }
    }

    /// Gives the lease back after a failed load, so that a waiting process
    /// takes it now rather than when it expires.
    async fn release_lease(&self, key: &str, token: &str) {
        let Some(l2) = &self.shared.l2 else { return };
        let mut invocation = scripts::RELEASE.prepare_invoke();
        invocation
            .key(Self::lease_key(key))
            .arg(token)
            .arg(&self.shared.fill_channel)
            .arg(key);
        if l2
            .run_script::<i64>("lease release", key, &invocation)
            .await
            .is_err()
        {
            self.core.metrics.redis_error();
            self.shared.orphaned_leases.keep(key, token);
        }
    }

    /// Waits for the lease holder's fill notification; whether one came
    /// before the family's `lease_wait`. The caller looks again either way.
    async fn wait_for_fill(&self, key: &str, seen: &Seen) -> bool {
        let notify = self.shared.fill_waiters.for_key(key);
        let notified = notify.notified();
        tokio::pin!(notified);
        // Registered before looking again, so a fill or an invalidation
        // landing in between still wakes us. Looking again covers those
        // that landed since the lease was found taken: the value is no
        // longer what the caller saw, or the lease is gone (filled, voided
        // or given back).
        notified.as_mut().enable();
        if let Some(l2) = &self.shared.l2 {
            let mut look = Batch::new();
            look.cmd("GETRANGE")
                .arg(key)
                .arg(0)
                .arg(seen.len().saturating_sub(1))
                .cmd("EXISTS")
                .arg(Self::lease_key(key));
            match l2.run_batch::<(Vec<u8>, bool)>("lease wait", &look).await {
                Ok((now, leased)) if now != *seen || !leased => return true,
                Ok(_) => {}
                // Redis is failing: the holder's fill and its notification
                // are unlikely to come. Do not wait for them.
                Err(_) => return false,
            }
        }
        tokio::time::timeout(self.lease_wait(), notified)
            .await
            .is_ok()
    }

    /// How long a caller waits on another's lease: the family's
    /// `lease_wait`, but at most half its `hard_timeout`, so that a caller
    /// whose lease holder died still has time to load for itself.
    fn lease_wait(&self) -> Duration {
        let policy = &self.policy().policy;
        match policy.hard_timeout {
            Some(hard) => policy.lease_wait.min(hard / 2),
            None => policy.lease_wait,
        }
    }

    /// Runs the loader, timing and counting it.
    pub async fn call<T, Fut, E>(&self, fut: Fut) -> Result<(T, Duration), Error>
    where
        Fut: Future<Output = Result<T, E>>,
        E: Into<BoxError>,
    {
        let start = Instant::now();
        // The loader as a span of its own (the database's time, in a trace),
        // a child of the request's. Disabled, the span is a no-op.
        let span =
            tracing::debug_span!(target: "larder::request", "larder.load", family = self.name());
        let result = tracing::Instrument::instrument(fut, span).await;
        let took = start.elapsed();
        self.core.metrics.loader_call(took, result.is_ok());
        match result {
            Ok(v) => Ok((v, took)),
            Err(e) => Err(Error::Loader(SourceError::new(e))),
        }
    }

    /// Prepares a freshly loaded value (or "not found") for both tiers.
    fn prepare<V: Serialize + Send + Sync + 'static>(
        &self,
        key: String,
        value: Option<V>,
        took: Duration,
        tag_versions: Vec<u64>,
        lease: Option<String>,
    ) -> Fill {
        let ttl = match value {
            Some(_) => self.policy().draw_ttl(),
            None => Some(self.policy().negative_ttl),
        };
        let meta = Meta::new(ttl, took).with_tags(tag_versions);
        let encoded = match self.encode(value.as_ref(), &meta) {
            Ok(e) => Some(e),
            Err(e) => {
                let e = self.encode_error(e);
                tracing::warn!(family = %self.name(), error = %e, "loaded value not cached");
                None
            }
        };
        Fill {
            key,
            encoded,
            ttl,
            value: value.map(|v| Arc::new(v) as AnyValue),
            lease,
            load_us: meta.load_us,
        }
    }

    /// Fills Redis (lease-guarded, one round trip for all) and then L1,
    /// skipping any whose key was invalidated while it loaded, and keeping
    /// out of L1 any that Redis refused.
    ///
    /// A leased fill goes to Redis even if this process saw its key
    /// invalidated: the lease is the judge there (an invalidation in any
    /// process deletes it, in Redis's own order), and a fill that stores
    /// wakes the other processes at once instead of leaving them waiting on
    /// a lease nobody will fill.
    async fn fill(&self, fills: &[Fill], guard: &FlightGuard) {
        let live: Vec<&Fill> = fills.iter().filter(|f| f.encoded.is_some()).collect();
        let mut refused: Vec<&str> = Vec::new();
        let leased: Vec<&&Fill> = live.iter().filter(|f| f.lease.is_some()).collect();
        if let (Some(l2), false) = (&self.shared.l2, leased.is_empty()) {
            let mut pipe = Batch::new();
            for f in &leased {
                let (Some(token), Some(encoded)) = (&f.lease, &f.encoded) else {
                    continue;
                };
                let negative = f.value.is_none();
                pipe.cmd("EVALSHA")
                    .arg(scripts::FILL.get_hash())
                    .arg(2)
                    .arg(&f.key)
                    .arg(Self::lease_key(&f.key))
                    .arg(token)
                    .arg(&encoded.bytes)
                    .arg(
                        self.redis_ttl(f.ttl, negative)
                            .map_or(0, |t| (t.as_millis() as u64).max(1)),
                    )
                    .arg(&self.shared.fill_channel);
            }
            match l2.run_batch::<Vec<i64>>("fill", &pipe).await {
                Ok(stored) => refused.extend(
                    leased
                        .iter()
                        .zip(stored)
                        .filter(|(_, s)| *s != 1)
                        .map(|(f, _)| f.key.as_str()),
                ),
                Err(_) => {
                    // Whether the fills ran is unknown; their leases, if
                    // still held, are ours to take over on the next miss.
                    self.core.metrics.redis_error();
                    for f in &leased {
                        if let Some(token) = &f.lease {
                            self.shared.orphaned_leases.keep(&f.key, token);
                        }
                    }
                }
            }
        }
        for f in live {
            // Checked again: an invalidation may have landed during the fill.
            if refused.contains(&f.key.as_str()) {
                continue;
            }
            let weight = f.encoded.as_ref().map_or(0, |e| e.payload_len);
            let life = self.lifetime_of_new(f.ttl, f.value.is_none());
            let void = || guard.is_void(&f.key);
            self.l1_put_unless(
                void,
                f.key.clone(),
                f.value.clone(),
                weight,
                life,
                f.load_us,
            );
        }
    }

    /// The body of a single-key load.
    pub async fn load_one<V, F, Fut, E>(
        self,
        key: String,
        loader: F,
        guard: &FlightGuard,
        mode: Mode,
    ) -> Outcome
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        // A flight that finished just before this one started has filled L1.
        if mode == Mode::Read
            && let Some(hit) = self.l1_get(&key)
        {
            return Ok(Lookup {
                stale: !hit.is_fresh(),
                value: hit.entry.value.clone(),
                source: Source::L1,
            });
        }
        let mut tag_versions = Vec::new();
        let mut lease = None;
        let mut seen;
        if self.shared.l2.is_some() || self.core.write_behind() {
            for round in 0..=LEASE_ROUNDS {
                match self.read_l2::<V>(&[&key]).await.pop() {
                    Some(L2Answer::Hit {
                        lookup,
                        life,
                        load_us,
                        weight,
                        ..
                    }) if mode.accepts(&lookup, &life) => {
                        let void = || guard.is_void(&key);
                        self.l1_put_unless(
                            void,
                            key.clone(),
                            lookup.value.clone(),
                            weight,
                            life,
                            load_us,
                        );
                        if lookup.stale {
                            // Served stale; the refresh takes the loader.
                            self.spawn_refresh(key, loader, Duration::ZERO);
                        } else if mode == Mode::Read
                            && lookup.value.is_some()
                            && let Some(left) = life.fresh
                            && self.core.early_refresh_due(left, load_us)
                        {
                            // Early refresh, for caches without L1 too.
                            self.spawn_refresh(key, loader, left + EARLY_REFRESH_MARGIN);
                        }
                        return Ok(lookup);
                    }
                    Some(L2Answer::Miss {
                        tag_versions: t,
                        seen: s,
                    }) => (tag_versions, seen) = (t, s),
                    // While refreshing: the value being refreshed. Load anew.
                    Some(L2Answer::Hit { seen: s, .. }) => seen = s,
                    // A Redis that just failed the read is not asked for a
                    // lease or a fill: while it is down, that would add to
                    // each miss's wait.
                    Some(L2Answer::Down) | None => break,
                }
                if round == LEASE_ROUNDS {
                    break;
                }
                match self.acquire_lease(&key, &seen).await {
                    Lease::Held(token) => {
                        lease = Some(token);
                        break;
                    }
                    Lease::Changed => {}
                    Lease::Unavailable => break,
                    Lease::Busy => {
                        self.core.metrics.lease_wait();
                        if !self.wait_for_fill(&key, &seen).await {
                            // The holder is slow or gone: load, uncached.
                            self.core.metrics.lease_timeout();
                            break;
                        }
                    }
                }
            }
        }
        let (value, took) = match self.call(loader()).await {
            Ok(loaded) => loaded,
            Err(e) => {
                if let Some(token) = lease {
                    self.release_lease(&key, &token).await;
                }
                return Err(e);
            }
        };
        let fill = self.prepare(key, value, took, tag_versions, lease);
        self.fill(std::slice::from_ref(&fill), guard).await;
        Ok(Lookup {
            value: fill.value,
            source: Source::Loader,
            stale: false,
        })
    }

    /// Refreshes `key` in the background with `loader`, unless a refresh of
    /// it is running already or failed a moment ago. A value in Redis fresh
    /// for longer than `keep_if_fresh_for` is taken instead of loading.
    pub fn spawn_refresh<V, F, Fut, E>(&self, key: String, loader: F, keep_if_fresh_for: Duration)
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        if self.core.refresh_backed_off(&key) || self.shared.flights.is_running(&refresh_key(&key))
        {
            return;
        }
        let flight = self.start_refresh(key.clone(), loader, keep_if_fresh_for);
        let ctx = self.clone();
        tokio::spawn(async move { ctx.finish_refresh(&key, flight.await) });
    }

    /// Starts (or joins) the refresh of `key`.
    pub fn start_refresh<V, F, Fut, E>(
        &self,
        key: String,
        loader: F,
        keep_if_fresh_for: Duration,
    ) -> SharedOutcome
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let ctx = self.clone();
        self.shared
            .flights
            .join_or_start(&refresh_key(&key), move |guard| {
                async move {
                    let outcome = ctx
                        .load_one(key, loader, &guard, Mode::Refresh { keep_if_fresh_for })
                        .await;
                    drop(guard);
                    outcome
                }
                .boxed()
            })
    }

    /// Counts a refresh; after a failure, the stale value keeps being served
    /// (fail-safe) and the next refresh waits a little.
    pub fn finish_refresh(&self, key: &str, outcome: Outcome) {
        match outcome {
            Ok(_) => self.core.metrics.refresh(true),
            Err(e) => {
                self.core.metrics.refresh(false);
                self.core.back_off_refresh(key);
                tracing::warn!(family = %self.name(), error = %e, "refresh failed; serving the stale value");
            }
        }
    }

    /// The body of a `get_many` load: L1 re-check, one Redis read, one
    /// leases round trip, one loader call, one pipelined fill. Stale values
    /// are reloaded with the rest. A key whose lease another process holds
    /// is loaded too, but not stored (that process stores it).
    pub async fn load_batch<K, V, F, Fut, E>(
        self,
        items: Vec<(String, K)>,
        loader: F,
        guard: &FlightGuard,
    ) -> BatchOutcome
    where
        K: Eq + Hash + Clone,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>>,
        E: Into<BoxError>,
    {
        let mut found = HashMap::with_capacity(items.len());
        let mut pending = Vec::with_capacity(items.len());
        for (key, parts) in items {
            match self.l1_get(&key).filter(|h| h.is_fresh()) {
                Some(hit) => {
                    let lookup = Lookup {
                        value: hit.entry.value.clone(),
                        source: Source::L1,
                        stale: false,
                    };
                    found.insert(key, lookup);
                }
                None => pending.push((key, parts)),
            }
        }
        // (key, parts, tag versions, what was seen there if a lease may be asked for)
        let mut to_load: Vec<(String, K, Vec<u64>, Option<Seen>)> =
            Vec::with_capacity(pending.len());
        if !pending.is_empty() {
            let keys: Vec<&str> = pending.iter().map(|(k, _)| k.as_str()).collect();
            let answers = self.read_l2::<V>(&keys).await;
            for ((key, parts), answer) in pending.into_iter().zip(answers) {
                match answer {
                    L2Answer::Hit {
                        lookup,
                        life,
                        load_us,
                        weight,
                        ..
                    } if !lookup.stale => {
                        let void = || guard.is_void(&key);
                        self.l1_put_unless(
                            void,
                            key.clone(),
                            lookup.value.clone(),
                            weight,
                            life,
                            load_us,
                        );
                        found.insert(key, lookup);
                    }
                    L2Answer::Hit { seen, .. } => {
                        to_load.push((key, parts, Vec::new(), Some(seen)))
                    }
                    L2Answer::Miss { tag_versions, seen } => {
                        to_load.push((key, parts, tag_versions, Some(seen)))
                    }
                    L2Answer::Down => to_load.push((key, parts, Vec::new(), None)),
                }
            }
        }
        if to_load.is_empty() {
            return Ok(found);
        }
        let leases = self.acquire_leases(&to_load).await;
        let wanted: Vec<K> = to_load.iter().map(|(_, k, _, _)| k.clone()).collect();
        let (mut loaded, took) = match self.call(loader(wanted)).await {
            Ok(loaded) => loaded,
            Err(e) => {
                for ((key, _, _, _), lease) in to_load.iter().zip(&leases) {
                    if let Some(token) = lease {
                        self.release_lease(key, token).await;
                    }
                }
                return Err(e);
            }
        };
        let fills: Vec<Fill> = to_load
            .into_iter()
            .zip(leases)
            .map(|((key, parts, tags, _), lease)| {
                let value = loaded.remove(&parts);
                self.prepare(key, value, took, tags, lease)
            })
            .collect();
        self.fill(&fills, guard).await;
        for f in fills {
            let lookup = Lookup {
                value: f.value,
                source: Source::Loader,
                stale: false,
            };
            found.insert(f.key, lookup);
        }
        Ok(found)
    }

    /// Leases for the keys of a batch that may have one, in one round trip.
    async fn acquire_leases<K>(
        &self,
        items: &[(String, K, Vec<u64>, Option<Seen>)],
    ) -> Vec<Option<String>> {
        let Some(l2) = &self.shared.l2 else {
            return items.iter().map(|_| None).collect();
        };
        let tokens: Vec<Option<String>> = items
            .iter()
            .map(|(_, _, _, seen)| {
                seen.as_ref()
                    .map(|_| format!("{:016x}", rand::random::<u64>()))
            })
            .collect();
        let mut pipe = Batch::new();
        let mut asked = 0;
        for ((key, _, _, seen), token) in items.iter().zip(&tokens) {
            if let (Some(token), Some(seen)) = (token, seen) {
                pipe.cmd("EVALSHA")
                    .arg(scripts::LEASE.get_hash())
                    .arg(2)
                    .arg(key)
                    .arg(Self::lease_key(key))
                    .arg(token)
                    .arg(self.policy().lease_ttl().as_millis() as u64)
                    .arg(seen.as_slice())
                    .arg(self.shared.orphaned_leases.take(key));
                asked += 1;
            }
        }
        if asked == 0 {
            return tokens;
        }
        // A lease that is busy, or a value that changed since it was read:
        // loaded all the same (the batch's caller waits for nobody), but not
        // stored.
        match l2.run_batch::<Vec<i64>>("lease (batch)", &pipe).await {
            Ok(granted) => {
                let mut granted = granted.into_iter();
                tokens
                    .into_iter()
                    .map(|t| t.and_then(|t| (granted.next() == Some(1)).then_some(t)))
                    .collect()
            }
            Err(_) => {
                // The scripts may have run: the leases would then be ours.
                self.core.metrics.redis_error();
                for ((key, _, _, _), token) in items.iter().zip(&tokens) {
                    if let Some(token) = token {
                        self.shared.orphaned_leases.keep(key, token);
                    }
                }
                items.iter().map(|_| None).collect()
            }
        }
    }

    /// The cache is off: straight to the loader.
    pub async fn bypass_one<V, F, Fut, E>(&self, loader: F) -> Result<Option<Arc<V>>, Error>
    where
        V: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        let (value, _) = self.call(loader()).await?;
        self.core.metrics.request(Counted::Miss);
        Ok(value.map(Arc::new))
    }

    pub async fn bypass_many<K, V, F, Fut, E>(
        &self,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<Option<Arc<V>>>, Error>
    where
        K: Eq + Hash + Clone,
        V: Send + Sync + 'static,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>>,
        E: Into<BoxError>,
    {
        let (loaded, _) = self.call(loader(keys.to_vec())).await?;
        let loaded: HashMap<K, Arc<V>> =
            loaded.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        Ok(keys
            .iter()
            .map(|k| {
                self.core.metrics.request(Counted::Miss);
                loaded.get(k).cloned()
            })
            .collect())
    }
}
