//! Cache stampede: many callers missing the same keys at once, and a hot key
//! expiring under steady load. larder against the article's fix (a Redis
//! lock, `SET lock:<key> 1 NX EX 5`, and a 100 ms sleep-and-retry for
//! everyone else) and against no protection at all, in the same run.
//!
//! Every contender is a set of `--processes` independent clients (each with
//! its own Redis connections, so as many processes as Redis can tell) that
//! share one loader: a simulated query that takes `--load-time` and is
//! counted. The database is simulated on purpose: what is measured is the
//! coordination around it (who loads, who waits, for how long), and a real
//! query's variance would only blur that.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use larder::{Cache, Policy};
use serde_json::json;
use tokio::sync::Barrier;

/// Settings of the stampede scenario.
#[derive(Debug, Clone, Args)]
pub struct StampedeArgs {
    /// Redis shared by the simulated processes.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Independent clients ("processes"), each with its own connections.
    #[arg(long, default_value_t = 4)]
    pub processes: usize,
    /// How long one load (the database query) takes.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub load_time: Duration,
    /// Cold key: callers released at once on one key nobody has cached.
    #[arg(long, default_value_t = 1_000)]
    pub cold_callers: usize,
    /// Cold start: distinct keys requested at once...
    #[arg(long, default_value_t = 200)]
    pub cold_keys: usize,
    /// ...by this many callers each.
    #[arg(long, default_value_t = 10)]
    pub callers_per_key: usize,
    /// Hot key: readers reading it in a loop.
    #[arg(long, default_value_t = 64)]
    pub hot_readers: usize,
    /// Hot key: pause between one reader's reads.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub read_every: Duration,
    /// Hot key: its TTL.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub hot_ttl: Duration,
    /// Hot key: how long the readers run.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub hot_run: Duration,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "bench-results/stampede.json")]
    pub json: std::path::PathBuf,
}

/// The loader all contenders share: a query of fixed duration, counted.
#[derive(Clone)]
struct Database {
    load_time: Duration,
    calls: Arc<AtomicU64>,
}

impl Database {
    async fn query(&self, key: u64) -> String {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.load_time).await;
        format!("the row of key {key}, as the database had it")
    }
}

/// One way of caching, as each simulated process runs it.
#[derive(Clone)]
enum Client {
    /// The article's cache-aside with no stampede protection.
    NoLock(Article),
    /// The article's `getWithMutex`.
    Mutex(Article),
    /// larder's `get_or_load`.
    Larder(larder::Family<u64, String>),
}

/// What the article's snippets need: a connection, a namespace, a TTL.
#[derive(Clone)]
struct Article {
    conn: redis::aio::MultiplexedConnection,
    namespace: String,
    ttl: Duration,
}

impl Article {
    /// `redis.get(key)`, JSON-decoded.
    async fn cached(&self, key: &str) -> anyhow::Result<Option<String>> {
        let cached: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(cached.map(|c| serde_json::from_str(&c)).transpose()?)
    }

