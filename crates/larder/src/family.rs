//! Families: typed handles on one kind of cached data, and the read path.
//!
//! The read path (cache-aside, the article's "Cache Hit vs Cache Miss"):
//!
//! ```text
//! get_or_load(k) ─▶ L1 ─hit─▶ Arc<V>                      (no decode, no I/O)
//!                    │miss
//!                    ▼
//!              single-flight ─ already loading? ─▶ wait for that load
//!                    │first caller: start the load (shared by all waiters)
//!                    ▼
//!              L1 again ─▶ L2 GET ─hit─▶ decode ─▶ fill L1
//!                                │miss / undecodable (deleted) / Redis down
//!                                ▼
//!                             loader ─▶ encode ─▶ SET L2 (TTL) ─▶ fill L1
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{Either, ready};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::cache::{Cache, Shared};
use crate::codec::{self, EncodeError, Meta};
use crate::error::{BoxError, LoaderError};
use crate::flight::{BatchOutcome, Lookup, Outcome, Source};
use crate::key::{KeyLayout, KeyParts};
use crate::metrics::{FamilyMetrics, FamilyStats, Outcome as Counted};
use crate::policy::CompiledPolicy;
use crate::tier::memory::{AnyValue, L1Entry};

/// The state of one family shared by all its handles.
pub(crate) struct FamilyCore {
    pub policy: CompiledPolicy,
    /// The family's keys, namespace and hash tag included.
    pub layout: KeyLayout,
    pub metrics: FamilyMetrics,
}

impl FamilyCore {
    pub fn new(namespace: &str, policy: CompiledPolicy) -> Self {
        let metrics = FamilyMetrics::new(&policy.policy.name);
        let layout = KeyLayout::full(namespace, &policy.template);
        FamilyCore {
            policy,
            layout,
            metrics,
        }
    }
}

/// A typed handle on one family: keys of type `K`, values of type `V`.
///
/// Values come back as `Arc<V>`: an L1 hit hands out the cached value itself,
/// shared, without copying or decoding it.
///
/// Cheap to clone. Open it with [`Cache::family`].
pub struct Family<K, V> {
    pub(crate) cache: Cache,
    pub(crate) core: Arc<FamilyCore>,
    pub(crate) _types: PhantomData<fn(&K) -> V>,
}

impl<K, V> Clone for Family<K, V> {
    fn clone(&self) -> Self {
        Family {
            cache: self.cache.clone(),
            core: Arc::clone(&self.core),
            _types: PhantomData,
        }
    }
}

impl<K, V> std::fmt::Debug for Family<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("name", &self.core.policy.policy.name)
            .field("key", &self.core.policy.template.as_str())
            .finish()
    }
}

