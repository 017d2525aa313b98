//! L2 over a Redis Cluster.
//!
//! redis-rs's cluster connection routes each command by its key's slot and
//! follows `MOVED`/`ASK` and topology changes by itself. larder adds what it
//! does not do:
//!
//! - **A slot map of its own** (`CLUSTER SLOTS`, refreshed every second and
//!   at once after a failure), to know which master a key lives on: for the
//!   per-node circuit breakers, for grouping a batch by node, and for
//!   `SCAN`ning every master (redis-rs does not route `SCAN`).
//! - **A breaker per master**: one sick master fails fast on its own slots,
//!   while keys on healthy masters still go to Redis.
//! - **Batches split by node**: a pipeline whose keys live in several slots
//!   is refused by redis-rs; larder sends one pipeline per node, in
//!   parallel, and puts the replies back in order. A command that meets a
//!   `MOVED`/`ASK` (the slot map was behind a resharding) is sent again on
//!   its own through redis-rs's routing, which follows the redirect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionInfo, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::batch::{Batch, BatchCmd, pipeline_of, routing_key, slot_of};
use super::connect;
use crate::breaker::{Breaker, BreakerSettings, BreakerState};

/// Which master serves which slots, as last read.
#[derive(Debug, Default, Clone)]
pub(crate) struct SlotMap {
    /// `(first slot, last slot, master "host:port")`, sorted.
    ranges: Vec<(u16, u16, Arc<str>)>,
    /// Bumped whenever the map changes: a scan that saw it move repeats.
    pub epoch: u64,
}

impl SlotMap {
    /// The master serving `slot`, if known.
    pub fn node_of(&self, slot: u16) -> Option<&Arc<str>> {
        let i = self.ranges.partition_point(|(_, last, _)| *last < slot);
        self.ranges
            .get(i)
            .filter(|(first, _, _)| *first <= slot)
            .map(|(_, _, node)| node)
    }

    /// Every master, once each.
    pub fn masters(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::new();
        for (_, _, node) in &self.ranges {
            if !out.contains(node) {
                out.push(Arc::clone(node));
            }
        }
        out
    }

    /// Reads a `CLUSTER SLOTS` reply. A node that does not know its own
    /// address (a one-node cluster never learns it: nobody met it) reports
    /// an empty host, meaning "the one you asked": `asked_host`, as
    /// redis-rs does.
    fn parse(reply: &Value, asked_host: &str) -> Option<Vec<(u16, u16, Arc<str>)>> {
        let Value::Array(rows) = reply else {
            return None;
        };
        let mut ranges = Vec::with_capacity(rows.len());
        for row in rows {
            let Value::Array(cols) = row else { continue };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (cols.first(), cols.get(1), cols.get(2))
            else {
                continue;
            };
            let host = match master.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            let host = if host.is_empty() || host == "?" {
                asked_host.to_string()
            } else {
                host
            };
            let Some(Value::Int(port)) = master.get(1) else {
                continue;
            };
            ranges.push((
                *first as u16,
                *last as u16,
                Arc::from(format!("{host}:{port}")),
            ));
        }
        ranges.sort_by_key(|r| r.0);
        (!ranges.is_empty()).then_some(ranges)
    }
}

/// One circuit breaker per master, created as masters are seen.
pub(crate) struct NodeBreakers {
    settings: BreakerSettings,
    op_timeout: Duration,
    map: Mutex<HashMap<Arc<str>, Arc<Breaker>>>,
    /// Woken when any of them recovers.
    pub recovered: Arc<Notify>,
}

impl NodeBreakers {
    fn new(settings: BreakerSettings, op_timeout: Duration) -> NodeBreakers {
        NodeBreakers {
            settings,
            op_timeout,
            map: Mutex::new(HashMap::new()),
            recovered: Arc::new(Notify::new()),
        }
    }

