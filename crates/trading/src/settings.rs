//! Command line and environment settings (twelve-factor: every flag has an
//! environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// larder's reference service: the article's stock-trading API, cached.
///
/// With no settings it runs on an embedded SQLite file with the in-process
/// cache only, seeding the database on first start. Set DATABASE_URL and
/// REDIS_URL (or REDIS_CLUSTER_URLS, or REDIS_SENTINEL_URLS with
/// REDIS_SENTINEL_MASTER) to run on PostgreSQL and Redis.
#[derive(Debug, Parser)]
#[command(name = "trading", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve(ServeArgs),
    /// Fill the database with generated users, instruments and holdings.
    Seed(SeedArgs),
    /// Run only the write-behind worker (no HTTP): persist queued
    /// watchlist writes from Redis until Ctrl-C/SIGTERM, then drain. Run as
    /// many as you like, on any machine that reaches Redis and the database.
    Worker(ServeArgs),
    /// Drop the service's replication slot (LARDER_CDC_SLOT, or
    /// larder_<namespace>), so PostgreSQL stops keeping WAL for it: when
    /// retiring the service or turning LARDER_CDC off for good.
    CdcDropSlot(ServeArgs),
}

/// Where the data lives.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL (postgres://user:pass@host/db). Without it the service
    /// uses the embedded SQLite file.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// The embedded SQLite database file, used when DATABASE_URL is not set.
    #[arg(long, env = "LARDER_SQLITE_PATH", default_value = "larder-trading.db")]
    pub sqlite_path: PathBuf,

    /// Largest number of database connections.
    #[arg(long, env = "LARDER_DB_POOL_SIZE", default_value_t = 32)]
    pub db_pool_size: u32,

    /// How long a request waits for a database connection, and how long one
    /// statement may run, before the request fails with 503.
    #[arg(long, env = "LARDER_DB_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub db_timeout: Duration,
}

/// Settings of the HTTP service.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Address to listen on.
    #[arg(long, env = "LARDER_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Redis URL (redis://[user:pass@]host:port, rediss:// for TLS). Without
    /// it (or a cluster, or sentinels) the cache is in-process only.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Seed nodes of a Redis Cluster, comma-separated
    /// (redis://host:port,redis://host:port), instead of REDIS_URL.
    #[arg(long, env = "REDIS_CLUSTER_URLS", value_delimiter = ',')]
    pub redis_cluster_urls: Vec<String>,

    /// Sentinels, comma-separated (redis://host:port,...), that monitor
    /// REDIS_SENTINEL_MASTER, instead of REDIS_URL.
    #[arg(long, env = "REDIS_SENTINEL_URLS", value_delimiter = ',')]
    pub redis_sentinel_urls: Vec<String>,

    /// The master name the sentinels of REDIS_SENTINEL_URLS monitor.
    #[arg(long, env = "REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// Turn the cache off: every read goes to the database (the "before"
    /// measurement).
    #[arg(long, env = "LARDER_NO_CACHE")]
    pub no_cache: bool,

    /// Users to generate when the database is empty at start (0: none).
    #[arg(long, env = "LARDER_SEED_USERS", default_value_t = 100_000)]
    pub seed_users: u64,

    /// A TOML file of cache policies (families). The built-in defaults are
    /// crates/trading/cache.toml.
    #[arg(long, env = "LARDER_CACHE_CONFIG")]
    pub cache_config: Option<PathBuf>,

    /// Prefix of every Redis key, so that several applications can share one
    /// Redis.
    #[arg(long, env = "LARDER_NAMESPACE", default_value = "trading")]
    pub namespace: String,

    /// Byte budget of the in-process cache tier.
    #[arg(long, env = "LARDER_L1_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub l1_max_bytes: u64,

    /// Timeout of each Redis command; on timeout reads fall back to the
    /// database.
    #[arg(long, env = "LARDER_REDIS_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// Price updates per second from the simulated exchange feed, each
    /// written through to the database and the cache (0: no feed).
    #[arg(long, env = "LARDER_PRICE_UPDATES_PER_SEC", default_value_t = 20)]
    pub price_updates_per_sec: u32,

    /// Longest a request may take before it is answered with 503.
    #[arg(long, env = "LARDER_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// How long a queued watchlist write may sit unacknowledged in a worker
    /// that stopped answering before another worker takes it over.
    #[arg(long, env = "LARDER_WRITE_BEHIND_CLAIM_IDLE", default_value = "30s", value_parser = parse_duration)]
    pub write_behind_claim_idle: Duration,

    /// A bearer token (32+ characters) that may act for any user: for
    /// internal callers and load tests. Unset: only user sessions.
    #[arg(long, env = "LARDER_SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<String>,

    /// Requests per second allowed per client IP (bursts of twice that);
    /// 0: unlimited. Behind a proxy, limit in the proxy instead (or trust
    /// it with `LARDER_TRUSTED_PROXIES`).
    #[arg(long, env = "LARDER_RATE_LIMIT_IP", default_value_t = 200.0)]
    pub rate_limit_ip: f64,

    /// Addresses of the proxies in front of this instance (comma-separated,
    /// e.g. `127.0.0.1` for the topology's Nginx). A request from one of
    /// them is limited by the client address the proxy names in
    /// `X-Real-IP`; anyone else's `X-Real-IP` is ignored, so a client
    /// cannot pick its own rate-limit bucket. Unset: no proxy is trusted.
    #[arg(long, env = "LARDER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Requests per second allowed per session token (bursts of twice
    /// that); 0: unlimited.
    #[arg(long, env = "LARDER_RATE_LIMIT_SESSION", default_value_t = 50.0)]
    pub rate_limit_session: f64,

    /// Login attempts per minute allowed per client IP (bursts of 5); 0:
    /// unlimited.
    #[arg(long, env = "LARDER_LOGIN_ATTEMPTS_PER_MIN", default_value_t = 10.0)]
    pub login_attempts_per_min: f64,

    /// Most price-stream WebSocket connections one instance holds.
    #[arg(long, env = "LARDER_WS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub ws_max_connections: usize,

    #[command(flatten)]
    pub cdc: CdcArgs,
}