impl<K, V> Family<K, V>
where
    K: KeyParts + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The family's name.
    pub fn name(&self) -> &str {
        &self.core.policy.policy.name
    }

    /// The Redis key for `key`: namespace, then the filled template in a hash
    /// tag (`app:{portfolio:42}`), every part escaped.
    pub fn key(&self, key: &K) -> Result<String, Error> {
        let (full, filled) = self.core.layout.fill(key);
        debug_assert_eq!(
            filled,
            K::ARITY,
            "arity is checked when the family is opened"
        );
        self.check_len(&full)?;
        Ok(full)
    }

    fn check_len(&self, key: &str) -> Result<(), Error> {
        let max = self.cache.shared.max_key_len;
        if key.len() > max {
            return Err(Error::KeyTooLong {
                family: self.name().to_string(),
                len: key.len(),
                max,
            });
        }
        Ok(())
    }

    /// The counters of this family since the cache was built.
    pub fn stats(&self) -> FamilyStats {
        self.core.metrics.snapshot()
    }

    /// How many callers are waiting on an in-flight load of `key` right now
    /// (0 when none runs). A diagnostic, and what tests use to know that a
    /// stampede has gathered before letting the loader finish.
    pub fn waiting(&self, key: &K) -> usize {
        match self.key(key) {
            Ok(k) => self.cache.shared.flights.waiters(&k),
            Err(_) => 0,
        }
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            shared: Arc::clone(&self.cache.shared),
            core: Arc::clone(&self.core),
        }
    }

    /// Returns the value for `key`, loading it on a miss.
    ///
    /// L1, then Redis, then `loader`; a loaded value is stored in Redis (with
    /// the family's TTL and jitter) and then in L1. The loader returns
    /// `Ok(None)` for "no such row": that answer is cached too, for the
    /// family's `negative_ttl`, so a flood of unknown ids does not reach the
    /// database. `Ok(None)` is then what this call returns.
    ///
    /// Concurrent calls for one key share one load (single-flight): the loader
    /// runs once and every caller gets its value, or its error as
    /// [`Error::Loader`]. Errors are not cached; the next call retries.
    ///
    /// The in-process tier is consulted when this is called, so an L1 hit is
    /// a ready future. The returned future borrows nothing: it can be
    /// spawned.
    ///
    /// The load is driven by whoever waits on it, so a caller being
    /// cancelled does not cancel the load others are waiting on; that is why
    /// the loader must be `Send + 'static` (move a clone of your pool into
    /// it).
    ///
    /// Redis failures and undecodable values never reach the caller: they are
    /// counted and the loader answers instead.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), larder::Error> {
    /// # use larder::{Cache, Policy};
    /// # use std::time::Duration;
    /// # let cache = Cache::builder()
    /// #     .family(Policy::new("user", "user:{id}").ttl(Duration::from_secs(60)))
    /// #     .build().await?;
    /// let users = cache.family::<u64, String>("user")?;
    /// let found = users
    ///     .get_or_load(&7, || async { Ok::<_, std::io::Error>(Some("grace".to_string())) })
    ///     .await?;
    /// assert_eq!(found.as_deref().map(String::as_str), Some("grace"));
    ///
    /// let missing = users.get_or_load(&8, || async { Ok::<_, std::io::Error>(None) }).await?;
    /// assert!(missing.is_none());
    /// // Remembered: this loader is not called.
    /// let again = users.get_or_load(&8, || async { unreachable!() as Result<_, std::io::Error> }).await?;
    /// assert!(again.is_none());
    /// # Ok(()) }
    /// ```
    pub fn get_or_load<F, Fut, E>(
        &self,
        key: &K,
        loader: F,
    ) -> impl Future<Output = Result<Option<Arc<V>>, Error>> + Send + 'static
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let shared = &self.cache.shared;
        if !shared.enabled {
            let ctx = self.ctx();
            return Either::Right(async move { ctx.bypass_one(loader).await }.boxed());
        }
        let key = match self.key(key) {
            Ok(key) => key,
            Err(e) => return Either::Left(ready(Err(e))),
        };
        // An L1 hit is answered here and now: no await, no reference count
        // touched but the value's own.
        if let Some(l1) = shared.l1.as_ref().filter(|_| self.core.policy.policy.l1)
            && let Some(entry) = l1.get(&key)
        {
            let hit = Lookup {
                value: entry.value,
                source: Source::L1,
            };
            return Either::Left(ready(answer(&self.core, hit)));
        }
        let ctx = self.ctx();
        let load_ctx = ctx.clone();
        let task_key = key.clone();
        let flight = ctx.shared.flights.join_or_start(&key, move |guard| {
            async move {
                let outcome = load_ctx.load_one(task_key, loader).await;
                // The guard ends the flight only now, after the fill: a caller
                // arriving later finds the value in L1 or joins this flight.
                drop(guard);
                outcome
            }
            .boxed()
        });
        Either::Right(async move { ctx.answer(flight.await?) }.boxed())
    }

    /// Returns the values for many keys, in the order given, with one Redis
    /// round trip (`MGET`) for all the keys L1 does not hold and one loader
    /// call for all that Redis does not hold either.
    ///
    /// `loader` receives the keys still missing and returns the values it
    /// found; a key it leaves out is "not found" and cached as such. Keys
    /// already being loaded by another call are waited on, not loaded twice.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), larder::Error> {
    /// # use larder::{Cache, Policy};
    /// # use std::{collections::HashMap, time::Duration};
    /// # let cache = Cache::builder()
    /// #     .family(Policy::new("price", "price:{symbol}").ttl(Duration::from_secs(2)))
    /// #     .build().await?;
    /// let prices = cache.family::<String, u64>("price")?;
    /// let symbols = vec!["AAA".to_string(), "BBB".to_string(), "NOPE".to_string()];
    /// let got = prices
    ///     .get_many(&symbols, |missing: Vec<String>| async move {
    ///         // One query for all of them, e.g. `WHERE symbol = ANY($1)`.
    ///         let db = HashMap::from([("AAA".to_string(), 101u64), ("BBB".to_string(), 202)]);
    ///         Ok::<_, std::io::Error>(
    ///             missing.into_iter().filter_map(|s| db.get(&s).map(|p| (s, *p))).collect(),
    ///         )
    ///     })
    ///     .await?;
    /// assert_eq!(got[0].as_deref(), Some(&101));
    /// assert_eq!(got[2], None);
    /// # Ok(()) }
    /// ```
    pub async fn get_many<F, Fut, E>(
        &self,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<Option<Arc<V>>>, Error>
    where
        K: Clone + Eq + Hash + Send + Sync,
        F: FnOnce(Vec<K>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<HashMap<K, V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let ctx = self.ctx();
        if !ctx.shared.enabled {
            return ctx.bypass_many(keys, loader).await;
        }
        let full: Vec<String> = keys.iter().map(|k| self.key(k)).collect::<Result<_, _>>()?;
        let mut answers: Vec<Option<Lookup>> = vec![None; keys.len()];
        // Distinct keys that L1 does not hold, each with its first position.
        let mut missing: Vec<String> = Vec::new();
        let mut missing_parts: Vec<K> = Vec::new();
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        for (i, key) in full.iter().enumerate() {
            if first_seen.contains_key(key.as_str()) {
                continue;
            }
            first_seen.insert(key, i);
            match ctx.l1_get(key) {
                Some(entry) => {
                    answers[i] = Some(Lookup {
                        value: entry.value,
                        source: Source::L1,
                    })
                }
                None => {
                    missing.push(key.clone());
                    missing_parts.push(keys[i].clone());
                }
            }
        }
        if !missing.is_empty() {
            let flights = Arc::clone(&ctx.shared.flights);
            let load_ctx = ctx.clone();
            let missing_for_task = missing.clone();
            let outcomes = flights.join_or_start_many(&missing, move |owned, guard| {
                let items: Vec<(String, K)> = owned
                    .into_iter()
                    .map(|i| (missing_for_task[i].clone(), missing_parts[i].clone()))
                    .collect();
                async move {
                    let outcome = load_ctx.load_batch(items, loader).await;
                    drop(guard);
                    outcome
                }
                .boxed()
            });
            let results = futures_util::future::join_all(outcomes).await;
            for (key, result) in missing.iter().zip(results) {
                answers[first_seen[key.as_str()]] = Some(result?);
            }
        }
        // Count and convert; duplicates copy their first occurrence's answer.
        let mut out = Vec::with_capacity(keys.len());
        for (i, key) in full.iter().enumerate() {
            let first = first_seen[key.as_str()];
            let lookup = if first == i { answers[i].take() } else { None };
            let value = match lookup {
                Some(l) => ctx.answer(l)?,
                None => out.get(first).cloned().flatten(),
            };
            out.push(value);
        }
        Ok(out)
    }

    /// Stores `value` under `key` in Redis and L1, with the family's TTL.
    ///
    /// For values the application just wrote to the database itself (the
    /// write paths build on this). Fails with [`Error::ValueTooLarge`] over
    /// the family's size limit, and with [`Error::Redis`] if Redis did not
    /// take it; in that case the L1 copy is dropped too, so this process does
    /// not serve a value other processes never saw.
    pub async fn set(&self, key: &K, value: V) -> Result<(), Error> {
        let ctx = self.ctx();
        if !ctx.shared.enabled {
            return Ok(());
        }
        let key = self.key(key)?;
        let ttl = ctx.core.policy.draw_ttl();
        let bytes = ctx
            .encode(Some(&value), ttl, Duration::ZERO)
            .map_err(|e| ctx.encode_error(e))?;
        if let Some(l2) = &ctx.shared.l2
            && let Err(e) = l2.set(&key, &bytes, ttl).await
        {
            ctx.core.metrics.redis_error();
            ctx.l1_remove(&key);
            return Err(e);
        }
        ctx.l1_put(key, Some(Arc::new(value)), bytes.len(), ttl);
        Ok(())
    }

    /// Deletes `key` from Redis, then from this process's L1 (in that order,
    /// so that a concurrent read cannot copy the old value from Redis back into
    /// L1 after the L1 delete).
    ///
    /// Call it after the database write commits (delete on write). If Redis
    /// cannot be reached the L1 copy is still dropped and [`Error::Redis`] is
    /// returned: the Redis copy may be stale until its TTL.
    pub async fn invalidate(&self, key: &K) -> Result<(), Error> {
        let ctx = self.ctx();
        if !ctx.shared.enabled {
            return Ok(());
        }
        let key = self.key(key)?;
        let result = match &ctx.shared.l2 {
            Some(l2) => l2.unlink(&[&key]).await,
            None => Ok(()),
        };
        ctx.l1_remove(&key);
        if result.is_err() {
            ctx.core.metrics.redis_error();
        }
        result
    }
}

