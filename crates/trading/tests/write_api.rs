//! The write paths over HTTP: watchlist (write-behind), profile (delete on
//! write + tag), prices (write-through), on SQLite and PostgreSQL + Redis.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use rust_decimal::Decimal;
use support::{BOTH, Setup, get, send, start};
use trading::app::Background;
use trading::db::Db;

async fn watchlist_row(db: &Db, user: i64) -> Option<String> {
    match db {
        Db::Postgres(pool) => {
            sqlx::query_scalar("SELECT symbols FROM watchlists WHERE user_id = $1")
                .bind(user)
                .fetch_optional(pool)
                .await
                .unwrap()
        }
        Db::Sqlite(pool) => sqlx::query_scalar("SELECT symbols FROM watchlists WHERE user_id = ?1")
            .bind(user)
            .fetch_optional(pool)
            .await
            .unwrap(),
    }
}

#[tokio::test]
async fn a_watchlist_write_is_read_back_at_once_and_reaches_the_database() {
    for setup in BOTH {
        let (state, router, _backing) = start(setup, false).await;
        let (status, body) = get(&router, "/api/users/5/watchlist").await;
        assert_eq!(status, StatusCode::OK, "{setup:?}");
        assert_eq!(
            body["symbols"],
            serde_json::json!([]),
            "{setup:?}: none saved yet"
        );

        let (status, body) = send(
            &router,
            "PUT",
            "/api/users/5/watchlist",
            r#"{"symbols":["TCS","INFY"]}"#,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{setup:?}: {body}");
        // Read back before any worker ran.
        let (_, body) = get(&router, "/api/users/5/watchlist").await;
        assert_eq!(
            body["symbols"],
            serde_json::json!(["TCS", "INFY"]),
            "{setup:?}"
        );
        assert_eq!(
            watchlist_row(&state.db, 5).await,
            None,
            "{setup:?}: not yet in the database"
        );

        let background = Background::start(&state, 0, Duration::from_secs(30));
        let (_, _) = send(
            &router,
            "PUT",
            "/api/users/5/watchlist",
            r#"{"symbols":["RELIANCE"]}"#,
        )
        .await;
        background.shutdown(Duration::from_secs(10)).await;
        assert_eq!(
            watchlist_row(&state.db, 5).await.as_deref(),
            Some(r#"["RELIANCE"]"#),
            "{setup:?}: the last write landed"
        );
        let (_, body) = get(&router, "/api/users/5/watchlist").await;
        assert_eq!(body["symbols"], serde_json::json!(["RELIANCE"]));
    }
}

#[tokio::test]
async fn bad_watchlist_and_profile_writes_are_clear_4xx_with_json_bodies() {
    for setup in BOTH {
        let (_state, router, _backing) = start(setup, false).await;
        let cases = [
            (
                "PUT",
                "/api/users/5/watchlist",
                "{not json",
                StatusCode::BAD_REQUEST,
            ),
            (
                "PUT",
                "/api/users/5/watchlist",
                r#"{"symbols":"TCS"}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "PUT",
                "/api/users/5/watchlist",
                r#"{"symbols":[],"extra":1}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "PUT",
                "/api/users/5/watchlist",
                r#"{"symbols":["tcs"]}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "PUT",
                "/api/users/5/watchlist",
                r#"{"symbols":["TCS","TCS"]}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "PUT",
                "/api/users/999999/watchlist",
                r#"{"symbols":["TCS"]}"#,
                StatusCode::NOT_FOUND,
            ),
            (
                "PUT",
                "/api/users/-3/watchlist",
                r#"{"symbols":["TCS"]}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "PUT",
                "/api/users/5/profile",
                r#"{"name":"","email":"a@b.co"}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "PUT",
                "/api/users/5/profile",
                r#"{"name":"A","email":"nope"}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "PUT",
                "/api/users/999999/profile",
                r#"{"name":"A","email":"a@b.co"}"#,
                StatusCode::NOT_FOUND,
            ),
            // Another user's address.
            (
                "PUT",
                "/api/users/5/profile",
                r#"{"name":"A","email":"user6@example.com"}"#,
                StatusCode::CONFLICT,
            ),
        ];
        for (method, path, body, want) in cases {
            let (status, json) = send(&router, method, path, body).await;
            assert_eq!(status, want, "{setup:?} {method} {path} {body}: {json}");
            assert!(json["error"].is_string(), "{json}");
        }
        let symbols: Vec<String> = (0..60).map(|i| format!("S{i}")).collect();
        let (status, _) = send(
            &router,
            "PUT",
            "/api/users/5/watchlist",
            &serde_json::json!({ "symbols": symbols }).to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "too many symbols");
        let huge = format!(r#"{{"symbols":["{}"]}}"#, "A".repeat(100_000));
        let (status, json) = send(&router, "PUT", "/api/users/5/watchlist", &huge).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    }
}

#[tokio::test]
async fn a_profile_write_drops_the_users_cached_data_and_nobody_elses() {
    for setup in BOTH {
        let (state, router, _backing) = start(setup, false).await;
        for user in [7, 8] {
            get(&router, &format!("/api/users/{user}/profile")).await;
            get(&router, &format!("/api/users/{user}/portfolio")).await;
        }
        let portfolio_loads = state.portfolios.stats().loader_calls;
        let (status, body) = send(
            &router,
            "PUT",
            "/api/users/7/profile",
            r#"{"name":"Renamed","email":"renamed7@example.com"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{setup:?}: {body}");
        let (_, body) = get(&router, "/api/users/7/profile").await;
        assert_eq!(body["name"], "Renamed", "{setup:?}: delete on write");
        get(&router, "/api/users/7/portfolio").await;
        get(&router, "/api/users/8/portfolio").await;
        assert_eq!(
            state.portfolios.stats().loader_calls,
            portfolio_loads + 1,
            "{setup:?}: user 7's portfolio reloaded (tag), user 8's still cached"
        );
    }
}

#[tokio::test]
async fn price_updates_write_through_and_the_cache_keeps_the_newest() {
    for setup in BOTH {
        let (state, router, _backing) = start(setup, false).await;
        let (status, before) = get(&router, "/api/stocks/RELIANCE/price").await;
        assert_eq!(status, StatusCode::OK, "{setup:?}: {before}");
        let updated = trading::feed::update_price(&state, "RELIANCE", Decimal::new(250_055, 2))
            .await
            .unwrap()
            .unwrap();
        assert!(updated.version > before["version"].as_u64().unwrap());
        let (_, after) = get(&router, "/api/stocks/RELIANCE/price").await;
        assert_eq!(
            after["price"], "2500.55",
            "{setup:?}: the cache holds the written price"
        );
        assert_eq!(
            state.db.price("RELIANCE").await.unwrap().unwrap().price,
            Decimal::new(250_055, 2),
            "database first"
        );
        assert_eq!(
            trading::feed::update_price(&state, "NOPE", Decimal::ONE)
                .await
                .unwrap(),
            None
        );
        let (status, _) = get(&router, "/api/stocks/NOPE/price").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = get(&router, "/api/stocks/bad%20symbol/price").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        if setup == Setup::Production {
            // Racing updates: the cache ends on the database's last version.
            let mut tasks = Vec::new();
            for i in 0..20 {
                let state = state.clone();
                tasks.push(tokio::spawn(async move {
                    trading::feed::update_price(&state, "TCS", Decimal::new(100_000 + i, 2))
                        .await
                        .unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let (_, cached) = get(&router, "/api/stocks/TCS/price").await;
            let stored = state.db.price("TCS").await.unwrap().unwrap();
            assert_eq!(cached["version"].as_u64(), Some(stored.version));
            assert_eq!(
                cached["price"]
                    .as_str()
                    .unwrap()
                    .parse::<Decimal>()
                    .unwrap(),
                stored.price
            );
        }
    }
}
