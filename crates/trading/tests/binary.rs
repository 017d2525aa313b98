//! The `trading` binary as it is deployed: embedded defaults, first-start
//! seeding, real TCP ports, several instances sharing PostgreSQL and Redis,
//! graceful shutdown on SIGTERM.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Lets these tests act for any user (the deployed binary has none unless
/// configured).
const SERVICE_TOKEN: &str = "binary-test-service-token-0123456789abcdef";

/// One running `trading` process.
struct Service {
    child: Child,
    addr: String,
    /// Kept open: the service's stdout must not become a broken pipe.
    _stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Service {
    /// Starts the binary with `env` on a free port and waits until it prints
    /// its address (it does once it listens).
    async fn start(env: &[(&str, &str)]) -> Service {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trading"));
        cmd.args(["--addr", "127.0.0.1:0"])
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("REDIS_CLUSTER_URLS")
            .env_remove("REDIS_SENTINEL_URLS")
            .env_remove("REDIS_SENTINEL_MASTER")
            .env("LARDER_PRICE_UPDATES_PER_SEC", "0")
            .env("LARDER_SERVICE_TOKEN", SERVICE_TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("trading binary runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("http://") {
                    return line;
                }
            }
            panic!("service exited without printing its address");
        })
        .await
        .expect("service printed its address within 60 s");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .trim_end_matches('/')
            .to_string();
        Service {
            child,
            addr,
            _stdout: lines,
        }
    }

    /// One HTTP/1.1 request on a fresh connection; returns the raw response.
    async fn request(&self, method: &str, path: &str, body: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .expect("service accepts connections");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {SERVICE_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    async fn get(&self, path: &str) -> String {
        self.request("GET", path, "").await
    }

    /// SIGTERM, then the exit status (bounded).
    async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("child is running").to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("service stops within 15 s of SIGTERM")
            .unwrap()
    }
}