    /// `redis.setex(key, ttl, JSON.stringify(data))`, to the millisecond.
    async fn store(&self, key: &str, data: &str) -> anyhow::Result<()> {
        redis::cmd("SET")
            .arg(key)
            .arg(serde_json::to_string(data)?)
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn get_no_lock(&self, id: u64, db: &Database) -> anyhow::Result<String> {
        let key = format!("{}:{id}", self.namespace);
        if let Some(hit) = self.cached(&key).await? {
            return Ok(hit);
        }
        let data = db.query(id).await;
        self.store(&key, &data).await?;
        Ok(data)
    }

    /// The article's `getWithMutex`, step for step: its recursion is the
    /// loop, its `setTimeout(resolve, 100)` the sleep.
    async fn get_with_mutex(&self, id: u64, db: &Database) -> anyhow::Result<String> {
        let key = format!("{}:{id}", self.namespace);
        let lock_key = format!("{}:lock:{id}", self.namespace);
        loop {
            if let Some(hit) = self.cached(&key).await? {
                return Ok(hit);
            }
            let acquired: Option<String> = redis::cmd("SET")
                .arg(&lock_key)
                .arg("1")
                .arg("NX")
                .arg("EX")
                .arg(5)
                .query_async(&mut self.conn.clone())
                .await?;
            if acquired.is_some() {
                let data = db.query(id).await;
                self.store(&key, &data).await?;
                redis::cmd("DEL")
                    .arg(&lock_key)
                    .query_async::<()>(&mut self.conn.clone())
                    .await?;
                return Ok(data);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Client {
    async fn get(&self, id: u64, db: &Database) -> anyhow::Result<String> {
        match self {
            Client::NoLock(a) => a.get_no_lock(id, db).await,
            Client::Mutex(a) => a.get_with_mutex(id, db).await,
            Client::Larder(family) => {
                let db = db.clone();
                let value = family
                    .get_or_load(&id, move || async move {
                        Ok::<_, std::convert::Infallible>(Some(db.query(id).await))
                    })
                    .await?;
                value
                    .map(|v| (*v).clone())
                    .context("the loader always finds the row")
            }
        }
    }
}

/// A contender: a name and how to make one process's client.
#[derive(Debug, Clone, Copy)]
enum Contender {
    NoLock,
    Mutex,
    /// larder, Redis only (no L1), no early refresh: leases alone.
    LarderLeases,
    /// larder, Redis only, early refresh on (the default).
    LarderXfetch,
    /// larder as deployed: L1 + Redis, early refresh on.
    LarderL1,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::NoLock => "article cache-aside, no lock",
            Contender::Mutex => "article mutex + 100 ms sleep-and-retry",
            Contender::LarderLeases => "larder, Redis only, leases (early refresh off)",
            Contender::LarderXfetch => "larder, Redis only, leases + early refresh",
            Contender::LarderL1 => "larder, L1 + Redis, leases + early refresh",
        }
    }

    async fn clients(self, args: &StampedeArgs, ttl: Duration) -> anyhow::Result<Vec<Client>> {
        let namespace = format!("bench-stampede-{:08x}", rand::random::<u32>());
        let mut clients = Vec::with_capacity(args.processes);
        for _ in 0..args.processes {
            let client = match self {
                Contender::NoLock | Contender::Mutex => {
                    let redis = redis::Client::open(args.redis_url.as_str())?;
                    let article = Article {
                        conn: redis.get_multiplexed_async_connection().await?,
                        namespace: namespace.clone(),
                        ttl,
                    };
                    if matches!(self, Contender::NoLock) {
                        Client::NoLock(article)
                    } else {
                        Client::Mutex(article)
                    }
                }
                Contender::LarderLeases | Contender::LarderXfetch | Contender::LarderL1 => {
                    let mut policy = Policy::new("item", "item:{id}").ttl(ttl);
                    if matches!(self, Contender::LarderLeases) {
                        policy = policy.early_refresh(0.0);
                    }
                    let l1_bytes = if matches!(self, Contender::LarderL1) {
                        64 << 20
                    } else {
                        0
                    };
                    let cache = Cache::builder()
                        .namespace(&namespace)
                        .redis_url(&args.redis_url)
                        .redis_timeout(Duration::from_secs(2))
                        .l1_max_bytes(l1_bytes)
                        .family(policy)
                        .build()
                        .await?;
                    Client::Larder(cache.family("item")?)
                }
            };
            clients.push(client);
        }
        Ok(clients)
    }
}

/// What one contender did in one situation.
struct Outcome {
    contender: Contender,
    loads: u64,
    requests: u64,
    /// Caller latencies, µs.
    latency: Histogram<u64>,
    /// Requests slower than half a load: those that waited for one.
    stalled: u64,
}

impl Outcome {
    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "contender": self.contender.label(),
            "loader_calls": self.loads,
            "requests": self.requests,
            "stalled_requests": self.stalled,
            "latency_ms": {
                "p50": self.ms(0.5),
                "p99": self.ms(0.99),
                "max": self.latency.max() as f64 / 1000.0,
            },
        })
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?)
}

/// Releases `callers_per_key` callers on each of `keys` cold keys at once,
/// spread over the processes; times each from the release.
async fn cold(
    contender: Contender,
    args: &StampedeArgs,
    keys: usize,
    callers_per_key: usize,
) -> anyhow::Result<Outcome> {
    let clients = contender.clients(args, Duration::from_secs(600)).await?;
    let db = Database {
        load_time: args.load_time,
        calls: Arc::new(AtomicU64::new(0)),
    };
    let total = keys * callers_per_key;
    let go = Arc::new(Barrier::new(total));
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let (client, db, go) = (
            clients[i % clients.len()].clone(),
            db.clone(),
            Arc::clone(&go),
        );
        let id = (i % keys) as u64;
        tasks.push(tokio::spawn(async move {
            go.wait().await;
            let started = Instant::now();
            client.get(id, &db).await?;
            anyhow::Ok(started.elapsed())
        }));
    }
    let mut latency = histogram()?;
    let mut stalled = 0;
    for task in tasks {
        let took = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .context("a caller took over 60 s")???;
        stalled += u64::from(took > args.load_time / 2);
        latency.record(took.as_micros().max(1) as u64)?;
    }
    Ok(Outcome {
        contender,
        loads: db.calls.load(Ordering::Relaxed),
        requests: total as u64,
        latency,
        stalled,
    })
}

