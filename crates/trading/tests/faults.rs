//! The fault matrix: the reference service under load while Redis or the
//! database misbehaves, through real TCP faults (a fault proxy in front of
//! each, a private `redis-server` to pause, kill and restart).
//!
//! Each test drives reads (`GET /portfolio`) and acknowledged writes
//! (`PUT /profile`) for a second, injects one fault for two seconds, heals
//! it, and drives four more seconds. It asserts that no request that could
//! be served failed, that latency during the fault stayed bounded (no
//! request waits much longer than the Redis or database timeout), that no
//! acknowledged write was lost (the database and the service agree with the
//! last acknowledged value of every user), and that the hit rate came back.
//! Each writes its row of the matrix to `target/fault-matrix/<fault>.json`
//! and prints it; `docs/RELIABILITY.md` is filled from those rows.
//!
//!     cargo test -p trading --test faults -- --nocapture
//!
//! With `FAULTS_DEBUG=1` it also prints every failed request and the hit
//! rate every 500 ms.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use larder::FamilyStats;
use serde_json::json;
use testkit::{Fault, FaultProxy, RedisServer, TestDatabase};
use tower::ServiceExt;
use trading::app::{self, AppState, Background};
use trading::http;

const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
const DB_TIMEOUT: Duration = Duration::from_secs(1);
const BEFORE: Duration = Duration::from_secs(1);
const FAULT_FOR: Duration = Duration::from_secs(2);
const AFTER: Duration = Duration::from_secs(4);
const CLIENTS: i64 = 8;
/// Each client's pace: 8 clients, ~2,000 requests/s in all.
const EVERY: Duration = Duration::from_millis(4);
/// Every tenth request of a client is a write.
const WRITE_EVERY: u64 = 10;
/// Users whose portfolios are warmed (and read); the rest stay cold.
const WARM_USERS: i64 = 250;

/// One fault test at a time: each measures latency, which another's load
/// would distort.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    RedisKilled,
    RedisPaused,
    ConnectionsReset,
    RedisLatency,
    RedisRestartedEmpty,
    RedisPartitioned,
    DatabaseUnreachable,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::RedisKilled => "redis killed, restarted 2 s later",
            Kind::RedisPaused => "redis paused (SIGSTOP) for 2 s",
            Kind::ConnectionsReset => "redis connections reset every 100 ms for 2 s",
            Kind::RedisLatency => "200 ms added to every redis reply for 2 s",
            Kind::RedisRestartedEmpty => "redis restarted empty",
            Kind::RedisPartitioned => "redis partitioned (blackholed) for 2 s",
            Kind::DatabaseUnreachable => "postgres partitioned (blackholed) for 2 s",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Kind::RedisKilled => "redis-killed",
            Kind::RedisPaused => "redis-paused",
            Kind::ConnectionsReset => "connections-reset",
            Kind::RedisLatency => "redis-latency",
            Kind::RedisRestartedEmpty => "redis-restarted-empty",
            Kind::RedisPartitioned => "redis-partitioned",
            Kind::DatabaseUnreachable => "database-unreachable",
        }
    }
}

/// The service and everything it runs on, with the faults' handles.
struct Rig {
    redis: RedisServer,
    redis_proxy: Arc<FaultProxy>,
    db_proxy: Arc<FaultProxy>,
    /// Ground truth, bypassing the proxy.
    direct: sqlx::PgPool,
    state: AppState,
    router: Router,
    /// A task resetting connections while that fault is on.
    chaos: Option<tokio::task::JoinHandle<()>>,
    // Last: dropped after the pools above.
    _db: TestDatabase,
}

/// `url` with its host:port replaced by `addr`; and the original host:port.
async fn through(url: &str, addr: SocketAddr) -> (String, SocketAddr) {
    let (scheme, rest) = url.split_once("://").expect("a database URL has a scheme");
    let (authority, path) = rest
        .split_once('/')
        .expect("a database URL names a database");
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((user, hp)) => (format!("{user}@"), hp),
        None => (String::new(), authority),
    };
    let upstream = tokio::net::lookup_host(host_port)
        .await
        .expect("the database host resolves")
        .next()
        .expect("the database host has an address");
    (format!("{scheme}://{user}{addr}/{path}"), upstream)
}

