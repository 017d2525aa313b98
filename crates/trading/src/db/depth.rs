//! Market depth: read on a cache miss, written through by the price feed.

use rust_decimal::Decimal;

use super::dialect::{from_cents, on_db};
use super::{Db, DbError};
use crate::depth::{Book, Depth};

fn decode(
    symbol: &str,
    levels: Option<String>,
    last: Decimal,
    version: i64,
) -> Result<Depth, DbError> {
    let book = match levels {
        Some(json) => serde_json::from_str::<Book>(&json).map_err(|e| {
            DbError::Setup(format!("market_depth of {symbol} is not valid JSON: {e}"))
        })?,
        // The feed has not reached this instrument yet: a book around its
        // last price, version 0 (the first feed update wins over it).
        None => Book::around(last, None),
    };
    Ok(Depth {
        symbol: symbol.to_string(),
        book,
        version: version as u64,
    })
}

impl Db {
    /// The depth of `symbol`; `None` if no such instrument.
    pub async fn depth(&self, symbol: &str) -> Result<Option<Depth>, DbError> {
        self.bounded("depth", async {
            // Money: NUMERIC on PostgreSQL, integer cents on SQLite.
            let row: Option<(Option<String>, Decimal, i64)> = match self {
                Db::Postgres(pool) => {
                    sqlx::query_as(
                        "SELECT d.levels, i.last_price, COALESCE(d.version, 0)
                       FROM instruments i LEFT JOIN market_depth d ON d.instrument_id = i.id
                      WHERE i.symbol = $1",
                    )
                    .bind(symbol)
                    .fetch_optional(pool)
                    .await?
                }
                Db::Sqlite(pool) => sqlx::query_as::<_, (Option<String>, i64, i64)>(
                    "SELECT d.levels, i.last_price_cents, COALESCE(d.version, 0)
                       FROM instruments i LEFT JOIN market_depth d ON d.instrument_id = i.id
                      WHERE i.symbol = $1",
                )
                .bind(symbol)
                .fetch_optional(pool)
                .await?
                .map(|(l, c, v)| (l, from_cents(c), v)),
            };
            row.map(|(levels, last, version)| decode(symbol, levels, last, version))
                .transpose()
        })
        .await
    }

    /// Stores a new book for `symbol` and bumps its version; `None` if no
    /// such instrument.
    pub async fn update_depth(&self, symbol: &str, book: &Book) -> Result<Option<Depth>, DbError> {
        let json = serde_json::to_string(book)
            .map_err(|e| DbError::Setup(format!("encoding a book: {e}")))?;
        self.bounded("update_depth", async {
            // The WHERE is also what lets SQLite parse an upsert from a
            // SELECT: without one, its ON CONFLICT would read as a join's ON.
            let version: Option<i64> = on_db!(self, pool => {
                sqlx::query_scalar(
                    "INSERT INTO market_depth (instrument_id, levels, version)
                     SELECT id, $2, 1 FROM instruments WHERE symbol = $1
                     ON CONFLICT (instrument_id) DO UPDATE
                        SET levels = excluded.levels, version = market_depth.version + 1
                     RETURNING version",
                )
                .bind(symbol)
                .bind(&json)
                .fetch_optional(pool)
                .await?
            });
            Ok(version.map(|v| Depth {
                symbol: symbol.to_string(),
                book: book.clone(),
                version: v as u64,
            }))
        })
        .await
    }
}
