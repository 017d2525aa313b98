//! The listener: one background task per process that tries to hold the
//! replication slot, reads transactions from it, and applies what they
//! invalidate before it confirms their position.

use std::time::{Duration, Instant};

use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::apply::{apply, apply_locally, echoes};
use super::mapping::{Invalidations, Mapping, Resolved};
use super::pgoutput::{self, Message, Relations};
use crate::{Cache, Error};

/// Seconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// The prefix of the logical message a listener writes to find out when it
/// has read everything committed before it started.
const SYNC_PREFIX: &str = "larder.sync";

/// What the listener has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeStats {
    /// Whether this process holds the slot now.
    pub consumer: bool,
    /// Whether every change committed before the listener started has been
    /// applied (by this process or by the one holding the slot).
    pub caught_up: bool,
    /// Whether Redis could not take the last invalidations: positions are
    /// not confirmed until it can.
    pub degraded: bool,
    /// Transactions read that touched a mapped table.
    pub transactions: u64,
    /// Transactions skipped because their writer had invalidated them
    /// ([`Cache::skip_echo`](crate::Cache::skip_echo)).
    pub echoes: u64,
    /// Keys, tags and whole families invalidated.
    pub invalidations: u64,
    /// The last position confirmed to PostgreSQL by this process.
    pub confirmed_lsn: u64,
    /// WAL the slot holds that is not confirmed yet, in bytes (as last seen).
    pub lag_bytes: u64,
    /// Replication sessions started (one per takeover or reconnect).
    pub sessions: u64,
}

/// Configures a [`ChangeListener`]. From [`ChangeListener::builder`].
pub struct ChangeListenerBuilder {
    cache: Cache,
    conn: Result<Conn, Error>,
    slot: String,
    publication: String,
    mapping: Mapping,
    retry_every: Duration,
    echo_window: Duration,
    max_lag_bytes: u64,
    create_missing: bool,
}

impl std::fmt::Debug for ChangeListenerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the connection: it holds the password.
        f.debug_struct("ChangeListenerBuilder")
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("mapping", &self.mapping)
            .finish_non_exhaustive()
    }
}

/// Reads PostgreSQL's change stream and invalidates what changed. See the
/// [module docs](crate::cdc).
///
/// Dropping it stops the task (and frees the slot for another process);
/// [`stop`](Self::stop) does the same and waits for it.
///
/// ```no_run
/// # async fn demo(cache: larder::Cache) -> Result<(), larder::Error> {
/// use larder::cdc::{ChangeListener, Mapping, TableRule};
/// let listener = ChangeListener::builder(&cache, "postgres://app@127.0.0.1/app")
///     .slot("larder")
///     .publication("larder")
///     .mapping(Mapping::new().table("holdings", TableRule::new().tag("holdings:{user_id}")))
///     .start()
///     .await?;
/// // Serve only once changes made while this process was down are applied.
/// listener.caught_up(std::time::Duration::from_secs(10)).await;
/// # Ok(()) }
/// ```
pub struct ChangeListener {
    stats: watch::Receiver<ChangeStats>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    conn: Conn,
    slot: String,
}

impl std::fmt::Debug for ChangeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeListener")
            .field("slot", &self.slot)
            .field("stats", &*self.stats.borrow())
            .finish_non_exhaustive()
    }
}

impl ChangeListener {
    /// Starts configuring a listener for `cache` on the database at
    /// `database_url` (`postgres://user[:password]@host[:port]/database`,
    /// with `?sslmode=disable|prefer|require|verify-ca|verify-full` and
    /// `sslrootcert=<file>`).
    pub fn builder(cache: &Cache, database_url: &str) -> ChangeListenerBuilder {
        ChangeListenerBuilder {
            cache: cache.clone(),
            conn: Conn::parse(database_url),
            slot: "larder".into(),
            publication: "larder".into(),
            mapping: Mapping::new(),
            retry_every: Duration::from_secs(1),
            echo_window: Duration::from_millis(20),
            max_lag_bytes: 1 << 30,
            create_missing: true,
        }
    }

    /// What the listener has done so far.
    pub fn stats(&self) -> ChangeStats {
        *self.stats.borrow()
    }