/// Invalidation from PostgreSQL's change stream (the `[invalidate.*]`
/// tables of the cache policies).
#[derive(Debug, Clone, Args)]
pub struct CdcArgs {
    /// Invalidate from PostgreSQL's change stream as well as from the
    /// service's own writes, so that changes made outside the service (psql,
    /// migrations, other programs) reach the cache at once. Needs
    /// PostgreSQL with `wal_level = logical`. Off by default: it creates a
    /// replication slot, which keeps WAL on the server until read (drop it
    /// with `trading cdc-drop-slot` when retiring the service).
    #[arg(
        long = "cdc",
        env = "LARDER_CDC",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_value = "off",
        default_missing_value = "on"
    )]
    pub enabled: bool,

    /// The replication slot, one per service (every instance names the
    /// same one; one reads it, the others stand by). Default:
    /// `larder_<namespace>`.
    #[arg(long = "cdc-slot", env = "LARDER_CDC_SLOT")]
    pub slot: Option<String>,

    /// The publication listing the mapped tables.
    #[arg(
        long = "cdc-publication",
        env = "LARDER_CDC_PUBLICATION",
        default_value = "larder"
    )]
    pub publication: String,

    /// How long a starting instance waits for the changes committed while
    /// it was down to be applied before it serves.
    #[arg(long = "cdc-catch-up", env = "LARDER_CDC_CATCH_UP", default_value = "30s", value_parser = parse_duration)]
    pub catch_up: Duration,
}

impl CdcArgs {
    /// The slot name: the one given, or `larder_` and the namespace in
    /// the characters a slot name allows.
    pub fn slot_name(&self, namespace: &str) -> String {
        self.slot.clone().unwrap_or_else(|| {
            let tail: String = namespace
                .chars()
                .map(|c| match c.to_ascii_lowercase() {
                    c @ ('a'..='z' | '0'..='9') => c,
                    _ => '_',
                })
                .collect();
            let mut name = format!("larder_{tail}");
            name.truncate(63);
            name
        })
    }
}

/// Settings of the `seed` command.
#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Number of users (each holds 10 to 20 instruments).
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,

    /// Number of instruments.
    #[arg(long, default_value_t = 2_000)]
    pub instruments: u32,

    /// Seed of the random generator: the same seed gives the same data.
    #[arg(long, default_value_t = 42)]
    pub rng_seed: u64,

    /// Delete existing data first (otherwise a non-empty database is refused).
    #[arg(long)]
    pub reset: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 100ms, 2s or 5m: {e}"))
}

/// A database or Redis URL with its password replaced, for logs.
/// Which Redis the service runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisSetup {
    /// One server.
    Url(String),
    /// A Redis Cluster, through these seeds.
    Cluster(Vec<String>),
    /// The master that these sentinels monitor under this name.
    Sentinel {
        /// The sentinels.
        urls: Vec<String>,
        /// The master's name.
        master: String,
    },
}

impl RedisSetup {
    /// For logs: the kind and the addresses, passwords redacted.
    pub fn describe(&self) -> String {
        let list = |urls: &[String]| urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(",");
        match self {
            RedisSetup::Url(url) => format!("Redis {}", redact(url)),
            RedisSetup::Cluster(seeds) => format!("Redis Cluster {}", list(seeds)),
            RedisSetup::Sentinel { urls, master } => {
                format!("Redis master `{master}` via sentinels {}", list(urls))
            }
        }
    }

