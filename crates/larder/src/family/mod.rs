//! Families: typed handles on one kind of cached data, and the read path.
//! The write paths are in `write.rs`, the machinery both share in `ctx.rs`.
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
//!              L1 again ─▶ L2 MGET value [+ pending write] [+ tag versions]
//!                                ─hit (tags current)─▶ decode ─▶ fill L1
//!                                │miss / stale tag / undecodable (deleted) / Redis down
//!                                ▼
//!                             loader ─▶ encode (tag versions read before the load)
//!                                    ─▶ SET-if-newer L2 (TTL) ─▶ fill L1
//! ```
//!
//! A load whose key is invalidated or written while it runs still answers the
//! callers that were waiting on it, but does not fill either tier: it may
//! have read the row from before the change.

mod ctx;
mod load;
mod write;

pub(crate) use write::unlink_matching;

use std::any::TypeId;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{Either, ready};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) use ctx::Ctx;

use crate::Error;
use crate::cache::Cache;
use crate::error::BoxError;
use crate::flight::{Lookup, Source};
use crate::key::{KeyBuf, KeyParts};
use crate::metrics::{FamilyStats, Outcome as Counted};
use crate::registry::FamilyCore;
use crate::render::Rendered;
use load::{EARLY_REFRESH_MARGIN, Mode};