    pub fn get(&self, node: &Arc<str>) -> Arc<Breaker> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(Arc::clone(node)).or_insert_with(|| {
            Arc::new(Breaker::for_node(
                self.settings,
                self.op_timeout,
                node,
                Arc::clone(&self.recovered),
            ))
        }))
    }

    /// The worst state of any master's breaker.
    pub fn worst(&self) -> BreakerState {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .map(|b| b.state())
            .max_by_key(|s| s.as_gauge() as u8)
            .unwrap_or(BreakerState::Closed)
    }

    /// Forgets the breakers of nodes that no longer serve slots (a failed
    /// master replaced by its replica; the placeholder of a cluster not
    /// reached yet). Left in place, an open one would keep the worst state
    /// open for good, so nothing would ever count as recovered. Dropping
    /// one that was not closed is a recovery: the replay of deferred
    /// invalidations is woken.
    pub fn keep_only(&self, masters: &[Arc<str>]) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut unhealthy_gone = false;
        map.retain(|node, b| {
            let keep = masters.contains(node);
            unhealthy_gone |= !keep && b.state() != BreakerState::Closed;
            keep
        });
        drop(map);
        if unhealthy_gone {
            self.recovered.notify_waiters();
        }
    }

    /// Masters whose breaker is not closed.
    pub fn unhealthy(&self) -> Vec<Arc<str>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, b)| b.state() != BreakerState::Closed)
            .map(|(n, _)| Arc::clone(n))
            .collect()
    }
}

/// The cluster backend: redis-rs's connection, larder's slot map and
/// breakers, and the task that keeps the map current.
pub(crate) struct ClusterBackend {
    /// redis-rs's connection, once a seed answered (`None` until then: the
    /// cache serves from L1 and its loaders meanwhile, as on one server). A
    /// std lock: only cloned out, never held across an `.await`.
    conn: RwLock<Option<ClusterConnection>>,
    pub client: ClusterClient,
    /// Credentials, TLS and database for connections to single nodes.
    template: ConnectionInfo,
    root_cert: Option<Vec<u8>>,
    seeds: Vec<ConnectionInfo>,
    map: RwLock<SlotMap>,
    pub breakers: NodeBreakers,
    /// Asks the refresher to read the slot map now.
    stale: Notify,
    refresher: Mutex<Option<JoinHandle<()>>>,
    last_refresh: Mutex<Instant>,
}

impl Drop for ClusterBackend {
    fn drop(&mut self) {
        if let Some(task) = self
            .refresher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// How often the slot map is read when nothing failed.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// The least time between two refreshes asked for by failures.
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_millis(100);

impl ClusterBackend {
    /// Builds the client for `seeds` (connecting lazily) and starts the
    /// slot-map refresher.
    pub async fn connect(
        seeds: &[String],
        settings: &connect::RedisSettings,
    ) -> Result<Arc<ClusterBackend>, crate::Error> {
        let infos = seeds
            .iter()
            .map(|s| connect::info(s))
            .collect::<Result<Vec<_>, _>>()?;
        let template = infos[0].clone();
        let mut builder = ClusterClient::builder(infos.clone())
            .tcp_settings(connect::tcp_settings())
            .connection_timeout(settings.connect_timeout)
            // Every command runs under larder's own timeout; redis-rs's
            // retries only need to cover a redirect or a reconnect.
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(100);
        if let Some(user) = template.redis_settings().username() {
            builder = builder.username(user);
        }
        if let Some(password) = template.redis_settings().password() {
            builder = builder.password(password);
        }
        #[cfg(feature = "tls")]
        if let Some(pem) = &settings.tls_root_cert {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            });
        }
        let client = builder
            .build()
            .map_err(|e| crate::Error::RedisUrl(e.to_string()))?;
        let backend = Arc::new(ClusterBackend {
            conn: RwLock::new(None),
            client,
            template,
            root_cert: settings.tls_root_cert.clone(),
            seeds: infos,
            map: RwLock::new(SlotMap::default()),
            breakers: NodeBreakers::new(settings.breaker, settings.op_timeout),
            stale: Notify::new(),
            refresher: Mutex::new(None),
            last_refresh: Mutex::new(Instant::now() - REFRESH_EVERY),
        });
        // A cluster that is down at start is not an error (it is not on one
        // server either): the refresher keeps trying, and until a seed
        // answers every command fails fast as a Redis failure.
        if let Err(e) = backend.ensure_connected(settings.connect_timeout * 2).await {
            tracing::warn!(error = %e, "no redis cluster seed answered; serving from L1 and loaders until one does");
        }
        backend.refresh(settings.op_timeout * 5).await;
        let task = tokio::spawn(refresh_loop(
            Arc::downgrade(&backend),
            settings.op_timeout * 5,
        ));
        *backend.refresher.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(backend)
    }

