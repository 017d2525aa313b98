//! The `Cache` handle and the state it shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Error;
use crate::breaker::BreakerState;
use crate::bus::{Event, Listener, Publisher};
use crate::deferred::Deferred;
use crate::flight::Flights;
use crate::key::{KeyParts, KeyTemplate, tag_key};
use crate::notify::Waiters;
use crate::orphans::OrphanedLeases;
use crate::policy::CompiledPolicy;
use crate::pubsub::{self, Subscription};
use crate::registry::Families;
use crate::tier::memory::MemoryTier;
use crate::tier::redis::{Batch, RedisTier};
use crate::write_behind::MemoryQueue;

/// A two-tier cache: an in-process tier (L1) in front of Redis (L2), in front
/// of your loaders (the database).
///
/// `Cache` is a cheap handle (one `Arc`): clone it into every task and handler.
/// Data is read and written through typed [`Family`] handles, one per kind of
/// cached data, opened with [`Cache::family`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), larder::Error> {
/// use larder::{Cache, Policy};
/// use std::time::Duration;
///
/// let cache = Cache::builder()
///     .family(Policy::new("greeting", "greeting:{name}").ttl(Duration::from_secs(60)))
///     .build()
///     .await?;
/// let greetings = cache.family::<String, String>("greeting")?;
///
/// let name = "ada".to_string();
/// let who = name.clone(); // the loader owns what it uses
/// let hello = greetings
///     .get_or_load(&name, move || async move {
///         Ok::<_, std::io::Error>(Some(format!("hello, {who}")))
///     })
///     .await?;
/// assert_eq!(hello.as_deref().map(String::as_str), Some("hello, ada"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    pub(crate) shared: Arc<Shared>,
}

/// A background task of the cache, stopped when the last clone of the cache
/// is dropped (with its `Shared`).
pub(crate) struct TaskGuard(pub tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What every clone of a `Cache` shares.
pub(crate) struct Shared {
    pub namespace: String,
    pub l1: Option<Arc<MemoryTier>>,
    pub l1_max_ttl: Option<Duration>,
    pub l2: Option<RedisTier>,
    pub flights: Arc<Flights>,
    pub policies: HashMap<String, CompiledPolicy>,
    /// Opened families by name, with the `TypeId` of their `(K, V)`. Opening
    /// a family twice returns the same core, so both handles share counters.
    pub families: Arc<Families>,
    pub max_key_len: usize,
    pub enabled: bool,
    /// Where this process publishes invalidations (with Redis).
    pub bus: Option<Publisher>,
    /// The task applying other processes' invalidations to L1 (with Redis
    /// and L1); dropping it stops the task.
    pub listener: Option<Listener>,
    /// Write-behind queues without Redis, by family.
    pub local_queues: Mutex<HashMap<String, Arc<MemoryQueue>>>,
    /// Where lease holders announce their fills (`<ns>:fills`).
    pub fill_channel: String,
    /// This process's waiters for other processes' fills.
    pub fill_waiters: Arc<Waiters>,
    /// The subscription that wakes them (with Redis); held only to be
    /// dropped with the cache, which stops it.
    pub _fill_subscription: Option<Subscription>,
    /// Invalidations waiting for Redis to answer again.
    pub deferred: Deferred,
    /// The timeout of one connection attempt to Redis.
    pub redis_connect_timeout: Duration,
    /// How many replicas must hold a write-behind entry before the write is
    /// acknowledged, and how long to wait for them (`None`: don't wait).
    pub write_behind_replicas: Option<(u32, Duration)>,
    /// Leases this process could not fill or give back.
    pub orphaned_leases: OrphanedLeases,
    /// The task that replays them at each recovery (with Redis); stops
    /// when dropped.
    pub _recovery: Option<TaskGuard>,
}

impl Shared {
    /// Adds the bump of tag key `tag` to `pipe`: its version incremented
    /// (entries stamped with an older one are stale), its lifetime renewed,
    /// and the bus told. One place for the service's own tag invalidations,
    /// their replay after an outage, and the change stream's.
    pub fn add_tag_bump(&self, pipe: &mut Batch, tag: &str) {
        pipe.cmd("INCR").arg(tag).ignore();
        // Tag versions may expire: a missing tag reads as 0, which no entry
        // stamped after an increment matches, so entries only ever turn
        // stale, never fresh again.
        pipe.cmd("PEXPIRE")
            .arg(tag)
            .arg(TAG_TTL.as_millis() as u64)
            .ignore();
        if let Some(bus) = &self.bus {
            bus.add(pipe, &Event::Tag(tag.to_owned()));
        }
    }

    /// The in-process write-behind queue of `family` (without Redis).
    pub fn local_queue(&self, family: &str) -> Arc<MemoryQueue> {
        let mut queues = self.local_queues.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(queues.entry(family.to_string()).or_default())
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.shared.namespace)
            .field("l1", &self.shared.l1.is_some())
            .field("l2", &self.shared.l2.is_some())
            .field("enabled", &self.shared.enabled)
            .finish()
    }
}

