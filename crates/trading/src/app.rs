//! Wiring: settings → database → cache → router → server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use larder::write_behind::{WorkerHandle, Write};
use larder::{Cache, Family, Policies};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::db::Db;
use crate::db::seed::{self, SeedPlan};
use crate::depth::Depth;
use crate::http::error::ApiError;
use crate::http::rate_limit::{Limiter, Rate, RateLimits};
use crate::live::Live;
use crate::portfolio::Portfolio;
use crate::price::Price;
use crate::profile::Profile;
use crate::session::Session;
use crate::settings::{ServeArgs, redact};
use crate::stream::Hub;
use crate::watchlist::Watchlist;
use crate::{feed, http, live, telemetry};

/// The built-in cache policies (crates/trading/cache.toml).
pub const DEFAULT_POLICIES: &str = include_str!("../cache.toml");

/// What every handler shares: one `Arc`, so that a clone is one reference
/// count. axum clones the state for every middleware and extractor that
/// asks for it (four or five times a request); cloning the fields one by
/// one was ~20 atomic increments and as many decrements per clone, on
/// counters every core shares, and a quarter of the CPU of a cached read
/// (perf, docs/BENCHMARKS.md §11).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state behind [`AppState`].
pub struct Shared {
    /// The database.
    pub db: Db,
    /// The cache (for health and ops endpoints).
    pub cache: Cache,
    /// `portfolio:{user_id}`, cache-aside.
    pub portfolios: Family<i64, Portfolio>,
    /// `watchlist:{user_id}`, written behind.
    pub watchlists: Family<i64, Watchlist>,
    /// `user:{user_id}:profile`, deleted on write.
    pub profiles: Family<i64, Profile>,
    /// `stock:{symbol}:price`, written through.
    pub prices: Family<String, Price>,
    /// `stock:{symbol}:depth`, written through.
    pub depths: Family<String, Depth>,
    /// `session:{token_hash}`, written through, sliding expiry.
    pub sessions: Family<crate::session::TokenHash, Session>,
    /// A bearer token that may act for any user (`None`: no such token).
    pub service_token: Option<Arc<str>>,
    /// Rate limits per IP, per session, for logins.
    pub limits: Arc<RateLimits>,
    /// The live price stream's fan-out.
    pub hub: Hub,
    /// The dashboard's samples.
    pub live: Arc<Live>,
    /// Password checks allowed at once. argon2 takes ~19 MiB and tens of
    /// milliseconds of a core per check: without a bound, a burst of logins
    /// from many addresses would fill the blocking pool (512 threads, ~10
    /// GiB) instead of queueing.
    pub login_slots: Arc<tokio::sync::Semaphore>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The change-stream listener (`LARDER_CDC`); held so that it runs as
    /// long as the service.
    pub cdc: Option<Arc<larder::cdc::ChangeListener>>,
}

/// The shortest service token accepted: it stands for every user.
pub const MIN_SERVICE_TOKEN: usize = 32;

/// Reads the policy file named in the settings, or the built-in one.
pub fn policies(args: &ServeArgs) -> anyhow::Result<Policies> {
    Ok(match &args.cache_config {
        Some(path) => Policies::from_toml_file(path)?,
        None => Policies::from_toml_str(DEFAULT_POLICIES).context("built-in cache.toml")?,
    })
}

impl AppState {
    /// Builds the cache and opens the families over `db`.
    pub async fn new(args: &ServeArgs, db: Db) -> anyhow::Result<AppState> {
        let metrics = telemetry::prometheus();
        let redis = args.redis().map_err(anyhow::Error::msg)?;
        let mut builder = Cache::builder().namespace(&args.namespace);
        if let Some(redis) = &redis {
            builder = redis.apply(builder);
        }
        let cache = builder
            .redis_timeout(args.redis_timeout)
            .l1_max_bytes(args.l1_max_bytes)
            .enabled(!args.no_cache)
            .policies(policies(args)?)
            .build()
            .await
            .context("building the cache")?;
        let family = |name: &str| format!("the cache policies must define a `{name}` family");
        let portfolios = cache
            .family("portfolio")
            .with_context(|| family("portfolio"))?;
        let watchlists = cache
            .family("watchlist")
            .with_context(|| family("watchlist"))?;
        let profiles = cache.family("profile").with_context(|| family("profile"))?;
        let prices = cache
            .family("stock_price")
            .with_context(|| family("stock_price"))?;
        let depths = cache
            .family("market_depth")
            .with_context(|| family("market_depth"))?;
        let sessions = cache.family("session").with_context(|| family("session"))?;
        let service_token = match &args.service_token {
            Some(t) if t.len() < MIN_SERVICE_TOKEN => anyhow::bail!(
                "LARDER_SERVICE_TOKEN must be at least {MIN_SERVICE_TOKEN} characters: it may act for every user"
            ),
            Some(t) => Some(Arc::from(t.as_str())),
            None => None,
        };
        let per_ip = args.rate_limit_ip;
        let limits = RateLimits {
            per_ip: Limiter::new(Rate {
                per_sec: per_ip,
                burst: (per_ip * 2.0).ceil() as u32,
            }),
            per_session: Limiter::new(Rate {
                per_sec: args.rate_limit_session,
                burst: (args.rate_limit_session * 2.0).ceil() as u32,
            }),
            login: Limiter::new(Rate {
                per_sec: args.login_attempts_per_min / 60.0,
                burst: 5,
            }),
            trusted_proxies: args.trusted_proxies.clone(),
        };
        let hub = Hub::new(&cache, args.ws_max_connections);
        let cdc = crate::cdc::start(args, &cache).await?;
        Ok(AppState(Arc::new(Shared {
            db,
            cache,
            portfolios,
            watchlists,
            profiles,
            prices,
            depths,
            sessions,
            service_token,
            limits: Arc::new(limits),
            hub,
            live: Arc::new(Live::default()),
            login_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            metrics,
            cdc,
        })))
    }

