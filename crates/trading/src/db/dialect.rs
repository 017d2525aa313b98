//! Where PostgreSQL and SQLite differ, said once, so each query method can be
//! read once and only the real differences show up as two branches.
//!
//! What is the same on both, and therefore written once:
//!
//! - Placeholders. Every query uses `$1`, `$2`, ...: SQLx's SQLite driver
//!   binds a `$N` parameter to the N-th bound value by its number (see
//!   `SqliteArguments::bind` in sqlx-sqlite, and the docs of `sqlx::query`),
//!   not by order of first appearance as plain SQLite would, so
//!   `SET name = $2 ... WHERE id = $1` works on both. The test below holds
//!   SQLx to that.
//! - Upserts: `ON CONFLICT (...) DO UPDATE SET ... excluded.col` (the table
//!   name `excluded` is case-insensitive on both).
//!
//! What differs, and is therefore a `match` with a one-line reason:
//!
//! - Money. PostgreSQL stores NUMERIC, read as [`Decimal`]; sqlx-sqlite
//!   cannot encode or decode `Decimal`, so SQLite stores integer cents in
//!   `*_cents` columns, converted with [`from_cents`] and [`to_cents`].
//! - Row locks. PostgreSQL orders concurrent orders with `FOR UPDATE`;
//!   SQLite has no row locks and takes the one write lock up front with
//!   `BEGIN IMMEDIATE`.
//! - Transaction ids. `RETURNING txid_current()` exists on PostgreSQL only
//!   (for `Cache::skip_echo`); SQLite has no change stream to echo.
//! - Arrays. PostgreSQL binds a list as one array parameter (`ANY($1)`,
//!   `UNNEST`); SQLite has no arrays, so lists become `?, ?, ...` through a
//!   `QueryBuilder`.
//! - Timestamps: `now()` against `strftime('%Y-%m-%dT%H:%M:%fZ', 'now')`.

use rust_decimal::Decimal;

/// Runs the same body against whichever pool `db` (a `&Db`) holds, with the
/// pool bound to the caller's name `pool`:
///
/// ```ignore
/// let exists: bool = on_db!(self, pool => {
///     sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users)").fetch_one(pool).await?
/// });
/// ```
///
/// The body is expanded once per variant, so SQLx's generic types resolve
/// for each database: everything bound must encode for both (integers,
/// strings, `bool`, `Option`s of those; not `Decimal`). A `?` or `return` in
/// the body acts on the enclosing function or `async` block, as in a `match`.
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Postgres($pool) => $body,
            $crate::db::Db::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use on_db;

/// An amount of money as SQLite stores it (integer cents), as a [`Decimal`]
/// with two places, like PostgreSQL's `NUMERIC(18, 2)`.
pub(crate) fn from_cents(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

/// An amount of money in integer cents, for SQLite, rounded to the cent;
/// amounts beyond `i64` cents are clamped to `i64::MAX`.
pub(crate) fn to_cents(amount: Decimal) -> i64 {
    (amount * Decimal::from(100))
        .round()
        .try_into()
        .unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use sqlx::sqlite::SqlitePool;

    use super::*;
    use crate::db::Db;

    /// Every query relies on this: `$N` is the N-th bound value on SQLite
    /// too, whatever order the placeholders appear in and however often.
    #[tokio::test]
    async fn sqlite_binds_dollar_placeholders_by_number() {
        let db = Db::Sqlite(SqlitePool::connect("sqlite::memory:").await.unwrap());
        let row: (String, String, String) = on_db!(&db, pool => {
            sqlx::query_as("SELECT $2, $1, $2 || $3")
                .bind("one")
                .bind("two")
                .bind("three")
                .fetch_one(pool)
                .await
                .unwrap()
        });
        let expected = ("two".to_string(), "one".to_string(), "twothree".to_string());
        assert_eq!(row, expected);
    }

    #[test]
    fn cents_round_trip() {
        assert_eq!(from_cents(12_345), Decimal::new(12_345, 2));
        assert_eq!(to_cents(Decimal::new(12_345, 2)), 12_345);
        assert_eq!(to_cents(Decimal::new(123_456, 4)), 1_235);
        assert_eq!(to_cents(Decimal::from(i64::MAX)), i64::MAX);
    }
}
