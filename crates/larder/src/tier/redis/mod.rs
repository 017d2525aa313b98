//! L2: Redis, holding encoded values shared by every process.
//!
//! Every command runs under a timeout. A Redis that refuses connections fails
//! fast on its own, but one that hangs (paused, overloaded, a half-open TCP
//! connection) would otherwise make each request wait for the client's much
//! longer default: the article's `resilientGet` has exactly that problem.
//!
//! Three deployments, one interface ([`Backend`]): one server (redis-rs's
//! `ConnectionManager`: one multiplexed connection, pipelined, reconnected
//! in the background), a master behind Sentinel (`sentinel.rs`: the same,
//! switched to the new master after a failover), and a Redis Cluster
//! (`cluster.rs`: routed by slot, a breaker per master, batches split by
//! node). The rest of larder speaks [`Batch`]es and `Cmd`s and does not
//! care which one runs them.

pub(crate) mod batch;
mod cluster;
mod connect;
mod own;
mod sentinel;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Value};
use tokio::sync::Notify;

pub(crate) use batch::Batch;
use batch::{routing_key, slot_of};
use cluster::ClusterBackend;
pub(crate) use connect::{Deployment, RedisSettings};
pub(crate) use own::{Dialer, OwnConn};
use sentinel::SentinelBackend;

use crate::breaker::{Admission, Breaker, BreakerState};
use crate::{Error, scripts};

/// How the tier reaches Redis.
enum Backend {
    // Boxed: the client is ~240 bytes, the other variants a pointer.
    Standalone(ConnectionManager, Box<redis::Client>),
    Sentinel(Arc<SentinelBackend>),
    Cluster(Arc<ClusterBackend>),
}