    /// The slot map as last read.
    pub fn slot_map(&self) -> SlotMap {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The cluster connection, if a seed has answered yet.
    pub fn conn(&self) -> redis::RedisResult<ClusterConnection> {
        self.conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "no redis cluster seed has answered yet",
                ))
            })
    }

    /// Connects (reading the topology from a seed) unless connected.
    /// Bounded: the first connection can hang on an unreachable seed (an
    /// open redis-rs issue).
    async fn ensure_connected(&self, timeout: Duration) -> Result<(), String> {
        if self
            .conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return Ok(());
        }
        match tokio::time::timeout(timeout, self.client.get_async_connection()).await {
            Ok(Ok(conn)) => {
                let mut slot = self.conn.write().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    *slot = Some(conn);
                    tracing::info!("connected to the redis cluster");
                }
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no seed node answered in time".into()),
        }
    }

    /// The breaker of the master serving `key` (any master for `None`).
    pub fn breaker_for(&self, key: Option<&[u8]>) -> Arc<Breaker> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let node = key
            .and_then(|k| map.node_of(slot_of(k)).cloned())
            .or_else(|| map.ranges.first().map(|r| Arc::clone(&r.2)))
            .unwrap_or_else(|| Arc::from("unknown"));
        drop(map);
        self.breakers.get(&node)
    }

    /// Asks for a slot-map refresh soon (after a failure or a redirect).
    pub fn suspect(&self) {
        self.stale.notify_one();
    }

    /// Reads `CLUSTER SLOTS` and replaces the map if it changed.
    async fn refresh(&self, timeout: Duration) {
        *self.last_refresh.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        if let Err(e) = self.ensure_connected(timeout).await {
            tracing::debug!(error = %e, "redis cluster still unreachable");
            return;
        }
        let Ok(mut conn) = self.conn() else { return };
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let reply = tokio::time::timeout(
            timeout,
            conn.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random)),
        )
        .await;
        let Ok(Ok(reply)) = reply else {
            tracing::debug!("cluster slot map refresh failed; keeping the old one");
            return;
        };
        // Only a one-node cluster reports no host for a node, and its one
        // node is a seed.
        let seed_host = match self.seeds.first().map(|s| s.addr()) {
            Some(
                redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. },
            ) => host.as_str(),
            _ => "127.0.0.1",
        };
        let Some(ranges) = SlotMap::parse(&reply, seed_host) else {
            return;
        };
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.ranges != ranges {
            if !map.ranges.is_empty() {
                tracing::info!(
                    masters = ranges
                        .iter()
                        .map(|r| r.2.as_ref())
                        .collect::<std::collections::BTreeSet<_>>()
                        .len(),
                    "redis cluster topology changed"
                );
            }
            map.ranges = ranges;
            map.epoch += 1;
        }
        let masters = map.masters();
        drop(map);
        self.breakers.keep_only(&masters);
    }

    /// A client for one node, with the cluster's credentials and TLS.
    pub fn node_client(&self, node: &str) -> Result<redis::Client, crate::Error> {
        let (host, port) = split_addr(node)
            .ok_or_else(|| crate::Error::RedisUrl(format!("bad node address {node}")))?;
        connect::client(
            connect::with_addr(&self.template, host, port),
            self.root_cert.as_deref(),
        )
    }

    /// A client for the `n`th seed (wrapping), for subscriptions: plain
    /// pub/sub messages reach every node of a cluster.
    pub fn seed_client(&self, n: usize) -> Result<redis::Client, crate::Error> {
        // Prefer the current masters (seeds may have been replaced), then
        // the configured seeds.
        let masters = self.slot_map().masters();
        if !masters.is_empty() {
            return self.node_client(&masters[n % masters.len()]);
        }
        let info = self.seeds[n % self.seeds.len()].clone();
        connect::client(info, self.root_cert.as_deref())
    }

    /// Sends a batch: one pipeline per node, in parallel, each bounded by
    /// `timeout` and its node's breaker. Returns every command's reply, in
    /// order, error replies included (the caller filters ignored ones and
    /// decides about errors); the commands of a node that failed are `Err`.
    pub async fn run_batch(&self, batch: &Batch, timeout: Duration) -> Vec<Result<Value, String>> {
        let groups = self.group(&batch.cmds);
        let sends = groups.iter().map(|(node, idx)| async move {
            let breaker = self.breakers.get(node);
            let result = run_on_node(self, node, &batch.cmds, idx, &breaker, timeout).await;
            (node, idx, result)
        });
        let mut replies: Vec<Result<Value, String>> = vec![Ok(Value::Nil); batch.cmds.len()];
        for (node, idx, result) in join_all(sends).await {
            match result {
                Ok(values) => {
                    for (i, v) in idx.iter().zip(values) {
                        replies[*i] = Ok(v);
                    }
                }
                Err(e) => {
                    let reason = format!("{e} (cluster node {node})");
                    for i in idx {
                        replies[*i] = Err(reason.clone());
                    }
                }
            }
        }
        replies
    }

    /// Indexes of a batch's commands by the node their key lives on.
    fn group(&self, cmds: &[BatchCmd]) -> Vec<(Arc<str>, Vec<usize>)> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        group_by_node(&map, cmds)
    }
}