    /// Waits until every change committed before the listener started has
    /// been applied, by this process or by the one holding the slot, or
    /// `timeout` passes. Returns whether it caught up.
    pub async fn caught_up(&self, timeout: Duration) -> bool {
        let mut stats = self.stats.clone();
        matches!(
            tokio::time::timeout(timeout, stats.wait_for(|s| s.caught_up)).await,
            Ok(Ok(_))
        )
    }

    /// Waits until this process (holding the slot) has applied and confirmed
    /// everything up to `lsn` (PostgreSQL's text form, `0/16B3748`, as
    /// `pg_current_wal_lsn()` or `pg_logical_emit_message()` return it), or
    /// `timeout` passes. Returns whether it got there.
    ///
    /// For read-your-writes across a commit: after
    /// `SELECT pg_logical_emit_message(false, 'sync', '')` returned `lsn`,
    /// every transaction committed before it has been invalidated.
    pub async fn wait_applied(&self, lsn: &str, timeout: Duration) -> Result<bool, Error> {
        let target = Lsn::parse(lsn)
            .map_err(|e| Error::ChangeStream(format!("`{lsn}` is not an LSN: {e}")))?;
        let mut stats = self.stats.clone();
        Ok(matches!(
            tokio::time::timeout(timeout, stats.wait_for(|s| s.confirmed_lsn >= target.0)).await,
            Ok(Ok(_))
        ))
    }

    /// Waits until this process holds the slot, or `timeout` passes.
    pub async fn wait_consumer(&self, timeout: Duration) -> bool {
        let mut stats = self.stats.clone();
        matches!(
            tokio::time::timeout(timeout, stats.wait_for(|s| s.consumer)).await,
            Ok(Ok(_))
        )
    }

    /// Stops the listener and waits for it to let go of the slot.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops the listener and drops its replication slot, for a service
    /// being retired: PostgreSQL would otherwise keep WAL for it forever.
    /// Fails if another process still holds the slot after 10 seconds.
    pub async fn drop_slot(self) -> Result<(), Error> {
        let conn = self.conn.clone();
        let slot = self.slot.clone();
        self.stop().await;
        let mut client = ReplicationClient::connect_gated(conn.config(&slot, &slot))
            .await
            .map_err(pg_error)?;
        // The server side of our own session may still be exiting after
        // `stop`: the replication command waits for the slot to be let go
        // (the SQL function would fail at once), and the bound keeps a slot
        // that another process holds an error rather than a hang.
        let release = Duration::from_secs(10);
        let command = format!("DROP_REPLICATION_SLOT {slot} WAIT");
        let dropped = client.simple_query(&command);
        match tokio::time::timeout(release, dropped).await {
            Ok(result) => {
                result.map_err(pg_error)?;
                Ok(())
            }
            Err(_) => Err(Error::ChangeStream(format!(
                "replication slot `{slot}` is still held by another process after {release:?}; \
                 stop that process (or SELECT pg_terminate_backend(active_pid) FROM \
                 pg_replication_slots WHERE slot_name = '{slot}') and drop it again"
            ))),
        }
    }
}

impl Drop for ChangeListener {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl ChangeListenerBuilder {
    /// The replication slot (`[a-z0-9_]`, default `larder`). One per
    /// service: every instance of the service names the same slot.
    pub fn slot(mut self, name: impl Into<String>) -> Self {
        self.slot = name.into();
        self
    }

    /// The publication listing the mapped tables (default `larder`).
    pub fn publication(mut self, name: impl Into<String>) -> Self {
        self.publication = name.into();
        self
    }

    /// What changes invalidate.
    pub fn mapping(mut self, mapping: Mapping) -> Self {
        self.mapping = mapping;
        self
    }

    /// How often a standby tries to take the slot, and a listener whose
    /// session broke tries again (default 1 s): the takeover time after the
    /// consumer dies.
    pub fn retry_every(mut self, every: Duration) -> Self {
        self.retry_every = every;
        self
    }

    /// How long a transaction waits before it is applied (default 20 ms),
    /// so that its writer's [`Cache::skip_echo`](crate::Cache::skip_echo)
    /// arrives first. Transactions arriving meanwhile are applied together.
    pub fn echo_window(mut self, window: Duration) -> Self {
        self.echo_window = window;
        self
    }

