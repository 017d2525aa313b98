//! L2 behind Redis Sentinel: the master found by name, and followed across
//! failovers.
//!
//! redis-rs asks the sentinels for the master only when it connects and
//! then stays on that address (redis-rs issue #1438): after a failover it
//! would keep talking to a dead server, or to the old master demoted to a
//! read-only replica. So larder resolves the master itself
//! (`SENTINEL get-master-addr-by-name`) every second and at once after a
//! command fails with an I/O error or `READONLY`, and when the answer
//! changes it swaps in a connection to the new master. The swap is a
//! pointer under a std `RwLock`, never held across an `.await`: requests in
//! flight finish (or fail) on the old connection, new ones use the new one.
//!
//! Every swap bumps a generation number; connections of their own (the bus
//! listener's) watch it and reconnect, and the bus then sees a new server
//! (`run_id`) and flushes L1: what the old master had not replicated may be
//! gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::ConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::connect;
use crate::Error;

/// The master in use.
pub(crate) struct Master {
    /// `host:port`.
    pub addr: String,
    pub client: redis::Client,
    pub manager: ConnectionManager,
}

/// The Sentinel backend.
pub(crate) struct SentinelBackend {
    master_name: String,
    sentinels: Vec<ConnectionInfo>,
    /// Credentials, TLS and database for the master connection.
    template: ConnectionInfo,
    root_cert: Option<Vec<u8>>,
    manager_config: ConnectionManagerConfig,
    connect_timeout: Duration,
    current: RwLock<Option<Arc<Master>>>,
    generation: AtomicU64,
    /// Asks the follower to resolve the master now.
    suspect: Notify,
    last_resolve: Mutex<Instant>,
    follower: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for SentinelBackend {
    fn drop(&mut self) {
        if let Some(task) = self
            .follower
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// How often the sentinels are asked when nothing failed.
const RESOLVE_EVERY: Duration = Duration::from_secs(1);
/// The least time between two resolutions asked for by failures.
const RESOLVE_AT_MOST_EVERY: Duration = Duration::from_millis(100);

impl SentinelBackend {
    /// Resolves the master (a failure to is not fatal: the cache starts and
    /// keeps asking) and starts following it.
    pub async fn connect(
        sentinels: &[String],
        master_name: &str,
        settings: &connect::RedisSettings,
        manager_config: ConnectionManagerConfig,
    ) -> Result<Arc<SentinelBackend>, Error> {
        if master_name.is_empty() {
            return Err(Error::RedisUrl("the Sentinel master name is empty".into()));
        }
        let infos = sentinels
            .iter()
            .map(|s| connect::info(s))
            .collect::<Result<Vec<_>, _>>()?;
        let backend = Arc::new(SentinelBackend {
            master_name: master_name.to_string(),
            template: infos[0].clone(),
            sentinels: infos,
            root_cert: settings.tls_root_cert.clone(),
            manager_config,
            connect_timeout: settings.connect_timeout,
            current: RwLock::new(None),
            generation: AtomicU64::new(0),
            suspect: Notify::new(),
            last_resolve: Mutex::new(Instant::now() - RESOLVE_EVERY),
            follower: Mutex::new(None),
        });
        let mut cache = SentinelConns::default();
        if let Err(e) = backend.resolve(&mut cache).await {
            tracing::warn!(error = %e, master = master_name, "no sentinel named the master yet; serving from L1 and loaders until one does");
        }
        let task = tokio::spawn(follow(Arc::downgrade(&backend), cache));
        *backend.follower.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(backend)
    }

    /// The master in use, if one is known.
    pub fn master(&self) -> Option<Arc<Master>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Bumped at every change of master.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A command failed in a way a failover explains: ask the sentinels
    /// soon.
    pub fn suspect(&self) {
        self.suspect.notify_one();
    }

    /// Asks the sentinels, in order, for the master, and switches to it if
    /// it moved.
    async fn resolve(&self, conns: &mut SentinelConns) -> Result<(), Error> {
        *self.last_resolve.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let mut last_error = String::from("no sentinel configured");
        for (i, info) in self.sentinels.iter().enumerate() {
            match conns
                .ask(
                    i,
                    info,
                    &self.master_name,
                    self.connect_timeout,
                    self.root_cert.as_deref(),
                )
                .await
            {
                Ok(Some((host, port))) => return self.switch_to(&host, port),
                Ok(None) => {
                    last_error = format!(
                        "sentinel {} does not know master `{}`",
                        connect::addr_name(info),
                        self.master_name
                    )
                }
                Err(e) => last_error = format!("sentinel {}: {e}", connect::addr_name(info)),
            }
        }
        Err(Error::Redis {
            op: "SENTINEL get-master-addr-by-name",
            reason: last_error,
        })
    }

    fn switch_to(&self, host: &str, port: u16) -> Result<(), Error> {
        let addr = format!("{host}:{port}");
        if self.master().is_some_and(|m| m.addr == addr) {
            return Ok(());
        }
        let client = connect::client(
            connect::with_addr(&self.template, host, port),
            self.root_cert.as_deref(),
        )?;
        let manager =
            ConnectionManager::new_lazy_with_config(client.clone(), self.manager_config.clone())
                .map_err(|e| Error::RedisUrl(e.to_string()))?;
        let previous = self
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(Arc::new(Master {
                addr: addr.clone(),
                client,
                manager,
            }));
        self.generation.fetch_add(1, Ordering::AcqRel);
        match previous {
            Some(old) => {
                tracing::warn!(from = %old.addr, to = %addr, master = %self.master_name, "redis master moved (sentinel failover); switched connections")
            }
            None => {
                tracing::info!(at = %addr, master = %self.master_name, "redis master found through sentinel")
            }
        }
        metrics::counter!("larder_redis_master_switches_total").increment(1);
        Ok(())
    }
}

/// Connections to the sentinels, kept between questions.
#[derive(Default)]
struct SentinelConns {
    conns: Vec<Option<MultiplexedConnection>>,
}

impl SentinelConns {
    async fn ask(
        &mut self,
        i: usize,
        info: &ConnectionInfo,
        master: &str,
        timeout: Duration,
        root_cert: Option<&[u8]>,
    ) -> Result<Option<(String, u16)>, String> {
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, || None);
        }
        let mut conn = match &self.conns[i] {
            Some(c) => c.clone(),
            None => {
                let client = connect::client(info.clone(), root_cert).map_err(|e| e.to_string())?;
                let c = tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                self.conns[i] = Some(c.clone());
                c
            }
        };
        let reply = tokio::time::timeout(
            timeout,
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async::<Option<(String, String)>>(&mut conn),
        )
        .await;
        match reply {
            Ok(Ok(Some((host, port)))) => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("bad port {port}"))?;
                Ok(Some((host, port)))
            }
            Ok(Ok(None)) => Ok(None),
            Ok(Err(e)) => {
                self.conns[i] = None;
                Err(e.to_string())
            }
            Err(_) => {
                self.conns[i] = None;
                Err("timed out".into())
            }
        }
    }
}

async fn follow(backend: Weak<SentinelBackend>, mut conns: SentinelConns) {
    loop {
        let Some(b) = backend.upgrade() else { return };
        let asked = tokio::select! {
            _ = b.suspect.notified() => true,
            _ = tokio::time::sleep(RESOLVE_EVERY) => false,
        };
        if asked {
            let since = b
                .last_resolve
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed();
            if since < RESOLVE_AT_MOST_EVERY {
                let wait = RESOLVE_AT_MOST_EVERY - since;
                drop(b);
                // Rate-limited: the wait is the point.
                tokio::time::sleep(wait).await;
                continue;
            }
        }
        if let Err(e) = b.resolve(&mut conns).await {
            tracing::debug!(error = %e, "sentinel resolution failed; keeping the current master");
        }
    }
}
