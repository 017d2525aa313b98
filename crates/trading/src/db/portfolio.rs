//! The portfolio query.

use rust_decimal::Decimal;

use super::dialect::from_cents;
use super::{Db, DbError};
use crate::portfolio::{Holding, Portfolio};

/// One row of the portfolio query: symbol, qty, last price, market value and
/// the user's total, in the backend's money type (NUMERIC, or cents).
type PortfolioRow<M> = (Option<String>, Option<i64>, Option<M>, Option<M>, Option<M>);

impl Db {
    /// A user's holdings with each instrument's last price; market values and
    /// the total computed by the database. `None` if the user does not exist.
    pub async fn portfolio(&self, user_id: i64) -> Result<Option<Portfolio>, DbError> {
        self.bounded("portfolio", async {
            // One row per holding, with the total over all rows alongside. A user
            // without holdings gives one row of NULLs; an unknown user none.
            // Money: NUMERIC on PostgreSQL, integer cents on SQLite.
            let rows: Vec<PortfolioRow<Decimal>> = match self {
                Db::Postgres(pool) => {
                    sqlx::query_as(
                        "SELECT i.symbol, h.qty, i.last_price,
                            h.qty * i.last_price AS market_value,
                            SUM(h.qty * i.last_price) OVER () AS total
                       FROM users u
                       LEFT JOIN holdings h ON h.user_id = u.id
                       LEFT JOIN instruments i ON i.id = h.instrument_id
                      WHERE u.id = $1
                      ORDER BY i.symbol",
                    )
                    .bind(user_id)
                    .fetch_all(pool)
                    .await?
                }
                Db::Sqlite(pool) => {
                    let rows: Vec<PortfolioRow<i64>> = sqlx::query_as(
                        "SELECT i.symbol, h.qty, i.last_price_cents,
                            h.qty * i.last_price_cents AS market_value_cents,
                            SUM(h.qty * i.last_price_cents) OVER () AS total_cents
                       FROM users u
                       LEFT JOIN holdings h ON h.user_id = u.id
                       LEFT JOIN instruments i ON i.id = h.instrument_id
                      WHERE u.id = $1
                      ORDER BY i.symbol",
                    )
                    .bind(user_id)
                    .fetch_all(pool)
                    .await?;
                    let cents = |c: Option<i64>| c.map(from_cents);
                    rows.into_iter()
                        .map(|(s, q, p, m, t)| (s, q, cents(p), cents(m), cents(t)))
                        .collect()
                }
            };
            if rows.is_empty() {
                return Ok(None);
            }
            let total = rows.first().and_then(|r| r.4).unwrap_or(Decimal::new(0, 2));
            let holdings = rows
                .into_iter()
                .filter_map(|(symbol, qty, last_price, market_value, _)| {
                    Some(Holding {
                        symbol: symbol?,
                        qty: qty?,
                        last_price: last_price?,
                        market_value: market_value?,
                    })
                })
                .collect();
            Ok(Some(Portfolio {
                user_id,
                holdings,
                total_market_value: total,
            }))
        })
        .await
    }
}
