//! The write paths: set, versioned set, write-through, and invalidation by
//! key and by pattern (the article's "Write-Through" and "Cache Invalidation").
//!
//! Every write and invalidation also goes on the invalidation bus (in the
//! same round trip), so that other processes drop their L1 copy, and voids
//! any load of the key already running in this process, so that a load that
//! read the old row cannot put it back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Ctx, Family};
use crate::Error;
use crate::Versioned;
use crate::bus::Event;
use crate::codec::Meta;
use crate::error::{BoxError, SourceError};
use crate::key::{KeyParts, matches_pattern};
use crate::tier::redis::{Batch, RedisTier, add_store};

/// Keys asked of Redis per `SCAN` step of a pattern invalidation.
const SCAN_COUNT: usize = 1000;

impl Ctx {
    /// The current versions of the tags of `key`, to stamp a write with.
    async fn tag_versions(&self, key: &str) -> Result<Vec<u64>, Error> {
        let Some(tags) = self.core.tag_keys(key) else {
            return Ok(Vec::new());
        };
        let Some(l2) = &self.shared.l2 else {
            return Ok(vec![0; tags.len()]);
        };
        let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        let values = l2.mget(&refs).await?;
        Ok(values
            .into_iter()
            .map(|v| {
                v.and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
                    .unwrap_or(0)
            })
            .collect())
    }

    /// Stores `value` in both tiers and tells the other processes. With a
    /// version, Redis keeps whichever version is higher; without, the value
    /// overwrites. Returns whether it was stored.
    pub async fn write<V>(
        &self,
        key: String,
        value: Arc<V>,
        version: Option<u64>,
    ) -> Result<bool, Error>
    where
        V: Serialize + Send + Sync + 'static,
    {
        let guard = self.shared.flights.begin_write(&key);
        let tags = match self.tag_versions(&key).await {
            Ok(t) => t,
            Err(e) => {
                self.core.metrics.redis_error();
                self.l1_remove(&key);
                self.shared.deferred.key(&key);
                return Err(e);
            }
        };
        let ttl = self.policy().draw_ttl();
        let meta = Meta::new(ttl, Duration::ZERO)
            .with_version(version.unwrap_or(0))
            .with_tags(tags);
        let encoded = self
            .encode(Some(&value), &meta)
            .map_err(|e| self.encode_error(e))?;
        let stored = match &self.shared.l2 {
            None => true,
            Some(l2) => {
                let mut pipe = Batch::new();
                // Redis keeps it through its grace window, as a fill's: a
                // written value is as good a fail-safe as a loaded one.
                let kept = self.redis_ttl(ttl, false);
                match version {
                    Some(_) => add_store(&mut pipe, &key, &encoded.bytes, kept),
                    None => {
                        let cmd = pipe.cmd("SET").arg(&key).arg(&encoded.bytes);
                        if let Some(ttl) = kept {
                            cmd.arg("PX").arg((ttl.as_millis() as u64).max(1));
                        }
                    }
                }
                // A load that started before this write must not store what it
                // read: its lease goes. Processes waiting for that load look
                // again and find this value.
                pipe.cmd("DEL").arg(format!("{key}:lease")).ignore();
                pipe.cmd("PUBLISH")
                    .arg(&self.shared.fill_channel)
                    .arg(&key)
                    .ignore();
                if let Some(bus) = &self.shared.bus {
                    bus.add(&mut pipe, &Event::Key(key.clone()));
                }
                let stored = l2.run_batch::<(redis::Value,)>("SET", &pipe).await;
                // A load that started while the SET was on its way may have
                // read the value it replaced, from Redis, and would put that
                // in L1 after ours: void it (the first void, in
                // `begin_write`, only reached the loads already running).
                self.shared.flights.void_loads(&key);
                if stored.is_ok() {
                    self.shared.deferred.forget_key(&key);
                }
                match stored {
                    // `OK` from SET, 1 or 0 from the set-if-newer script.
                    Ok((redis::Value::Int(0),)) => false,
                    Ok(_) => true,
                    Err(e) => {
                        // Redis may still hold the old value: delete it
                        // when Redis answers again.
                        self.core.metrics.redis_error();
                        self.l1_remove(&key);
                        self.shared.deferred.key(&key);
                        return Err(e);
                    }
                }
            }
        };
        if stored {
            let life = self.lifetime_of_new(ttl, false);
            self.l1_put_unless(
                || guard.is_void(),
                key,
                Some(value),
                encoded.payload_len,
                life,
                0,
            );
        } else {
            // Redis holds a newer version, or a newer write or invalidation
            // came in meanwhile: ours must not linger in L1.
            self.l1_remove(&key);
        }
        Ok(stored)
    }

