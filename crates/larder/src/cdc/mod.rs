//! Invalidation from PostgreSQL's own change stream (feature
//! `postgres-cdc`): every committed change to a mapped table invalidates the
//! keys and tags it affects, in every process, whoever made it — the
//! service, a migration, a batch job, an admin in `psql`.
//!
//! ```text
//!  PostgreSQL WAL ─▶ slot (pgoutput) ─▶ ChangeListener (one process holds the slot)
//!                                        │ per transaction: rows → keys/tags (Mapping)
//!                                        ▼
//!                      Redis UNLINK/INCR + bus ─▶ every process's L1
//!                                        │ durable in Redis?
//!                                        ▼
//!                      confirm the position to PostgreSQL
//! ```
//!
//! - **Nothing lost.** The slot's position is confirmed to PostgreSQL only
//!   after the invalidations up to it are in Redis, so a restart of the
//!   service, of Redis or of PostgreSQL resumes where the cache stopped
//!   being told. [`ChangeListener::caught_up`] waits until the changes
//!   committed before the listener started are applied: a service awaits it
//!   before it serves, so a change made while it was down is never served
//!   stale from Redis.
//! - **One consumer.** A slot has one reader at a time; PostgreSQL enforces
//!   it. Every instance runs a listener; one holds the slot, the others
//!   retry every [`retry_every`](ChangeListenerBuilder::retry_every) and take
//!   over within that once its connection is gone.
//! - **Redis down.** The listener keeps reading, drops this process's L1
//!   copies directly, and stops confirming (PostgreSQL keeps the WAL). When
//!   Redis answers again it re-reads from the last confirmed position.
//! - **Echoes.** The service's own writes come back through the stream. With
//!   a [`TableRule::version`] column a key whose cached version is at least
//!   the row's is kept; with [`Cache::skip_echo`](crate::Cache::skip_echo)
//!   a transaction the writer already invalidated is skipped. Either way the
//!   echo costs no database load.
//!
//! The server needs `wal_level = logical`; the listener says so at start if
//! it is not. It creates the publication and the slot when they are missing
//! (that takes the `REPLICATION` attribute and ownership of the tables, or a
//! superuser). Mapped columns must be in the table's replica identity (its
//! primary key by default): a delete sends nothing else. The start fails
//! with the `ALTER TABLE … REPLICA IDENTITY …` to run when they are not.
//!
//! A slot that nobody reads keeps WAL on the server forever: watch
//! `larder_cdc_slot_lag_bytes`, and drop the slot of a service you retire
//! with [`ChangeListener::drop_slot`] (or
//! `SELECT pg_drop_replication_slot('<slot>')`).

mod apply;
mod listener;
mod mapping;
mod pgoutput;

pub use listener::{ChangeListener, ChangeListenerBuilder, ChangeStats};
pub use mapping::{Mapping, TableRule};