/// Polls `service` until `path` answers with `needle` in it, for at most
/// five seconds: another process is changing what it serves.
async fn until_served(service: &Service, path: &str, needle: &str) -> String {
    let started = Instant::now();
    loop {
        let response = service.get(path).await;
        if response.contains(needle) {
            return response;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} never showed {needle}: {response}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_binary_starts_on_embedded_defaults_serves_and_shuts_down_cleanly() {
    let db = std::env::temp_dir().join(format!("{}.db", testkit::namespace()));
    let db_path = db.display().to_string();
    let service = Service::start(&[
        ("LARDER_SQLITE_PATH", &db_path),
        ("LARDER_SEED_USERS", "50"),
    ])
    .await;

    let response = service.get("/api/users/1/portfolio").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"total_market_value\":\""), "{response}");
    let response = service.get("/api/users/x/portfolio").await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("application/json"), "{response}");
    let response = service
        .request("PUT", "/api/users/2/watchlist", r#"{"symbols":["TCS"]}"#)
        .await;
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");

    let exit = service.stop().await;
    assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");
    // The queued watchlist write was drained into SQLite on the way out.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{db_path}"))
        .await
        .unwrap();
    let saved: Option<String> =
        sqlx::query_scalar("SELECT symbols FROM watchlists WHERE user_id = 2")
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert_eq!(saved.as_deref(), Some(r#"["TCS"]"#));
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{db_path}{suffix}"));
    }
}

#[tokio::test]
async fn two_instances_on_postgres_and_redis_see_each_others_writes() {
    testkit::require_redis().await;
    let db = testkit::TestDatabase::create().await;
    let namespace = testkit::namespace();
    let (redis_var, redis) = redis_env();
    let env = [
        ("DATABASE_URL", db.url()),
        (redis_var, redis.as_str()),
        ("LARDER_NAMESPACE", namespace.as_str()),
        ("LARDER_SEED_USERS", "50"),
    ];
    // The first seeds the database; the second finds it seeded.
    let a = Service::start(&env).await;
    let b = Service::start(&env).await;

    // b caches user 3's profile and watchlist in its L1.
    for _ in 0..2 {
        assert!(
            b.get("/api/users/3/profile")
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            b.get("/api/users/3/watchlist")
                .await
                .contains("\"symbols\":[]")
        );
    }
    // a writes both.
    let put = a
        .request(
            "PUT",
            "/api/users/3/profile",
            r#"{"name":"Written by A","email":"a3@example.com"}"#,
        )
        .await;
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    let put = a
        .request(
            "PUT",
            "/api/users/3/watchlist",
            r#"{"symbols":["INFY","TCS"]}"#,
        )
        .await;
    assert!(put.starts_with("HTTP/1.1 202"), "{put}");
    // b serves the new values once the invalidations reach it.
    until_served(&b, "/api/users/3/profile", "Written by A").await;
    until_served(&b, "/api/users/3/watchlist", r#"["INFY","TCS"]"#).await;

    assert!(a.stop().await.success());
    assert!(b.stop().await.success());
}

/// The service's setting for the Redis of this test run: `REDIS_URL`, or
/// `REDIS_CLUSTER_URLS` when the run is on a cluster.
fn redis_env() -> (&'static str, String) {
    match testkit::redis_target() {
        testkit::RedisTarget::Standalone(url) => ("REDIS_URL", url),
        testkit::RedisTarget::Cluster(seeds) => ("REDIS_CLUSTER_URLS", seeds.join(",")),
    }
}

/// The value of `trading_db_queries_total{query="<query>"}` on `service`
/// (0 if it has not counted one yet).
async fn db_queries(service: &Service, query: &str) -> u64 {
    let metrics = service.get("/metrics").await;
    let series = format!("trading_db_queries_total{{query=\"{query}\"}}");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .expect("a counter's value is a number") as u64
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn three_processes_hit_by_300_concurrent_requests_for_one_cold_portfolio_query_the_database_once()
 {
    testkit::require_redis().await;
    let db = testkit::TestDatabase::create().await;
    let namespace = testkit::namespace();
    let (redis_var, redis) = redis_env();
    let env = [
        ("DATABASE_URL", db.url()),
        (redis_var, redis.as_str()),
        ("LARDER_NAMESPACE", namespace.as_str()),
        ("LARDER_SEED_USERS", "50"),
    ];
    let mut services = Vec::new();
    for _ in 0..3 {
        services.push(std::sync::Arc::new(Service::start(&env).await));
    }
    // All 300 are released at once, 100 to each process.
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(300));
    let mut requests = Vec::new();
    for i in 0..300 {
        let (service, go) = (
            std::sync::Arc::clone(&services[i % 3]),
            std::sync::Arc::clone(&go),
        );
        requests.push(tokio::spawn(async move {
            go.wait().await;
            service.get("/api/users/17/portfolio").await
        }));
    }
    let mut bodies = std::collections::HashSet::new();
    for r in requests {
        let response = tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .expect("every request answered within 30 s")
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        bodies.insert(
            response
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(bodies.len(), 1, "all 300 callers got the same portfolio");
    let mut total = 0;
    for service in &services {
        total += db_queries(service, "portfolio").await;
    }
    assert_eq!(total, 1, "one portfolio query across three processes");
    for service in services {
        let service = std::sync::Arc::into_inner(service).expect("no request holds it any more");
        assert!(service.stop().await.success());
    }
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, requests are exported as OTLP
/// traces: the request span, the cache's answer (family and tier) and the
/// loader's span, received here by a minimal OTLP/HTTP endpoint.
#[cfg(feature = "otlp")]
#[tokio::test]
async fn requests_are_exported_as_otlp_traces_with_the_cache_tier() {
    use tokio::net::TcpListener;
    let collector = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = collector.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                // Headers, then Content-Length bytes of protobuf.
                let mut raw = Vec::new();
                let mut buf = [0u8; 8192];
                let (head_end, length) = loop {
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (at + 4, length);
                    }
                };
                while raw.len() < head_end + length {
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                    .await;
                let _ = tx.send(raw[head_end..].to_vec());
            });
        }
    });
    let db = std::env::temp_dir().join(format!("{}.db", testkit::namespace()));
    let db_path = db.display().to_string();
    let service = Service::start(&[
        ("LARDER_SQLITE_PATH", &db_path),
        ("LARDER_SEED_USERS", "5"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    // A miss (the loader runs), then a hit from L1.
    for _ in 0..2 {
        let response = service.get("/api/users/1/portfolio").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    let mut seen = Vec::new();
    let wanted: [&[u8]; 6] = [
        b"GET /api/users/{id}/portfolio",
        b"cache answer",
        b"portfolio",
        b"miss",
        b"hit_l1",
        b"larder.load",
    ];
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(body) = rx.recv().await {
            seen.extend_from_slice(&body);
            if wanted
                .iter()
                .all(|w| seen.windows(w.len()).any(|s| s == *w))
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let exit = service.stop().await;
    assert!(exit.success(), "{exit:?}");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{db_path}{suffix}"));
    }
    assert!(
        found,
        "the exported spans name the route, the family, the tiers and the load ({} bytes seen)",
        seen.len()
    );
}
