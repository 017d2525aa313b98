//! Price queries: read on a cache miss, written through by the price feed.

use rust_decimal::Decimal;

use super::dialect::{from_cents, to_cents};
use super::{Db, DbError};
use crate::price::Price;

impl Db {
    /// The last price of `symbol`; `None` if no such instrument.
    pub async fn price(&self, symbol: &str) -> Result<Option<Price>, DbError> {
        self.bounded("price", async {
            // Money: NUMERIC on PostgreSQL, integer cents on SQLite.
            Ok(match self {
                Db::Postgres(pool) => sqlx::query_as::<_, (Decimal, i64)>(
                    "SELECT last_price, version FROM instruments WHERE symbol = $1",
                )
                .bind(symbol)
                .fetch_optional(pool)
                .await?
                .map(|(price, version)| Price {
                    symbol: symbol.to_string(),
                    price,
                    version: version as u64,
                }),
                Db::Sqlite(pool) => sqlx::query_as::<_, (i64, i64)>(
                    "SELECT last_price_cents, version FROM instruments WHERE symbol = $1",
                )
                .bind(symbol)
                .fetch_optional(pool)
                .await?
                .map(|(cents, version)| Price {
                    symbol: symbol.to_string(),
                    price: from_cents(cents),
                    version: version as u64,
                }),
            })
        })
        .await
    }

    /// The last prices of `symbols` (those that exist), in one query.
    pub async fn prices(&self, symbols: &[String]) -> Result<Vec<(String, Price)>, DbError> {
        if symbols.is_empty() {
            return Ok(Vec::new());
        }
        self.bounded("prices", async {
            // Money as NUMERIC or cents, and the list as one array parameter
            // or, SQLite having no arrays, one parameter per symbol.
            let rows: Vec<(String, Decimal, i64)> = match self {
                Db::Postgres(pool) => sqlx::query_as(
                    "SELECT symbol, last_price, version FROM instruments WHERE symbol = ANY($1)",
                )
                .bind(symbols)
                .fetch_all(pool)
                .await?,
                Db::Sqlite(pool) => {
                    let mut q = sqlx::QueryBuilder::new(
                        "SELECT symbol, last_price_cents, version FROM instruments WHERE symbol IN (",
                    );
                    let mut list = q.separated(", ");
                    for s in symbols {
                        list.push_bind(s);
                    }
                    q.push(")");
                    q.build_query_as::<(String, i64, i64)>()
                        .fetch_all(pool)
                        .await?
                        .into_iter()
                        .map(|(s, c, v)| (s, from_cents(c), v))
                        .collect()
                }
            };
            Ok(rows
                .into_iter()
                .map(|(symbol, price, version)| {
                    let p = Price {
                        symbol: symbol.clone(),
                        price,
                        version: version as u64,
                    };
                    (symbol, p)
                })
                .collect())
        })
        .await
    }

    /// Sets the last price of `symbol` and bumps its version; returns the
    /// row as stored, `None` if no such instrument.
    pub async fn update_price(
        &self,
        symbol: &str,
        price: Decimal,
    ) -> Result<Option<Price>, DbError> {
        self.bounded("update_price", async {
        // Money as NUMERIC or cents, and each database's own clock.
        let version: Option<i64> = match self {
            Db::Postgres(pool) => {
                sqlx::query_scalar(
                    "UPDATE instruments SET last_price = $2, version = version + 1, price_updated_at = now()
                      WHERE symbol = $1 RETURNING version",
                )
                .bind(symbol)
                .bind(price)
                .fetch_optional(pool)
                .await?
            }
            Db::Sqlite(pool) => {
                sqlx::query_scalar(
                    "UPDATE instruments SET last_price_cents = $2, version = version + 1,
                            price_updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                      WHERE symbol = $1 RETURNING version",
                )
                .bind(symbol)
                .bind(to_cents(price))
                .fetch_optional(pool)
                .await?
            }
        };
        Ok(version.map(|v| Price {
            symbol: symbol.to_string(),
            price: price.round_dp(2),
            version: v as u64,
        }))
        })
        .await
    }

    /// Every instrument's symbol and price (the price feed's universe).
    pub async fn instruments(&self) -> Result<Vec<(String, Decimal)>, DbError> {
        self.bounded("instruments", async {
            // Money: NUMERIC on PostgreSQL, integer cents on SQLite.
            Ok(match self {
                Db::Postgres(pool) => {
                    sqlx::query_as("SELECT symbol, last_price FROM instruments ORDER BY id")
                        .fetch_all(pool)
                        .await?
                }
                Db::Sqlite(pool) => sqlx::query_as::<_, (String, i64)>(
                    "SELECT symbol, last_price_cents FROM instruments ORDER BY id",
                )
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|(s, c)| (s, from_cents(c)))
                .collect(),
            })
        })
        .await
    }
}