/// Counts one request and hands its value to the caller.
fn answer<V: Send + Sync + 'static>(
    core: &FamilyCore,
    lookup: Lookup,
) -> Result<Option<Arc<V>>, Error> {
    let counted = match (lookup.source, lookup.value.is_some()) {
        (Source::Loader, _) => Counted::Miss,
        (_, false) => Counted::NegativeHit,
        (Source::L1, true) => Counted::HitL1,
        (Source::L2, true) => Counted::HitL2,
    };
    core.metrics.request(counted);
    match lookup.value {
        None => Ok(None),
        Some(any) => any
            .downcast::<V>()
            .map(Some)
            .map_err(|_| Error::FamilyTypeMismatch {
                family: core.policy.policy.name.clone(),
            }),
    }
}

/// A loaded entry on its way to both tiers: key, encoded bytes, TTL, value.
type Fill = (String, Vec<u8>, Option<Duration>, Option<AnyValue>);

/// Everything a load task needs, detached from the caller's borrow.
#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    core: Arc<FamilyCore>,
}

impl Ctx {
    fn policy(&self) -> &CompiledPolicy {
        &self.core.policy
    }

    fn uses_l1(&self) -> bool {
        self.shared.l1.is_some() && self.core.policy.policy.l1
    }

    fn l1_get(&self, key: &str) -> Option<L1Entry> {
        match &self.shared.l1 {
            Some(l1) if self.core.policy.policy.l1 => l1.get(key),
            _ => None,
        }
    }

