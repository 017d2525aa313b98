//! The service in-process, on SQLite or PostgreSQL + Redis, with HTTP
//! helpers.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;
use trading::app::{self, AppState};
use trading::http;
use trading::settings::{CdcArgs, DbArgs, ServeArgs};

/// The database a test runs on, kept alive (and cleaned up) with the app.
pub enum Backing {
    Sqlite(PathBuf),
    Postgres(#[allow(dead_code)] testkit::TestDatabase),
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Backing::Sqlite(path) = self {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setup {
    /// The embedded default: SQLite + L1.
    Embedded,
    /// PostgreSQL + L1 + Redis.
    Production,
}

pub const USERS: u64 = 300;

pub fn args(db: DbArgs, redis_url: Option<String>, no_cache: bool) -> ServeArgs {
    ServeArgs {
        db,
        addr: "127.0.0.1:0".parse().unwrap(),
        redis_url,
        redis_cluster_urls: Vec::new(),
        redis_sentinel_urls: Vec::new(),
        redis_sentinel_master: None,
        no_cache,
        seed_users: USERS,
        cache_config: None,
        namespace: testkit::namespace(),
        l1_max_bytes: 16 * 1024 * 1024,
        redis_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(10),
        price_updates_per_sec: 0,
        write_behind_claim_idle: Duration::from_secs(30),
        service_token: Some(SERVICE_TOKEN.to_string()),
        rate_limit_ip: 0.0,
        rate_limit_session: 0.0,
        login_attempts_per_min: 0.0,
        trusted_proxies: Vec::new(),
        ws_max_connections: 1_000,
        // Off, as by default: a test that turns it on names a slot of its
        // own and drops it.
        cdc: CdcArgs {
            enabled: false,
            slot: None,
            publication: "larder".into(),
            catch_up: Duration::from_secs(10),
        },
    }
}

/// The test service's token that acts for any user.
pub const SERVICE_TOKEN: &str = "test-service-token-0123456789abcdef0123";

/// `Bearer <service token>`.
pub fn bearer() -> String {
    format!("Bearer {SERVICE_TOKEN}")
}

pub fn db_args(database_url: Option<String>, sqlite_path: PathBuf) -> DbArgs {
    DbArgs {
        database_url,
        sqlite_path,
        db_pool_size: 8,
        db_timeout: Duration::from_secs(2),
    }
}

pub async fn start(setup: Setup, no_cache: bool) -> (AppState, Router, Backing) {
    let (args, backing) = settings(setup, no_cache).await;
    let (state, router) = from_args(&args).await;
    (state, router, backing)
}

/// The service on `args` (a second instance shares their database, Redis
/// and namespace).
pub async fn from_args(args: &ServeArgs) -> (AppState, Router) {
    let state = app::prepare(args).await.expect("service starts");
    let router = http::router(state.clone(), args.request_timeout);
    (state, router)
}

/// Settings for a test service with its own database (and namespace).
pub async fn settings(setup: Setup, no_cache: bool) -> (ServeArgs, Backing) {
    match setup {
        Setup::Embedded => {
            let path = std::env::temp_dir().join(format!("{}.db", testkit::namespace()));
            (
                args(db_args(None, path.clone()), None, no_cache),
                Backing::Sqlite(path),
            )
        }
        Setup::Production => {
            testkit::require_redis().await;
            let db = testkit::TestDatabase::create().await;
            let mut args = args(
                db_args(Some(db.url().to_string()), PathBuf::new()),
                None,
                no_cache,
            );
            // The Redis of this run: one server, or the cluster of
            // LARDER_TEST_REDIS_CLUSTER_URLS (./scripts/test runs both).
            match testkit::redis_target() {
                testkit::RedisTarget::Standalone(url) => args.redis_url = Some(url),
                testkit::RedisTarget::Cluster(seeds) => args.redis_cluster_urls = seeds,
            }
            (args, Backing::Postgres(db))
        }
    }
}

/// `GET path` as the service token; the status and the JSON answer.
pub async fn get(router: &Router, path: &str) -> (StatusCode, Value) {
    let (status, _, json) = call(router, "GET", path, None, Some(SERVICE_TOKEN)).await;
    (status, json)
}

/// Sends `method path` with a JSON body as the service token; returns the
/// status and the JSON answer.
pub async fn send(router: &Router, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
    let (status, _, json) = call(router, method, path, Some(body), Some(SERVICE_TOKEN)).await;
    (status, json)
}

pub const BOTH: [Setup; 2] = [Setup::Embedded, Setup::Production];

/// Sends a request with `token` as the bearer (or none); returns the status,
/// the headers and the JSON answer (`Value::Null` for an empty body).
pub async fn call(
    router: &Router,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(Body::from(body.unwrap_or_default().to_string()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), router.clone().oneshot(request))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 30 s"))
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{method} {path}: body is not JSON: {bytes:?}"))
    };
    (status, headers, json)
}

/// Logs in as seeded user `id` (demo password); returns the token.
pub async fn login(router: &Router, id: i64) -> String {
    let body = format!(
        r#"{{"email":"user{id}@example.com","password":"{}"}}"#,
        trading::session::DEMO_PASSWORD
    );
    let (status, _, json) = call(router, "POST", "/api/sessions", Some(&body), None).await;
    assert_eq!(status, StatusCode::CREATED, "login of user {id}: {json}");
    json["token"].as_str().expect("a token").to_string()
}

/// Runs one SQL statement against the test's database, behind the
/// service's back (to show what is and is not cached).
pub async fn exec(state: &AppState, postgres: &str, sqlite: &str) {
    match &state.db {
        trading::db::Db::Postgres(pool) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(postgres.to_string()))
                .execute(pool)
                .await
                .unwrap();
        }
        trading::db::Db::Sqlite(pool) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sqlite.to_string()))
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

/// Serves `router` on a loopback port (with peer addresses, as the binary
/// does); returns the address. The server stops with the test's runtime.
pub async fn serve(router: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    addr
}
