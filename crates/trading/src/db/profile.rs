//! Profile queries.

use super::{Db, DbError};
use crate::profile::{Profile, ProfileUpdate};

impl Db {
    /// A user's profile; `None` if the user does not exist.
    pub async fn profile(&self, user_id: i64) -> Result<Option<Profile>, DbError> {
        self.bounded("profile", async {
            let row: Option<(String, String)> = match self {
                Db::Postgres(pool) => {
                    sqlx::query_as("SELECT name, email FROM users WHERE id = $1")
                        .bind(user_id)
                        .fetch_optional(pool)
                        .await?
                }
                Db::Sqlite(pool) => {
                    sqlx::query_as("SELECT name, email FROM users WHERE id = ?1")
                        .bind(user_id)
                        .fetch_optional(pool)
                        .await?
                }
            };
            Ok(row.map(|(name, email)| Profile {
                user_id,
                name,
                email,
            }))
        })
        .await
    }

    /// Updates a profile; `None` if the user does not exist.
    pub async fn update_profile(
        &self,
        user_id: i64,
        update: &ProfileUpdate,
    ) -> Result<Option<Profile>, DbError> {
        self.bounded("update_profile", async {
            let (name, email) = (update.name.trim(), update.email.trim());
            let done = match self {
                Db::Postgres(pool) => {
                    sqlx::query("UPDATE users SET name = $2, email = $3 WHERE id = $1")
                        .bind(user_id)
                        .bind(name)
                        .bind(email)
                        .execute(pool)
                        .await?
                        .rows_affected()
                }
                Db::Sqlite(pool) => {
                    sqlx::query("UPDATE users SET name = ?2, email = ?3 WHERE id = ?1")
                        .bind(user_id)
                        .bind(name)
                        .bind(email)
                        .execute(pool)
                        .await?
                        .rows_affected()
                }
            };
            Ok((done == 1).then(|| Profile {
                user_id,
                name: name.to_string(),
                email: email.to_string(),
            }))
        })
        .await
    }
}