    fn l1_put(
        &self,
        key: String,
        value: Option<AnyValue>,
        encoded_len: usize,
        ttl: Option<Duration>,
    ) {
        if !self.uses_l1() {
            return;
        }
        let ttl = match (ttl, self.shared.l1_max_ttl) {
            (Some(t), Some(cap)) => Some(t.min(cap)),
            (None, cap) => cap,
            (t, None) => t,
        };
        if ttl.is_some_and(|t| t.is_zero()) {
            return;
        }
        if let Some(l1) = &self.shared.l1 {
            let entry = L1Entry::new(&key, value, encoded_len, ttl);
            l1.insert(key, entry);
        }
    }

    fn l1_remove(&self, key: &str) {
        if let Some(l1) = &self.shared.l1 {
            l1.invalidate(key);
        }
    }

    fn answer<V: Send + Sync + 'static>(&self, lookup: Lookup) -> Result<Option<Arc<V>>, Error> {
        answer(&self.core, lookup)
    }

    fn encode<V: Serialize>(
        &self,
        value: Option<&V>,
        ttl: Option<Duration>,
        took: Duration,
    ) -> Result<Vec<u8>, EncodeError> {
        let p = &self.policy().policy;
        let meta = Meta::new(ttl, took);
        match value {
            Some(v) => codec::encode(v, p.codec, p.compress_above, p.max_value_size, meta),
            None => Ok(codec::encode_negative(meta)),
        }
    }

    fn encode_error(&self, e: EncodeError) -> Error {
        let family = self.core.policy.policy.name.clone();
        match e {
            EncodeError::TooLarge(size) => {
                self.core.metrics.oversize();
                Error::ValueTooLarge {
                    family,
                    size,
                    max: self.core.policy.policy.max_value_size,
                }
            }
            EncodeError::Serialize(reason) => Error::Encode { family, reason },
        }
    }

    /// Decodes bytes from Redis into a lookup plus the L1 TTL they allow.
    /// An undecodable value is counted and reported as `None`.
    fn decode<V: DeserializeOwned + Send + Sync + 'static>(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Option<(Lookup, Option<Duration>)> {
        match codec::decode::<V>(bytes, self.policy().policy.max_value_size) {
            Ok(d) => Some((
                Lookup {
                    value: d.value.map(|v| Arc::new(v) as AnyValue),
                    source: Source::L2,
                },
                d.meta.remaining(),
            )),
            Err(e) => {
                self.core.metrics.decode_error();
                tracing::warn!(family = %self.core.policy.policy.name, key, error = %e, "value in redis does not decode; treating it as a miss");
                None
            }
        }
    }

    /// Deletes undecodable values so that the reload replaces them even if
    /// the loader fails or the fill is skipped.
    async fn unlink_broken(&self, keys: &[&str]) {
        if let Some(l2) = &self.shared.l2
            && l2.unlink(keys).await.is_err()
        {
            self.core.metrics.redis_error();
        }
    }

    /// Runs the loader, timing and counting it.
    async fn call<T, Fut, E>(&self, fut: Fut) -> Result<(T, Duration), Error>
    where
        Fut: Future<Output = Result<T, E>>,
        E: Into<BoxError>,
    {
        let start = Instant::now();
        let result = fut.await;
        let took = start.elapsed();
        self.core.metrics.loader_call(took, result.is_ok());
        match result {
            Ok(v) => Ok((v, took)),
            Err(e) => Err(Error::Loader(LoaderError::new(e))),
        }
    }

    /// Encodes a freshly loaded value (or "not found") for Redis. Returns the
    /// bytes to store (None if the value cannot be cached) and its TTL.
    fn prepare<V: Serialize>(
        &self,
        value: Option<&V>,
        took: Duration,
    ) -> (Option<Vec<u8>>, Option<Duration>) {
        let ttl = match value {
            Some(_) => self.policy().draw_ttl(),
            None => Some(self.policy().negative_ttl),
        };
        match self.encode(value, ttl, took) {
            Ok(bytes) => (Some(bytes), ttl),
            Err(e) => {
                let e = self.encode_error(e);
                tracing::warn!(family = %self.core.policy.policy.name, error = %e, "loaded value not cached");
                (None, ttl)
            }
        }
    }

    /// The body of a single-key load task.
    async fn load_one<V, F, Fut, E>(self, key: String, loader: F) -> Outcome
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        // A flight that finished just before this one started has filled L1.
        if let Some(entry) = self.l1_get(&key) {
            return Ok(Lookup {
                value: entry.value,
                source: Source::L1,
            });
        }
        // A Redis that just failed the read is not asked to store the fill:
        // while it is down, that would double what each miss waits for it.
        let mut l2_answered = true;
        if let Some(l2) = &self.shared.l2 {
            match l2.get(&key).await {
                Ok(Some(bytes)) => match self.decode::<V>(&key, &bytes) {
                    Some((lookup, ttl)) => {
                        self.l1_put(key, lookup.value.clone(), bytes.len(), ttl);
                        return Ok(lookup);
                    }
                    None => self.unlink_broken(&[&key]).await,
                },
                Ok(None) => {}
                Err(e) => {
                    l2_answered = false;
                    self.core.metrics.redis_error();
                    tracing::debug!(family = %self.core.policy.policy.name, error = %e, "redis read failed; loading from source");
                }
            }
        }
        let (value, took) = self.call(loader()).await?;
        let (bytes, ttl) = self.prepare(value.as_ref(), took);
        let value = value.map(|v| Arc::new(v) as AnyValue);
        if let Some(bytes) = bytes {
            if let Some(l2) = self.shared.l2.as_ref().filter(|_| l2_answered)
                && l2.set(&key, &bytes, ttl).await.is_err()
            {
                self.core.metrics.redis_error();
            }
            self.l1_put(key, value.clone(), bytes.len(), ttl);
        }
        Ok(Lookup {
            value,
            source: Source::Loader,
        })
    }

    /// The body of a `get_many` load task: L1 re-check, one `MGET`, one
    /// loader call, one pipelined `SET` round trip.
    async fn load_batch<K, V, F, Fut, E>(self, items: Vec<(String, K)>, loader: F) -> BatchOutcome
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
            match self.l1_get(&key) {
                Some(entry) => {
                    found.insert(
                        key,
                        Lookup {
                            value: entry.value,
                            source: Source::L1,
                        },
                    );
                }
                None => pending.push((key, parts)),
            }
        }
        let mut l2_answered = true;
        if let Some(l2) = self.shared.l2.as_ref().filter(|_| !pending.is_empty()) {
            let keys: Vec<&str> = pending.iter().map(|(k, _)| k.as_str()).collect();
            match l2.mget(&keys).await {
                Ok(values) if values.len() == pending.len() => {
                    let mut still = Vec::new();
                    let mut broken = Vec::new();
                    for ((key, parts), bytes) in pending.into_iter().zip(values) {
                        let Some(bytes) = bytes else {
                            still.push((key, parts));
                            continue;
                        };
                        match self.decode::<V>(&key, &bytes) {
                            Some((lookup, ttl)) => {
                                self.l1_put(key.clone(), lookup.value.clone(), bytes.len(), ttl);
                                found.insert(key, lookup);
                            }
                            None => {
                                broken.push(key.clone());
                                still.push((key, parts));
                            }
                        }
                    }
                    if !broken.is_empty() {
                        let refs: Vec<&str> = broken.iter().map(String::as_str).collect();
                        self.unlink_broken(&refs).await;
                    }
                    pending = still;
                }
                Ok(_) => self.core.metrics.redis_error(),
                Err(e) => {
                    l2_answered = false;
                    self.core.metrics.redis_error();
                    tracing::debug!(family = %self.core.policy.policy.name, error = %e, "redis MGET failed; loading from source");
                }
            }
        }
        if pending.is_empty() {
            return Ok(found);
        }
        let wanted: Vec<K> = pending.iter().map(|(_, k)| k.clone()).collect();
        let (mut loaded, took) = self.call(loader(wanted)).await?;
        let mut writes: Vec<Fill> = Vec::with_capacity(pending.len());
        for (key, parts) in pending {
            let value = loaded.remove(&parts);
            let (bytes, ttl) = self.prepare(value.as_ref(), took);
            let value = value.map(|v| Arc::new(v) as AnyValue);
            found.insert(
                key.clone(),
                Lookup {
                    value: value.clone(),
                    source: Source::Loader,
                },
            );
            if let Some(bytes) = bytes {
                writes.push((key, bytes, ttl, value));
            }
        }
        if let Some(l2) = self.shared.l2.as_ref().filter(|_| l2_answered) {
            let batch: Vec<(&str, &[u8], Option<Duration>)> = writes
                .iter()
                .map(|(k, b, t, _)| (k.as_str(), b.as_slice(), *t))
                .collect();
            if l2.set_many(&batch).await.is_err() {
                self.core.metrics.redis_error();
            }
        }
        for (key, bytes, ttl, value) in writes {
            self.l1_put(key, value, bytes.len(), ttl);
        }
        Ok(found)
    }

    /// The cache is off: straight to the loader.
    async fn bypass_one<V, F, Fut, E>(&self, loader: F) -> Result<Option<Arc<V>>, Error>
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

    async fn bypass_many<K, V, F, Fut, E>(
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