/// Readers read one key in a loop while its TTL runs out, again and again.
async fn hot(contender: Contender, args: &StampedeArgs) -> anyhow::Result<Outcome> {
    let clients = contender.clients(args, args.hot_ttl).await?;
    let db = Database {
        load_time: args.load_time,
        calls: Arc::new(AtomicU64::new(0)),
    };
    // Warm: the run starts with the key cached, as a hot key is.
    clients[0].get(0, &db).await?;
    db.calls.store(0, Ordering::Relaxed);
    let deadline = Instant::now() + args.hot_run;
    let mut tasks = Vec::with_capacity(args.hot_readers);
    for r in 0..args.hot_readers {
        let (client, db) = (clients[r % clients.len()].clone(), db.clone());
        let every = args.read_every;
        let half_load = args.load_time / 2;
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram()?;
            let (mut requests, mut stalled) = (0u64, 0u64);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < deadline {
                tick.tick().await;
                let started = Instant::now();
                client.get(0, &db).await?;
                let took = started.elapsed();
                requests += 1;
                stalled += u64::from(took > half_load);
                latency.record(took.as_micros().max(1) as u64)?;
            }
            anyhow::Ok((latency, requests, stalled))
        }));
    }
    let mut latency = histogram()?;
    let (mut requests, mut stalled) = (0, 0);
    for task in tasks {
        let (h, n, s) = tokio::time::timeout(args.hot_run + Duration::from_secs(60), task)
            .await
            .context("a reader did not stop")???;
        latency.add(h)?;
        requests += n;
        stalled += s;
    }
    Ok(Outcome {
        contender,
        loads: db.calls.load(Ordering::Relaxed),
        requests,
        latency,
        stalled,
    })
}

fn table(title: &str, outcomes: &[Outcome]) {
    println!("\n{title}\n");
    println!(
        "{:<50}{:>8}{:>10}{:>9}{:>11}{:>11}{:>11}",
        "", "loads", "requests", "stalled", "p50", "p99", "max"
    );
    for o in outcomes {
        println!(
            "{:<50}{:>8}{:>10}{:>9}{:>9.2}ms{:>9.2}ms{:>9.2}ms",
            o.contender.label(),
            o.loads,
            o.requests,
            o.stalled,
            o.ms(0.5),
            o.ms(0.99),
            o.latency.max() as f64 / 1000.0
        );
    }
}

pub async fn run(args: StampedeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.processes > 0, "--processes must be at least 1");
    let mut conn = redis::Client::open(args.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("the stampede scenario needs Redis at {}", args.redis_url))?;
    redis::cmd("PING").query_async::<()>(&mut conn).await?;
    println!(
        "cache stampede — {} processes, loads take {:?}, Redis on loopback ({})",
        args.processes,
        args.load_time,
        crate::report::machine()
    );
    let all = [
        Contender::NoLock,
        Contender::Mutex,
        Contender::LarderLeases,
        Contender::LarderXfetch,
        Contender::LarderL1,
    ];
    // Early refresh changes nothing for a key nobody has: larder runs once.
    let cold_contenders = [Contender::NoLock, Contender::Mutex, Contender::LarderLeases];

    let mut cold_key = Vec::new();
    for c in cold_contenders {
        cold_key.push(cold(c, &args, 1, args.cold_callers).await?);
    }
    table(
        &format!(
            "one cold key, {} callers released at once",
            args.cold_callers
        ),
        &cold_key,
    );

    let mut cold_start = Vec::new();
    for c in cold_contenders {
        cold_start.push(cold(c, &args, args.cold_keys, args.callers_per_key).await?);
    }
    table(
        &format!(
            "cold start: {} keys x {} callers each, released at once",
            args.cold_keys, args.callers_per_key
        ),
        &cold_start,
    );

    let mut hot_key = Vec::new();
    for c in all {
        hot_key.push(hot(c, &args).await?);
    }
    table(
        &format!(
            "hot key, TTL {:?}: {} readers every {:?} for {:?} (stalled: slower than half a load)",
            args.hot_ttl, args.hot_readers, args.read_every, args.hot_run
        ),
        &hot_key,
    );

    let figures = json!({
        "scenario": "cache stampede",
        "machine": crate::report::machine(),
        "processes": args.processes,
        "load_time_ms": args.load_time.as_secs_f64() * 1000.0,
        "cold_key": { "callers": args.cold_callers, "results": cold_key.iter().map(Outcome::json).collect::<Vec<_>>() },
        "cold_start": { "keys": args.cold_keys, "callers_per_key": args.callers_per_key, "results": cold_start.iter().map(Outcome::json).collect::<Vec<_>>() },
        "hot_key": {
            "ttl_ms": args.hot_ttl.as_secs_f64() * 1000.0,
            "readers": args.hot_readers,
            "read_every_ms": args.read_every.as_secs_f64() * 1000.0,
            "run_s": args.hot_run.as_secs_f64(),
            "results": hot_key.iter().map(Outcome::json).collect::<Vec<_>>(),
        },
    });
    crate::report::save_figures(&args.json, &figures)
}