impl Rig {
    async fn start(cache_config: Option<PathBuf>) -> Rig {
        let redis = RedisServer::start(&[]);
        let redis_proxy = Arc::new(FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).await);
        let db = TestDatabase::create().await;
        // The proxy needs the upstream address first: start it on a guess,
        // then on the real one.
        let (_, upstream) = through(db.url(), "127.0.0.1:1".parse().unwrap()).await;
        let db_proxy = Arc::new(FaultProxy::start(upstream).await);
        let (db_url, _) = through(db.url(), db_proxy.addr()).await;
        let direct = sqlx::PgPool::connect(db.url())
            .await
            .expect("the test database accepts connections");
        let mut args = support::args(
            support::db_args(Some(db_url), PathBuf::new()),
            Some(format!("redis://{}", redis_proxy.addr())),
            false,
        );
        args.redis_timeout = REDIS_TIMEOUT;
        args.db.db_timeout = DB_TIMEOUT;
        args.db.db_pool_size = 16;
        args.cache_config = cache_config;
        let state = app::prepare(&args).await.expect("service starts");
        let router = http::router(state.clone(), args.request_timeout);
        Rig {
            redis,
            redis_proxy,
            db_proxy,
            direct,
            state,
            router,
            chaos: None,
            _db: db,
        }
    }

    fn inject(&mut self, kind: Kind) {
        match kind {
            Kind::RedisKilled => self.redis.kill(),
            Kind::RedisPaused => self.redis.pause(),
            Kind::ConnectionsReset => {
                let proxy = Arc::clone(&self.redis_proxy);
                self.chaos = Some(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(100));
                    loop {
                        tick.tick().await;
                        proxy.reset_connections();
                    }
                }));
            }
            Kind::RedisLatency => self
                .redis_proxy
                .set(Fault::Latency(Duration::from_millis(200))),
            Kind::RedisRestartedEmpty => self.redis.restart(),
            Kind::RedisPartitioned => self.redis_proxy.set(Fault::Blackhole),
            Kind::DatabaseUnreachable => self.db_proxy.set(Fault::Blackhole),
        }
    }

    fn heal(&mut self, kind: Kind) {
        match kind {
            Kind::RedisKilled => self.redis.restart(),
            Kind::RedisPaused => self.redis.resume(),
            Kind::ConnectionsReset => {
                if let Some(chaos) = self.chaos.take() {
                    chaos.abort();
                }
            }
            Kind::RedisLatency | Kind::RedisPartitioned => self.redis_proxy.set(Fault::None),
            Kind::RedisRestartedEmpty => {}
            Kind::DatabaseUnreachable => self.db_proxy.set(Fault::None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Read,
    Write,
    /// A read of a portfolio nobody asked for before (during a database
    /// fault: nothing cached to serve).
    ColdRead,
}

struct Sample {
    at: Duration,
    took: Duration,
    op: Op,
    status: StatusCode,
}

/// One request through the router, bounded so that a hang shows as one.
async fn call(router: &Router, method: &str, path: &str, body: String) -> StatusCode {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", support::bearer())
        .body(Body::from(body))
        .expect("a valid request");
    match tokio::time::timeout(Duration::from_secs(15), router.clone().oneshot(request)).await {
        Ok(Ok(response)) => {
            let status = response.status();
            // Read the body: a response is not served until it is.
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await;
            if !status.is_success() && std::env::var_os("FAULTS_DEBUG").is_some() {
                eprintln!("{method} {path}: {status} {body:?}");
            }
            status
        }
        Ok(Err(never)) => match never {},
        Err(_) => StatusCode::GATEWAY_TIMEOUT,
    }
}

/// One client until `end`: reads of warm portfolios, and every
/// `WRITE_EVERY`th request a profile write to one of its own users (so that
/// "the last acknowledged value" of a user is well defined). Returns its
/// samples and its acknowledged writes.
async fn client(
    router: Router,
    c: i64,
    start: Instant,
    end: Instant,
) -> (Vec<Sample>, HashMap<i64, String>) {
    let mut samples = Vec::new();
    let mut acked = HashMap::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let own_users = support::USERS as i64 / CLIENTS;
    let mut i = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        i += 1;
        let began = Instant::now();
        let (op, status, write) = if i.is_multiple_of(WRITE_EVERY) {
            let user = c + 1 + CLIENTS * ((i / WRITE_EVERY) as i64 % own_users);
            let name = format!("client {c} write {i}");
            let body = json!({ "name": name, "email": format!("u{user}@example.com") }).to_string();
            let status = call(&router, "PUT", &format!("/api/users/{user}/profile"), body).await;
            (Op::Write, status, Some((user, name)))
        } else {
            let user = 1 + (rand::random::<u64>() % WARM_USERS as u64) as i64;
            let status = call(
                &router,
                "GET",
                &format!("/api/users/{user}/portfolio"),
                String::new(),
            )
            .await;
            (Op::Read, status, None)
        };
        if let (Some((user, name)), true) = (write, status == StatusCode::OK) {
            acked.insert(user, name);
        }
        samples.push(Sample {
            at: began - start,
            took: began.elapsed(),
            op,
            status,
        });
    }
    (samples, acked)
}

/// Latency and errors of the requests of one kind in one window.
#[derive(Debug, Default)]
struct Window {
    requests: usize,
    errors: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn window(samples: &[Sample], op: Op, from: Duration, to: Duration) -> Window {
    let mut took: Vec<Duration> = samples
        .iter()
        .filter(|s| s.op == op && s.at >= from && s.at < to)
        .map(|s| s.took)
        .collect();
    took.sort();
    let errors = samples
        .iter()
        .filter(|s| s.op == op && s.at >= from && s.at < to && !s.status.is_success())
        .count();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| {
        took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)))
            .map_or(0.0, |d| ms(*d))
    };
    Window {
        requests: took.len(),
        errors,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: took.last().map_or(0.0, |d| ms(*d)),
    }
}

