//! Logins, sessions, balances, trades and order execution. Nothing here is
//! cached except sessions (written through by the HTTP layer): balances and
//! trades are read from the database on every request, as the article says.

use rust_decimal::Decimal;

use super::dialect::{from_cents, on_db};
use super::{Db, DbError};
use crate::order::{Receipt, Side, Trade, rfc3339};
use crate::session::Session;

/// What an order came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderOutcome {
    /// Executed and committed, in the database transaction `xid`
    /// (PostgreSQL's `txid_current()`; `None` on SQLite): what
    /// `Cache::skip_echo` is told once the order's invalidations are made.
    Executed(Receipt, Option<u64>),
    /// No instrument with that symbol.
    UnknownSymbol,
    /// A buy costing more than the balance.
    InsufficientFunds,
    /// A sell of more shares than held.
    InsufficientHoldings,
}

/// One row of the trades query: id, symbol, side, qty, price, amount and
/// execution time, in the backend's money type (NUMERIC, or cents).
type TradeRow<M> = (i64, String, String, i64, M, M, i64);

impl Db {
    /// The user id and stored password hash of the user with `email`.
    pub async fn login(&self, email: &str) -> Result<Option<(i64, Option<String>)>, DbError> {
        self.bounded("login", async {
            Ok(on_db!(self, pool => {
                sqlx::query_as("SELECT id, password_hash FROM users WHERE email = $1")
                    .bind(email)
                    .fetch_optional(pool)
                    .await?
            }))
        })
        .await
    }