impl Cache {
    /// The namespace prefix of every key.
    pub fn namespace(&self) -> &str {
        &self.shared.namespace
    }

    /// Whether a Redis tier is configured.
    pub fn has_redis(&self) -> bool {
        self.shared.l2.is_some()
    }

    /// Whether the cache is on (see [`CacheBuilder::enabled`]).
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled
    }

    /// Entries and bytes held by the in-process tier (zero when disabled).
    /// Runs pending housekeeping first, so the numbers are current.
    pub async fn l1_usage(&self) -> L1Usage {
        match &self.shared.l1 {
            Some(l1) => {
                let (entries, bytes) = l1.usage();
                L1Usage { entries, bytes }
            }
            None => L1Usage::default(),
        }
    }

    /// Names of the configured families.
    pub fn family_names(&self) -> impl Iterator<Item = &str> {
        self.shared.policies.keys().map(String::as_str)
    }

    /// Makes every entry tagged `template` filled with `parts` a miss, in
    /// every family and every process: `invalidate_tag("user:{user_id}", &42)`
    /// reaches each family whose policy has `tags = ["user:{user_id}"]`.
    ///
    /// Costs one Redis round trip whatever the number of entries: the tag's
    /// version is incremented (entries record the versions they were loaded
    /// under and are stale once one moved on), and the bus tells every L1.
    /// If Redis cannot be reached, this process's L1 entries still go, and
    /// the increment is deferred until Redis answers again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), larder::Error> {
    /// # use larder::{Cache, Policy};
    /// # use std::time::Duration;
    /// let cache = Cache::builder()
    ///     .family(Policy::new("portfolio", "portfolio:{user_id}").ttl(Duration::from_secs(60)).tag("user:{user_id}"))
    ///     .family(Policy::new("watchlist", "watchlist:{user_id}").ttl(Duration::from_secs(300)).tag("user:{user_id}"))
    ///     .build()
    ///     .await?;
    /// // The user's profile changed: everything cached about them goes.
    /// cache.invalidate_tag("user:{user_id}", &42u64).await?;
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tag<P: KeyParts + ?Sized>(
        &self,
        template: &str,
        parts: &P,
    ) -> Result<(), Error> {
        let shared = &self.shared;
        if !shared.enabled {
            return Ok(());
        }
        let parsed = KeyTemplate::parse(template)
            .map_err(|reason| Error::config(format!("tag `{template}`"), reason))?;
        let (tag, filled) = tag_key(&shared.namespace, &parsed, parts);
        if filled != parsed.arity() {
            return Err(Error::config(
                format!("tag `{template}`"),
                format!(
                    "{} placeholder(s) but {filled} part(s) given",
                    parsed.arity()
                ),
            ));
        }
        self.invalidate_tag_key(&tag).await
    }

    /// The state of the circuit breaker in front of Redis (`None` without
    /// Redis). While it is open, reads go L1 → loader and writes skip Redis;
    /// the `larder_redis_breaker_state` gauge carries the same (0 closed,
    /// 1 half-open, 2 open).
    pub fn redis_breaker(&self) -> Option<BreakerState> {
        self.shared.l2.as_ref().map(|l2| l2.breaker_state())
    }

    /// Invalidations that could not reach Redis and wait to be replayed
    /// when it answers again (`usize::MAX` once more than 100,000 piled up:
    /// the replay then deletes every family's keys). Zero in normal
    /// operation.
    pub fn deferred_invalidations(&self) -> usize {
        self.shared.deferred.len()
    }

    /// Waits until this process has applied every invalidation other
    /// processes had published when the call was made, or `timeout` passes.
    /// Returns whether it caught up (immediately `true` without Redis or L1:
    /// there is nothing to apply).
    ///
    /// For tests and for read-your-writes across processes; the bus normally
    /// applies an invalidation within a millisecond or two.
    pub async fn sync_invalidations(&self, timeout: Duration) -> Result<bool, Error> {
        let (Some(listener), Some(l2), Some(bus)) =
            (&self.shared.listener, &self.shared.l2, &self.shared.bus)
        else {
            return Ok(true);
        };
        let deadline = tokio::time::Instant::now() + timeout;
        // The first command after Redis restarted fails while the connection
        // is replaced: retry until the deadline.
        let target = loop {
            match bus.last_id(l2).await {
                Ok(id) => break id,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let mut progress = listener.progress.clone();
        let caught_up = tokio::time::timeout_at(
            deadline,
            progress.wait_for(|p| p.connected && p.position >= target),
        )
        .await;
        Ok(matches!(caught_up, Ok(Ok(_))))
    }

    /// Publishes `payload` to every process subscribed to `channel` (with
    /// [`subscribe`](Self::subscribe)): Redis pub/sub on
    /// `<namespace>:<channel>`, on whichever Redis the cache runs on (one
    /// server, Sentinel's master, any node of a cluster). At most once:
    /// nothing is kept for a subscriber that is away. Returns `Ok(false)`
    /// without Redis (there is no other process to tell).
    ///
    /// For messages *about* the data, such as a price tick for live
    /// clients; invalidations need no help, they travel on the bus.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<bool, Error> {
        let Some(l2) = &self.shared.l2 else {
            return Ok(false);
        };
        l2.run::<i64>(
            "PUBLISH",
            redis::cmd("PUBLISH")
                .arg(format!("{}:{channel}", self.shared.namespace))
                .arg(payload),
        )
        .await
        .map(|_| true)
    }

    /// Calls `on_message` with each payload published on `channel` by any
    /// process, and `on_gap` whenever messages may have been missed (the
    /// subscription was lost and is back: after a reconnect, a failover, a
    /// dead cluster node). Reconnects by itself; dropping the returned
    /// [`Subscription`] stops it. `None` without Redis.
    ///
    /// The callbacks run on the subscription's task: keep them short (hand
    /// the payload to a channel).
    ///
    /// ```no_run
    /// # async fn demo(cache: larder::Cache) {
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    /// let _subscription = cache.subscribe("prices", move |payload| {
    ///     let _ = tx.send(payload.to_vec());
    /// }, || {});
    /// cache.publish("prices", b"TCS 3900.5").await.ok();
    /// # }
    /// ```
    pub fn subscribe<M, G>(&self, channel: &str, on_message: M, on_gap: G) -> Option<Subscription>
    where
        M: Fn(&[u8]) + Send + Sync + 'static,
        G: Fn() + Send + Sync + 'static,
    {
        let l2 = self.shared.l2.as_ref()?;
        let (subscription, _subscribed) = pubsub::listen(
            l2.dialer(),
            format!("{}:{channel}", self.shared.namespace),
            self.shared.redis_connect_timeout,
            on_message,
            on_gap,
        );
        Some(subscription)
    }

    /// Tells the change-stream listener (feature `postgres-cdc`) that this
    /// process has already made every invalidation its database transaction
    /// `xid` calls for, so that the transaction's echo from the stream costs
    /// nothing (no second invalidation, no extra database load). `xid` is
    /// what `SELECT txid_current()` returned inside that transaction.
    ///
    /// Call it after the transaction committed and after your own
    /// `invalidate`/`write_through` calls returned. Returns `Ok(false)`, and
    /// marks nothing, when that cannot be vouched for: without Redis, or
    /// while any of this process's invalidations waits for Redis (it was
    /// deferred) — the listener then applies the transaction itself, which is
    /// always correct, only not free.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), larder::Error> {
    /// # let cache = larder::Cache::builder().build().await?;
    /// // BEGIN; UPDATE ...; SELECT txid_current(); COMMIT; then invalidate:
    /// let xid = 1234u64;
    /// cache.skip_echo(xid).await?; // false here: no Redis, nothing to tell
    /// # Ok(()) }
    /// ```
    pub async fn skip_echo(&self, xid: u64) -> Result<bool, Error> {
        let shared = &self.shared;
        let Some(l2) = &shared.l2 else {
            return Ok(false);
        };
        if !shared.enabled || shared.deferred.len() > 0 {
            return Ok(false);
        }
        // Transaction ids in the stream are the low 32 bits of txid_current().
        let key = echo_key(&shared.namespace, xid as u32);
        l2.run::<()>(
            "SET (echo)",
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("PX")
                .arg(ECHO_TTL.as_millis() as u64),
        )
        .await?;
        Ok(true)
    }

    /// The invalidation bus as this process sees it.
    pub fn bus_stats(&self) -> BusStats {
        match &self.shared.listener {
            Some(l) => {
                let p = *l.progress.borrow();
                BusStats {
                    enabled: true,
                    connected: p.connected,
                    applied: p.applied,
                    flushes: p.flushes,
                }
            }
            None => BusStats::default(),
        }
    }
}

/// The key that says transaction `xid` was invalidated by its own writer
/// (see [`Cache::skip_echo`]).
pub(crate) fn echo_key(namespace: &str, xid: u32) -> String {
    format!("{namespace}:cdc:echo:{xid}")
}

/// How long an echo mark lives: far longer than the stream takes to bring
/// a transaction back, far shorter than 2^32 transaction ids take to wrap.
pub(crate) const ECHO_TTL: Duration = Duration::from_secs(600);

/// How long a tag's version key lives after its last increment.
pub(crate) const TAG_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The invalidation bus of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Whether this cache listens (it has both Redis and an L1).
    pub enabled: bool,
    /// Whether the listener's connection is up.
    pub connected: bool,
    /// Invalidations from other processes applied to L1.
    pub applied: u64,
    /// Times L1 was flushed whole because invalidations may have been
    /// missed (trimmed stream, lost stream, different server).
    pub flushes: u64,
}

/// Occupancy of the in-process tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct L1Usage {
    /// Entries held.
    pub entries: u64,
    /// Bytes charged against the budget.
    pub bytes: u64,
}