    /// Unconfirmed WAL past which the listener logs an error and sets
    /// `larder_cdc_lag_alarm` (default 1 GiB).
    pub fn max_lag_bytes(mut self, bytes: u64) -> Self {
        self.max_lag_bytes = bytes;
        self
    }

    /// Whether to create the publication and the slot when missing
    /// (default `true`). Off, a missing one is an error at start.
    pub fn create_missing(mut self, create: bool) -> Self {
        self.create_missing = create;
        self
    }

    /// Checks the configuration against the cache and the database (which
    /// must be reachable), creates the publication and the slot if needed,
    /// and starts the listener. Errors name what to change.
    pub async fn start(self) -> Result<ChangeListener, Error> {
        let conn = self.conn?;
        for (what, name) in [("slot", &self.slot), ("publication", &self.publication)] {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(Error::config(
                    "change stream",
                    format!("{what} name `{name}` must be 1-63 characters of [a-z0-9_]"),
                ));
            }
        }
        if self.mapping.is_empty() {
            return Err(Error::config("change stream", "the mapping names no table"));
        }
        let resolved = self
            .mapping
            .resolve(self.cache.namespace(), &self.cache.shared.policies)?;
        let (stats_tx, stats) = watch::channel(ChangeStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let mut ctx = Ctx {
            cache: self.cache,
            conn: conn.clone(),
            slot: self.slot.clone(),
            publication: self.publication,
            resolved,
            retry_every: self.retry_every,
            echo_window: self.echo_window,
            max_lag_bytes: self.max_lag_bytes,
            create_missing: self.create_missing,
            stats: stats_tx,
            stop: stop_rx,
            target: None,
            clear_owed: false,
            alarmed: false,
        };
        // The first setup runs here, so that a configuration the database
        // refuses fails the start instead of a background task's log.
        let first = ctx.open().await;
        let first = match first {
            Ok(opened) => opened,
            Err(SessionError::Fatal(e)) => return Err(e),
            Err(SessionError::Busy) => Opened::Standby,
            Err(SessionError::Transient(e)) => {
                return Err(Error::ChangeStream(format!(
                    "cannot open the replication session: {e}"
                )));
            }
        };
        let task = tokio::spawn(ctx.run(first));
        Ok(ChangeListener {
            stats,
            stop,
            task: Some(task),
            conn,
            slot: self.slot,
        })
    }
}

/// Connection settings, from a `postgres://` URL.
#[derive(Clone)]
struct Conn {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
    tls: TlsConfig,
}

impl Conn {
    fn parse(raw: &str) -> Result<Conn, Error> {
        let bad = |why: &str| Error::ChangeStream(format!("invalid database URL: {why}"));
        let url = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(bad("the scheme must be postgres://"));
        }
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| bad("a user or password is not valid percent-encoding"))
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let user = match url.username() {
            "" => "postgres".to_string(),
            u => decode(u)?,
        };
        let password = decode(url.password().unwrap_or(""))?;
        let database = match url.path().trim_start_matches('/') {
            "" => user.clone(),
            d => decode(d)?,
        };
        let mut mode = "prefer".to_string();
        let mut root = None;
        for (k, v) in url.query_pairs() {
            match &*k {
                "sslmode" => mode = v.into_owned(),
                "sslrootcert" => root = Some(std::path::PathBuf::from(&*v)),
                _ => {}
            }
        }
        let tls = match mode.as_str() {
            "disable" => TlsConfig::disabled(),
            "prefer" | "allow" => TlsConfig {
                mode: pgwire_replication::SslMode::Prefer,
                ..TlsConfig::disabled()
            },
            "require" => TlsConfig::require(),
            "verify-ca" => TlsConfig::verify_ca(root),
            "verify-full" => TlsConfig::verify_full(root),
            other => return Err(bad(&format!("unknown sslmode `{other}`"))),
        };
        Ok(Conn {
            host,
            port: url.port().unwrap_or(5432),
            user,
            password,
            database,
            tls,
        })
    }

    fn config(&self, slot: &str, publication: &str) -> ReplicationConfig {
        ReplicationConfig::new(
            self.host.clone(),
            self.user.clone(),
            self.password.clone(),
            self.database.clone(),
            slot,
            publication,
        )
        .with_port(self.port)
        .with_tls(self.tls.clone())
        .with_status_interval(Duration::from_millis(500))
        .with_application_name(format!("larder-cdc:{slot}"))
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn pg_error(e: PgWireError) -> Error {
    Error::ChangeStream(e.to_string())
}

enum SessionError {
    /// The configuration or the server refuses: retrying will not help
    /// until someone changes something.
    Fatal(Error),
    /// Another process holds the slot.
    Busy,
    /// The connection broke, the server restarted, Redis came back: try again.
    Transient(String),
}

impl From<PgWireError> for SessionError {
    fn from(e: PgWireError) -> Self {
        let text = e.to_string();
        if text.contains("is active for PID") {
            SessionError::Busy
        } else {
            SessionError::Transient(text)
        }
    }
}

/// How a setup ended.
enum Opened {
    /// This process holds the slot: the stream is started.
    Consumer(ReplicationClient),
    /// Another process holds it.
    Standby,
}

/// How a streaming session ended.
enum Ended {
    Stopped,
    Reconnect,
}

/// A transaction read in full, waiting for its echo window.
struct Ready {
    xid: u32,
    invalidations: Invalidations,
    commit_time_micros: i64,
    arrived: Instant,
}

struct Ctx {
    cache: Cache,
    conn: Conn,
    slot: String,
    publication: String,
    resolved: Resolved,
    retry_every: Duration,
    echo_window: Duration,
    max_lag_bytes: u64,
    create_missing: bool,
    stats: watch::Sender<ChangeStats>,
    stop: watch::Receiver<bool>,
    /// The position that means "caught up": a logical message this
    /// listener wrote at its first setup (everything committed before it
    /// comes before it in the stream).
    target: Option<Lsn>,
    /// This listener created the slot and has not yet cleared the mapped
    /// families (a new slot knows nothing of what changed before it). It
    /// stays owed across sessions until the clear succeeds: a slot that
    /// exists at the next setup is no longer "fresh", yet the clear that
    /// failed at the first one (Redis down) is still needed.
    clear_owed: bool,
    alarmed: bool,
}

fn first_text(rows: &[pgwire_replication::QueryRow], col: usize) -> Option<String> {
    let cell = rows.first()?.get(col)?.as_ref()?;
    Some(String::from_utf8_lossy(cell).into_owned())
}

impl Ctx {
    fn update(&self, f: impl FnOnce(&mut ChangeStats)) {
        self.stats.send_modify(f);
    }

    fn set_lag(&mut self, lag: u64) {
        self.update(|s| s.lag_bytes = lag);
        metrics::gauge!("larder_cdc_slot_lag_bytes", "slot" => self.slot.clone()).set(lag as f64);
        let alarm = lag > self.max_lag_bytes;
        if alarm && !self.alarmed {
            tracing::error!(
                slot = %self.slot, lag_bytes = lag, limit = self.max_lag_bytes,
                "the replication slot holds more unconfirmed WAL than allowed: is the listener (or Redis) stuck? PostgreSQL keeps this WAL on disk until it is confirmed"
            );
        }
        self.alarmed = alarm;
        metrics::gauge!("larder_cdc_lag_alarm", "slot" => self.slot.clone()).set(if alarm {
            1.0
        } else {
            0.0
        });
    }

    fn set_consumer(&self, consumer: bool) {
        self.update(|s| s.consumer = consumer);
        metrics::gauge!("larder_cdc_consumer", "slot" => self.slot.clone()).set(if consumer {
            1.0
        } else {
            0.0
        });
    }

    fn reach(&self, lsn: Lsn) {
        if self.target.is_some_and(|t| lsn >= t) {
            self.update(|s| s.caught_up = true);
        }
    }

    /// Connects, checks the server and the tables, creates what is missing,
    /// and takes the slot if nobody holds it.
    async fn open(&mut self) -> Result<Opened, SessionError> {
        let mut client =
            ReplicationClient::connect_gated(self.conn.config(&self.slot, &self.publication))
                .await?;
        let wal_level = client.simple_query("SHOW wal_level").await?;
        let wal_level = first_text(&wal_level, 0).unwrap_or_default();
        if wal_level != "logical" {
            return Err(SessionError::Fatal(Error::ChangeStream(format!(
                "PostgreSQL runs with wal_level = {wal_level}; invalidation from the change stream needs \
                 `ALTER SYSTEM SET wal_level = logical` and a restart of the server"
            ))));
        }
        self.check_tables(&mut client).await?;
        self.ensure_publication(&mut client).await?;
        let slot = self.slot.clone();
        let slot_rows = client
            .simple_query(&format!(
                "SELECT confirmed_flush_lsn::text, active_pid::text, plugin::text, \
                 pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint::text \
                 FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .await?;
        if slot_rows.is_empty() {
            if !self.create_missing {
                return Err(SessionError::Fatal(Error::ChangeStream(format!(
                    "replication slot `{slot}` does not exist; create it with \
                     SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
                ))));
            }
            match client
                .simple_query(&format!(
                    "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
                ))
                .await
            {
                Ok(_) => {
                    tracing::info!(slot = %slot, "created the replication slot");
                    self.clear_owed = true;
                }
                // Another instance created it first: its session holds it.
                Err(e) if e.to_string().contains("already exists") => {
                    return Err(SessionError::Busy);
                }
                Err(e) => {
                    return Err(SessionError::Fatal(Error::ChangeStream(format!(
                        "cannot create replication slot `{slot}` ({e}); the role needs the \
                         REPLICATION attribute (ALTER ROLE <role> REPLICATION)"
                    ))));
                }
            }
        } else {
            if first_text(&slot_rows, 2).as_deref() != Some("pgoutput") {
                return Err(SessionError::Fatal(Error::ChangeStream(format!(
                    "replication slot `{slot}` does not use the pgoutput plugin; drop it or name another"
                ))));
            }
            let lag = first_text(&slot_rows, 3)
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0);
            self.set_lag(lag);
            if let Some(confirmed) = first_text(&slot_rows, 0).and_then(|t| Lsn::parse(&t).ok()) {
                self.reach(confirmed);
            }
        }
        if self.target.is_none() || !self.stats.borrow().caught_up {
            // Everything committed so far comes before this message in the
            // stream; whoever holds the slot confirms past it.
            let rows = client
                .simple_query(&format!(
                    "SELECT pg_logical_emit_message(false, '{SYNC_PREFIX}', '')::text"
                ))
                .await?;
            let lsn = first_text(&rows, 0).and_then(|t| Lsn::parse(&t).ok());
            if self.target.is_none() {
                self.target = lsn;
            }
            // A new slot has nothing older to read: it is caught up once
            // its mapped families are cleared, which `stream` does first
            // (saying so here would let a write made in between be
            // cleared with them).
        }
        if first_text(&slot_rows, 1).is_some() {
            return Err(SessionError::Busy);
        }
        client.start().await?;
        client.wait_started().await?;
        Ok(Opened::Consumer(client))
    }

    /// Every mapped table exists, has the mapped columns, and sends them on
    /// delete (replica identity).
    async fn check_tables(&self, client: &mut ReplicationClient) -> Result<(), SessionError> {
        for table in &self.resolved.tables {
            let (schema, name) = (&table.schema, &table.name);
            let rows = client
                .simple_query(&format!(
                    "SELECT a.attname::text, c.relreplident::text, \
                       CASE c.relreplident \
                         WHEN 'f' THEN true \
                         WHEN 'd' THEN COALESCE((SELECT a.attnum = ANY(i.indkey) FROM pg_index i \
                                                 WHERE i.indrelid = c.oid AND i.indisprimary), false) \
                         WHEN 'i' THEN COALESCE((SELECT a.attnum = ANY(i.indkey) FROM pg_index i \
                                                 WHERE i.indrelid = c.oid AND i.indisreplident), false) \
                         ELSE false END::text \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                     WHERE n.nspname = '{schema}' AND c.relname = '{name}' AND c.relkind IN ('r', 'p')"
                ))
                .await?;
            let fatal = |why: String| SessionError::Fatal(Error::ChangeStream(why));
            if rows.is_empty() {
                return Err(fatal(format!(
                    "mapped table {schema}.{name} does not exist in this database"
                )));
            }
            let cell = |row: &pgwire_replication::QueryRow, i: usize| {
                row.get(i)
                    .and_then(|c| c.as_ref())
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            };
            let columns: Vec<(String, bool)> = rows
                .iter()
                .map(|r| (cell(r, 0), cell(r, 2) == "true"))
                .collect();
            for column in table.columns() {
                if !columns.iter().any(|(c, _)| c == column) {
                    return Err(fatal(format!(
                        "invalidate.{name}: table {schema}.{name} has no column `{column}`"
                    )));
                }
            }
            let missing: Vec<&str> = table
                .identity_columns()
                .into_iter()
                .filter(|c| !columns.iter().any(|(name, ident)| name == c && *ident))
                .collect();
            if !missing.is_empty() {
                return Err(fatal(format!(
                    "invalidate.{name}: column(s) {} of {schema}.{name} are not in its replica identity, \
                     so a DELETE would not carry them; run `ALTER TABLE {schema}.{name} REPLICA IDENTITY FULL` \
                     (or USING INDEX on a unique index over them)",
                    missing.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The publication exists and lists every mapped table.
    async fn ensure_publication(&self, client: &mut ReplicationClient) -> Result<(), SessionError> {
        let publication = &self.publication;
        let listed = client
            .simple_query(&format!(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = '{publication}'"
            ))
            .await?;
        let exists = !listed.is_empty()
            || !client
                .simple_query(&format!(
                    "SELECT 1 FROM pg_publication WHERE pubname = '{publication}'"
                ))
                .await?
                .is_empty();
        let missing: Vec<String> = self
            .resolved
            .tables
            .iter()
            .filter(|t| {
                !listed.iter().any(|r| {
                    let text = |i: usize| r.get(i).and_then(|c| c.as_ref()).map(|b| b.as_ref());
                    text(0) == Some(t.schema.as_bytes()) && text(1) == Some(t.name.as_bytes())
                })
            })
            .map(|t| format!("{}.{}", t.schema, t.name))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let sql = if exists {
            format!(
                "ALTER PUBLICATION {publication} ADD TABLE {}",
                missing.join(", ")
            )
        } else {
            format!(
                "CREATE PUBLICATION {publication} FOR TABLE {}",
                missing.join(", ")
            )
        };
        if !self.create_missing {
            return Err(SessionError::Fatal(Error::ChangeStream(format!(
                "publication `{publication}` lacks {}; run `{sql}`",
                missing.join(", ")
            ))));
        }
        match client.simple_query(&sql).await {
            Ok(_) => {
                tracing::info!(%sql, "publication set up");
                Ok(())
            }
            // Two instances starting together: the other one did it.
            Err(e) if e.to_string().contains("already") => Err(SessionError::Busy),
            Err(e) => Err(SessionError::Fatal(Error::ChangeStream(format!(
                "cannot run `{sql}` ({e}): it takes ownership of the tables (or a superuser)"
            )))),
        }
    }

    /// The task: hold the slot when possible, stand by otherwise, until
    /// told to stop.
    async fn run(mut self, first: Opened) {
        let mut next = Some(first);
        loop {
            if *self.stop.borrow() {
                break;
            }
            let opened = match next.take() {
                Some(o) => Ok(o),
                None => self.open().await,
            };
            let pause = match opened {
                Ok(Opened::Consumer(client)) => {
                    self.set_consumer(true);
                    self.update(|s| s.sessions += 1);
                    let ended = self.stream(client).await;
                    self.set_consumer(false);
                    match ended {
                        Ok(Ended::Stopped) => break,
                        Ok(Ended::Reconnect) => Duration::ZERO,
                        Err(e) => {
                            tracing::warn!(slot = %self.slot, error = %e, "replication session ended; reconnecting");
                            self.retry_every
                        }
                    }
                }
                Ok(Opened::Standby) | Err(SessionError::Busy) => self.retry_every,
                Err(SessionError::Transient(e)) => {
                    tracing::warn!(slot = %self.slot, error = %e, "cannot open the replication session; retrying");
                    self.retry_every
                }
                Err(SessionError::Fatal(e)) => {
                    tracing::error!(slot = %self.slot, error = %e, "the change stream cannot run");
                    self.retry_every * 10
                }
            };
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            }
        }
    }

    /// Reads the stream until told to stop or the session must be replaced.
    async fn stream(&mut self, mut client: ReplicationClient) -> Result<Ended, String> {
        let shared = std::sync::Arc::clone(&self.cache.shared);
        let mut degraded = false;
        if self.clear_owed {
            // A new slot knows nothing of what changed before it existed:
            // every mapped family goes, once.
            let mut everything = Invalidations::default();
            for t in &self.resolved.tables {
                t.everything(&mut everything);
            }
            if let Err(e) = apply(&shared, &everything).await {
                tracing::warn!(error = %e, "cannot clear the mapped families for a new slot; will retry");
                let _ = client.shutdown().await;
                return Err(e.to_string());
            }
            self.clear_owed = false;
            self.update(|s| s.caught_up = true);
        }
        let mut relations = Relations::default();
        let mut open: Option<(u32, Invalidations)> = None;
        let mut ready: Vec<Ready> = Vec::new();
        // The highest position whose transactions are all applied, once
        // those waiting in `ready` are.
        let mut seen = Lsn(0);
        let mut last_ack = Lsn(0);
        let mut redis_probe = tokio::time::interval(self.retry_every);
        let mut stop = self.stop.clone();
        loop {
            let deadline = ready
                .first()
                .map(|r| tokio::time::Instant::from_std(r.arrived + self.echo_window));
            tokio::select! {
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    if !degraded && !ready.is_empty() {
                        self.flush(&mut ready, &mut degraded).await;
                        if !degraded {
                            client.update_applied_lsn(seen);
                        }
                    }
                    let _ = client.shutdown().await;
                    return Ok(Ended::Stopped);
                }
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                    let was = degraded;
                    self.flush(&mut ready, &mut degraded).await;
                    if !degraded {
                        self.ack(&client, seen, &mut last_ack);
                    } else if !was {
                        tracing::warn!(slot = %self.slot, "redis cannot take invalidations: L1 dropped here, positions not confirmed until it can");
                    }
                }
                _ = redis_probe.tick(), if degraded => {
                    if let Some(l2) = &shared.l2
                        && l2.run::<()>("PING", &redis::cmd("PING")).await.is_ok()
                    {
                        // Re-read everything not confirmed, now into Redis.
                        let _ = client.shutdown().await;
                        self.update(|s| s.degraded = false);
                        return Ok(Ended::Reconnect);
                    }
                }
                event = client.recv() => {
                    let event = match event {
                        Ok(Some(e)) => e,
                        Ok(None) => return Ok(Ended::Reconnect),
                        Err(e) => return Err(e.to_string()),
                    };
                    match event {
                        ReplicationEvent::Begin { xid, .. } => {
                            open = Some((xid, Invalidations::default()));
                        }
                        ReplicationEvent::XLogData { data, .. } => {
                            let message = pgoutput::decode(&data).map_err(|e| e.to_string())?;
                            self.change(&mut relations, open.as_mut().map(|(_, inv)| inv), message)?;
                        }
                        ReplicationEvent::Commit { end_lsn, commit_time_micros, .. } => {
                            let (xid, invalidations) = open.take().ok_or("commit without begin")?;
                            seen = seen.max(end_lsn);
                            if invalidations.is_empty() {
                                if ready.is_empty() && !degraded {
                                    self.ack(&client, seen, &mut last_ack);
                                }
                            } else {
                                self.update(|s| s.transactions += 1);
                                metrics::counter!("larder_cdc_transactions_total", "slot" => self.slot.clone()).increment(1);
                                ready.push(Ready { xid, invalidations, commit_time_micros, arrived: Instant::now() });
                            }
                        }
                        ReplicationEvent::Message { lsn, transactional, .. } => {
                            if !transactional && open.is_none() {
                                seen = seen.max(lsn);
                                if ready.is_empty() && !degraded {
                                    self.ack(&client, seen, &mut last_ack);
                                }
                            }
                        }
                        ReplicationEvent::KeepAlive { wal_end, .. } => {
                            if open.is_none() && ready.is_empty() && !degraded {
                                // Nothing in between concerns us: confirm it,
                                // or the slot never moves on a quiet table.
                                seen = seen.max(wal_end);
                                self.ack(&client, seen, &mut last_ack);
                                metrics::gauge!("larder_cdc_lag_seconds", "slot" => self.slot.clone()).set(0.0);
                            }
                            self.set_lag(wal_end.0.saturating_sub(last_ack.0));
                        }
                        ReplicationEvent::StoppedAt { .. } => return Ok(Ended::Reconnect),
                    }
                }
            }
        }
    }

    /// Confirms `lsn` (everything before it applied).
    fn ack(&self, client: &ReplicationClient, lsn: Lsn, last: &mut Lsn) {
        if lsn > *last {
            client.update_applied_lsn(lsn);
            *last = lsn;
            self.update(|s| s.confirmed_lsn = lsn.0);
            self.reach(lsn);
        }
    }

    /// Adds what one message invalidates to the open transaction.
    fn change(
        &self,
        relations: &mut Relations,
        txn: Option<&mut Invalidations>,
        message: Message,
    ) -> Result<(), String> {
        let mut scratch = Invalidations::default();
        let out = match txn {
            Some(t) => t,
            // Relation messages may come outside a transaction.
            None => &mut scratch,
        };
        let mapped = |relations: &Relations, id: u32| -> Result<_, String> {
            let relation = relations.get(id).map_err(|e| e.to_string())?;
            Ok(self
                .resolved
                .table(&relation.schema, &relation.name)
                .map(|t| (relation.clone(), t)))
        };
        match message {
            Message::Relation(r) => relations.insert(r),
            Message::Insert { relation, new } => {
                if let Some((rel, t)) = mapped(relations, relation)? {
                    t.invalidate(&rel, None, Some(&new), out);
                }
            }
            Message::Update { relation, old, new } => {
                if let Some((rel, t)) = mapped(relations, relation)? {
                    t.invalidate(&rel, old.as_deref(), Some(&new), out);
                }
            }
            Message::Delete { relation, old } => {
                if let Some((rel, t)) = mapped(relations, relation)? {
                    t.invalidate(&rel, Some(&old), None, out);
                }
            }
            Message::Truncate { relations: ids } => {
                for id in ids {
                    if let Some((_, t)) = mapped(relations, id)? {
                        t.everything(out);
                    }
                }
            }
            Message::Other => {}
        }
        Ok(())
    }

    /// Applies the transactions waiting in `ready`, minus the echoes their
    /// writers already invalidated.
    async fn flush(&self, ready: &mut Vec<Ready>, degraded: &mut bool) {
        let shared = &self.cache.shared;
        let batch = std::mem::take(ready);
        if *degraded {
            for r in &batch {
                apply_locally(shared, &r.invalidations);
            }
            return;
        }
        let xids: Vec<u32> = batch.iter().map(|r| r.xid).collect();
        let skip = match echoes(shared, &xids).await {
            Ok(s) => s,
            Err(_) => vec![false; batch.len()],
        };
        let mut all = Invalidations::default();
        let mut newest_commit = 0i64;
        let mut skipped = 0u64;
        for (r, skip) in batch.into_iter().zip(skip) {
            newest_commit = newest_commit.max(r.commit_time_micros);
            if skip {
                skipped += 1;
            } else {
                all.absorb(r.invalidations);
            }
        }
        let count = all.len() as u64;
        match apply(shared, &all).await {
            Ok(()) => {
                self.update(|s| {
                    s.echoes += skipped;
                    s.invalidations += count;
                });
                metrics::counter!("larder_cdc_echoes_skipped_total", "slot" => self.slot.clone())
                    .increment(skipped);
                metrics::counter!("larder_cdc_invalidations_total", "slot" => self.slot.clone())
                    .increment(count);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros() as i64)
                    .unwrap_or(0);
                let lag = (now - (newest_commit + PG_EPOCH_UNIX_MICROS)).max(0);
                metrics::gauge!("larder_cdc_lag_seconds", "slot" => self.slot.clone())
                    .set(lag as f64 / 1e6);
            }
            Err(e) => {
                tracing::debug!(error = %e, "change-stream invalidation not applied in redis");
                *degraded = true;
                self.update(|s| s.degraded = true);
            }
        }
    }
}