    /// Deletes `key` from Redis (telling the other processes) and from L1.
    /// If Redis cannot be reached, the deletion is deferred until it can
    /// (see `recovery.rs`) and this still succeeds.
    pub async fn invalidate_key(&self, key: &str) -> Result<(), Error> {
        self.shared.flights.void(key);
        let result = match &self.shared.l2 {
            Some(l2) => {
                let mut pipe = Batch::new();
                // The value, and the lease of any load in progress: a load that
                // read the row before this invalidation cannot store it after.
                pipe.cmd("UNLINK")
                    .arg(key)
                    .arg(format!("{key}:lease"))
                    .ignore();
                pipe.cmd("PUBLISH")
                    .arg(&self.shared.fill_channel)
                    .arg(key)
                    .ignore();
                if let Some(bus) = &self.shared.bus {
                    bus.add(&mut pipe, &Event::Key(key.to_owned()));
                }
                l2.run_batch::<()>("UNLINK", &pipe).await
            }
            None => Ok(()),
        };
        // Again, now that Redis no longer holds the value: a load that
        // started during the round trip (after the first void) may have read
        // it from Redis before the UNLINK and would put it in L1 after the
        // removal below. Voided here, its put is refused or undone; a load
        // that starts after this reads Redis after the UNLINK.
        self.shared.flights.void(key);
        self.l1_remove(key);
        match result {
            Ok(()) => self.shared.deferred.forget_key(key),
            Err(e) => {
                self.core.metrics.redis_error();
                tracing::debug!(family = %self.name(), error = %e, "invalidation deferred until redis answers");
                self.shared.deferred.key(key);
            }
        }
        Ok(())
    }
}