/// The shared connection of whichever backend.
enum Conn {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The L2 tier.
pub(crate) struct RedisTier {
    backend: Backend,
    op_timeout: Duration,
    /// The breaker of the one server (standalone, Sentinel). A cluster has
    /// one per master instead, in its backend.
    breaker: Arc<Breaker>,
}

/// What a read of one key in a batch gave.
pub(crate) type KeyRead = Result<Option<Vec<u8>>, ()>;

impl RedisTier {
    /// Parses the settings and starts connecting. An unreachable Redis is
    /// not an error here: the cache starts, serves from L1 and the loader,
    /// and picks Redis up when it answers. A malformed URL is an error, and
    /// so is a cluster none of whose seeds answers (the slots are unknown).
    pub async fn connect(settings: &RedisSettings) -> Result<Self, Error> {
        settings.prepare_tls()?;
        // No response timeout in the client: every command already runs under
        // ours (`bounded`), which also covers waiting for a reconnect. A
        // timeout does not make redis-rs reconnect, though; a half-open
        // connection (peer gone without a FIN/RST) is caught by the TCP
        // settings instead.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(None)
            .set_max_delay(Duration::from_secs(2));
        let backend = match &settings.deployment {
            Deployment::Standalone(url) => {
                let info = connect::info(url)?;
                let client = connect::client(info, settings.tls_root_cert.as_deref())?;
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map_err(|e| Error::RedisUrl(e.to_string()))?;
                Backend::Standalone(conn, Box::new(client))
            }
            Deployment::Sentinel { sentinels, master } => Backend::Sentinel(
                SentinelBackend::connect(sentinels, master, settings, config).await?,
            ),
            Deployment::Cluster(seeds) => {
                Backend::Cluster(ClusterBackend::connect(seeds, settings).await?)
            }
        };
        let tier = RedisTier {
            backend,
            op_timeout: settings.op_timeout,
            breaker: Arc::new(Breaker::new(settings.breaker, settings.op_timeout)),
        };
        // Bounded by connect + op timeouts, so a dead Redis delays start-up by
        // about a second at most.
        let probe = tokio::time::timeout(settings.connect_timeout + settings.op_timeout, async {
            // The first command also connects: give it the connect timeout.
            let ping = async {
                redis::cmd("PING")
                    .query_async::<String>(&mut tier.conn()?)
                    .await
            };
            match tokio::time::timeout(settings.connect_timeout, ping).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(Error::Redis {
                        op: "PING",
                        reason: e.to_string(),
                    });
                }
                Err(_) => return Err(tier.timed_out("PING")),
            }
            // Load the scripts now (on every node of a cluster), so that
            // pipelines can call them by SHA.
            tier.bounded("SCRIPT LOAD", &tier.breaker, async {
                let mut conn = tier.conn()?;
                for script in scripts::all() {
                    script.load_async(&mut conn).await?;
                }
                Ok(())
            })
            .await
        })
        .await;
        match probe {
            Ok(Ok(())) => tracing::debug!("redis answered PING"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis is not answering yet; serving from L1 and loaders until it does")
            }
            Err(_) => tracing::warn!(
                "redis did not answer PING in time; serving from L1 and loaders until it does"
            ),
        }
        Ok(tier)
    }

    /// Whether this tier runs on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// Runs a Redis future under the op timeout and `breaker`, mapping its
    /// error. With the breaker open it fails at once, without polling the
    /// future (no I/O).
    async fn bounded<T>(
        &self,
        op: &'static str,
        breaker: &Breaker,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        let admission = breaker.admit();
        if admission == Admission::Reject {
            return Err(Error::Redis {
                op,
                reason: "circuit breaker open (redis failed repeatedly; probing again shortly)"
                    .into(),
            });
        }
        let outcome = tokio::time::timeout(self.op_timeout, fut).await;
        let healthy = match &outcome {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => answered(e),
            Err(_) => false,
        };
        breaker.record(admission, healthy);
        if !healthy {
            self.suspect();
        }
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::Redis {
                op,
                reason: e.to_string(),
            }),
            Err(_) => Err(self.timed_out(op)),
        }
    }

    /// A command failed as a failover would make it: have the backend
    /// look at the topology again.
    fn suspect(&self) {
        match &self.backend {
            Backend::Standalone(..) => {}
            Backend::Sentinel(s) => s.suspect(),
            Backend::Cluster(c) => c.suspect(),
        }
    }

    /// The breaker guarding commands on `key` (`None`: keyless).
    fn breaker_for(&self, key: Option<&[u8]>) -> Arc<Breaker> {
        match &self.backend {
            Backend::Cluster(c) => c.breaker_for(key),
            _ => Arc::clone(&self.breaker),
        }
    }

    /// The state of the breaker(s) in front of Redis: on a cluster, the
    /// worst of its masters'.
    pub fn breaker_state(&self) -> BreakerState {
        match &self.backend {
            Backend::Cluster(c) => c.breakers.worst(),
            _ => self.breaker.state(),
        }
    }

    /// Woken whenever a breaker recovers (open → closed).
    pub fn recoveries(&self) -> Arc<Notify> {
        match &self.backend {
            Backend::Cluster(c) => Arc::clone(&c.breakers.recovered),
            _ => self.breaker.recovered_handle(),
        }
    }

    /// Sends a `PING` to each server whose breaker is not closed; the
    /// breaker lets it through as its probe once one is due.
    pub async fn probe(&self) {
        match &self.backend {
            Backend::Cluster(c) => {
                for node in c.breakers.unhealthy() {
                    let breaker = c.breakers.get(&node);
                    let _ = self
                        .bounded("PING (probe)", &breaker, async {
                            let mut conn = c.conn()?;
                            let (host, port) = cluster::split_addr(&node).ok_or_else(|| {
                                redis::RedisError::from((redis::ErrorKind::Client, "bad node"))
                            })?;
                            conn.route_command(
                                redis::cmd("PING"),
                                redis::cluster_routing::RoutingInfo::SingleNode(
                                    redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                                        host: host.to_string(),
                                        port,
                                    },
                                ),
                            )
                            .await
                        })
                        .await;
                }
            }
            _ => {
                let _ = self
                    .run::<String>("PING (probe)", &redis::cmd("PING"))
                    .await;
            }
        }
    }

    fn conn(&self) -> redis::RedisResult<Conn> {
        match &self.backend {
            Backend::Standalone(c, _) => Ok(Conn::Manager(c.clone())),
            Backend::Sentinel(s) => s
                .master()
                .map(|m| Conn::Manager(m.manager.clone()))
                .ok_or_else(|| {
                    redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "no Redis master known yet (no sentinel answered)",
                    ))
                }),
            Backend::Cluster(c) => c.conn().map(Conn::Cluster),
        }
    }

    /// Opens connections of their own (the bus listener's blocking reads
    /// must not hold up the shared connection).
    pub fn dialer(&self) -> Dialer {
        match &self.backend {
            Backend::Standalone(_, client) => Dialer::Standalone(client.clone()),
            Backend::Sentinel(s) => Dialer::Sentinel(Arc::clone(s)),
            Backend::Cluster(c) => Dialer::Cluster(Arc::clone(c)),
        }
    }

    /// The per-command timeout.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// Runs one command under the op timeout.
    pub async fn run<T: FromRedisValue>(&self, op: &'static str, cmd: &Cmd) -> Result<T, Error> {
        let breaker = self.breaker_for(routing_key(cmd).as_deref());
        self.bounded(op, &breaker, async {
            cmd.query_async::<T>(&mut self.conn()?).await
        })
        .await
    }

    /// Runs a batch in one round trip (one per node on a cluster, in
    /// parallel) under the op timeout. Scripts called by SHA that Redis has
    /// forgotten (it restarted, or failed over) are loaded and run again.
    pub async fn run_batch<T: FromRedisValue>(
        &self,
        op: &'static str,
        batch: &Batch,
    ) -> Result<T, Error> {
        let values = match &self.backend {
            Backend::Cluster(c) => {
                let replies = c.run_batch(batch, self.op_timeout).await;
                let mut values = Vec::with_capacity(replies.len());
                for (reply, cmd) in replies.into_iter().zip(&batch.cmds) {
                    let value = reply.map_err(|reason| Error::Redis { op, reason })?;
                    if let Value::ServerError(e) = &value {
                        return Err(Error::Redis {
                            op,
                            reason: e.to_string(),
                        });
                    }
                    if !cmd.ignore {
                        values.push(value);
                    }
                }
                Value::Array(values)
            }
            _ => {
                let pipe = batch.to_pipeline();
                self.bounded(op, &self.breaker, async {
                    let mut conn = self.conn()?;
                    match pipe.query_async::<Value>(&mut conn).await {
                        Err(e)
                            if e.kind()
                                == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                        {
                            for script in scripts::all() {
                                script.load_async(&mut conn).await?;
                            }
                            pipe.query_async::<Value>(&mut conn).await
                        }
                        other => other,
                    }
                })
                .await?
            }
        };
        T::from_redis_value(values).map_err(|e| Error::Redis {
            op,
            reason: e.to_string(),
        })
    }

    /// Runs a script (by SHA, loading it if needed) on `key`'s node.
    pub async fn run_script<T: FromRedisValue>(
        &self,
        op: &'static str,
        key: &str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let breaker = self.breaker_for(Some(key.as_bytes()));
        self.bounded(op, &breaker, async {
            invocation.invoke_async::<T>(&mut self.conn()?).await
        })
        .await
    }

    fn timed_out(&self, op: &'static str) -> Error {
        Error::Redis {
            op,
            reason: format!(
                "timed out after {}",
                crate::key::fmt_duration(self.op_timeout)
            ),
        }
    }

    /// `MGET keys...`: one round trip for all of them (one per node on a
    /// cluster). All or nothing.
    pub async fn mget(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        match &self.backend {
            Backend::Cluster(_) => {
                let each = self.get_each(keys, usize::MAX).await;
                each.into_iter()
                    .collect::<Result<Vec<_>, ()>>()
                    .map_err(|()| Error::Redis {
                        op: "MGET",
                        reason: "a cluster node did not answer".into(),
                    })
            }
            _ => self.run("MGET", redis::cmd("MGET").arg(keys)).await,
        }
    }

    /// Reads `keys`, each on its own: on a cluster, the keys of a master
    /// that failed are `Err`, the others are read. `chunk` bounds one
    /// `MGET` (more go out as several in one pipeline), so that one huge
    /// command does not hold Redis's single thread.
    ///
    /// On a cluster the keys are grouped by slot, one `MGET` per slot, and
    /// the `MGET`s by master, one pipeline per master in parallel. The
    /// common case, every key in one slot (a value and its pending
    /// write-behind entry share the hash tag), is one command routed by
    /// redis-rs, which costs what a bare cluster `GET` does.
    pub async fn get_each(&self, keys: &[&str], chunk: usize) -> Vec<KeyRead> {
        if keys.is_empty() {
            return Vec::new();
        }
        let chunk = chunk.max(1);
        let Backend::Cluster(c) = &self.backend else {
            let all = if keys.len() <= chunk {
                self.run::<Vec<Option<Vec<u8>>>>("MGET", redis::cmd("MGET").arg(keys))
                    .await
            } else {
                let mut batch = Batch::new();
                for part in keys.chunks(chunk) {
                    batch.cmd("MGET").arg(part);
                }
                self.run_batch::<Vec<Vec<Option<Vec<u8>>>>>("MGET (pipeline)", &batch)
                    .await
                    .map(|parts| parts.into_iter().flatten().collect())
            };
            return match all {
                Ok(values) if values.len() == keys.len() => values.into_iter().map(Ok).collect(),
                _ => keys.iter().map(|_| Err(())).collect(),
            };
        };
        // One `MGET` per slot (and per `chunk` keys of it).
        let mut parts: Vec<Vec<usize>> = Vec::new();
        for (_, idx) in by_slot(keys) {
            parts.extend(idx.chunks(chunk).map(<[usize]>::to_vec));
        }
        let mut batch = Batch::new();
        for idx in &parts {
            batch.cmd("MGET");
            for &i in idx {
                batch.arg(keys[i]);
            }
        }
        let mut out: Vec<KeyRead> = keys.iter().map(|_| Err(())).collect();
        if let ([idx], [only]) = (parts.as_slice(), batch.cmds.as_slice()) {
            if let Ok(values) = self.run::<Vec<Option<Vec<u8>>>>("MGET", &only.cmd).await
                && values.len() == idx.len()
            {
                for (&i, v) in idx.iter().zip(values) {
                    out[i] = Ok(v);
                }
            }
            return out;
        }
        let replies = c.run_batch(&batch, self.op_timeout).await;
        for (idx, reply) in parts.iter().zip(replies) {
            let Ok(values) = reply.and_then(|v| {
                Vec::<Option<Vec<u8>>>::from_redis_value(v).map_err(|e| e.to_string())
            }) else {
                continue;
            };
            if values.len() == idx.len() {
                for (&i, v) in idx.iter().zip(values) {
                    out[i] = Ok(v);
                }
            }
        }
        out
    }

    /// `UNLINK keys...` (a non-blocking `DEL`); on a cluster, one per slot.
    pub async fn unlink(&self, keys: &[&str]) -> Result<(), Error> {
        if keys.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Cluster(_) => {
                let mut batch = Batch::new();
                for (_, idx) in by_slot(keys) {
                    batch.cmd("UNLINK");
                    for i in idx {
                        batch.arg(keys[i]);
                    }
                    batch.ignore();
                }
                self.run_batch::<()>("UNLINK", &batch).await
            }
            _ => self
                .run::<i64>("UNLINK", redis::cmd("UNLINK").arg(keys))
                .await
                .map(|_| ()),
        }
    }

    /// `WAIT replicas timeout` on the master holding `key`: whether the
    /// writes this process made there so far reached `replicas` replicas.
    pub async fn wait_replicas(
        &self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> Result<(), Error> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        let breaker = self.breaker_for(Some(key.as_bytes()));
        // WAIT blocks for up to `timeout`: bound it by that, not the op
        // timeout.
        let admission = breaker.admit();
        let fut = async {
            match self.conn()? {
                Conn::Cluster(mut c) => {
                    let route = redis::cluster_routing::RoutingInfo::SingleNode(
                        redis::cluster_routing::SingleNodeRoutingInfo::SpecificNode(
                            redis::cluster_routing::Route::with_key(
                                key,
                                redis::cluster_routing::SlotAddr::Master,
                            ),
                        ),
                    );
                    let v = c.route_command(cmd, route).await?;
                    Ok(i64::from_redis_value(v)?)
                }
                mut conn => cmd.query_async::<i64>(&mut conn).await,
            }
        };
        if admission == Admission::Reject {
            return Err(Error::Redis {
                op: "WAIT",
                reason: "circuit breaker open".into(),
            });
        }
        let outcome = tokio::time::timeout(timeout + self.op_timeout, fut).await;
        breaker.record(admission, matches!(outcome, Ok(Ok(_))));
        match outcome {
            Ok(Ok(n)) if n >= i64::from(replicas) => Ok(()),
            Ok(Ok(n)) => Err(Error::Redis {
                op: "WAIT",
                reason: format!(
                    "{n} of {replicas} replicas acknowledged the write in time; it is queued on the master and may still land"
                ),
            }),
            Ok(Err(e)) => Err(Error::Redis {
                op: "WAIT",
                reason: e.to_string(),
            }),
            Err(_) => Err(self.timed_out("WAIT")),
        }
    }

    /// The servers a `SCAN` must visit: the one server, or every master
    /// of a cluster (`Some(address)`).
    pub fn scan_targets(&self) -> Vec<Option<String>> {
        match &self.backend {
            Backend::Cluster(c) => c
                .slot_map()
                .masters()
                .iter()
                .map(|m| Some(m.to_string()))
                .collect(),
            _ => vec![None],
        }
    }

    /// Changes whenever a cluster's slot map does (always 0 elsewhere): a
    /// scan that saw it change may have missed keys that moved.
    pub fn topology_epoch(&self) -> u64 {
        match &self.backend {
            Backend::Cluster(c) => c.slot_map().epoch,
            _ => 0,
        }
    }

    /// One `SCAN` page on `target` (from [`scan_targets`](Self::scan_targets)).
    pub async fn scan_page(
        &self,
        target: Option<&str>,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<String>), Error> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        match (&self.backend, target) {
            (Backend::Cluster(c), Some(node)) => {
                let breaker = c.breakers.get(&Arc::from(node));
                let (host, port) = cluster::split_addr(node)
                    .ok_or_else(|| Error::RedisUrl(format!("bad node address {node}")))?;
                let reply = self
                    .bounded("SCAN", &breaker, async {
                        let mut conn = c.conn()?;
                        conn.route_command(
                            cmd,
                            redis::cluster_routing::RoutingInfo::SingleNode(
                                redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                                    host: host.to_string(),
                                    port,
                                },
                            ),
                        )
                        .await
                    })
                    .await?;
                <(u64, Vec<String>)>::from_redis_value(reply).map_err(|e| Error::Redis {
                    op: "SCAN",
                    reason: e.to_string(),
                })
            }
            _ => self.run("SCAN", &cmd).await,
        }
    }
}