    /// Points a cache builder at it.
    pub fn apply(&self, builder: larder::CacheBuilder) -> larder::CacheBuilder {
        match self {
            RedisSetup::Url(url) => builder.redis_url(url),
            RedisSetup::Cluster(seeds) => builder.redis_cluster(seeds.clone()),
            RedisSetup::Sentinel { urls, master } => builder.redis_sentinel(urls.clone(), master),
        }
    }
}

impl ServeArgs {
    /// The Redis of the settings: at most one of REDIS_URL,
    /// REDIS_CLUSTER_URLS and REDIS_SENTINEL_URLS (+ REDIS_SENTINEL_MASTER).
    /// Empty values count as unset.
    pub fn redis(&self) -> Result<Option<RedisSetup>, String> {
        let nonempty = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let url = self
            .redis_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty());
        let cluster = nonempty(&self.redis_cluster_urls);
        let sentinels = nonempty(&self.redis_sentinel_urls);
        let master = self
            .redis_sentinel_master
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty());
        let given = [url.is_some(), !cluster.is_empty(), !sentinels.is_empty()]
            .iter()
            .filter(|g| **g)
            .count();
        if given > 1 {
            return Err(
                "set only one of REDIS_URL, REDIS_CLUSTER_URLS and REDIS_SENTINEL_URLS (they name different Redis deployments)"
                    .into(),
            );
        }
        match (url, cluster.is_empty(), sentinels.is_empty(), master) {
            (Some(url), _, _, None) => Ok(Some(RedisSetup::Url(url.to_string()))),
            (None, false, _, None) => Ok(Some(RedisSetup::Cluster(cluster))),
            (None, true, false, Some(master)) => Ok(Some(RedisSetup::Sentinel {
                urls: sentinels,
                master: master.to_string(),
            })),
            (None, true, false, None) => {
                Err("REDIS_SENTINEL_URLS needs REDIS_SENTINEL_MASTER (the name the sentinels monitor the master under)".into())
            }
            (_, _, true, Some(_)) | (Some(_), _, _, Some(_)) | (None, false, _, Some(_)) => {
                Err("REDIS_SENTINEL_MASTER is set without REDIS_SENTINEL_URLS".into())
            }
            (None, true, true, None) => Ok(None),
        }
    }
}

pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            match url[scheme_end + 3..at].split_once(':') {
                Some((user, _password)) => {
                    format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
                }
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_change_stream_switch_reads_like_the_docs() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.serve.cdc.enabled);
        assert!(!parse(&["trading"]).unwrap());
        assert!(parse(&["trading", "--cdc"]).unwrap());
        for (value, on) in [
            ("on", true),
            ("true", true),
            ("1", true),
            ("off", false),
            ("no", false),
        ] {
            assert_eq!(
                parse(&["trading", &format!("--cdc={value}")]).unwrap(),
                on,
                "{value}"
            );
        }
        assert!(parse(&["trading", "--cdc=maybe"]).is_err());
        let slot = |ns: &str| {
            CdcArgs {
                enabled: true,
                slot: None,
                publication: "larder".into(),
                catch_up: Duration::ZERO,
            }
            .slot_name(ns)
        };
        assert_eq!(slot("trading"), "larder_trading");
        assert_eq!(slot("My-App.v2"), "larder_my_app_v2");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact("redis://:pw@127.0.0.1:6379"),
            "redis://:***@127.0.0.1:6379"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("postgres://postgres@db/x"),
            "postgres://postgres@db/x"
        );
    }

    #[test]
    fn one_redis_deployment_at_most() {
        let parse = |args: &[&str]| {
            let mut all = vec!["trading"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().serve.redis()
        };
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(
            parse(&["--redis-cluster-urls", "redis://a:1,redis://b:2"]),
            Ok(Some(RedisSetup::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ])))
        );
        assert_eq!(
            parse(&[
                "--redis-sentinel-urls",
                "redis://s:1",
                "--redis-sentinel-master",
                "m"
            ]),
            Ok(Some(RedisSetup::Sentinel {
                urls: vec!["redis://s:1".into()],
                master: "m".into()
            }))
        );
        assert!(
            parse(&[
                "--redis-url",
                "redis://x",
                "--redis-cluster-urls",
                "redis://a:1"
            ])
            .is_err()
        );
        assert!(parse(&["--redis-sentinel-urls", "redis://s:1"]).is_err());
        assert!(parse(&["--redis-sentinel-master", "m"]).is_err());
        assert_eq!(
            parse(&["--redis-url", "", "--redis-cluster-urls", "redis://a:1"]),
            Ok(Some(RedisSetup::Cluster(vec!["redis://a:1".into()])))
        );
    }

    #[test]
    fn defaults_need_no_server() {
        let cli = Cli::try_parse_from(["trading"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(cli.serve.seed_users, 100_000);
    }
}