/// Indexes of a batch's commands by the master their key lives on, in
/// order: one group (one pipeline, one round trip) per master. Keyless
/// commands join the first group.
fn group_by_node(map: &SlotMap, cmds: &[BatchCmd]) -> Vec<(Arc<str>, Vec<usize>)> {
    let fallback: Arc<str> = map
        .ranges
        .first()
        .map(|r| Arc::clone(&r.2))
        .unwrap_or_else(|| Arc::from("unknown"));
    let mut groups: Vec<(Arc<str>, Vec<usize>)> = Vec::new();
    let mut keyless = Vec::new();
    for (i, c) in cmds.iter().enumerate() {
        let Some(key) = routing_key(&c.cmd) else {
            keyless.push(i);
            continue;
        };
        let node = map
            .node_of(slot_of(&key))
            .cloned()
            .unwrap_or_else(|| Arc::clone(&fallback));
        match groups.iter_mut().find(|(n, _)| *n == node) {
            Some((_, idx)) => idx.push(i),
            None => groups.push((node, vec![i])),
        }
    }
    if !keyless.is_empty() {
        match groups.first_mut() {
            Some((_, idx)) => {
                idx.extend(keyless);
                idx.sort_unstable();
            }
            None => groups.push((fallback, keyless)),
        }
    }
    groups
}

/// Sends some of a batch's commands to one node as one pipeline. Replies
/// that are redirects, or a node redis-rs has no connection to (the map was
/// ahead of it or behind), are retried one by one through redis-rs's own
/// routing.
async fn run_on_node(
    backend: &ClusterBackend,
    node: &Arc<str>,
    cmds: &[BatchCmd],
    idx: &[usize],
    breaker: &Breaker,
    timeout: Duration,
) -> redis::RedisResult<Vec<Value>> {
    let admission = breaker.admit();
    if admission == crate::breaker::Admission::Reject {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "circuit breaker open for this cluster node",
        )));
    }
    let attempt = async {
        let mut conn = backend.conn()?;
        let pipe = pipeline_of(idx.iter().map(|&i| &cmds[i]), true);
        let routed = match split_addr(node) {
            Some((host, port)) => {
                conn.route_pipeline(
                    pipe,
                    0,
                    idx.len(),
                    SingleNodeRoutingInfo::ByAddress {
                        host: host.to_string(),
                        port,
                    },
                )
                .await
            }
            None => Err(redis::RedisError::from((
                redis::ErrorKind::ClusterConnectionNotFound,
                "slot map not read yet",
            ))),
        };
        let (mut values, mut retry) = match routed {
            Ok(v) => {
                let retry = v.iter().map(needs_retry).collect::<Vec<_>>();
                (v, retry)
            }
            Err(e) if e.kind() == redis::ErrorKind::ClusterConnectionNotFound => {
                (vec![Value::Nil; idx.len()], vec![true; idx.len()])
            }
            Err(e) => return Err(e),
        };
        if values.len() != idx.len() {
            values.resize(idx.len(), Value::Nil);
            retry.resize(idx.len(), true);
        }
        if retry.iter().any(|r| *r) {
            backend.suspect();
        }
        let noscript = values.iter().any(|v| {
            matches!(v, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript))
        });
        if noscript {
            for s in crate::scripts::all() {
                s.load_async(&mut conn).await?;
            }
        }
        for ((slot, &i), again) in values.iter_mut().zip(idx).zip(retry) {
            let is_noscript = matches!(slot, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript));
            if !(again || is_noscript) {
                continue;
            }
            *slot = match cmds[i].cmd.query_async::<Value>(&mut conn).await {
                Ok(v) => v,
                Err(e) => match redis::ServerError::try_from(e) {
                    Ok(server) => Value::ServerError(server),
                    Err(e) => return Err(e),
                },
            };
        }
        Ok(values)
    };
    let outcome = tokio::time::timeout(timeout, attempt).await;
    let healthy = match &outcome {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => super::answered(e),
        Err(_) => false,
    };
    breaker.record(admission, healthy);
    if !healthy {
        backend.suspect();
    }
    match outcome {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))),
    }
}

/// Whether a reply says the command went to the wrong node.
fn needs_retry(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if matches!(
        e.kind(),
        Some(redis::ServerErrorKind::Moved | redis::ServerErrorKind::Ask | redis::ServerErrorKind::TryAgain)
    ))
}

