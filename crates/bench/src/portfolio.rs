//! The article's before/after measurement of `GET /api/users/{id}/portfolio`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use serde_json::json;

use crate::load::{self, LoadPlan};
use crate::report::{self, Report, Run};
use crate::scrape;
use crate::service::{self, Service};

/// Settings of the portfolio scenario.
#[derive(Debug, Clone, Args)]
pub struct PortfolioArgs {
    /// The service token of a service given by URL (`LARDER_SERVICE_TOKEN`):
    /// user data needs a session. Spawned services get a fresh one.
    #[arg(long, env = "LARDER_SERVICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Measure a service that is already running at this base URL (one run).
    #[arg(long, conflicts_with_all = ["before_url", "after_url"])]
    pub url: Option<String>,
    /// With --after-url: compare two running services (e.g. another
    /// implementation without a cache, and with one).
    #[arg(long, requires = "after_url")]
    pub before_url: Option<String>,
    /// See --before-url.
    #[arg(long, requires = "before_url")]
    pub after_url: Option<String>,

    /// Path template; `{id}` is replaced by a user id.
    #[arg(long, default_value = "/api/users/{id}/portfolio")]
    pub path: String,
    /// User ids are drawn from 1..=users (and a spawned service is seeded
    /// with this many when its database is empty).
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Zipf exponent of the user distribution: higher is more skewed towards
    /// a few hot users; 0 is uniform.
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Offered load in requests/s, the same for every run so that database
    /// queries/s compare like for like. 0 = as fast as possible.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Unmeasured warm-up before each run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Measured time of each run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// PostgreSQL for the spawned service (else its embedded SQLite).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis for the spawned service (else in-process cache only).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// The `trading` binary to spawn (default: next to this one).
    #[arg(long)]
    pub service_bin: Option<PathBuf>,

    /// Where to write the figures as JSON.
    #[arg(long, default_value = "bench-results/portfolio.json")]
    pub json: PathBuf,
    /// Where to draw the comparison.
    #[arg(long, default_value = "bench-results/portfolio.svg")]
    pub svg: PathBuf,
}

impl PortfolioArgs {
    fn plan(&self, base_url: &str, label: &str, duration: Duration) -> LoadPlan {
        LoadPlan {
            base_url: base_url.trim_end_matches('/').to_string(),
            path: self.path.clone(),
            users: self.users,
            zipf: self.zipf,
            rate: self.rate,
            concurrency: self.concurrency,
            duration,
            label: Some(label.to_string()),
        }
    }
}

/// Warm-up, then a measured phase with the service's counters read around it.
async fn measure(args: &PortfolioArgs, base_url: &str, label: &str) -> anyhow::Result<Run> {
    check_data(args, base_url).await?;
    if !args.warmup.is_zero() {
        load::run(&args.plan(base_url, &format!("{label}: warm-up"), args.warmup)).await?;
    }
    let before = scrape::scrape(base_url, "portfolio").await;
    let result = load::run(&args.plan(base_url, label, args.duration)).await?;
    let after = scrape::scrape(base_url, "portfolio").await;
    let counted = before.zip(after).map(|(b, a)| b.delta(&a));
    Ok(Run::new(label, &result, counted))
}

/// The highest id must exist, or the run would measure 404s.
async fn check_data(args: &PortfolioArgs, base_url: &str) -> anyhow::Result<()> {
    let probe = LoadPlan {
        users: 1,
        zipf: 0.0,
        rate: 0,
        concurrency: 1,
        duration: Duration::ZERO,
        label: None,
        ..args.plan(base_url, "", Duration::ZERO)
    };
    let path = probe.path.replace("{id}", &args.users.to_string());
    match load::status_of(&format!("{}{path}", probe.base_url)).await {
        Ok(200) => Ok(()),
        Ok(404) => bail!(
            "{base_url} has no user {}: its database was seeded with fewer users. \
             Reseed it (`trading seed --reset --users {}`) or pass --users",
            args.users,
            args.users
        ),
        Ok(status) => bail!("{base_url}{path} answered {status}"),
        Err(e) => bail!("{base_url} is not reachable: {e}"),
    }
}

pub async fn run(args: PortfolioArgs) -> anyhow::Result<()> {
    if let Some(token) = &args.token {
        load::set_token(token.clone());
    }
    let runs = match (&args.url, &args.before_url, &args.after_url) {
        (Some(url), _, _) => vec![measure(&args, url, url).await?],
        (None, Some(before), Some(after)) => vec![
            measure(&args, before, "before").await?,
            measure(&args, after, "after").await?,
        ],
        _ => {
            let binary = args
                .service_bin
                .clone()
                .unwrap_or_else(service::default_binary);
            let token = args
                .token
                .clone()
                .unwrap_or_else(|| format!("bench-{:032x}", rand::random::<u128>()));
            load::set_token(token.clone());
            let mut runs = Vec::new();
            for (label, extra) in [
                ("before (no cache)", vec!["--no-cache".to_string()]),
                ("after (larder)", vec![]),
            ] {
                let mut env = vec![
                    ("LARDER_SEED_USERS".to_string(), args.users.to_string()),
                    ("LARDER_SERVICE_TOKEN".to_string(), token.clone()),
                    // One client IP sends everything: the gateway's per-IP
                    // limit would measure itself, not the cache.
                    ("LARDER_RATE_LIMIT_IP".to_string(), "0".to_string()),
                    // A fresh namespace: each run starts with a cold cache.
                    (
                        "LARDER_NAMESPACE".to_string(),
                        format!("bench-{:08x}", rand::random::<u32>()),
                    ),
                ];
                if let Some(db) = &args.database_url {
                    env.push(("DATABASE_URL".into(), db.clone()));
                }
                if let Some(redis) = &args.redis_url {
                    env.push(("REDIS_URL".into(), redis.clone()));
                }
                eprintln!("starting {} for \"{label}\"", binary.display());
                let svc = Service::start(&binary, service::free_port()?, &extra, &env).await?;
                let run = measure(&args, &svc.base_url, label).await;
                svc.stop().await?;
                runs.push(run?);
            }
            runs
        }
    };
    let backend = match (&args.url, &args.database_url, &args.redis_url) {
        (Some(_), _, _) => "external".to_string(),
        (None, Some(_), Some(_)) => "PostgreSQL + Redis".to_string(),
        (None, Some(_), None) => "PostgreSQL, L1 only".to_string(),
        (None, None, Some(_)) => "SQLite + Redis".to_string(),
        (None, None, None) => "SQLite, L1 only".to_string(),
    };
    let report = Report {
        scenario: format!("GET {} — {backend}", args.path),
        settings: json!({
            "users": args.users,
            "zipf": args.zipf,
            "rate": args.rate,
            "concurrency": args.concurrency,
            "warmup_s": args.warmup.as_secs_f64(),
            "duration_s": args.duration.as_secs_f64(),
            "backend": backend,
        }),
        machine: report::machine(),
        runs,
    };
    println!("\n{}  ({})\n", report.scenario, report.machine);
    println!("{}", report.table());
    report.write_json(&args.json)?;
    report.write_svg(&args.svg)?;
    println!(
        "figures: {}  chart: {}",
        args.json.display(),
        args.svg.display()
    );
    Ok(())
}
