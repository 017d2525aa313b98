//! The database: PostgreSQL in production, an embedded SQLite file by
//! default. One enum, one method per query, so handlers and loaders never see
//! which one runs.
//!
//! Every query counts itself in `trading_db_queries_total{query}`: the
//! bench's "database queries/s" comes from there, not from a guess.

pub mod seed;

use std::borrow::Cow;
use std::str::FromStr;

use rust_decimal::Decimal;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, SqlSafeStr};

use crate::portfolio::{Holding, Portfolio};
use crate::settings::{DbArgs, redact};

/// A database failure, as the HTTP layer needs to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had in time, or the connection broke: the
    /// database is down or overloaded. Answered with 503.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else (a bad query, a constraint): a bug. Answered with 500.
    #[error("database error: {0}")]
    Query(#[source] sqlx::Error),
    /// Setting the database up failed.
    #[error("{0}")]
    Setup(String),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => DbError::Unavailable(e),
            // PostgreSQL's "query_canceled" (statement_timeout), "admin
            // shutdown", "cannot connect now" and the like.
            sqlx::Error::Database(db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("57") || c.starts_with("08")) =>
            {
                DbError::Unavailable(e)
            }
            _ => DbError::Query(e),
        }
    }
}

impl DbError {
    /// Whether the request should be retried later (503) rather than being a
    /// bug (500).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }
}

/// One row of the portfolio query: symbol, qty, last price, market value and
/// the user's total, in the backend's money type (NUMERIC, or cents).
type PortfolioRow<M> = (Option<String>, Option<i64>, Option<M>, Option<M>, Option<M>);

/// A connection pool to one of the two databases. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Db {
    /// PostgreSQL.
    Postgres(PgPool),
    /// The embedded SQLite file.
    Sqlite(SqlitePool),
}

fn count(query: &'static str) {
    metrics::counter!("trading_db_queries_total", "query" => query).increment(1);
}

impl Db {
    /// Connects to PostgreSQL if `DATABASE_URL` is set, else opens (creating
    /// it if needed) the SQLite file.
    pub async fn connect(args: &DbArgs) -> Result<Db, DbError> {
        match &args.database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(|e| {
                        DbError::Setup(format!("invalid DATABASE_URL {}: {e}", redact(url)))
                    })?
                    .options([(
                        "statement_timeout",
                        format!("{}", args.db_timeout.as_millis()),
                    )])
                    // Anything slower than this was cancelled by the timeout
                    // above anyway; bulk seeding is not worth a warning.
                    .log_slow_statements(log::LevelFilter::Warn, std::time::Duration::from_secs(5));
                let pool = PgPoolOptions::new()
                    .max_connections(args.db_pool_size)
                    .acquire_timeout(args.db_timeout)
                    .connect_with(options)
                    .await
                    .map_err(|e| {
                        DbError::Setup(format!("cannot connect to {}: {e}", redact(url)))
                    })?;
                Ok(Db::Postgres(pool))
            }
            Some(url) if url.starts_with("sqlite:") => {
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(|e| DbError::Setup(format!("invalid DATABASE_URL {url}: {e}")))?;
                Self::open_sqlite(options, args).await
            }
            Some(url) => Err(DbError::Setup(format!(
                "DATABASE_URL {} is neither postgres:// nor sqlite:",
                redact(url)
            ))),
            None => {
                Self::open_sqlite(
                    SqliteConnectOptions::new().filename(&args.sqlite_path),
                    args,
                )
                .await
            }
        }
    }

    async fn open_sqlite(options: SqliteConnectOptions, args: &DbArgs) -> Result<Db, DbError> {
        let options = options
            .create_if_missing(true)
            // WAL: readers do not block the writer or each other.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(args.db_timeout)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(args.db_pool_size.clamp(1, 16))
            .acquire_timeout(args.db_timeout)
            .connect_with(options)
            .await
            .map_err(|e| DbError::Setup(format!("cannot open the SQLite database: {e}")))?;
        Ok(Db::Sqlite(pool))
    }

    /// `postgres` or `sqlite`.
    pub fn kind(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    /// Brings the schema up to date (embedded migrations, so the binary needs
    /// no files at run time).
    pub async fn migrate(&self) -> Result<(), DbError> {
        let (dir, files): (&str, &[(i64, &str, &'static str)]) = match self {
            Db::Postgres(_) => ("postgres", POSTGRES_MIGRATIONS),
            Db::Sqlite(_) => ("sqlite", SQLITE_MIGRATIONS),
        };
        let migrations = files
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*name),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        let migrator = Migrator::with_migrations(migrations);
        let result = match self {
            Db::Postgres(pool) => migrator.run(pool).await,
            Db::Sqlite(pool) => migrator.run(pool).await,
        };
        result.map_err(|e| DbError::Setup(format!("{dir} migrations failed: {e}")))
    }

    /// Whether there are no users yet.
    pub async fn is_empty(&self) -> Result<bool, DbError> {
        let sql = "SELECT EXISTS (SELECT 1 FROM users)";
        let exists: bool = match self {
            Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
            Db::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        };
        Ok(!exists)
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        match self {
            Db::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ())?,
            Db::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ())?,
        }
        Ok(())
    }

    /// A user's holdings with each instrument's last price; market values and
    /// the total computed by the database. `None` if the user does not exist.
    pub async fn portfolio(&self, user_id: i64) -> Result<Option<Portfolio>, DbError> {
        count("portfolio");
        // One row per holding, with the total over all rows alongside. A user
        // without holdings gives one row of NULLs; an unknown user none.
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
                      WHERE u.id = ?1
                      ORDER BY i.symbol",
                )
                .bind(user_id)
                .fetch_all(pool)
                .await?;
                let cents = |c: Option<i64>| c.map(|c| Decimal::new(c, 2));
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
    }
}

const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "portfolio",
    include_str!("../../migrations/postgres/0001_portfolio.sql"),
)];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "portfolio",
    include_str!("../../migrations/sqlite/0001_portfolio.sql"),
)];