/// `host:port` → `(host, port)`.
pub(crate) fn split_addr(node: &str) -> Option<(&str, u16)> {
    let (host, port) = node.rsplit_once(':')?;
    Some((
        host.trim_start_matches('[').trim_end_matches(']'),
        port.parse().ok()?,
    ))
}

async fn refresh_loop(backend: Weak<ClusterBackend>, timeout: Duration) {
    loop {
        let Some(b) = backend.upgrade() else { return };
        let asked = tokio::select! {
            _ = b.stale.notified() => true,
            _ = tokio::time::sleep(REFRESH_EVERY) => false,
        };
        if asked {
            let since = b
                .last_refresh
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed();
            if since < REFRESH_AT_MOST_EVERY {
                // Rate-limited: the wait is the point.
                let wait = REFRESH_AT_MOST_EVERY - since;
                drop(b);
                tokio::time::sleep(wait).await;
                continue;
            }
        }
        b.refresh(timeout).await;
        metrics::gauge!("larder_redis_breaker_state").set(b.breakers.worst().as_gauge());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three masters, the slots split as `redis-cli --cluster create` does.
    fn three_masters() -> SlotMap {
        SlotMap {
            ranges: vec![
                (0, 5460, Arc::from("a:1")),
                (5461, 10922, Arc::from("b:2")),
                (10923, 16383, Arc::from("c:3")),
            ],
            epoch: 1,
        }
    }

    #[test]
    fn slot_map_finds_the_range() {
        let map = three_masters();
        assert_eq!(map.node_of(0).map(|n| n.as_ref()), Some("a:1"));
        assert_eq!(map.node_of(5461).map(|n| n.as_ref()), Some("b:2"));
        assert_eq!(map.node_of(16383).map(|n| n.as_ref()), Some("c:3"));
        assert_eq!(map.masters().len(), 3);
        let gap = SlotMap {
            ranges: vec![(10, 20, Arc::from("a:1"))],
            epoch: 1,
        };
        assert!(gap.node_of(5).is_none() && gap.node_of(21).is_none());
    }

    #[test]
    fn a_batch_over_many_slots_is_one_pipeline_per_master() {
        let map = three_masters();
        let mut batch = Batch::new();
        for id in 0..50 {
            batch.cmd("GET").arg(format!("app:{{portfolio:{id}}}"));
        }
        batch.cmd("PUBLISH").arg("app:fills").arg("x");
        let groups = group_by_node(&map, &batch.cmds);
        assert_eq!(groups.len(), 3, "50 keys on 3 masters: 3 round trips");
        let mut all: Vec<usize> = groups.iter().flat_map(|(_, idx)| idx.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..51).collect::<Vec<_>>(), "every command once");
        for (node, idx) in &groups {
            assert!(idx.windows(2).all(|w| w[0] < w[1]), "order kept on {node}");
            for &i in idx {
                if let Some(key) = routing_key(&batch.cmds[i].cmd) {
                    assert_eq!(map.node_of(slot_of(&key)), Some(node));
                }
            }
        }
    }

    #[test]
    fn a_node_without_a_known_address_is_the_one_asked() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let row = |first: i64, last: i64, host: &str, port: i64| {
            Value::Array(vec![
                Value::Int(first),
                Value::Int(last),
                Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]),
            ])
        };
        // A one-node cluster: `CLUSTER SLOTS` names no host.
        let one = Value::Array(vec![row(0, 16383, "", 7391)]);
        let ranges = SlotMap::parse(&one, "10.0.0.5").unwrap();
        assert_eq!(ranges, vec![(0, 16383, Arc::from("10.0.0.5:7391"))]);
        // Known hosts are kept, and sorted by first slot.
        let three = Value::Array(vec![
            row(5461, 16383, "10.0.0.2", 7001),
            row(0, 5460, "10.0.0.1", 7000),
        ]);
        let ranges = SlotMap::parse(&three, "10.0.0.5").unwrap();
        assert_eq!(ranges[0].2.as_ref(), "10.0.0.1:7000");
        assert_eq!(ranges[1].2.as_ref(), "10.0.0.2:7001");
    }

    #[test]
    fn node_addresses_split() {
        assert_eq!(split_addr("127.0.0.1:7000"), Some(("127.0.0.1", 7000)));
        assert_eq!(split_addr("[::1]:7000"), Some(("::1", 7000)));
        assert_eq!(split_addr("nope"), None);
    }
}
