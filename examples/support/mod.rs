//! Shared by the examples: a small real database (SQLite in memory) and a
//! cache builder that adds Redis when `REDIS_URL` is set.

#![allow(dead_code)]

use larder::{Cache, CacheBuilder};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

/// What the article caches first: a user's portfolio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Portfolio {
    pub user_id: i64,
    pub name: String,
    /// Money as an exact decimal string, never a float.
    pub total_value: String,
}

/// An in-memory SQLite database with `users` rows 1..=n.
pub async fn demo_db(n: i64) -> anyhow::Result<SqlitePool> {
    // One connection: every connection to `sqlite::memory:` is its own database.
    let db = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await?;
    sqlx::query(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, total_cents INTEGER NOT NULL,
                             version INTEGER NOT NULL DEFAULT 0)",
    )
        .execute(&db)
        .await?;
    for id in 1..=n {
        sqlx::query("INSERT INTO users (id, name, total_cents) VALUES (?1, ?2, ?3)")
            .bind(id)
            .bind(format!("user {id}"))
            .bind(id * 123_456)
            .execute(&db)
            .await?;
    }
    Ok(db)
}

/// `SELECT` one portfolio; `None` if the user does not exist.
pub async fn load_portfolio(
    db: SqlitePool,
    user_id: i64,
) -> Result<Option<Portfolio>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id AS user_id, name,
                printf('%d.%02d', total_cents / 100, total_cents % 100) AS total_value
           FROM users WHERE id = ?1",
    )
    .bind(user_id)
    .fetch_optional(&db)
    .await
}

/// A cache builder in a namespace of its own, with Redis if `REDIS_URL` is set.
pub fn builder(namespace: &str) -> CacheBuilder {
    let redis = std::env::var("REDIS_URL").ok();
    match &redis {
        Some(_) => println!("(L1 + Redis from REDIS_URL)"),
        None => {
            println!("(in-process tier only; set REDIS_URL=redis://127.0.0.1:6379 to add Redis)")
        }
    }
    Cache::builder()
        .namespace(format!("example-{namespace}-{}", std::process::id()))
        .maybe_redis_url(redis)
}

/// `SELECT` many portfolios in one query.
pub async fn load_portfolios(
    db: SqlitePool,
    user_ids: &[i64],
) -> Result<std::collections::HashMap<i64, Portfolio>, sqlx::Error> {
    let ids = format!(
        "[{}]",
        user_ids
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let rows: Vec<Portfolio> = sqlx::query_as(
        "SELECT id AS user_id, name,
                printf('%d.%02d', total_cents / 100, total_cents % 100) AS total_value
           FROM users WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(ids)
    .fetch_all(&db)
    .await?;
    Ok(rows.into_iter().map(|p| (p.user_id, p)).collect())
}