/// Whether an error is Redis answering (an error reply from a healthy
/// server: a wrong type, a missing script, a refused command) rather than
/// Redis failing (no answer, a dropped connection, a server that is loading,
/// read-only after a failover, or stuck in a script).
pub(super) fn answered(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind as S};
    match e.kind() {
        ErrorKind::Server(
            S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown | S::ReadOnly,
        ) => false,
        ErrorKind::Server(_) | ErrorKind::Parse | ErrorKind::UnexpectedReturnType => true,
        ErrorKind::Extension => e.code() != Some("BUSY"),
        _ => false,
    }
}

/// Appends a versioned store to a pipeline.
pub(crate) fn add_store(pipe: &mut Batch, key: &str, value: &[u8], ttl: Option<Duration>) {
    pipe.cmd("EVALSHA")
        .arg(scripts::SET_IF_NEWER.get_hash())
        .arg(1)
        .arg(key)
        .arg(value)
        .arg(ttl.map_or(0, ttl_ms));
}

/// Milliseconds for `PX`, at least 1 (`PX 0` is an error in Redis).
fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

/// The indexes of `keys` grouped by hash slot, in first-seen order: a
/// multi-key command on a cluster must stay within one slot.
fn by_slot(keys: &[&str]) -> Vec<(u16, Vec<usize>)> {
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    let mut at: std::collections::HashMap<u16, usize> = std::collections::HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        let slot = slot_of(k.as_bytes());
        let g = *at.entry(slot).or_insert_with(|| {
            groups.push((slot, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    groups
}
