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
/// REDIS_URL to run on PostgreSQL and Redis.
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
    /// it the cache is in-process only.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

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
    /// 0: unlimited. Behind a proxy, limit in the proxy instead.
    #[arg(long, env = "LARDER_RATE_LIMIT_IP", default_value_t = 200.0)]
    pub rate_limit_ip: f64,

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
    fn defaults_need_no_server() {
        let cli = Cli::try_parse_from(["trading"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(cli.serve.seed_users, 100_000);
    }
}