    /// Tells the change stream that the invalidations of database
    /// transaction `xid` are done, so that its echo costs nothing (only
    /// with `LARDER_CDC`, and only on PostgreSQL, which gives an `xid`).
    pub async fn skip_echo(&self, xid: Option<u64>) {
        if let (Some(_), Some(xid)) = (&self.cdc, xid)
            && let Err(e) = self.cache.skip_echo(xid).await
        {
            tracing::debug!(error = %e, xid, "echo mark not written: the change stream applies the transaction again");
        }
    }

    /// A session by token hash, from the cache or the database (`None`:
    /// unknown or expired).
    pub async fn session(
        &self,
        token_hash: &crate::session::TokenHash,
    ) -> Result<Option<Arc<Session>>, ApiError> {
        let db = self.db.clone();
        let hash = *token_hash;
        Ok(self
            .sessions
            .get_or_load(token_hash, move || async move {
                db.session(&hash, crate::session::now_ms()).await
            })
            .await?)
    }

    /// The prices of `symbols`, in order (`None`: no such instrument): one
    /// multi-key cache round trip, one query for the ones missing.
    pub async fn prices_of(&self, symbols: &[String]) -> Result<Vec<Option<Arc<Price>>>, ApiError> {
        let db = self.db.clone();
        Ok(self
            .prices
            .get_many(symbols, move |missing: Vec<String>| async move {
                db.prices(&missing).await.map(|found| {
                    found
                        .into_iter()
                        .collect::<std::collections::HashMap<_, _>>()
                })
            })
            .await?)
    }

    /// Every family's counters, by name (the dashboard's hit rates).
    pub fn family_stats(&self) -> Vec<(String, larder::FamilyStats)> {
        vec![
            ("portfolio".into(), self.portfolios.stats()),
            ("watchlist".into(), self.watchlists.stats()),
            ("profile".into(), self.profiles.stats()),
            ("stock_price".into(), self.prices.stats()),
            ("market_depth".into(), self.depths.stats()),
            ("session".into(), self.sessions.stats()),
        ]
    }

    /// The families the dashboard charts.
    pub fn family_names(&self) -> Vec<String> {
        self.family_stats().into_iter().map(|(n, _)| n).collect()
    }

    /// A user's profile from the cache or the database; a 404 if the user
    /// does not exist.
    pub async fn profile(&self, id: i64) -> Result<Arc<Profile>, ApiError> {
        let db = self.db.clone();
        self.profiles
            .get_or_load(&id, move || async move { db.profile(id).await })
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))
    }
}

/// What runs beside the HTTP server: the write-behind worker and the price
/// feed. Dropping it stops them abruptly; [`Background::shutdown`] drains.
pub struct Background {
    worker: WorkerHandle,
    _feed: Option<feed::Feed>,
    _sampler: live::Sampler,
    _sweeper: Sweeper,
}

/// The session sweeper; dropping it stops it.
struct Sweeper(tokio::task::JoinHandle<()>);

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Deletes expired session rows every ten minutes (logins would otherwise
/// grow the table for ever: an expired session is refused, not removed).
fn sweep_sessions(db: Db) -> Sweeper {
    Sweeper(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tick.tick().await;
            match db.sweep_sessions(crate::session::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(sessions = n, "expired sessions deleted"),
                Err(e) => tracing::debug!(error = %e, "session sweep failed; next in 10 minutes"),
            }
        }
    }))
}

impl Background {
    /// Starts the watchlist worker (one multi-row upsert per batch) and the
    /// price feed (at `price_updates_per_sec`; 0: none).
    pub fn start(state: &AppState, price_updates_per_sec: u32, claim_idle: Duration) -> Background {
        let db = state.db.clone();
        let worker = state
            .cache
            .write_behind_worker(
                &state.watchlists,
                move |batch: Vec<Write<i64, Watchlist>>| {
                    let db = db.clone();
                    async move { db.upsert_watchlists(&batch).await }
                },
            )
            .claim_idle(claim_idle)
            .start();
        Background {
            worker,
            _feed: feed::spawn(state.clone(), price_updates_per_sec),
            _sampler: live::spawn(state.clone()),
            _sweeper: sweep_sessions(state.db.clone()),
        }
    }

