//! Test support: real Redis and PostgreSQL, isolated per test.
//!
//! Tests never mock Redis or the database. They use the servers the machine
//! runs (or those named by `LARDER_TEST_REDIS_URL` and
//! `LARDER_TEST_DATABASE_URL`), each test in its own key namespace or its own
//! database, and fail loudly, saying how to start the missing service, when
//! one is not there. `./scripts/test` starts them (installing them if needed).

mod fault_proxy;
mod pg;
mod redis_cluster;
mod redis_sentinel;
mod redis_server;

use std::time::Duration;

pub use fault_proxy::{Fault, FaultProxy};
pub use pg::{SlotGuard, TestDatabase};
pub use redis_cluster::RedisCluster;
pub use redis_sentinel::{RedisSentinel, SENTINEL_MASTER};
pub use redis_server::RedisServer;

/// The shared Redis used by tests.
pub fn redis_url() -> String {
    std::env::var("LARDER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Which Redis the shared tests run against: the standalone server, or a
/// Redis Cluster when `LARDER_TEST_REDIS_CLUSTER_URLS` names its seed nodes
/// (comma-separated; `./scripts/test` runs the library's tests once on each,
/// the cluster made by `scripts/redis-cluster up`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server at this URL.
    Standalone(String),
    /// A cluster, through these seed nodes.
    Cluster(Vec<String>),
}

/// The Redis of this test run (see [`RedisTarget`]).
pub fn redis_target() -> RedisTarget {
    match std::env::var("LARDER_TEST_REDIS_CLUSTER_URLS") {
        Ok(urls) if !urls.trim().is_empty() => RedisTarget::Cluster(
            urls.split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect(),
        ),
        _ => RedisTarget::Standalone(redis_url()),
    }
}

/// A connection for looking behind the cache's back: to the one server,
/// or a cluster connection that routes each command by its key.
#[derive(Clone)]
pub enum RawRedis {
    /// To one server.
    Single(redis::aio::MultiplexedConnection),
    /// To a cluster.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for RawRedis {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RawRedis::Single(c) => c.req_packed_command(cmd),
            RawRedis::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RawRedis::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RawRedis::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RawRedis::Single(c) => c.get_db(),
            RawRedis::Cluster(c) => c.get_db(),
        }
    }
}

/// Panics with instructions unless the Redis of this run (see
/// [`redis_target`]) answers `PING`; returns a connection to it.
pub async fn require_redis() -> RawRedis {
    let target = redis_target();
    let attempt = async {
        let mut conn = match &target {
            RedisTarget::Standalone(url) => {
                let client = redis::Client::open(url.as_str())?;
                RawRedis::Single(client.get_multiplexed_async_connection().await?)
            }
            RedisTarget::Cluster(urls) => {
                let client = redis::cluster::ClusterClient::new(urls.clone())?;
                RawRedis::Cluster(client.get_async_connection().await?)
            }
        };
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, redis::RedisError>(conn)
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("{}", missing_redis(&target, &e.to_string())),
        Err(_) => panic!("{}", missing_redis(&target, "no answer within 5 s")),
    }
}

/// Every key matching `pattern` on the Redis of this run (`SCAN` on the
/// server, or on each seed node of a cluster).
pub async fn scan_keys(pattern: &str) -> Vec<String> {
    let urls = match redis_target() {
        RedisTarget::Standalone(url) => vec![url],
        RedisTarget::Cluster(seeds) => seeds,
    };
    let mut keys = Vec::new();
    for url in urls {
        let client = redis::Client::open(url.as_str()).expect("a valid test Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("cannot reach {url}: {e}"));
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("SCAN answers");
            keys.extend(page);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

fn missing_redis(target: &RedisTarget, why: &str) -> String {
    match target {
        RedisTarget::Standalone(url) => format!(
            "this test needs Redis at {url} ({why}).\n\
             Start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no\n\
             or run the whole suite with ./scripts/test, which starts (or installs) it;\n\
             set LARDER_TEST_REDIS_URL to use another server."
        ),
        RedisTarget::Cluster(urls) => format!(
            "this test run needs the Redis Cluster at {} ({why}).\n\
             Start one with: scripts/redis-cluster up --masters 3 --replicas 1\n\
             or unset LARDER_TEST_REDIS_CLUSTER_URLS to test against one server.",
            urls.join(",")
        ),
    }
}

/// The PostgreSQL maintenance database tests create their databases from.
pub fn postgres_admin_url() -> String {
    std::env::var("LARDER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh key namespace (`t-<random>`), so that tests sharing one Redis
/// never see each other's keys.
pub fn namespace() -> String {
    format!("t-{:016x}", rand::random::<u64>())
}
