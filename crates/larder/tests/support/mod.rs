//! Builds caches on the real Redis for the integration tests.

#![allow(dead_code)]

use std::time::Duration;

use larder::{Cache, CacheBuilder, Policy};

/// Which tiers a test cache has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiers {
    /// In-process only (the embedded default).
    L1,
    /// In-process in front of Redis.
    L1Redis,
    /// Redis only (L1 off), so every read goes to Redis.
    Redis,
}

pub const ALL_TIERS: [Tiers; 3] = [Tiers::L1, Tiers::L1Redis, Tiers::Redis];

/// A cache with `policies` in namespace `ns` on the test Redis.
pub async fn cache_in(ns: &str, tiers: Tiers, policies: &[Policy]) -> Cache {
    let mut b = Cache::builder().namespace(ns);
    if tiers != Tiers::L1 {
        testkit::require_redis().await;
        b = on_test_redis(b).redis_timeout(Duration::from_secs(2));
    }
    if tiers == Tiers::Redis {
        b = b.l1_max_bytes(0);
    }
    for p in policies {
        b = b.family(p.clone());
    }
    b.build().await.expect("test cache builds")
}

/// Points a builder at the Redis of this test run: the standalone server,
/// or the cluster named by `LARDER_TEST_REDIS_CLUSTER_URLS` (the same tests
/// run on both: see `./scripts/test`).
pub fn on_test_redis(b: CacheBuilder) -> CacheBuilder {
    match testkit::redis_target() {
        testkit::RedisTarget::Standalone(url) => b.redis_url(url),
        testkit::RedisTarget::Cluster(seeds) => b.redis_cluster(seeds),
    }
}

/// Whether this run is on a Redis Cluster.
pub fn on_cluster() -> bool {
    matches!(testkit::redis_target(), testkit::RedisTarget::Cluster(_))
}

/// A cache in a fresh namespace; returns the namespace too.
pub async fn cache(tiers: Tiers, policies: &[Policy]) -> (Cache, String) {
    let ns = testkit::namespace();
    (cache_in(&ns, tiers, policies).await, ns)
}

/// A minute-TTL family `item` keyed by `item:{id}`.
pub fn item_policy() -> Policy {
    Policy::new("item", "item:{id}").ttl(Duration::from_secs(60))
}

/// A raw connection to the test Redis, for looking behind the cache's back.
pub async fn raw() -> testkit::RawRedis {
    testkit::require_redis().await
}

/// Bounds a test step that should finish quickly.
pub async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 20 s"))
}

/// The write-behind stream of `family` (hash-tagged on a cluster, so that
/// it and its dead letters share a slot).
pub fn write_behind_stream(ns: &str, family: &str) -> String {
    if on_cluster() {
        format!("{ns}:{{wb:{family}}}")
    } else {
        format!("{ns}:wb:{family}")
    }
}
