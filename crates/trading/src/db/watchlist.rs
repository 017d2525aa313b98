//! Watchlist queries, and the write-behind persister's batch upsert.

use larder::write_behind::Write;

use super::dialect::on_db;
use super::{Db, DbError};
use crate::watchlist::Watchlist;

impl Db {
    /// A user's watchlist: empty if they never saved one, `None` if the user
    /// does not exist.
    pub async fn watchlist(&self, user_id: i64) -> Result<Option<Watchlist>, DbError> {
        self.bounded("watchlist", async {
            // One query: the user, and their watchlist if any.
            let row: Option<(Option<String>,)> = on_db!(self, pool => {
                sqlx::query_as(
                    "SELECT w.symbols FROM users u LEFT JOIN watchlists w ON w.user_id = u.id
                      WHERE u.id = $1",
                )
                .bind(user_id)
                .fetch_optional(pool)
                .await?
            });
            let Some((symbols,)) = row else {
                return Ok(None);
            };
            let symbols = match symbols {
                Some(json) => serde_json::from_str(&json)
                    .map_err(|e| DbError::Setup(format!("watchlist {user_id}: {e}")))?,
                None => Vec::new(),
            };
            Ok(Some(Watchlist { user_id, symbols }))
        })
        .await
    }

    /// Persists a batch of queued watchlist writes in one statement. A row
    /// only changes if the write is newer than what it holds, so a write
    /// delivered twice, or after a newer one, changes nothing.
    pub async fn upsert_watchlists(&self, batch: &[Write<i64, Watchlist>]) -> Result<(), DbError> {
        self.bounded("upsert_watchlists", async {
        let users: Vec<i64> = batch.iter().map(|w| w.key).collect();
        let symbols: Vec<String> = batch
            .iter()
            .map(|w| serde_json::to_string(&w.value.symbols).unwrap_or_else(|_| "[]".into()))
            .collect();
        // Versions are below 2^63 (milliseconds << 20 until the year 2248).
        let versions: Vec<i64> = batch
            .iter()
            .map(|w| w.version.min(i64::MAX as u64) as i64)
            .collect();
        // The batch as three array parameters, or, SQLite having no arrays,
        // as multi-row VALUES; and each database's own clock.
        match self {
            Db::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO watchlists (user_id, symbols, version)
                     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[])
                     ON CONFLICT (user_id) DO UPDATE
                        SET symbols = EXCLUDED.symbols, version = EXCLUDED.version, updated_at = now()
                      WHERE watchlists.version < EXCLUDED.version",
                )
                .bind(&users)
                .bind(&symbols)
                .bind(&versions)
                .execute(pool)
                .await?;
            }
            Db::Sqlite(pool) => {
                let mut q =
                    sqlx::QueryBuilder::new("INSERT INTO watchlists (user_id, symbols, version) ");
                q.push_values(
                    users.iter().zip(&symbols).zip(&versions),
                    |mut b, ((u, s), v)| {
                        b.push_bind(*u).push_bind(s).push_bind(*v);
                    },
                );
                q.push(
                    " ON CONFLICT (user_id) DO UPDATE
                        SET symbols = excluded.symbols, version = excluded.version,
                            updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                      WHERE watchlists.version < excluded.version",
                );
                q.build().execute(pool).await?;
            }
        }
        Ok(())
        })
        .await
    }
}