    /// Gives every user without a password the demo password's hash (seeded
    /// users). Returns how many rows changed.
    pub async fn set_missing_passwords(&self, phc: &str) -> Result<u64, DbError> {
        Ok(on_db!(self, pool => {
            sqlx::query("UPDATE users SET password_hash = $1 WHERE password_hash IS NULL")
                .bind(phc)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// Whether some user has no password yet.
    pub async fn has_missing_passwords(&self) -> Result<bool, DbError> {
        Ok(on_db!(self, pool => {
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE password_hash IS NULL)")
                .fetch_one(pool)
                .await?
        }))
    }

    /// Stores a new session.
    pub async fn create_session(&self, token_hash: &str, s: &Session) -> Result<(), DbError> {
        self.bounded("create_session", async {
            on_db!(self, pool => {
                sqlx::query(
                    "INSERT INTO sessions (token_hash, user_id, expires_at_ms) VALUES ($1, $2, $3)",
                )
                .bind(token_hash)
                .bind(s.user_id)
                .bind(s.expires_at_ms as i64)
                .execute(pool)
                .await?;
            });
            Ok(())
        })
        .await
    }

    /// The session with this token hash, if it exists and has not expired.
    pub async fn session(&self, token_hash: &str, now_ms: u64) -> Result<Option<Session>, DbError> {
        self.bounded("session", async {
            let row: Option<(i64, i64)> = on_db!(self, pool => {
                sqlx::query_as(
                    "SELECT user_id, expires_at_ms FROM sessions
                      WHERE token_hash = $1 AND expires_at_ms > $2",
                )
                .bind(token_hash)
                .bind(now_ms as i64)
                .fetch_optional(pool)
                .await?
            });
            Ok(row.map(|(user_id, expires)| Session {
                user_id,
                expires_at_ms: expires as u64,
            }))
        })
        .await
    }

    /// Pushes a live session's expiry forward (never backward); `None` if it
    /// is gone (logged out or expired).
    pub async fn extend_session(
        &self,
        token_hash: &str,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<Option<Session>, DbError> {
        self.bounded("extend_session", async {
            let row: Option<(i64, i64)> = on_db!(self, pool => {
                sqlx::query_as(
                    "UPDATE sessions SET expires_at_ms = CASE WHEN expires_at_ms > $2 THEN expires_at_ms ELSE $2 END
                      WHERE token_hash = $1 AND expires_at_ms > $3
                  RETURNING user_id, expires_at_ms",
                )
                .bind(token_hash)
                .bind(expires_at_ms as i64)
                .bind(now_ms as i64)
                .fetch_optional(pool)
                .await?
            });
            Ok(row.map(|(user_id, expires)| Session {
                user_id,
                expires_at_ms: expires as u64,
            }))
        })
        .await
    }

    /// Ends a session (logout). Expired rows are swept on the way.
    pub async fn delete_session(&self, token_hash: &str, now_ms: u64) -> Result<(), DbError> {
        self.bounded("delete_session", async {
            on_db!(self, pool => {
                sqlx::query("DELETE FROM sessions WHERE token_hash = $1 OR expires_at_ms <= $2")
                    .bind(token_hash)
                    .bind(now_ms as i64)
                    .execute(pool)
                    .await?;
            });
            Ok(())
        })
        .await
    }

    /// Deletes expired sessions; returns how many.
    pub async fn sweep_sessions(&self, now_ms: u64) -> Result<u64, DbError> {
        self.bounded("sweep_sessions", async {
            Ok(on_db!(self, pool => {
                sqlx::query("DELETE FROM sessions WHERE expires_at_ms <= $1")
                    .bind(now_ms as i64)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }))
        })
        .await
    }

    /// The user's cash balance; `None` if no such user. Never cached.
    pub async fn balance(&self, user_id: i64) -> Result<Option<Decimal>, DbError> {
        self.bounded("balance", async {
            // Money: NUMERIC on PostgreSQL, integer cents on SQLite.
            Ok(match self {
                Db::Postgres(pool) => {
                    sqlx::query_scalar("SELECT balance FROM users WHERE id = $1")
                        .bind(user_id)
                        .fetch_optional(pool)
                        .await?
                }
                Db::Sqlite(pool) => {
                    sqlx::query_scalar::<_, i64>("SELECT balance_cents FROM users WHERE id = $1")
                        .bind(user_id)
                        .fetch_optional(pool)
                        .await?
                        .map(from_cents)
                }
            })
        })
        .await
    }

    /// The user's latest trades, newest first. Never cached.
    pub async fn trades(&self, user_id: i64, limit: i64) -> Result<Vec<Trade>, DbError> {
        self.bounded("trades", async {
            // Money: NUMERIC on PostgreSQL, integer cents on SQLite.
            let rows: Vec<TradeRow<Decimal>> = match self {
                Db::Postgres(pool) => {
                    sqlx::query_as(
                        "SELECT t.id, i.symbol, t.side, t.qty, t.price, t.amount, t.executed_at_ms
                           FROM trades t JOIN instruments i ON i.id = t.instrument_id
                          WHERE t.user_id = $1 ORDER BY t.id DESC LIMIT $2",
                    )
                    .bind(user_id)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
                }
                Db::Sqlite(pool) => sqlx::query_as::<_, TradeRow<i64>>(
                    "SELECT t.id, i.symbol, t.side, t.qty, t.price_cents, t.amount_cents, t.executed_at_ms
                       FROM trades t JOIN instruments i ON i.id = t.instrument_id
                      WHERE t.user_id = $1 ORDER BY t.id DESC LIMIT $2",
                )
                .bind(user_id)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|(id, symbol, s, qty, price, amount, at)| {
                    (id, symbol, s, qty, from_cents(price), from_cents(amount), at)
                })
                .collect(),
            };
            let trades = rows
                .into_iter()
                .map(|(trade_id, symbol, s, qty, price, amount, at)| {
                    Ok(Trade {
                        trade_id,
                        symbol,
                        side: side(s)?,
                        qty,
                        price,
                        amount,
                        executed_at: rfc3339(at),
                    })
                })
                .collect::<Result<_, sqlx::Error>>()?;
            Ok(trades)
        })
        .await
    }

    /// Executes a market order at the instrument's last price, in one
    /// transaction: the balance and the holding change together with the
    /// trade row, or not at all.
    ///
    /// Overdraft is impossible under concurrency without an explicit lock:
    /// the balance (or holding) is changed by one conditional UPDATE
    /// (`... WHERE balance >= amount`), which PostgreSQL evaluates against
    /// the latest committed row after waiting for any concurrent writer, and
    /// which SQLite runs inside `BEGIN IMMEDIATE` (one writer at a time).
    pub async fn execute_order(
        &self,
        user_id: i64,
        symbol: &str,
        side: Side,
        qty: i64,
        now_ms: u64,
    ) -> Result<OrderOutcome, DbError> {
        // Two branches, step for step the same, because three things differ:
        // money (NUMERIC against integer cents), how concurrent orders are
        // ordered (row locks against SQLite's single writer), and the
        // transaction id (PostgreSQL only).
        self.bounded("execute_order", async {
            match self {
                Db::Postgres(pool) => {
                    let mut tx = pool.begin().await?;
                    let Some((instrument, price)) = sqlx::query_as::<_, (i32, Decimal)>(
                        "SELECT id, last_price FROM instruments WHERE symbol = $1",
                    )
                    .bind(symbol)
                    .fetch_optional(&mut *tx)
                    .await?
                    else {
                        return Ok(OrderOutcome::UnknownSymbol);
                    };
                    // One order per user at a time: every order locks the
                    // user's row first, so a buy (users, then holdings) and
                    // a sell (holdings, then users) cannot deadlock.
                    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                    let amount = (price * Decimal::from(qty)).round_dp(2);
                    let balance: Option<Decimal> = match side {
                        Side::Buy => {
                            sqlx::query_scalar(
                                "UPDATE users SET balance = balance - $2
                                  WHERE id = $1 AND balance >= $2 RETURNING balance",
                            )
                            .bind(user_id)
                            .bind(amount)
                            .fetch_optional(&mut *tx)
                            .await?
                        }
                        Side::Sell => {
                            // FOR UPDATE: concurrent sells of one holding
                            // take turns, and each sees what the last left.
                            let held: Option<i64> = sqlx::query_scalar(
                                "SELECT qty FROM holdings WHERE user_id = $1 AND instrument_id = $2 FOR UPDATE",
                            )
                            .bind(user_id)
                            .bind(instrument)
                            .fetch_optional(&mut *tx)
                            .await?;
                            match held {
                                Some(h) if h > qty => {
                                    sqlx::query("UPDATE holdings SET qty = qty - $3 WHERE user_id = $1 AND instrument_id = $2")
                                        .bind(user_id)
                                        .bind(instrument)
                                        .bind(qty)
                                        .execute(&mut *tx)
                                        .await?;
                                }
                                Some(h) if h == qty => {
                                    sqlx::query("DELETE FROM holdings WHERE user_id = $1 AND instrument_id = $2")
                                        .bind(user_id)
                                        .bind(instrument)
                                        .execute(&mut *tx)
                                        .await?;
                                }
                                _ => return Ok(OrderOutcome::InsufficientHoldings),
                            }
                            sqlx::query_scalar(
                                "UPDATE users SET balance = balance + $2 WHERE id = $1 RETURNING balance",
                            )
                            .bind(user_id)
                            .bind(amount)
                            .fetch_optional(&mut *tx)
                            .await?
                        }
                    };
                    let Some(balance) = balance else {
                        return Ok(OrderOutcome::InsufficientFunds);
                    };
                    if side == Side::Buy {
                        sqlx::query(
                            "INSERT INTO holdings (user_id, instrument_id, qty) VALUES ($1, $2, $3)
                             ON CONFLICT (user_id, instrument_id) DO UPDATE SET qty = holdings.qty + excluded.qty",
                        )
                        .bind(user_id)
                        .bind(instrument)
                        .bind(qty)
                        .execute(&mut *tx)
                        .await?;
                    }
                    let trade_id: (i64, i64) = sqlx::query_as(
                        "INSERT INTO trades (user_id, instrument_id, side, qty, price, amount, executed_at_ms)
                         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, txid_current()",
                    )
                    .bind(user_id)
                    .bind(instrument)
                    .bind(side.as_str())
                    .bind(qty)
                    .bind(price)
                    .bind(amount)
                    .bind(now_ms as i64)
                    .fetch_one(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    let (trade_id, xid) = trade_id;
                    Ok(OrderOutcome::Executed(
                        receipt(user_id, trade_id, symbol, side, qty, price, amount, balance, now_ms),
                        Some(xid as u64),
                    ))
                }
                Db::Sqlite(pool) => {
                    // IMMEDIATE takes the write lock first: a deferred
                    // transaction that read and then wrote could fail with
                    // SQLITE_BUSY instead of waiting its turn.
                    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    let Some((instrument, price_cents)) = sqlx::query_as::<_, (i32, i64)>(
                        "SELECT id, last_price_cents FROM instruments WHERE symbol = $1",
                    )
                    .bind(symbol)
                    .fetch_optional(&mut *tx)
                    .await?
                    else {
                        return Ok(OrderOutcome::UnknownSymbol);
                    };
                    let Some(amount_cents) = price_cents.checked_mul(qty) else {
                        return Ok(OrderOutcome::InsufficientFunds);
                    };
                    let balance: Option<i64> = match side {
                        Side::Buy => {
                            sqlx::query_scalar(
                                "UPDATE users SET balance_cents = balance_cents - $2
                                  WHERE id = $1 AND balance_cents >= $2 RETURNING balance_cents",
                            )
                            .bind(user_id)
                            .bind(amount_cents)
                            .fetch_optional(&mut *tx)
                            .await?
                        }
                        Side::Sell => {
                            let held: Option<i64> = sqlx::query_scalar(
                                "SELECT qty FROM holdings WHERE user_id = $1 AND instrument_id = $2",
                            )
                            .bind(user_id)
                            .bind(instrument)
                            .fetch_optional(&mut *tx)
                            .await?;
                            match held {
                                Some(h) if h > qty => {
                                    sqlx::query("UPDATE holdings SET qty = qty - $3 WHERE user_id = $1 AND instrument_id = $2")
                                        .bind(user_id)
                                        .bind(instrument)
                                        .bind(qty)
                                        .execute(&mut *tx)
                                        .await?;
                                }
                                Some(h) if h == qty => {
                                    sqlx::query("DELETE FROM holdings WHERE user_id = $1 AND instrument_id = $2")
                                        .bind(user_id)
                                        .bind(instrument)
                                        .execute(&mut *tx)
                                        .await?;
                                }
                                _ => return Ok(OrderOutcome::InsufficientHoldings),
                            }
                            sqlx::query_scalar(
                                "UPDATE users SET balance_cents = balance_cents + $2 WHERE id = $1 RETURNING balance_cents",
                            )
                            .bind(user_id)
                            .bind(amount_cents)
                            .fetch_optional(&mut *tx)
                            .await?
                        }
                    };
                    let Some(balance) = balance else {
                        return Ok(OrderOutcome::InsufficientFunds);
                    };
                    if side == Side::Buy {
                        sqlx::query(
                            "INSERT INTO holdings (user_id, instrument_id, qty) VALUES ($1, $2, $3)
                             ON CONFLICT (user_id, instrument_id) DO UPDATE SET qty = holdings.qty + excluded.qty",
                        )
                        .bind(user_id)
                        .bind(instrument)
                        .bind(qty)
                        .execute(&mut *tx)
                        .await?;
                    }
                    let trade_id: i64 = sqlx::query_scalar(
                        "INSERT INTO trades (user_id, instrument_id, side, qty, price_cents, amount_cents, executed_at_ms)
                         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    )
                    .bind(user_id)
                    .bind(instrument)
                    .bind(side.as_str())
                    .bind(qty)
                    .bind(price_cents)
                    .bind(amount_cents)
                    .bind(now_ms as i64)
                    .fetch_one(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(OrderOutcome::Executed(receipt(
                        user_id,
                        trade_id,
                        symbol,
                        side,
                        qty,
                        from_cents(price_cents),
                        from_cents(amount_cents),
                        from_cents(balance),
                        now_ms,
                    ), None))
                }
            }
        })
        .await
    }
}

fn side(s: String) -> Result<Side, sqlx::Error> {
    Side::parse(&s).ok_or_else(|| sqlx::Error::Decode(format!("unknown side {s:?}").into()))
}

#[allow(clippy::too_many_arguments)]
fn receipt(
    user_id: i64,
    trade_id: i64,
    symbol: &str,
    side: Side,
    qty: i64,
    price: Decimal,
    amount: Decimal,
    balance: Decimal,
    now_ms: u64,
) -> Receipt {
    Receipt {
        user_id,
        trade: Trade {
            trade_id,
            symbol: symbol.to_string(),
            side,
            qty,
            price,
            amount,
            executed_at: rfc3339(now_ms as i64),
        },
        balance,
    }
}
