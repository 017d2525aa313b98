//! The service with `LARDER_CDC` on: rows changed behind its back (as with
//! `psql`) show on the next read in every instance, also after a restart;
//! its own writes' echoes are recognised. PostgreSQL + Redis (one server or
//! the cluster of the run).

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use sqlx::PgPool;
use support::{Backing, Setup, exec, from_args, get, send};
use trading::app::AppState;

fn pool(state: &AppState) -> PgPool {
    match &state.db {
        trading::db::Db::Postgres(pool) => pool.clone(),
        trading::db::Db::Sqlite(_) => panic!("these tests run on PostgreSQL"),
    }
}

/// Waits until the instance holding the slot has applied every
/// transaction committed so far.
async fn applied(states: &[&AppState]) {
    let mark: String =
        sqlx::query_scalar("SELECT pg_logical_emit_message(false, 'test', '')::text")
            .fetch_one(&pool(states[0]))
            .await
            .unwrap();
    let consumer = states
        .iter()
        .filter_map(|s| s.cdc.as_ref())
        .find(|l| l.stats().consumer)
        .expect("one instance holds the slot");
    assert!(
        consumer
            .wait_applied(&mark, Duration::from_secs(1))
            .await
            .unwrap(),
        "applied within a second of the commit"
    );
    for s in states {
        assert!(
            s.cache
                .sync_invalidations(Duration::from_secs(5))
                .await
                .unwrap()
        );
    }
}

async fn name(router: &axum::Router, id: i64) -> String {
    let (status, json) = get(router, &format!("/api/users/{id}/profile")).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    json["name"].as_str().unwrap().to_string()
}

async fn holdings(router: &axum::Router, id: i64) -> usize {
    let (status, json) = get(router, &format!("/api/users/{id}/portfolio")).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    json["holdings"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_changed_behind_the_services_back_show_in_every_instance() {
    let (mut args, _backing) = support::settings(Setup::Production, false).await;
    let guard = testkit::SlotGuard::random();
    let slot = guard.name().to_string();
    args.cdc.enabled = true;
    args.cdc.slot = Some(slot.clone());
    let (a, ra) = from_args(&args).await;
    let (b, rb) = from_args(&args).await;
    assert!(a.cdc.is_some() && b.cdc.is_some());
    let consumers = [&a, &b]
        .iter()
        .filter(|s| s.cdc.as_ref().unwrap().stats().consumer)
        .count();
    assert!(consumers <= 1, "one instance reads the slot");

    let before = holdings(&ra, 1).await;
    assert_eq!(holdings(&rb, 1).await, before);
    let original = name(&ra, 1).await;
    assert_eq!(name(&rb, 1).await, original);
    let (status, _) = get(&rb, "/api/users/2/watchlist").await;
    assert!(status == StatusCode::OK || status == StatusCode::NOT_FOUND);

    // psql, not the service.
    exec(
        &a,
        "UPDATE users SET name = 'edited in psql' WHERE id = 1",
        "",
    )
    .await;
    exec(
        &a,
        "INSERT INTO holdings (user_id, instrument_id, qty)
         SELECT 1, id, 7 FROM instruments
          WHERE id NOT IN (SELECT instrument_id FROM holdings WHERE user_id = 1)
          ORDER BY id LIMIT 1",
        "",
    )
    .await;
    exec(
        &a,
        "INSERT INTO watchlists (user_id, symbols, version) VALUES (2, '[\"TCS\"]', 1)
         ON CONFLICT (user_id) DO UPDATE SET symbols = '[\"TCS\"]', version = watchlists.version + 1",
        "",
    )
    .await;
    applied(&[&a, &b]).await;
    for router in [&ra, &rb] {
        assert_eq!(name(router, 1).await, "edited in psql");
        assert_eq!(holdings(router, 1).await, before + 1);
        let (status, json) = get(router, "/api/users/2/watchlist").await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(json["symbols"][0], "TCS", "{json}");
    }

    // The service's own write: its echo is skipped (no second round of
    // invalidations).
    let echoes = |s: &AppState| s.cdc.as_ref().unwrap().stats().echoes;
    let echoes_before = echoes(&a) + echoes(&b);
    let (status, json) = send(
        &ra,
        "PUT",
        "/api/users/3/profile",
        r#"{"name":"via the api","email":"three@example.com"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    applied(&[&a, &b]).await;
    assert_eq!(
        echoes(&a) + echoes(&b),
        echoes_before + 1,
        "the echo was recognised"
    );
    assert_eq!(name(&rb, 3).await, "via the api");
    drop((a, ra, b, rb));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_the_service_was_down_is_seen_by_the_first_read() {
    let (mut args, _backing) = support::settings(Setup::Production, false).await;
    let guard = testkit::SlotGuard::random();
    let slot = guard.name().to_string();
    args.cdc.enabled = true;
    args.cdc.slot = Some(slot.clone());
    let (a, ra) = from_args(&args).await;
    let original = name(&ra, 5).await;
    let db = pool(&a);
    drop((a, ra));
    // The instance is gone once PostgreSQL sees its slot released.
    let released = async {
        loop {
            let active: bool =
                sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                    .bind(&slot)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            if !active {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), released)
        .await
        .expect("the stopped instance let go of the slot");

    sqlx::query("UPDATE users SET name = 'changed while down' WHERE id = 5")
        .execute(&db)
        .await
        .unwrap();
    assert_ne!(original, "changed while down");

    // Start again: Redis still holds the old profile until the slot says.
    let (a, ra) = from_args(&args).await;
    assert!(
        a.cdc.as_ref().unwrap().stats().caught_up,
        "the start waited for the catch-up"
    );
    assert_eq!(name(&ra, 5).await, "changed while down");
    drop((a, ra));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_on_sqlite_is_a_clear_error() {
    let (mut args, backing) = support::settings(Setup::Embedded, false).await;
    args.cdc.enabled = true;
    let err = match trading::app::prepare(&args).await {
        Ok(_) => panic!("LARDER_CDC on SQLite must not start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("needs PostgreSQL"), "{err}");
    assert!(matches!(backing, Backing::Sqlite(_)));
}
