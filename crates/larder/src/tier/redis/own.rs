//! Connections of their own, for the tasks whose reads block (the bus
//! listener's `XREAD BLOCK`, a write-behind worker's `XREADGROUP BLOCK`) or
//! that hold a subscription: on the shared multiplexed connection a blocking
//! read would hold up every request behind it.
//!
//! A [`Dialer`] opens them on whatever the tier runs on: the one server, the
//! master a sentinel names now, or the cluster (a cluster connection of its
//! own, routed by key like the shared one).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    AsyncConnectionConfig, Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value,
};

use super::cluster::ClusterBackend;
use super::sentinel::SentinelBackend;

/// Opens connections of their own on the tier's deployment; cheap to clone.
#[derive(Clone)]
pub(crate) enum Dialer {
    // Boxed: a client is ~240 bytes, the other variants a pointer.
    Standalone(Box<redis::Client>),
    Sentinel(Arc<SentinelBackend>),
    Cluster(Arc<ClusterBackend>),
}

/// A connection of its own.
#[derive(Clone)]
pub(crate) enum OwnConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

fn io_error(what: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        what.to_string(),
    ))
}

impl Dialer {
    /// Opens a connection, bounded by `timeout`.
    ///
    /// Without redis-rs's default response timeout (500 ms): these
    /// connections carry blocking reads (`XREADGROUP BLOCK 1000`, `XREAD
    /// BLOCK 2000`) that the default would cut short, and every call on
    /// them is bounded by larder's own timeout anyway.
    pub async fn connect(&self, timeout: Duration) -> RedisResult<OwnConn> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None);
        let attempt = async {
            match self {
                Dialer::Standalone(client) => client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(OwnConn::Single),
                Dialer::Sentinel(s) => {
                    let master = s
                        .master()
                        .ok_or_else(|| io_error("no Redis master known yet"))?;
                    master
                        .client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(OwnConn::Single)
                }
                Dialer::Cluster(c) => c.client.get_async_connection().await.map(OwnConn::Cluster),
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| io_error("connect timed out"))?
    }

    /// A client for a subscription. Plain pub/sub messages reach every node
    /// of a cluster, so any node serves; `attempt` rotates through them, so
    /// that a dead node is not tried forever.
    pub fn pubsub_client(&self, attempt: usize) -> RedisResult<redis::Client> {
        match self {
            Dialer::Standalone(client) => Ok((**client).clone()),
            Dialer::Sentinel(s) => s
                .master()
                .map(|m| m.client.clone())
                .ok_or_else(|| io_error("no Redis master known yet")),
            Dialer::Cluster(c) => c.seed_client(attempt).map_err(|e| io_error(&e.to_string())),
        }
    }

    /// Changes whenever the server behind the dialer changes (a Sentinel
    /// failover): a connection opened before is on the old server.
    pub fn generation(&self) -> u64 {
        match self {
            Dialer::Sentinel(s) => s.generation(),
            _ => 0,
        }
    }
}

impl OwnConn {
    /// Runs `cmd` on the master serving `key` (on one server: that
    /// server). For keyless commands about the node that holds a key, such
    /// as `INFO server` for the node of the bus stream.
    pub async fn query_at<T: FromRedisValue>(&mut self, cmd: &Cmd, key: &str) -> RedisResult<T> {
        match self {
            OwnConn::Single(c) => cmd.query_async(c).await,
            OwnConn::Cluster(c) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                let v = c.route_command(cmd.clone(), route).await?;
                Ok(T::from_redis_value(v)?)
            }
        }
    }
}

impl ConnectionLike for OwnConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            OwnConn::Single(c) => c.req_packed_command(cmd),
            OwnConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            OwnConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            OwnConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            OwnConn::Single(c) => c.get_db(),
            OwnConn::Cluster(c) => c.get_db(),
        }
    }
}
