//! L2: Redis, holding encoded values shared by every process.
//!
//! Every command runs under a timeout. A Redis that refuses connections fails
//! fast on its own, but one that hangs (paused, overloaded, a half-open TCP
//! connection) would otherwise make each request wait for the client's much
//! longer default: the article's `resilientGet` has exactly that problem.
//!
//! The connection is redis-rs's `ConnectionManager`: one multiplexed
//! connection, pipelined by the client, reconnected in the background. The
//! [`Backend`] enum is where Sentinel (re-resolving the master after a
//! failover) and Cluster (`ClusterConnection`, which routes by slot and splits
//! multi-slot `MGET`/`UNLINK`) slot in: the tier speaks `Cmd`/`Pipeline` and
//! does not care which one runs them.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline};

use crate::Error;

/// How the tier reaches Redis.
#[derive(Clone)]
enum Backend {
    Standalone(ConnectionManager),
}

/// Settings for the L2 connection.
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    pub url: String,
    pub op_timeout: Duration,
    pub connect_timeout: Duration,
}

/// The L2 tier.
pub(crate) struct RedisTier {
    backend: Backend,
    op_timeout: Duration,
}

impl RedisTier {
    /// Parses the URL and starts connecting. An unreachable Redis is not an
    /// error here: the cache starts, serves from L1 and the loader, and picks
    /// Redis up when it answers. A malformed URL is an error.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, Error> {
        #[cfg(feature = "tls")]
        if settings.url.starts_with("rediss://") {
            // redis-rs uses rustls without choosing a crypto provider. Another
            // part of the program may have installed one already; either way
            // one is installed after this line.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        #[cfg(not(feature = "tls"))]
        if settings.url.starts_with("rediss://") {
            return Err(Error::RedisUrl(
                "rediss:// needs larder's `tls` feature".into(),
            ));
        }
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| Error::RedisUrl(e.to_string()))?;
        // No response timeout in the client: every command already runs under
        // ours (`run`), which also covers waiting for a reconnect; a second
        // timer per command would only cost time.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(None)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| Error::RedisUrl(e.to_string()))?;
        let tier = RedisTier {
            backend: Backend::Standalone(conn),
            op_timeout: settings.op_timeout,
        };
        // Bounded by connect + op timeouts, so a dead Redis delays start-up by
        // about a second at most.
        let probe = tokio::time::timeout(
            settings.connect_timeout + settings.op_timeout,
            tier.run::<String>("PING", &redis::cmd("PING")),
        )
        .await;
        match probe {
            Ok(Ok(_)) => tracing::debug!("redis answered PING"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis is not answering yet; serving from L1 and loaders until it does")
            }
            Err(_) => tracing::warn!(
                "redis did not answer PING in time; serving from L1 and loaders until it does"
            ),
        }
        Ok(tier)
    }

    /// Runs one command under the op timeout.
    async fn run<T: FromRedisValue>(&self, op: &'static str, cmd: &Cmd) -> Result<T, Error> {
        let fut = async {
            match &self.backend {
                Backend::Standalone(c) => cmd.query_async::<T>(&mut c.clone()).await,
            }
        };
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::Redis {
                op,
                reason: e.to_string(),
            }),
            Err(_) => Err(self.timed_out(op)),
        }
    }

    /// Runs a pipeline (one round trip) under the op timeout.
    async fn run_pipe<T: FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &Pipeline,
    ) -> Result<T, Error> {
        let fut = async {
            match &self.backend {
                Backend::Standalone(c) => pipe.query_async::<T>(&mut c.clone()).await,
            }
        };
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::Redis {
                op,
                reason: e.to_string(),
            }),
            Err(_) => Err(self.timed_out(op)),
        }
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

    /// `GET key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.run("GET", redis::cmd("GET").arg(key)).await
    }

    /// `MGET keys...`: one round trip for all of them.
    pub async fn mget(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run("MGET", redis::cmd("MGET").arg(keys)).await
    }

    /// `SET key value [PX ttl]`.
    pub async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl_ms(ttl));
        }
        self.run("SET", &cmd).await
    }

    /// Many `SET`s in one pipelined round trip.
    pub async fn set_many(&self, items: &[(&str, &[u8], Option<Duration>)]) -> Result<(), Error> {
        if items.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (key, value, ttl) in items {
            let cmd = pipe.cmd("SET").arg(*key).arg(*value);
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(ttl_ms(*ttl));
            }
            cmd.ignore();
        }
        self.run_pipe("SET (pipeline)", &pipe).await
    }

    /// `UNLINK keys...` (a non-blocking `DEL`).
    pub async fn unlink(&self, keys: &[&str]) -> Result<(), Error> {
        if keys.is_empty() {
            return Ok(());
        }
        self.run::<i64>("UNLINK", redis::cmd("UNLINK").arg(keys))
            .await
            .map(|_| ())
    }
}

/// Milliseconds for `PX`, at least 1 (`PX 0` is an error in Redis).
fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}
