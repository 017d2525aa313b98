//! Invalidation from PostgreSQL's change stream: a row changed by plain SQL
//! (as from `psql`, a migration, another program), never through the cache,
//! still reaches the cache at once.
//!
//!     DATABASE_URL=postgres://postgres@127.0.0.1/postgres \
//!       cargo run -p larder-examples --example change_stream
//!
//! Needs PostgreSQL with `wal_level = logical` (the listener says so if
//! not). Works in a schema of its own and drops it, its publication and
//! its replication slot at the end.

mod support;

use std::time::Duration;

use larder::Policy;
use larder::cdc::{ChangeListener, Mapping, TableRule};
use sqlx::PgPool;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").map_err(|_| {
        anyhow::anyhow!("set DATABASE_URL=postgres://... (PostgreSQL with wal_level = logical)")
    })?;
    let db = PgPool::connect(&url).await?;
    let tag = format!("{:08x}", std::process::id());
    let schema = format!("larder_example_{tag}");
    let slot = format!("larder_example_{tag}");
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.users (id BIGINT PRIMARY KEY, name TEXT NOT NULL)"),
        format!("INSERT INTO {schema}.users VALUES (7, 'Ada')"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&db).await?;
    }
    let outcome = demo(&url, &db, &schema, &slot).await;
    // A slot left behind keeps WAL on the server for ever: always drop it.
    for sql in [
        format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ),
        format!("DROP PUBLICATION IF EXISTS {slot}"),
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&db).await?;
    }
    outcome
}

async fn demo(url: &str, db: &PgPool, schema: &str, slot: &str) -> anyhow::Result<()> {
    let cache = support::builder("change-stream")
        .family(Policy::new("profile", "user:{user_id}:profile").ttl(Duration::from_secs(3600)))
        .build()
        .await?;
    let profiles = cache.family::<i64, String>("profile")?;
    let read = |id: i64| {
        let (db, profiles) = (db.clone(), profiles.clone());
        let query = format!("SELECT name FROM {schema}.users WHERE id = $1");
        async move {
            profiles
                .get_or_load(&id, move || async move {
                    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(query))
                        .bind(id)
                        .fetch_optional(&db)
                        .await
                })
                .await
        }
    };

    // The table's changes invalidate the profile key filled from `id`.
    let listener = ChangeListener::builder(&cache, url)
        .slot(slot)
        .publication(slot)
        .mapping(Mapping::new().table(
            format!("{schema}.users"),
            TableRule::new().key("user:{id}:profile"),
        ))
        .start()
        .await?;
    listener.caught_up(Duration::from_secs(10)).await;

    println!("cached:        {:?}", read(7).await?); // loaded, now cached for an hour

    // Someone else changes the row: no invalidate() anywhere.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.users SET name = 'Ada Lovelace' WHERE id = 7"
    )))
    .execute(db)
    .await?;

    // Wait until the stream has brought every commit so far to the cache.
    let lsn: String =
        sqlx::query_scalar("SELECT pg_logical_emit_message(false, 'example', '')::text")
            .fetch_one(db)
            .await?;
    anyhow::ensure!(
        listener.wait_applied(&lsn, Duration::from_secs(5)).await?,
        "the change did not arrive"
    );
    let after = read(7).await?;
    println!("after the SQL: {after:?}  ({:?})", listener.stats());
    anyhow::ensure!(after.as_deref().map(String::as_str) == Some("Ada Lovelace"));
    listener.stop().await;
    Ok(())
}
