//! The connection settings, named as the service names them, and the cache
//! they open.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use larder::{Cache, Policies};

/// Where the cache is and what it holds.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// Redis, as the service's `REDIS_URL`.
    #[arg(long, env = "REDIS_URL", global = true)]
    redis_url: Option<String>,
    /// A Redis Cluster: seed node URLs, comma-separated.
    #[arg(long, env = "REDIS_CLUSTER_URLS", value_delimiter = ',', global = true)]
    redis_cluster_urls: Vec<String>,
    /// Redis behind Sentinel: the sentinels' URLs, comma-separated.
    #[arg(
        long,
        env = "REDIS_SENTINEL_URLS",
        value_delimiter = ',',
        global = true
    )]
    redis_sentinel_urls: Vec<String>,
    /// The master's name at the sentinels.
    #[arg(long, env = "REDIS_SENTINEL_MASTER", global = true)]
    redis_sentinel_master: Option<String>,
    /// Prefix of every key, as the service's `LARDER_NAMESPACE`.
    #[arg(
        long,
        env = "LARDER_NAMESPACE",
        default_value = "larder",
        global = true
    )]
    namespace: String,
    /// The families, as the service's `LARDER_CACHE_CONFIG` (the reference
    /// service's built-in one is crates/trading/cache.toml).
    #[arg(long = "config", env = "LARDER_CACHE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// How long one Redis operation may take.
    #[arg(long, env = "LARDER_REDIS_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    redis_timeout: Duration,
}

impl Connection {
    /// The cache these settings describe, without an L1 of its own (an
    /// operator reads Redis, not a copy of it) and with the invalidation
    /// bus, so that invalidations reach the services' L1s.
    pub async fn open(&self) -> anyhow::Result<Cache> {
        let policies = self.policies()?;
        let mut b = Cache::builder()
            .namespace(&self.namespace)
            .policies(policies)
            .l1_max_bytes(0)
            .redis_timeout(self.redis_timeout);
        b = if !self.redis_cluster_urls.is_empty() {
            b.redis_cluster(self.redis_cluster_urls.clone())
        } else if !self.redis_sentinel_urls.is_empty() {
            let Some(master) = &self.redis_sentinel_master else {
                bail!("REDIS_SENTINEL_URLS needs REDIS_SENTINEL_MASTER (the master's name)");
            };
            b.redis_sentinel(self.redis_sentinel_urls.clone(), master.clone())
        } else if let Some(url) = &self.redis_url {
            b.redis_url(url.clone())
        } else {
            bail!(
                "no Redis to talk to: set REDIS_URL (or REDIS_CLUSTER_URLS, or \
                 REDIS_SENTINEL_URLS and REDIS_SENTINEL_MASTER) as for the service"
            );
        };
        let cache = b.build().await.context("connecting to Redis")?;
        if cache
            .redis_breaker()
            .is_some_and(|s| s != larder::BreakerState::Closed)
        {
            bail!("Redis does not answer (the circuit breaker is open)");
        }
        Ok(cache)
    }

    /// The families of the config.
    pub fn policies(&self) -> anyhow::Result<Policies> {
        let Some(config) = &self.config else {
            bail!(
                "no families known: pass --config FILE or set LARDER_CACHE_CONFIG \
                 (the reference service's is crates/trading/cache.toml)"
            );
        };
        Policies::from_toml_file(config).with_context(|| format!("reading {}", config.display()))
    }

    /// The namespace, for headers of human output.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}