impl<K, V> Family<K, V>
where
    K: KeyParts + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Stores `value` under `key` in Redis and L1, with the family's TTL,
    /// overwriting what is there, and tells the other processes to drop their
    /// copy.
    ///
    /// For values the application just wrote to the database itself; prefer
    /// [`write_through`](Self::write_through) (database first) or
    /// [`set_versioned`](Self::set_versioned) when writers can race. Fails
    /// with [`Error::ValueTooLarge`] over the family's size limit.
    ///
    /// If Redis cannot take it (down, or the circuit breaker open) the write
    /// skips the cache without an error: the L1 copy is dropped (so this
    /// process does not serve a value other processes never saw) and the
    /// Redis copy is deleted once Redis answers again; the next read loads.
    pub async fn set(&self, key: &K, value: V) -> Result<(), Error> {
        if !self.cache.shared.enabled {
            return Ok(());
        }
        let key = self.key(key)?;
        match self.ctx().write(key, Arc::new(value), None).await {
            Ok(_) | Err(Error::Redis { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stores `value` as version `version` of `key`, unless a higher version
    /// is already cached: concurrent writers that finish out of order leave
    /// the newest version, not the last to arrive. Returns whether it was
    /// stored. The comparison is atomic in Redis (a script) and covers loader
    /// fills too: a load never replaces a versioned value.
    ///
    /// Versions are the caller's, e.g. a row version or `updated_at` in
    /// microseconds; any increasing `u64` works.
    ///
    /// If Redis cannot take it, returns `Ok(false)` and behaves as
    /// [`set`](Self::set) does: the key is deleted once Redis answers again.
    pub async fn set_versioned(&self, key: &K, value: V, version: u64) -> Result<bool, Error> {
        if !self.cache.shared.enabled {
            return Ok(false);
        }
        let key = self.key(key)?;
        match self.ctx().write(key, Arc::new(value), Some(version)).await {
            Err(Error::Redis { .. }) => Ok(false),
            other => other,
        }
    }

    /// Write-through: runs `persist` (the database write) first, and only if
    /// it succeeds stores what it returns (the value as written, with its
    /// version) in both tiers. Returns that value.
    ///
    /// - `persist` fails → the cache is untouched and [`Error::Persist`]
    ///   carries its error.
    /// - the cache update fails after `persist` succeeded → the key is
    ///   deleted instead (never left holding the old value; if Redis is
    ///   unreachable, as soon as it answers again), and the call still
    ///   succeeds: the database has the write, and the next read loads it.
    /// - two writers race → Redis keeps the higher version, whatever order
    ///   their cache updates arrive in.
    ///
    /// The version usually comes from the database (`RETURNING version`), so
    /// `persist` returns it with the value.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), larder::Error> {
    /// # use larder::{Cache, Policy, Versioned};
    /// # use std::time::Duration;
    /// # let cache = Cache::builder()
    /// #     .family(Policy::new("price", "stock:{symbol}:price").ttl(Duration::from_secs(2)))
    /// #     .build().await?;
    /// let prices = cache.family::<String, String>("price")?;
    /// let stored = prices
    ///     .write_through(&"RELIANCE".to_string(), async {
    ///         // UPDATE instruments SET last_price = $2, version = version + 1
    ///         //  WHERE symbol = $1 RETURNING last_price, version
    ///         Ok::<_, std::io::Error>(Versioned { value: "2431.55".to_string(), version: 8 })
    ///     })
    ///     .await?;
    /// assert_eq!(*stored, "2431.55");
    /// # Ok(()) }
    /// ```
    pub async fn write_through<E, Fut>(&self, key: &K, persist: Fut) -> Result<Arc<V>, Error>
    where
        Fut: Future<Output = Result<Versioned<V>, E>>,
        E: Into<BoxError>,
    {
        let key = self.key(key)?;
        let written = persist
            .await
            .map_err(|e| Error::Persist(SourceError::new(e)))?;
        let value = Arc::new(written.value);
        if !self.cache.shared.enabled {
            return Ok(value);
        }
        let ctx = self.ctx();
        match ctx
            .write(key.clone(), Arc::clone(&value), Some(written.version))
            .await
        {
            // Redis is unreachable: `write` deferred the key's deletion.
            Ok(_) | Err(Error::Redis { .. }) => {}
            Err(e) => {
                tracing::warn!(family = %self.name(), error = %e, "write-through: cache update failed after the database write; deleting the key");
                ctx.invalidate_key(&key).await?;
            }
        }
        Ok(value)
    }

    /// Deletes `key` from Redis and from L1, and tells every other process to
    /// drop its L1 copy (delete on write). A load of `key` already running
    /// here does not put its (possibly older) result back.
    ///
    /// Call it after the database write commits. If Redis cannot be reached
    /// (down, or the circuit breaker open) the L1 copy is still dropped, the
    /// call still succeeds, and the Redis copy is deleted (and the other
    /// processes told) as soon as Redis answers again; see
    /// [`Cache::deferred_invalidations`](crate::Cache::deferred_invalidations).
    pub async fn invalidate(&self, key: &K) -> Result<(), Error> {
        if !self.cache.shared.enabled {
            return Ok(());
        }
        let key = self.key(key)?;
        self.ctx().invalidate_key(&key).await
    }

    /// Deletes every entry of this family whose key matches `pattern`: the
    /// family's key parts, with [`Any`](crate::key::Any) where any value goes.
    /// Returns how many Redis keys were deleted.
    ///
    /// `SCAN` + `UNLINK` in batches, never `KEYS`; every part is escaped, so
    /// a user id of `*` matches that user only, and a wildcard matches exactly
    /// one part, so no other family's keys can match. Other processes drop
    /// their matching L1 entries through the bus.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), larder::Error> {
    /// # use larder::{Cache, Policy, key::Any};
    /// # use std::time::Duration;
    /// # let cache = Cache::builder()
    /// #     .family(Policy::new("order", "user:{user_id}:order:{order_id}").ttl(Duration::from_secs(60)))
    /// #     .build().await?;
    /// let orders = cache.family::<(u64, u64), String>("order")?;
    /// orders.set(&(42, 1), "BUY".into()).await?;
    /// orders.invalidate_pattern(&(42u64, Any)).await?; // every order of user 42
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_pattern<P: KeyParts>(&self, pattern: &P) -> Result<u64, Error> {
        let (pattern, filled) = self.core.layout.fill_pattern(pattern);
        let expected = self.core.policy.template.arity();
        if filled != expected {
            return Err(Error::Pattern {
                family: self.name().to_string(),
                reason: format!("the key template has {expected} part(s), the pattern {filled}"),
            });
        }
        self.cache
            .invalidate_pattern_key(&pattern, &self.core)
            .await
    }
}

/// Deletes every key matching `pattern` (`SCAN` + `UNLINK` in batches,
/// never `KEYS`), and the leases of loads in progress on them, so that those
/// cannot store what they read before. Returns how many values it deleted.
///
/// On a cluster every master is scanned. A scan during which the slot map
/// changed (a failover or a resharding moved keys between masters, maybe
/// from one not yet scanned to one already scanned) is repeated, up to
/// [`RESCANS`] times; past that the error says so. Keys written during the
/// scan may or may not be deleted, as on one server: the invalidation that
/// matters for them is the one their writer issues.
pub(crate) async fn unlink_matching(l2: &RedisTier, pattern: &str) -> Result<u64, Error> {
    let glob = format!("{pattern}*");
    let mut deleted = 0u64;
    for _ in 0..=RESCANS {
        let epoch = l2.topology_epoch();
        for target in l2.scan_targets() {
            let mut cursor = 0u64;
            loop {
                let (next, keys) = l2
                    .scan_page(target.as_deref(), cursor, &glob, SCAN_COUNT)
                    .await?;
                let mine: Vec<&str> = keys
                    .iter()
                    .map(String::as_str)
                    // A glob `*` also matches `:`; only keys of the pattern's
                    // exact shape, and their leases.
                    .filter(|k| matches_pattern(pattern, k.strip_suffix(":lease").unwrap_or(k)))
                    .collect();
                if !mine.is_empty() {
                    l2.unlink(&mine).await?;
                    deleted += mine.iter().filter(|k| !k.ends_with(":lease")).count() as u64;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        if l2.topology_epoch() == epoch {
            return Ok(deleted);
        }
        tracing::info!(
            pattern,
            "the cluster's slots moved during a pattern invalidation; scanning again"
        );
    }
    Err(Error::Redis {
        op: "SCAN",
        reason: format!("the cluster's slots kept moving during {RESCANS} scans; invalidate again"),
    })
}

/// How many times a pattern invalidation rescans after the slot map moved.
const RESCANS: usize = 3;
