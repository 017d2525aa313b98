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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline};

use crate::breaker::{Admission, Breaker, BreakerSettings};
use crate::{Error, scripts};

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
    pub breaker: BreakerSettings,
    /// PEM root certificate(s) to trust for `rediss://` instead of the
    /// system's (a private CA).
    pub tls_root_cert: Option<Vec<u8>>,
}

/// The L2 tier.
pub(crate) struct RedisTier {
    backend: Backend,
    client: redis::Client,
    op_timeout: Duration,
    breaker: Arc<Breaker>,
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
        let info = redis::IntoConnectionInfo::into_connection_info(settings.url.as_str())
            .map_err(|e| Error::RedisUrl(e.to_string()))?;
        let info = info.set_tcp_settings(tcp_settings());
        let client = match &settings.tls_root_cert {
            #[cfg(feature = "tls")]
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            #[cfg(not(feature = "tls"))]
            Some(_) => {
                return Err(Error::RedisUrl(
                    "a TLS root certificate needs larder's `tls` feature".into(),
                ));
            }
            None => redis::Client::open(info),
        }
        .map_err(|e| Error::RedisUrl(e.to_string()))?;
        // No response timeout in the client: every command already runs under
        // ours (`bounded`), which also covers waiting for a reconnect. A
        // timeout does not make redis-rs reconnect, though; a half-open
        // connection (peer gone without a FIN/RST) is caught by the TCP
        // settings below instead.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(None)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| Error::RedisUrl(e.to_string()))?;
        let tier = RedisTier {
            backend: Backend::Standalone(conn),
            client,
            op_timeout: settings.op_timeout,
            breaker: Arc::new(Breaker::new(settings.breaker, settings.op_timeout)),
        };
        // Bounded by connect + op timeouts, so a dead Redis delays start-up by
        // about a second at most.
        let probe = tokio::time::timeout(settings.connect_timeout + settings.op_timeout, async {
            // The first command also connects: give it the connect timeout.
            let ping = async {
                redis::cmd("PING")
                    .query_async::<String>(&mut tier.conn())
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
            // Load the scripts now, so that pipelines can call them by SHA.
            tier.bounded("SCRIPT LOAD", async {
                let mut conn = tier.conn();
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

    /// Runs a Redis future under the op timeout and the circuit breaker,
    /// mapping its error. With the breaker open it fails at once, without
    /// polling the future (no I/O).
    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        let admission = self.breaker.admit();
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
        self.breaker.record(admission, healthy);
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::Redis {
                op,
                reason: e.to_string(),
            }),
            Err(_) => Err(self.timed_out(op)),
        }
    }

    /// The circuit breaker in front of this tier.
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    fn conn(&self) -> ConnectionManager {
        match &self.backend {
            Backend::Standalone(c) => c.clone(),
        }
    }

    /// The client, for connections of their own (the bus listener's blocking
    /// reads must not hold up the shared connection).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The per-command timeout.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// Runs one command under the op timeout.
    pub async fn run<T: FromRedisValue>(&self, op: &'static str, cmd: &Cmd) -> Result<T, Error> {
        self.bounded(op, async { cmd.query_async::<T>(&mut self.conn()).await })
            .await
    }

    /// Runs a pipeline (one round trip) under the op timeout.
    pub async fn run_pipe<T: FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &Pipeline,
    ) -> Result<T, Error> {
        self.bounded(op, async { pipe.query_async::<T>(&mut self.conn()).await })
            .await
    }

    /// Runs a pipeline that calls scripts by SHA. If Redis has forgotten them
    /// (it restarted), loads them and runs the pipeline once more.
    pub async fn run_pipe_with_scripts<T: FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &Pipeline,
    ) -> Result<T, Error> {
        self.bounded(op, async {
            let mut conn = self.conn();
            match pipe.query_async::<T>(&mut conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    for script in scripts::all() {
                        script.load_async(&mut conn).await?;
                    }
                    pipe.query_async::<T>(&mut conn).await
                }
                other => other,
            }
        })
        .await
    }

    /// Runs a script (by SHA, loading it if needed).
    pub async fn run_script<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        self.bounded(op, async {
            invocation.invoke_async::<T>(&mut self.conn()).await
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

    /// `MGET keys...`: one round trip for all of them.
    pub async fn mget(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run("MGET", redis::cmd("MGET").arg(keys)).await
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

/// Whether an error is Redis answering (an error reply from a healthy
/// server: a wrong type, a missing script, a refused command) rather than
/// Redis failing (no answer, a dropped connection, a server that is loading,
/// read-only after a failover, or stuck in a script).
fn answered(e: &redis::RedisError) -> bool {
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
pub(crate) fn add_store(pipe: &mut Pipeline, key: &str, value: &[u8], ttl: Option<Duration>) {
    pipe.cmd("EVALSHA")
        .arg(scripts::SET_IF_NEWER.get_hash())
        .arg(1)
        .arg(key)
        .arg(value)
        .arg(ttl.map_or(0, ttl_ms));
}

/// TCP settings of every Redis connection: keep-alive probes on an idle
/// connection, and `TCP_USER_TIMEOUT` so that a connection whose peer has
/// vanished (failover, network partition, no RST) errors within seconds
/// and gets replaced, instead of timing every command out for the ~15
/// minutes the kernel's retransmission defaults take.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1));
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let keepalive = keepalive.with_retries(3);
    let settings = redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let settings = settings.set_user_timeout(Duration::from_secs(10));
    settings
}

/// Milliseconds for `PX`, at least 1 (`PX 0` is an error in Redis).
fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}
