//! The builder: a cache's settings, read like configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Error;
use crate::breaker::BreakerSettings;
use crate::bus::{self, ListenerSettings, Publisher};
use crate::cache::{Cache, Shared};
use crate::deferred::Deferred;
use crate::flight::Flights;
use crate::key::validate_namespace;
use crate::notify::{self, Waiters};
use crate::policy::{Policies, Policy};
use crate::recovery;
use crate::registry::Families;
use crate::tier::memory::MemoryTier;
use crate::tier::redis::{Deployment, RedisSettings, RedisTier};

/// Default byte budget of the in-process tier.
pub const DEFAULT_L1_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default timeout of one Redis command. A cache that waits longer than this
/// for Redis is slower than the database it protects.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// Default timeout of one connection attempt to Redis.
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default maximum length of a Redis key, in bytes.
pub const DEFAULT_MAX_KEY_LEN: usize = 1024;
/// Default cap on how long an entry stays in L1 when Redis is configured:
/// the bound on anything the invalidation bus could not detect it missed.
pub const DEFAULT_L1_MAX_TTL_WITH_REDIS: Duration = Duration::from_secs(600);
/// Default length of the invalidation stream: how many invalidations a
/// process can miss (while disconnected) and still replay instead of
/// flushing its L1.
pub const DEFAULT_BUS_MAX_LEN: usize = 100_000;

/// Configures and builds a [`Cache`].
///
/// ```
/// # async fn demo() -> Result<(), larder::Error> {
/// use larder::{Cache, Policy};
/// use std::time::Duration;
///
/// let cache = Cache::builder()
///     .namespace("app")
///     .l1_max_bytes(32 * 1024 * 1024)
///     // .redis_url("redis://127.0.0.1:6379")   // adds the Redis tier
///     .family(Policy::new("portfolio", "portfolio:{user_id}").ttl(Duration::from_secs(60)))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "call .build().await to get a Cache"]
pub struct CacheBuilder {
    namespace: String,
    redis_url: Option<String>,
    redis_cluster: Option<Vec<String>>,
    redis_sentinel: Option<(Vec<String>, String)>,
    redis_timeout: Duration,
    redis_connect_timeout: Duration,
    redis_breaker: BreakerSettings,
    redis_tls_root_cert: Option<Vec<u8>>,
    l1_max_bytes: u64,
    l1_max_ttl: Option<Option<Duration>>,
    max_key_len: usize,
    enabled: bool,
    bus: bool,
    bus_max_len: usize,
    write_behind_replicas: Option<(u32, Duration)>,
    policies: Policies,
}

impl std::fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The Redis URL may carry a password: say only whether there is one.
        f.debug_struct("CacheBuilder")
            .field("namespace", &self.namespace)
            .field(
                "redis",
                &match (&self.redis_url, &self.redis_cluster, &self.redis_sentinel) {
                    (Some(_), _, _) => "standalone",
                    (_, Some(_), _) => "cluster",
                    (_, _, Some(_)) => "sentinel",
                    _ => "none",
                },
            )
            .field("l1_max_bytes", &self.l1_max_bytes)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            namespace: "larder".into(),
            redis_url: None,
            redis_cluster: None,
            redis_sentinel: None,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            redis_connect_timeout: DEFAULT_REDIS_CONNECT_TIMEOUT,
            redis_breaker: BreakerSettings::default(),
            redis_tls_root_cert: None,
            l1_max_bytes: DEFAULT_L1_MAX_BYTES,
            l1_max_ttl: None,
            max_key_len: DEFAULT_MAX_KEY_LEN,
            enabled: true,
            bus: true,
            bus_max_len: DEFAULT_BUS_MAX_LEN,
            write_behind_replicas: None,
            policies: Policies::new(),
        }
    }
}

impl CacheBuilder {
    /// The prefix of every Redis key (`app` gives `app:{portfolio:42}`).
    /// Two applications sharing one Redis must use different namespaces.
    /// Default `larder`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Adds the Redis tier. `redis://[user:password@]host[:port][/db]`, or
    /// `rediss://` for TLS. Without it the cache is in-process only.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// Like [`redis_url`](Self::redis_url), but `None` leaves the cache
    /// in-process only: handy with `std::env::var("REDIS_URL").ok()`.
    pub fn maybe_redis_url(mut self, url: Option<impl Into<String>>) -> Self {
        self.redis_url = url.map(Into::into);
        self
    }