    /// Stops the feed and drains the write-behind queue (bounded).
    pub async fn shutdown(self, timeout: Duration) {
        let report = self.worker.shutdown(timeout).await;
        if report.drained {
            tracing::info!(persisted = report.persisted, "write-behind queue drained");
        } else {
            tracing::warn!(
                persisted = report.persisted,
                left = report.left,
                "write-behind queue not drained before shutdown; the rest stays queued (lost if not in Redis)"
            );
        }
    }
}

/// Connects, migrates, seeds an empty database, and returns the state.
pub async fn prepare(args: &ServeArgs) -> anyhow::Result<AppState> {
    let db = Db::connect(&args.db).await?;
    db.migrate().await?;
    if args.seed_users > 0 && db.is_empty().await? {
        tracing::info!(
            users = args.seed_users,
            "empty database: seeding (set LARDER_SEED_USERS to change)"
        );
        let started = std::time::Instant::now();
        seed::seed(
            &db,
            SeedPlan {
                users: args.seed_users,
                instruments: 2_000,
                rng_seed: 42,
                progress: true,
            },
        )
        .await?;
        tracing::info!(took = ?started.elapsed(), "seeded");
    }
    if db.has_missing_passwords().await? {
        // Seeded users log in with the demo password. A salt per user would
        // cost 100,000 argon2 runs at start, so they share one hash.
        let phc = tokio::task::spawn_blocking(|| {
            crate::session::password::hash(crate::session::DEMO_PASSWORD)
        })
        .await?
        .map_err(|e| anyhow::anyhow!(e))?;
        let n = db.set_missing_passwords(&phc).await?;
        tracing::info!(
            users = n,
            "demo users can log in with password `{}`",
            crate::session::DEMO_PASSWORD
        );
    }
    AppState::new(args, db).await
}

/// Runs the service until Ctrl-C or SIGTERM, then drains in-flight requests.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let state = prepare(&args).await?;
    let upkeep = telemetry::spawn_upkeep(state.metrics.clone());
    let background = Background::start(
        &state,
        args.price_updates_per_sec,
        args.write_behind_claim_idle,
    );
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr()?;
    let database = match &args.db.database_url {
        Some(url) => redact(url),
        None => format!("sqlite {}", args.db.sqlite_path.display()),
    };
    let cache = match (args.redis().map_err(anyhow::Error::msg)?, args.no_cache) {
        (_, true) => "off (--no-cache)".to_string(),
        (Some(redis), false) => format!("L1 + {}", redis.describe()),
        (None, false) => "L1 (in-process)".to_string(),
    };
    tracing::info!(%database, %cache, "trading service listening on http://{addr}");
    println!(
        "larder trading service: dashboard on http://{addr}/  (API: http://{addr}/openapi.json; log in as user1@example.com / {})",
        crate::session::DEMO_PASSWORD
    );
    let app = http::router(state, args.request_timeout);
    // The peer address is what per-IP rate limiting keys on.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("server error")?;
    background.shutdown(Duration::from_secs(10)).await;
    upkeep.abort();
    tracing::info!("shut down");
    Ok(())
}

/// Runs the write-behind worker alone until Ctrl-C or SIGTERM, then drains.
pub async fn worker_command(args: ServeArgs) -> anyhow::Result<()> {
    if args.redis().map_err(anyhow::Error::msg)?.is_none() {
        anyhow::bail!(
            "a worker of its own needs Redis (REDIS_URL, REDIS_CLUSTER_URLS or REDIS_SENTINEL_URLS): without Redis the queue lives inside the serving process"
        );
    }
    let db = Db::connect(&args.db).await?;
    db.migrate().await?;
    let state = AppState::new(&args, db).await?;
    let background = Background::start(&state, 0, args.write_behind_claim_idle);
    tracing::info!("write-behind worker running; Ctrl-C or SIGTERM drains and stops it");
    println!("larder write-behind worker running (watchlists)");
    shutdown_signal().await;
    background.shutdown(Duration::from_secs(30)).await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; draining requests");
}

/// Runs `seed` as its own command.
pub async fn seed_command(args: crate::settings::SeedArgs) -> anyhow::Result<()> {
    let db = Db::connect(&args.db).await?;
    db.migrate().await?;
    if !db.is_empty().await? {
        if !args.reset {
            anyhow::bail!("the database already has data; pass --reset to replace it");
        }
        seed::reset(&db).await?;
    }
    let started = std::time::Instant::now();
    seed::seed(
        &db,
        SeedPlan {
            users: args.users,
            instruments: args.instruments,
            rng_seed: args.rng_seed,
            progress: true,
        },
    )
    .await?;
    println!(
        "seeded {} users and {} instruments into {} in {:.1?}",
        args.users,
        args.instruments,
        db.kind(),
        started.elapsed()
    );
    Ok(())
}
