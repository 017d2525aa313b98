//! Profile queries.

use super::dialect::on_db;
use super::{Db, DbError};
use crate::profile::{Profile, ProfileUpdate};

impl Db {
    /// A user's profile; `None` if the user does not exist.
    pub async fn profile(&self, user_id: i64) -> Result<Option<Profile>, DbError> {
        self.bounded("profile", async {
            let row: Option<(String, String)> = on_db!(self, pool => {
                sqlx::query_as("SELECT name, email FROM users WHERE id = $1")
                    .bind(user_id)
                    .fetch_optional(pool)
                    .await?
            });
            Ok(row.map(|(name, email)| Profile {
                user_id,
                name,
                email,
            }))
        })
        .await
    }

    /// Updates a profile; `None` if the user does not exist. With it, the
    /// database transaction id on PostgreSQL (for `Cache::skip_echo`).
    pub async fn update_profile(
        &self,
        user_id: i64,
        update: &ProfileUpdate,
    ) -> Result<Option<(Profile, Option<u64>)>, DbError> {
        self.bounded("update_profile", async {
            let (name, email) = (update.name.trim(), update.email.trim());
            // txid_current() is PostgreSQL's; SQLite has no change stream to
            // skip, so it only says whether the row was there.
            let done: Option<Option<u64>> = match self {
                Db::Postgres(pool) => sqlx::query_scalar::<_, i64>(
                    "UPDATE users SET name = $2, email = $3 WHERE id = $1 RETURNING txid_current()",
                )
                .bind(user_id)
                .bind(name)
                .bind(email)
                .fetch_optional(pool)
                .await?
                .map(|xid| Some(xid as u64)),
                Db::Sqlite(pool) => {
                    let n = sqlx::query("UPDATE users SET name = $2, email = $3 WHERE id = $1")
                        .bind(user_id)
                        .bind(name)
                        .bind(email)
                        .execute(pool)
                        .await?
                        .rows_affected();
                    (n == 1).then_some(None)
                }
            };
            Ok(done.map(|xid| {
                (
                    Profile {
                        user_id,
                        name: name.to_string(),
                        email: email.to_string(),
                    },
                    xid,
                )
            }))
        })
        .await
    }
}
