//! The database: PostgreSQL in production, an embedded SQLite file by
//! default. One enum, one method per query, so handlers and loaders never see
//! which one runs.
//!
//! Every query counts itself in `trading_db_queries_total{query}`: the
//! bench's "database queries/s" comes from there, not from a guess.
//!
//! A query is written once and run on either pool with `on_db!` (in `dialect`);
//! where the two databases really differ, the method matches on the variant
//! (the differences are listed in `dialect`).

mod account;
mod depth;
mod dialect;
mod portfolio;
mod price;
mod profile;
pub mod seed;
mod watchlist;

pub use account::OrderOutcome;

use std::borrow::Cow;
use std::str::FromStr;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, SqlSafeStr};

use crate::settings::{DbArgs, redact};
use dialect::on_db;

/// A database failure, as the HTTP layer needs to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had in time, or the connection broke: the
    /// database is down or overloaded. Answered with 503.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A unique constraint refused the write (e.g. an email already in
    /// use). Answered with 409.
    #[error("conflicts with existing data")]
    Conflict(#[source] sqlx::Error),
    /// Anything else (a bad query, a constraint): a bug. Answered with 500.
    #[error("database error: {0}")]
    Query(#[source] sqlx::Error),
    /// The database did not answer in time: hung, or cut off by the
    /// network. Answered with 503.
    #[error("database did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    /// The row to change does not exist.
    #[error("not found")]
    NotFound,
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
            // SQLite reports a plain SQLITE_CONSTRAINT (19) unless extended
            // codes are on: recognise its message too.
            sqlx::Error::Database(db)
                if db.is_unique_violation()
                    || db.message().starts_with("UNIQUE constraint failed") =>
            {
                DbError::Conflict(e)
            }
            // PostgreSQL's "query_canceled" (statement_timeout), "admin
            // shutdown", "cannot connect now", "too many connections",
            // serialization failures and deadlocks: retry later.
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    ["57", "08", "53", "40"]
                        .iter()
                        .any(|class| c.len() == 5 && c.starts_with(class))
                }) =>
            {
                DbError::Unavailable(e)
            }
            // SQLite: the database is busy or locked (SQLITE_BUSY 5,
            // SQLITE_LOCKED 6, and their extended codes).
            sqlx::Error::Database(db)
                if db
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .is_some_and(|c| c & 0xff == 5 || c & 0xff == 6) =>
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
        matches!(self, DbError::Unavailable(_) | DbError::TimedOut(_))
    }
}

/// A connection pool to one of the two databases. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Db {
    /// PostgreSQL.
    Postgres(PgPool),
    /// The embedded SQLite file.
    Sqlite(SqlitePool),
}

pub(crate) fn count(query: &'static str) {
    metrics::counter!("trading_db_queries_total", "query" => query).increment(1);
    crate::live::DB_QUERIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl Db {
    /// Runs one query, counted, under the database timeout on the client
    /// side too. `statement_timeout` is the server's, and the pool's acquire
    /// timeout covers only getting a connection: a query already sent to a
    /// server that then hangs or is cut off by the network would otherwise
    /// wait for TCP to give up (minutes), holding its request.
    pub(crate) async fn bounded<T>(
        &self,
        query: &'static str,
        run: impl std::future::Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        count(query);
        // A little past the server's own timeout, so that a slow query is
        // reported by the server (with its code) when the server can.
        let limit = self.timeout() + std::time::Duration::from_millis(250);
        match tokio::time::timeout(limit, run).await {
            Ok(result) => result,
            Err(_) => Err(DbError::TimedOut(limit)),
        }
    }

    /// The configured database timeout (`--db-timeout`), as the pool holds it.
    fn timeout(&self) -> std::time::Duration {
        on_db!(self, pool => pool.options().get_acquire_timeout())
    }

    /// Connects to PostgreSQL if `DATABASE_URL` is set, else opens (creating
    /// it if needed) the SQLite file.
    pub async fn connect(args: &DbArgs) -> Result<Db, DbError> {
        match &args.database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(|e| {
                        DbError::Setup(format!("invalid DATABASE_URL {}: {e}", redact(url)))
                    })?
                    // Anything slower than this was cancelled by the timeout
                    // below anyway; bulk seeding is not worth a warning.
                    .log_slow_statements(log::LevelFilter::Warn, std::time::Duration::from_secs(5));
                // The statement timeout is set per connection with SET rather
                // than as a startup parameter, which poolers such as PgBouncer
                // in transaction mode refuse.
                let set_timeout =
                    format!("SET statement_timeout = {}", args.db_timeout.as_millis());
                let pool = PgPoolOptions::new()
                    .max_connections(args.db_pool_size)
                    .acquire_timeout(args.db_timeout)
                    .after_connect(move |conn, _meta| {
                        let sql = sqlx::AssertSqlSafe(set_timeout.clone());
                        Box::pin(
                            async move { sqlx::Executor::execute(conn, sql).await.map(|_| ()) },
                        )
                    })
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
        let result = on_db!(self, pool => migrator.run(pool).await);
        result.map_err(|e| DbError::Setup(format!("{dir} migrations failed: {e}")))
    }

    /// Whether there are no users yet.
    pub async fn is_empty(&self) -> Result<bool, DbError> {
        let exists: bool = on_db!(self, pool => {
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users)")
                .fetch_one(pool)
                .await?
        });
        Ok(!exists)
    }

    /// Closes the pool: later queries fail as if the database were down.
    pub async fn close(&self) {
        on_db!(self, pool => pool.close().await)
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        on_db!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }
}

const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "portfolio",
        include_str!("../../migrations/postgres/0001_portfolio.sql"),
    ),
    (
        2,
        "writes",
        include_str!("../../migrations/postgres/0002_writes.sql"),
    ),
    (
        3,
        "accounts",
        include_str!("../../migrations/postgres/0003_accounts.sql"),
    ),
];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "portfolio",
        include_str!("../../migrations/sqlite/0001_portfolio.sql"),
    ),
    (
        2,
        "writes",
        include_str!("../../migrations/sqlite/0002_writes.sql"),
    ),
    (
        3,
        "accounts",
        include_str!("../../migrations/sqlite/0003_accounts.sql"),
    ),
];