impl Cache {
    /// Opens the family `name` (its policy was given to the builder) with key
    /// type `K` and value type `V`.
    ///
    /// Fails if no such policy exists, if `K` does not fill the key template
    /// (e.g. a tuple of two on `portfolio:{user_id}`), or if the family is
    /// already open with other types. Opening it again with the same types
    /// returns a handle that shares the first one's state.
    pub fn family<K, V>(&self, name: &str) -> Result<Family<K, V>, Error>
    where
        K: KeyParts + 'static,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let policy = self
            .shared
            .policies
            .get(name)
            .ok_or_else(|| Error::UnknownFamily(name.to_string()))?;
        if K::ARITY != policy.template.arity() {
            return Err(Error::config(
                name,
                format!(
                    "key template `{}` has {} placeholder(s) but the key type fills {}",
                    policy.template.as_str(),
                    policy.template.arity(),
                    K::ARITY
                ),
            ));
        }
        let type_id = TypeId::of::<(K, V)>();
        let mut families = self
            .shared
            .families
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let core = match families.get(name) {
            Some((existing, core)) if *existing == type_id => Arc::clone(core),
            Some(_) => {
                return Err(Error::FamilyTypeMismatch {
                    family: name.to_string(),
                });
            }
            None => {
                let mut core = FamilyCore::new(&self.shared.namespace, policy.clone());
                if policy.policy.render_json {
                    core.renderer = Some(crate::render::json_renderer::<V>);
                }
                let core = Arc::new(core);
                families.insert(name.to_string(), (type_id, Arc::clone(&core)));
                core
            }
        };
        Ok(Family {
            cache: self.clone(),
            core,
            _types: PhantomData,
        })
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
        let mut buf = KeyBuf::new();
        self.key_in(&mut buf, key)?;
        Ok(buf.into_string())
    }

    /// [`key`](Self::key) into `buf`, on the stack where it fits: what a
    /// lookup that may not need to keep the key (an L1 hit) builds.
    fn key_in<'b>(&self, buf: &'b mut KeyBuf, key: &K) -> Result<&'b str, Error> {
        let filled = self.core.layout.fill_in_place(buf, key);
        debug_assert_eq!(
            filled,
            K::ARITY,
            "arity is checked when the family is opened"
        );
        self.check_len(buf.as_str())?;
        Ok(buf.as_str())
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

    pub(crate) fn ctx(&self) -> Ctx {
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
        let mut buf = KeyBuf::new();
        let key = match self.key_in(&mut buf, key) {
            Ok(key) => key,
            Err(e) => return Either::Left(ready(Err(e))),
        };
        // An L1 hit is answered here and now: no await, no allocation, no
        // reference count touched but the value's own.
        if let Some(l1) = shared.l1.as_ref().filter(|_| self.core.policy.policy.l1)
            && let Some(hit) = l1.get(key)
        {
            if hit.is_fresh() {
                if hit.entry.value.is_some()
                    && let Some(left) = hit.fresh_for
                    && self.core.early_refresh_due(left, hit.entry.load_us)
                {
                    // The copy in Redis may be the one this process holds,
                    // or another process's refresh of it: only the latter,
                    // fresh for well longer than ours, saves the load.
                    let keep_if_fresh_for = left + EARLY_REFRESH_MARGIN;
                    self.ctx()
                        .spawn_refresh(key.to_owned(), loader, keep_if_fresh_for);
                }
                let fresh = Lookup {
                    value: hit.entry.value.clone(),
                    source: Source::L1,
                    stale: false,
                };
                return Either::Left(ready(answer(&self.core, fresh)));
            }
            // Stale, within the grace window.
            let stale = Lookup {
                value: hit.entry.value.clone(),
                source: Source::L1,
                stale: true,
            };
            let key = key.to_owned();
            let ctx = self.ctx();
            return match self.core.policy.policy.soft_timeout {
                Some(soft) if !self.core.refresh_backed_off(&key) => {
                    // Wait a little for the refresh; past that, the stale value.
                    let refresh = ctx.start_refresh(key.clone(), loader, Duration::ZERO);
                    Either::Right(
                        async move {
                            match tokio::time::timeout(soft, refresh.clone()).await {
                                Ok(Ok(fresh)) => {
                                    ctx.finish_refresh(&key, Ok(fresh.clone()));
                                    ctx.answer(fresh)
                                }
                                Ok(Err(e)) => {
                                    // Fail-safe: the stale value it is.
                                    ctx.finish_refresh(&key, Err(e));
                                    ctx.answer(stale)
                                }
                                Err(_) => {
                                    let driver = ctx.clone();
                                    tokio::spawn(async move {
                                        driver.finish_refresh(&key, refresh.await)
                                    });
                                    ctx.answer(stale)
                                }
                            }
                        }
                        .boxed(),
                    )
                }
                _ => {
                    ctx.spawn_refresh(key, loader, Duration::ZERO);
                    Either::Left(ready(answer(&self.core, stale)))
                }
            };
        }
        let key = key.to_owned();
        let ctx = self.ctx();
        let load_ctx = ctx.clone();
        let task_key = key.clone();
        let flight = ctx.shared.flights.join_or_start(&key, move |guard| {
            async move {
                let outcome = load_ctx
                    .load_one(task_key, loader, &guard, Mode::Read)
                    .await;
                // The guard ends the flight only now, after the fill: a caller
                // arriving later finds the value in L1 or joins this flight.
                drop(guard);
                outcome
            }
            .boxed()
        });
        let hard = self.core.policy.policy.hard_timeout;
        Either::Right(
            async move {
                let outcome = match hard {
                    None => flight.await,
                    Some(hard) => match tokio::time::timeout(hard, flight.clone()).await {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            // The caller gives up; the load goes on and fills
                            // the cache for the next one.
                            ctx.core.metrics.loader_timeout();
                            tokio::spawn(flight);
                            return Err(Error::Timeout {
                                family: ctx.name().to_string(),
                                after: hard,
                            });
                        }
                    },
                };
                ctx.answer(outcome?)
            }
            .boxed(),
        )
    }

    /// [`get_or_load`](Self::get_or_load), with the value's JSON body and
    /// ETag: for handlers that serve the value over HTTP as it is.
    ///
    /// In a family with [`Policy::render_json`](crate::Policy::render_json)
    /// the body is rendered once, when the value enters L1, and a fresh L1
    /// hit hands out those shared bytes without touching `serde_json` (and
    /// is answered before the future is polled, as `get_or_load`'s is).
    /// Anywhere else (no L1, a family that does not render, the cache off)
    /// the body is rendered for this call. Either way it equals
    /// `serde_json::to_vec(&value)`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), larder::Error> {
    /// # use larder::{Cache, Policy};
    /// # use std::time::Duration;
    /// # let cache = Cache::builder()
    /// #     .family(Policy::new("price", "price:{symbol}").ttl(Duration::from_secs(2)).render_json())
    /// #     .build().await?;
    /// let prices = cache.family::<String, u64>("price")?;
    /// let load = || async { Ok::<_, std::io::Error>(Some(3901)) };
    /// let first = prices.get_or_load_rendered(&"TCS".into(), load).await?.unwrap();
    /// let again = prices.get_or_load_rendered(&"TCS".into(), load).await?.unwrap();
    /// assert_eq!(&first.body()[..], b"3901");
    /// assert_eq!(first.body().as_ptr(), again.body().as_ptr()); // the same bytes, rendered once
    /// assert_eq!(first.etag(), again.etag());
    /// # Ok(()) }
    /// ```
    pub fn get_or_load_rendered<F, Fut, E>(
        &self,
        key: &K,
        loader: F,
    ) -> impl Future<Output = Result<Option<Rendered<V>>, Error>> + Send + 'static
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let shared = &self.cache.shared;
        let l1 = shared
            .l1
            .as_ref()
            .filter(|_| shared.enabled && self.core.policy.policy.l1)
            .map(Arc::clone);
        let mut buf = KeyBuf::new();
        let full = self.key_in(&mut buf, key).ok();
        // The hit path: a fresh entry with its body, no refresh due.
        if let (Some(l1), Some(full)) = (&l1, full)
            && let Some(hit) = l1.get(full)
            && let Some(left) = hit
                .fresh_for
                .filter(|l| !l.is_zero())
                .or(hit.fresh_for.is_none().then_some(Duration::MAX))
            && !(hit.entry.value.is_some() && self.core.early_refresh_due(left, hit.entry.load_us))
            && (hit.entry.value.is_none() || hit.entry.body.is_some())
        {
            let body = hit.entry.body.clone();
            let lookup = Lookup {
                value: hit.entry.value.clone(),
                source: Source::L1,
                stale: false,
            };
            let out = answer::<V>(&self.core, lookup).map(|v| {
                v.zip(body).map(|(value, body)| Rendered {
                    value,
                    body,
                    fresh_for: left,
                })
            });
            return Either::Left(ready(out));
        }
        let full = full.map(str::to_owned);
        let read = self.get_or_load(key, loader);
        let family = self.name().to_string();
        Either::Right(
            async move {
                let Some(value) = read.await? else {
                    return Ok(None);
                };
                // Filled (or found) just now: L1 holds its rendering, if
                // that entry is still this value.
                if let (Some(l1), Some(full)) = (&l1, &full)
                    && let Some(hit) = l1.get(full)
                    && let (Some(any), Some(body)) = (&hit.entry.value, hit.entry.body.clone())
                    && std::ptr::eq(
                        Arc::as_ptr(any) as *const (),
                        Arc::as_ptr(&value) as *const (),
                    )
                {
                    return Ok(Some(Rendered {
                        value,
                        body,
                        fresh_for: hit.fresh_for.unwrap_or(Duration::MAX),
                    }));
                }
                let body = crate::render::render(&*value).map_err(|e| Error::Encode {
                    family,
                    reason: e.to_string(),
                })?;
                Ok(Some(Rendered {
                    value,
                    body,
                    fresh_for: Duration::ZERO,
                }))
            }
            .boxed(),
        )
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
            // Stale entries are reloaded with the batch.
            match ctx.l1_get(key).filter(|h| h.is_fresh()) {
                Some(hit) => {
                    answers[i] = Some(Lookup {
                        value: hit.entry.value.clone(),
                        source: Source::L1,
                        stale: false,
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
                    let outcome = load_ctx.load_batch(items, loader, &guard).await;
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
}

/// Counts one request and hands its value to the caller.
fn answer<V: Send + Sync + 'static>(
    core: &FamilyCore,
    lookup: Lookup,
) -> Result<Option<Arc<V>>, Error> {
    let counted = match (lookup.source, lookup.value.is_some()) {
        (Source::Loader, _) => Counted::Miss,
        _ if lookup.stale => Counted::Stale,
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