/// Share of the portfolio family's requests answered from the cache (fresh,
/// stale within grace, or "not found") between two snapshots.
fn hit_ratio(a: &FamilyStats, b: &FamilyStats) -> f64 {
    let cached = |s: &FamilyStats| s.hits_l1 + s.hits_l2 + s.stale_hits + s.negative_hits;
    let hits = cached(b).saturating_sub(cached(a));
    let all = b.requests().saturating_sub(a.requests());
    if all == 0 {
        1.0
    } else {
        hits as f64 / all as f64
    }
}

/// What one fault did to the service.
struct Row {
    kind: Kind,
    reads: Window,
    writes: Window,
    cold_reads: Window,
    acked_writes: usize,
    writes_lost: usize,
    recovered_in: Option<Duration>,
    hit_ratio_before: f64,
    hit_ratio_after: f64,
    /// Reads answered with a stale value (within grace) during the fault.
    stale_served: u64,
    /// Reads that succeeded during the fault but took over 250 ms: the
    /// cache made them wait for the database (reads the database answered
    /// after the fault healed are not counted).
    slow_served_during_fault: usize,
}

impl Row {
    fn print_and_save(&self) {
        let recovered = self
            .recovered_in
            .map_or("never".to_string(), |d| format!("{} ms", d.as_millis()));
        println!(
            "| {} | {} / {} | {} / {} | {:.1} ms | {:.1} ms | {} of {} | {} | {:.0} % → {:.0} % |",
            self.kind.name(),
            self.reads.errors,
            self.reads.requests,
            self.writes.errors,
            self.writes.requests,
            self.reads.p99_ms.max(self.writes.p99_ms),
            self.reads.max_ms.max(self.writes.max_ms),
            self.writes_lost,
            self.acked_writes,
            recovered,
            self.hit_ratio_before * 100.0,
            self.hit_ratio_after * 100.0,
        );
        let w = |w: &Window| json!({ "requests": w.requests, "errors": w.errors, "p50_ms": w.p50_ms, "p99_ms": w.p99_ms, "max_ms": w.max_ms });
        let row = json!({
            "fault": self.kind.name(),
            "during_fault": { "reads": w(&self.reads), "writes": w(&self.writes), "cold_reads": w(&self.cold_reads) },
            "acknowledged_writes": self.acked_writes,
            "writes_lost": self.writes_lost,
            "recovered_in_ms": self.recovered_in.map(|d| d.as_millis() as u64),
            "hit_ratio_before": self.hit_ratio_before,
            "hit_ratio_after": self.hit_ratio_after,
            "stale_served_during_fault": self.stale_served,
        });
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault-matrix");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{}.json", self.kind.slug()));
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&row).expect("a row serializes"),
        )
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// Runs the load around one fault and measures it.
async fn run(kind: Kind, cache_config: Option<PathBuf>) -> Row {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(cache_config).await;
    // Warm: every read user's portfolio, every written user's profile.
    for user in 1..=WARM_USERS {
        assert_eq!(
            call(
                &rig.router,
                "GET",
                &format!("/api/users/{user}/portfolio"),
                String::new()
            )
            .await,
            StatusCode::OK
        );
    }
    for user in 1..=support::USERS as i64 {
        assert_eq!(
            call(
                &rig.router,
                "GET",
                &format!("/api/users/{user}/profile"),
                String::new()
            )
            .await,
            StatusCode::OK
        );
    }
    let start = Instant::now();
    let end = start + BEFORE + FAULT_FOR + AFTER;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(rig.router.clone(), c, start, end)))
        .collect();
    // The hit rate, every 50 ms.
    let portfolios = rig.state.portfolios.clone();
    let monitor = tokio::spawn(async move {
        let mut snapshots = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while Instant::now() < end {
            tick.tick().await;
            snapshots.push((start.elapsed(), portfolios.stats()));
        }
        snapshots
    });

    tokio::time::sleep_until((start + BEFORE).into()).await;
    rig.inject(kind);
    // During a database fault, cold portfolios have nothing cached to serve:
    // each must fail fast (503), not hang.
    let cold_reads: Vec<_> = if kind == Kind::DatabaseUnreachable {
        (WARM_USERS + 1..=WARM_USERS + 10)
            .map(|user| {
                let router = rig.router.clone();
                tokio::spawn(async move {
                    let began = Instant::now();
                    let path = format!("/api/users/{user}/portfolio");
                    let status = call(&router, "GET", &path, String::new()).await;
                    Sample {
                        at: began - start,
                        took: began.elapsed(),
                        op: Op::ColdRead,
                        status,
                    }
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    tokio::time::sleep_until((start + BEFORE + FAULT_FOR).into()).await;
    let healed_at = start.elapsed();
    rig.heal(kind);

    let mut samples = Vec::new();
    for cold in cold_reads {
        samples.push(cold.await.expect("a cold read does not panic"));
    }
    let mut acked: HashMap<i64, String> = HashMap::new();
    for c in clients {
        let (s, a) = c.await.expect("a client task does not panic");
        samples.extend(s);
        acked.extend(a);
    }
    let snapshots = monitor.await.expect("the monitor does not panic");

    // No acknowledged write lost: the database has each user's last
    // acknowledged name, and so does the service (its cache included).
    let mut lost = 0;
    for (user, name) in &acked {
        let in_db: String = sqlx::query_scalar("SELECT name FROM users WHERE id = $1")
            .bind(user)
            .fetch_one(&rig.direct)
            .await
            .expect("the database answers after the fault");
        let served = rig
            .state
            .profile(*user)
            .await
            .expect("the service answers after the fault");
        if in_db != *name || served.name != *name {
            eprintln!(
                "user {user}: acknowledged {name:?}, database {in_db:?}, served {:?}",
                served.name
            );
            lost += 1;
        }
    }

    let fault = (BEFORE, BEFORE + FAULT_FOR);
    let at = |t: Duration| {
        snapshots
            .iter()
            .find(|(at, _)| *at >= t)
            .map(|(_, s)| *s)
            .expect("a snapshot")
    };
    let last = snapshots.last().map(|(_, s)| *s).expect("a snapshot");
    let before = hit_ratio(&at(BEFORE / 2), &at(BEFORE));
    // Recovery: the first 50 ms interval after healing whose hit ratio is
    // back within 10 points of what it was before the fault.
    let recovered_in = snapshots
        .windows(2)
        .find(|w| w[1].0 > healed_at && hit_ratio(&w[0].1, &w[1].1) >= before - 0.1)
        .map(|w| w[1].0.saturating_sub(healed_at));
    let row = Row {
        kind,
        reads: window(&samples, Op::Read, fault.0, fault.1),
        writes: window(&samples, Op::Write, fault.0, fault.1),
        cold_reads: window(&samples, Op::ColdRead, fault.0, fault.1),
        acked_writes: acked.len(),
        writes_lost: lost,
        recovered_in,
        hit_ratio_before: before,
        stale_served: at(fault.1).stale_hits - at(fault.0).stale_hits,
        slow_served_during_fault: samples
            .iter()
            .filter(|s| s.op == Op::Read && s.status.is_success())
            .filter(|s| s.took > Duration::from_millis(250) && s.at + s.took < healed_at)
            .count(),
        hit_ratio_after: hit_ratio(
            &at(BEFORE + FAULT_FOR + AFTER - Duration::from_secs(1)),
            &last,
        ),
    };
    row.print_and_save();
    if std::env::var_os("FAULTS_DEBUG").is_some() {
        let after = window(
            &samples,
            Op::Read,
            BEFORE + FAULT_FOR,
            BEFORE + FAULT_FOR + AFTER,
        );
        let after_w = window(
            &samples,
            Op::Write,
            BEFORE + FAULT_FOR,
            BEFORE + FAULT_FOR + AFTER,
        );
        eprintln!("after: reads {after:?}, writes {after_w:?}");
        eprintln!("stats at end: {:?}", snapshots.last());
        for w in snapshots.chunks(10) {
            if let (Some(a), Some(b)) = (w.first(), w.last()) {
                eprintln!(
                    "{:?}: ratio {:.2}, misses {}, l2 hits {}, redis errors {}",
                    b.0,
                    hit_ratio(&a.1, &b.1),
                    b.1.misses - a.1.misses,
                    b.1.hits_l2 - a.1.hits_l2,
                    b.1.redis_errors - a.1.redis_errors
                );
            }
        }
        eprintln!(
            "breaker {:?}, deferred {}",
            rig.state.cache.redis_breaker(),
            rig.state.cache.deferred_invalidations()
        );
        if let trading::db::Db::Postgres(pool) = &rig.state.db {
            eprintln!("pool size {}, idle {}", pool.size(), pool.num_idle());
        }
        eprintln!(
            "direct query now: {:?}",
            rig.state.db.portfolio(1).await.map(|p| p.is_some())
        );
    }
    drop(rig);
    row
}

/// The assertions every Redis fault must pass.
fn assert_redis_fault(row: &Row) {
    let name = row.kind.name();
    assert!(
        row.reads.requests > 1000,
        "{name}: the load ran: {}",
        row.reads.requests
    );
    assert_eq!(
        row.reads.errors, 0,
        "{name}: every read served while the database is up"
    );
    assert_eq!(
        row.writes.errors, 0,
        "{name}: every write taken while the database is up"
    );
    // No request waits much longer than the Redis timeout: a read is one
    // Redis round trip before the loader, a write two invalidations.
    let bound = 1000.0;
    assert!(
        row.reads.max_ms < bound && row.writes.max_ms < bound,
        "{name}: latency bounded: reads max {} ms, writes max {} ms",
        row.reads.max_ms,
        row.writes.max_ms
    );
    assert_eq!(row.writes_lost, 0, "{name}: no acknowledged write lost");
    assert!(
        row.acked_writes > 50,
        "{name}: writes were acknowledged: {}",
        row.acked_writes
    );
    assert!(
        row.recovered_in.is_some_and(|d| d < Duration::from_secs(3)),
        "{name}: hit rate back within 3 s: {:?}",
        row.recovered_in
    );
    assert!(
        row.hit_ratio_after >= row.hit_ratio_before - 0.1,
        "{name}: hit ratio after recovery {:.2}, before the fault {:.2}",
        row.hit_ratio_after,
        row.hit_ratio_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted() {
    assert_redis_fault(&run(Kind::RedisKilled, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused() {
    assert_redis_fault(&run(Kind::RedisPaused, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connections_reset_mid_command() {
    assert_redis_fault(&run(Kind::ConnectionsReset, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_slow_by_200_ms() {
    assert_redis_fault(&run(Kind::RedisLatency, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty() {
    assert_redis_fault(&run(Kind::RedisRestartedEmpty, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_partitioned() {
    assert_redis_fault(&run(Kind::RedisPartitioned, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_unreachable_serves_stale_within_grace_and_503s_the_rest_quickly() {
    // Portfolios and profiles expire after a second here, so that the
    // outage outlasts their TTL: what is served then is stale, within grace.
    let config = trading::app::DEFAULT_POLICIES
        .replacen("ttl = \"60s\"", "ttl = \"1s\"", 1)
        .replacen("ttl = \"1h\"", "ttl = \"1s\"", 1);
    assert_ne!(config, trading::app::DEFAULT_POLICIES);
    let path = std::env::temp_dir().join(format!("{}.toml", testkit::namespace()));
    std::fs::write(&path, config).expect("temp dir is writable");
    let row = run(Kind::DatabaseUnreachable, Some(path.clone())).await;
    let _ = std::fs::remove_file(&path);
    let name = row.kind.name();
    // A portfolio with a value cached, fresh or stale, is served at once; one
    // whose entry a write invalidated just before has nothing to serve, and
    // is a quick 503.
    assert!(
        row.stale_served > 0,
        "{name}: stale portfolios served within grace"
    );
    assert_eq!(
        row.slow_served_during_fault, 0,
        "{name}: reads served from the cache never wait for the database"
    );
    let db_bound = (DB_TIMEOUT + Duration::from_millis(750)).as_secs_f64() * 1000.0;
    // Which warm portfolios have nothing cached when the database goes
    // away depends on which of them the profile writes just before had
    // invalidated (their tag `user:{id}`) and no read had refilled: a
    // matter of timing, so "most" means more than half (a quarter failed
    // once under a loaded CI run: 10 of 32).
    assert!(
        row.reads.errors * 2 < row.reads.requests,
        "{name}: most reads served: {} of {} failed",
        row.reads.errors,
        row.reads.requests
    );
    assert!(
        row.reads.max_ms < db_bound,
        "{name}: a read with nothing cached fails about the database timeout: max {} ms",
        row.reads.max_ms
    );
    // Writes need the database: refused, quickly, never acknowledged.
    assert!(
        row.writes.errors > 0,
        "{name}: writes during the outage are refused"
    );
    assert!(
        row.writes.max_ms < db_bound,
        "{name}: a refused write takes about the database timeout: max {} ms",
        row.writes.max_ms
    );
    assert_eq!(row.cold_reads.requests, 10);
    assert_eq!(
        row.cold_reads.errors, 10,
        "{name}: nothing to serve for a cold portfolio: 503"
    );
    assert!(
        row.cold_reads.max_ms < db_bound,
        "{name}: cold reads fail fast: max {} ms",
        row.cold_reads.max_ms
    );
    assert_eq!(row.writes_lost, 0, "{name}: no acknowledged write lost");
    assert!(
        row.hit_ratio_after >= row.hit_ratio_before - 0.1,
        "{name}: hit ratio after recovery {:.2}, before the fault {:.2}",
        row.hit_ratio_after,
        row.hit_ratio_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_write_behind_worker_loses_no_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::start(None).await;
    let claim_idle = Duration::from_millis(300);
    let worker = Background::start(&rig.state, 0, claim_idle);
    let mut acked: HashMap<i64, Vec<String>> = HashMap::new();
    let mut worker = Some(worker);
    for i in 0..600i64 {
        let user = 1 + i % 50;
        let symbols = vec![format!("W{i}")];
        let body = json!({ "symbols": symbols }).to_string();
        let status = call(
            &rig.router,
            "PUT",
            &format!("/api/users/{user}/watchlist"),
            body,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "write {i} is acknowledged");
        acked.insert(user, symbols);
        if i == 300 {
            // Killed mid-stream: no drain, its unacknowledged entries stay
            // pending in the stream. A new worker (another consumer) takes
            // them over after claim_idle.
            drop(worker.take());
            worker = Some(Background::start(&rig.state, 0, claim_idle));
        }
    }
    // Every user's last acknowledged watchlist reaches the database.
    let started = Instant::now();
    loop {
        let mut behind = 0;
        for (user, symbols) in &acked {
            let stored: Option<String> =
                sqlx::query_scalar("SELECT symbols FROM watchlists WHERE user_id = $1")
                    .bind(user)
                    .fetch_optional(&rig.direct)
                    .await
                    .unwrap();
            let stored: Vec<String> = stored
                .map(|s| serde_json::from_str(&s).unwrap())
                .unwrap_or_default();
            if stored != *symbols {
                behind += 1;
            }
        }
        if behind == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{behind} acknowledged watchlists never reached the database"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_in = started.elapsed();
    println!(
        "| write-behind worker killed mid-stream | 0 / 600 writes refused | 0 of {} lost | in the database {} ms after the last write |",
        acked.len(),
        drained_in.as_millis()
    );
    drop(worker);
}