    /// Adds the Redis tier on a Redis Cluster, reached through these seed
    /// nodes (`redis://[user:password@]host:port`, or `rediss://`; one is
    /// enough, more survive a dead seed). The client learns the slots from
    /// the cluster and follows `MOVED`/`ASK`, failovers and resharding.
    ///
    /// Everything larder guarantees on one server holds on a cluster: every
    /// key a script touches shares its value's hash tag; batch reads go out
    /// as one pipeline per master, in parallel; pattern invalidation scans
    /// every master; each master has its own circuit breaker, so one sick
    /// master does not send the healthy masters' keys to the database.
    /// Credentials and TLS are those of the first URL, for every node.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), larder::Error> {
    /// let cache = larder::Cache::builder()
    ///     .redis_cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"])
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn redis_cluster<I, S>(mut self, seed_urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.redis_cluster = Some(seed_urls.into_iter().map(Into::into).collect());
        self
    }

    /// Adds the Redis tier on the master that these sentinels monitor as
    /// `master_name`, and follows it across failovers: the sentinels are
    /// asked every second, and at once when a command fails as a failover
    /// makes it fail (I/O error, `READONLY`); on a new master, connections
    /// move to it and every process's L1 is flushed (the old master may not
    /// have replicated its last writes).
    ///
    /// `sentinel_urls` are `redis://host:port` of the sentinels; their
    /// credentials (if any) and TLS scheme are used for the master too.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), larder::Error> {
    /// let cache = larder::Cache::builder()
    ///     .redis_sentinel(["redis://127.0.0.1:26379", "redis://127.0.0.1:26380"], "mymaster")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn redis_sentinel<I, S>(mut self, sentinel_urls: I, master_name: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.redis_sentinel = Some((
            sentinel_urls.into_iter().map(Into::into).collect(),
            master_name.into(),
        ));
        self
    }

    /// Timeout of each Redis command (default 100 ms). On timeout a read falls
    /// back to the loader; a `set` or `invalidate` returns an error.
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis_timeout = timeout;
        self
    }

    /// Timeout of each connection attempt (default 1 s).
    pub fn redis_connect_timeout(mut self, timeout: Duration) -> Self {
        self.redis_connect_timeout = timeout;
        self
    }

    /// The circuit breaker in front of Redis: after
    /// `failure_threshold` failures in a row (default 5) it opens for
    /// `open_for` (1 s, doubling up to `max_open_for`, 5 s, while Redis keeps
    /// failing), and every Redis call fails at once instead of waiting for
    /// the timeout. See [`BreakerSettings`].
    pub fn redis_breaker(mut self, settings: BreakerSettings) -> Self {
        self.redis_breaker = settings;
        self
    }

    /// Trusts these PEM root certificates for `rediss://` instead of the
    /// system's: for a Redis whose certificate a private CA signed. The
    /// server's certificate is verified either way (there is no switch to
    /// turn verification off).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = larder::Cache::builder()
    ///     .redis_url("rediss://cache.internal:6380")
    ///     .redis_tls_root_cert(std::fs::read("/etc/ssl/private-ca.pem")?)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn redis_tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.redis_tls_root_cert = Some(pem.into());
        self
    }

    /// Byte budget of the in-process tier (default 64 MiB). `0` disables it.
    pub fn l1_max_bytes(mut self, bytes: u64) -> Self {
        self.l1_max_bytes = bytes;
        self
    }

    /// Caps how long any entry stays in the in-process tier, whatever its TTL.
    ///
    /// Other processes' invalidations reach this L1 through the invalidation
    /// bus, which detects what it missed and flushes; this cap bounds the
    /// damage of anything it could not detect. Default: 10 minutes with
    /// Redis, none without (there are no other processes to hear from).
    pub fn l1_max_ttl(mut self, ttl: Duration) -> Self {
        self.l1_max_ttl = Some(Some(ttl));
        self
    }

    /// No cap on L1 lifetimes beyond each entry's TTL.
    pub fn no_l1_max_ttl(mut self) -> Self {
        self.l1_max_ttl = Some(None);
        self
    }

    /// Whether this process hears other processes' invalidations (default
    /// yes). Turning it off leaves each L1 stale until its TTL after another
    /// process writes; only for single-process deployments.
    pub fn invalidation_bus(mut self, enabled: bool) -> Self {
        self.bus = enabled;
        self
    }

    /// Length of the invalidation stream (default 100,000 entries): a
    /// process that misses more than this while disconnected flushes its L1
    /// instead of replaying.
    pub fn bus_max_len(mut self, entries: usize) -> Self {
        self.bus_max_len = entries.max(1);
        self
    }

    /// Acknowledges a write-behind write only once `replicas` replicas of
    /// the master holding its queue have the entry (`WAIT replicas
    /// timeout`), so that a failover cannot lose it; otherwise the write
    /// returns an error (it may still land). Off by default: a write is then
    /// acknowledged once it is in the master's memory, and a failover within
    /// the replication lag (usually under a millisecond) can lose it.
    ///
    /// `WAIT` holds the connection it runs on while it waits, and that is
    /// the shared one: keep `timeout` small (tens of milliseconds), so that a
    /// missing replica costs each write that long, not every request.
    pub fn write_behind_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.write_behind_replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Longest accepted key, in bytes after escaping (default 1024). Longer
    /// keys are refused with [`Error::KeyTooLong`].
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.max_key_len = bytes;
        self
    }

    /// `false` turns the cache off: every read calls the loader, writes and
    /// invalidations do nothing. For "before" measurements and for bisecting
    /// a bug to the cache. Default `true`.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Adds a family's policy (replacing one of the same name).
    pub fn family(mut self, policy: Policy) -> Self {
        self.policies.insert(policy);
        self
    }

    /// Adds every policy of a set, e.g. one read with
    /// [`Policies::from_toml_file`].
    pub fn policies(mut self, policies: Policies) -> Self {
        for p in policies.families.into_values() {
            self.policies.insert(p);
        }
        self
    }

    /// Validates everything and connects. An unreachable Redis does not fail
    /// the build (the cache serves from L1 and loaders until Redis answers);
    /// a malformed URL, a bad policy or two families whose keys could collide
    /// do.
    pub async fn build(self) -> Result<Cache, Error> {
        validate_namespace(&self.namespace)?;
        if self.redis_timeout.is_zero() || self.redis_connect_timeout.is_zero() {
            return Err(Error::config(
                "cache",
                "Redis timeouts must be greater than zero",
            ));
        }
        if self.max_key_len < 64 {
            return Err(Error::config(
                "cache",
                "max_key_len must be at least 64 bytes",
            ));
        }
        let mut compiled = HashMap::new();
        for p in self.policies.iter() {
            compiled.insert(p.name.clone(), p.compile()?);
        }
        let names: Vec<&String> = compiled.keys().collect();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                let (pa, pb) = (&compiled[*a], &compiled[*b]);
                if pa.template.may_overlap(&pb.template) {
                    return Err(Error::config(
                        a.as_str(),
                        format!(
                            "its keys (`{}`) could collide with family `{b}`'s (`{}`): give them different literal segments",
                            pa.template.as_str(),
                            pb.template.as_str()
                        ),
                    ));
                }
            }
        }
        let deployment = match (&self.redis_url, &self.redis_cluster, &self.redis_sentinel) {
            (None, None, None) => None,
            (Some(url), None, None) => Some(Deployment::Standalone(url.clone())),
            (None, Some(seeds), None) => {
                if seeds.is_empty() {
                    return Err(Error::RedisUrl(
                        "redis_cluster needs at least one seed URL".into(),
                    ));
                }
                Some(Deployment::Cluster(seeds.clone()))
            }
            (None, None, Some((sentinels, master))) => {
                if sentinels.is_empty() {
                    return Err(Error::RedisUrl(
                        "redis_sentinel needs at least one sentinel URL".into(),
                    ));
                }
                Some(Deployment::Sentinel {
                    sentinels: sentinels.clone(),
                    master: master.clone(),
                })
            }
            _ => {
                return Err(Error::config(
                    "cache",
                    "more than one Redis deployment given: use one of redis_url, redis_cluster and redis_sentinel",
                ));
            }
        };
        crate::metrics::describe();
        let l2 = match deployment {
            Some(deployment) if self.enabled => Some(
                RedisTier::connect(&RedisSettings {
                    deployment,
                    op_timeout: self.redis_timeout,
                    connect_timeout: self.redis_connect_timeout,
                    breaker: self.redis_breaker,
                    tls_root_cert: self.redis_tls_root_cert.clone(),
                })
                .await?,
            ),
            _ => None,
        };
        let l1 = (self.l1_max_bytes > 0 && self.enabled)
            .then(|| Arc::new(MemoryTier::new(self.l1_max_bytes)));
        let l1_max_ttl = self
            .l1_max_ttl
            .unwrap_or_else(|| l2.is_some().then_some(DEFAULT_L1_MAX_TTL_WITH_REDIS));
        let bus = l2
            .as_ref()
            .map(|_| Publisher::new(&self.namespace, self.bus_max_len));
        let flights = Arc::new(Flights::default());
        let fill_channel = format!("{}:fills", self.namespace);
        let fill_waiters = Arc::new(Waiters::default());
        let fill_subscription = match &l2 {
            Some(l2) => {
                let (subscription, subscribed) = notify::subscribe(
                    l2.dialer(),
                    fill_channel.clone(),
                    Arc::clone(&fill_waiters),
                    self.redis_connect_timeout,
                );
                // Not fatal: until it is in place, lease waits end at their
                // deadline instead of at the fill.
                if !matches!(
                    tokio::time::timeout(self.redis_connect_timeout, subscribed).await,
                    Ok(Ok(()))
                ) {
                    tracing::warn!(
                        "fill notifications not subscribed yet; lease waits may run to their deadline"
                    );
                }
                Some(subscription)
            }
            None => None,
        };
        let families: Arc<Families> = Arc::new(Mutex::new(HashMap::new()));
        let listener = match (&l2, &l1, &bus) {
            (Some(l2), Some(l1), Some(bus)) if self.bus => Some(bus::spawn(ListenerSettings {
                dialer: l2.dialer(),
                publisher: bus.clone(),
                l1: Arc::clone(l1),
                flights: Arc::clone(&flights),
                families: Arc::clone(&families),
                op_timeout: self.redis_timeout,
                connect_timeout: self.redis_connect_timeout,
                block: Duration::from_secs(2),
            })),
            _ => None,
        };
        if let Some(listener) = &listener {
            // Until the listener has connected, L1 would miss invalidations
            // (its first connection drops what L1 took before it): wait for
            // it, bounded, so that a cache normally serves with it in place.
            let mut progress = listener.progress.clone();
            if !matches!(
                tokio::time::timeout(
                    self.redis_connect_timeout,
                    progress.wait_for(|p| p.connected)
                )
                .await,
                Ok(Ok(_))
            ) {
                tracing::warn!(
                    "invalidation bus not connected yet; L1 is dropped when it connects"
                );
            }
        }
        let recoveries = l2.as_ref().map(|l2| l2.recoveries());
        Ok(Cache {
            // The recovery task holds the cache weakly: it must not keep a
            // dropped cache alive, and dropping the cache stops it.
            shared: Arc::new_cyclic(|weak| Shared {
                namespace: self.namespace,
                l1,
                l1_max_ttl,
                l2,
                flights,
                policies: compiled,
                families,
                max_key_len: self.max_key_len,
                enabled: self.enabled,
                bus,
                listener,
                local_queues: Mutex::new(HashMap::new()),
                fill_channel,
                fill_waiters,
                _fill_subscription: fill_subscription,
                deferred: Deferred::default(),
                write_behind_replicas: self.write_behind_replicas,
                redis_connect_timeout: self.redis_connect_timeout,
                orphaned_leases: Default::default(),
                _recovery: recoveries.map(|r| recovery::spawn(weak.clone(), r)),
            }),
        })
    }
}

impl Cache {
    /// Starts configuring a cache. See [`CacheBuilder`].
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }
}
