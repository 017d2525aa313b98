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
use trading::settings::{DbArgs, ServeArgs};

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
        no_cache,
        seed_users: USERS,
        cache_config: None,
        namespace: testkit::namespace(),
        l1_max_bytes: 16 * 1024 * 1024,
        redis_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(10),
        price_updates_per_sec: 0,
        write_behind_claim_idle: Duration::from_secs(30),
    }
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
    let (args, backing) = match setup {
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
            let args = args(
                db_args(Some(db.url().to_string()), PathBuf::new()),
                Some(testkit::redis_url()),
                no_cache,
            );
            (args, Backing::Postgres(db))
        }
    };
    let state = app::prepare(&args).await.expect("service starts");
    let router = http::router(state.clone(), args.request_timeout);
    (state, router, backing)
}

pub async fn get(router: &Router, path: &str) -> (StatusCode, Value) {
    let response = router
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{path}: body is not JSON: {bytes:?}"));
    (status, json)
}

/// Sends `method path` with a JSON body; returns the status and the JSON
/// answer.
pub async fn send(router: &Router, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
    let response = router
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{method} {path}: body is not JSON: {bytes:?}"));
    (status, json)
}

pub const BOTH: [Setup; 2] = [Setup::Embedded, Setup::Production];
