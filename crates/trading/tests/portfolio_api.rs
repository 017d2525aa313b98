//! `GET /api/users/{id}/portfolio` end to end, on SQLite (L1 only) and on
//! PostgreSQL + Redis, each test on its own database and key namespace.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use rust_decimal::Decimal;
use serde_json::Value;
use support::{Setup, USERS, args, db_args, get, start};
use tower::ServiceExt;
use trading::app::AppState;
use trading::db::Db;
use trading::http;

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("money must be a JSON string, got {v}"))
        .parse()
        .unwrap()
}

/// The user's total, computed by a query of the test's own.
async fn total_by_sql(db: &Db, user: i64) -> Decimal {
    match db {
        Db::Postgres(pool) => sqlx::query_scalar::<_, Option<Decimal>>(
            "SELECT SUM(i.last_price * h.qty) FROM instruments i JOIN holdings h ON h.instrument_id = i.id WHERE h.user_id = $1",
        )
        .bind(user)
        .fetch_one(pool)
        .await
        .unwrap()
        .unwrap_or_default(),
        Db::Sqlite(pool) => {
            let cents: Option<i64> = sqlx::query_scalar(
                "SELECT SUM(i.last_price_cents * h.qty) FROM instruments i JOIN holdings h ON h.instrument_id = i.id WHERE h.user_id = ?1",
            )
            .bind(user)
            .fetch_one(pool)
            .await
            .unwrap();
            Decimal::new(cents.unwrap_or(0), 2)
        }
    }
}

#[tokio::test]
async fn portfolios_match_a_direct_sql_computation() {
    for setup in [Setup::Embedded, Setup::Production] {
        let (state, router, _backing) = start(setup, false).await;
        for user in [1, 2, 17, 150, USERS as i64] {
            for round in 0..2 {
                let (status, body) = get(&router, &format!("/api/users/{user}/portfolio")).await;
                assert_eq!(status, StatusCode::OK, "{setup:?} user {user}: {body}");
                assert_eq!(body["user_id"], user);
                let holdings = body["holdings"].as_array().unwrap();
                assert!(
                    (10..=20).contains(&holdings.len()),
                    "{setup:?}: seeded 10-20 holdings"
                );
                let mut sum = Decimal::ZERO;
                for h in holdings {
                    let qty = Decimal::from(h["qty"].as_i64().unwrap());
                    assert_eq!(dec(&h["market_value"]), qty * dec(&h["last_price"]), "{h}");
                    assert!(
                        h["last_price"]
                            .as_str()
                            .unwrap()
                            .split('.')
                            .nth(1)
                            .map(str::len)
                            == Some(2)
                    );
                    sum += dec(&h["market_value"]);
                }
                let total = dec(&body["total_market_value"]);
                assert_eq!(total, sum, "{setup:?} round {round}");
                assert_eq!(
                    total,
                    total_by_sql(&state.db, user).await,
                    "{setup:?} user {user}"
                );
            }
        }
        let stats = state.portfolios.stats();
        assert_eq!(
            stats.loader_calls, 5,
            "{setup:?}: second reads came from the cache"
        );
        assert_eq!(stats.hits_l1, 5, "{setup:?}");
    }
}

#[tokio::test]
async fn bad_ids_are_400_and_unknown_users_404_with_json_errors() {
    for setup in [Setup::Embedded, Setup::Production] {
        let (state, router, _backing) = start(setup, false).await;
        for bad in [
            "abc",
            "-1",
            "0",
            "1.5",
            "99999999999999999999",
            "%2A",
            "1%3A2",
            "%20",
        ] {
            let (status, body) = get(&router, &format!("/api/users/{bad}/portfolio")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{setup:?} id {bad}");
            assert_eq!(body["error"], "user id must be a positive integer");
        }
        for _ in 0..3 {
            let (status, body) = get(&router, "/api/users/999999/portfolio").await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{setup:?}");
            assert_eq!(body["error"], "user 999999 not found");
        }
        let stats = state.portfolios.stats();
        assert_eq!(
            stats.loader_calls, 1,
            "{setup:?}: unknown id remembered as a negative entry"
        );
        assert_eq!(stats.negative_hits, 2, "{setup:?}");
        let (status, body) = get(&router, "/api/nothing/here").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"].is_string());
    }
}

#[tokio::test]
async fn without_cache_every_read_reaches_the_database() {
    let (state, router, _backing) = start(Setup::Embedded, true).await;
    for _ in 0..4 {
        let (status, _) = get(&router, "/api/users/3/portfolio").await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(state.portfolios.stats().loader_calls, 4);
}

#[tokio::test]
async fn a_database_outage_is_a_quick_503_without_internals() {
    // A PostgreSQL pool on a port where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&format!("postgres://postgres@127.0.0.1:{port}/none"))
        .unwrap();
    let args = args(db_args(None, PathBuf::new()), None, false);
    let state = AppState::new(&args, Db::Postgres(pool)).await.unwrap();
    let router = http::router(state, args.request_timeout);
    let started = Instant::now();
    let (status, body) = get(&router, "/api/users/1/portfolio").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "service temporarily unavailable");
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "no internals leak: {body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fails fast: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn health_and_metrics_endpoints() {
    let (_state, router, _backing) = start(Setup::Embedded, false).await;
    let (status, body) = get(&router, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "sqlite");
    get(&router, "/api/users/1/portfolio").await;
    get(&router, "/api/users/1/portfolio").await;
    let response = router
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(
        axum::body::to_bytes(response.into_body(), 1 << 22)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    for needle in [
        "larder_cache_requests_total{family=\"portfolio\",result=\"hit_l1\"}",
        "larder_cache_requests_total{family=\"portfolio\",result=\"miss\"}",
        "larder_loader_calls_total{family=\"portfolio\"}",
        "trading_db_queries_total{query=\"portfolio\"}",
        "http_request_duration_seconds_bucket{route=\"/api/users/{id}/portfolio\"",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
}
