//! Builds caches on the real Redis for the integration tests.

#![allow(dead_code)]

use std::time::Duration;

use larder::{Cache, Policy};

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
        b = b
            .redis_url(testkit::redis_url())
            .redis_timeout(Duration::from_secs(2));
    }
    if tiers == Tiers::Redis {
        b = b.l1_max_bytes(0);
    }
    for p in policies {
        b = b.family(p.clone());
    }
    b.build().await.expect("test cache builds")
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
pub async fn raw() -> redis::aio::MultiplexedConnection {
    testkit::require_redis().await
}

/// Bounds a test step that should finish quickly.
pub async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 20 s"))
}
