//! Invalidation from PostgreSQL's change stream for the service: the
//! `[invalidate.*]` tables of the cache policies, read by a
//! `larder::cdc::ChangeListener` in every instance (one holds the slot).
//!
//! Price updates (`instruments`) are deliberately not mapped to portfolios:
//! every tick of one instrument would invalidate the portfolio of every user
//! who holds it (thousands of keys per tick, at ~20 ticks/s, each followed
//! by a reload). A portfolio's prices are bounded by its 60 s TTL instead,
//! as in the article; the price family itself is written through by the
//! feed and lives two seconds.

use std::sync::Arc;

use anyhow::Context;
use larder::Cache;
use larder::cdc::{ChangeListener, Mapping};

use crate::app::DEFAULT_POLICIES;
use crate::settings::ServeArgs;

/// The text of the policy file in use (the built-in one or the one given).
fn policy_text(args: &ServeArgs) -> anyhow::Result<String> {
    match &args.cache_config {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        }
        None => Ok(DEFAULT_POLICIES.to_string()),
    }
}

/// Starts the listener when `LARDER_CDC` is on, and waits (up to
/// `LARDER_CDC_CATCH_UP`) until the changes committed while this instance
/// was down are applied, so that it never serves them stale from Redis.
pub async fn start(args: &ServeArgs, cache: &Cache) -> anyhow::Result<Option<Arc<ChangeListener>>> {
    if !args.cdc.enabled || args.no_cache {
        return Ok(None);
    }
    let Some(url) = &args.db.database_url else {
        anyhow::bail!(
            "LARDER_CDC needs PostgreSQL (DATABASE_URL): the embedded SQLite has no change stream"
        );
    };
    let mapping =
        Mapping::from_toml_str(&policy_text(args)?).context("the [invalidate.*] tables")?;
    if mapping.is_empty() {
        anyhow::bail!("LARDER_CDC is on but the cache policies have no [invalidate.<table>] table");
    }
    let slot = args.cdc.slot_name(&args.namespace);
    let listener = ChangeListener::builder(cache, url)
        .slot(&slot)
        .publication(&args.cdc.publication)
        .mapping(mapping)
        .start()
        .await
        .context("starting the change-stream listener (LARDER_CDC)")?;
    if listener.caught_up(args.cdc.catch_up).await {
        tracing::info!(slot = %slot, consumer = listener.stats().consumer, "change stream caught up");
    } else {
        tracing::warn!(
            slot = %slot,
            "the change stream did not catch up within {:?}: serving anyway; changes made while this instance was down may be served stale until applied",
            args.cdc.catch_up
        );
    }
    Ok(Some(Arc::new(listener)))
}

/// `trading cdc-drop-slot`: drops the service's replication slot (when
/// retiring it, or after turning LARDER_CDC off for good), so PostgreSQL
/// stops keeping WAL for it.
pub async fn drop_slot_command(args: ServeArgs) -> anyhow::Result<()> {
    use sqlx::Connection;
    let Some(url) = &args.db.database_url else {
        anyhow::bail!("cdc-drop-slot needs DATABASE_URL");
    };
    let slot = args.cdc.slot_name(&args.namespace);
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .context("connecting to PostgreSQL")?;
    let active: Option<Option<i32>> =
        sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
            .bind(&slot)
            .fetch_optional(&mut conn)
            .await?;
    match active {
        None => println!("no replication slot {slot}"),
        Some(Some(pid)) => anyhow::bail!(
            "replication slot {slot} is in use by PostgreSQL backend {pid}: stop the service instances (or turn LARDER_CDC off) first"
        ),
        Some(None) => {
            sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(&slot)
                .execute(&mut conn)
                .await?;
            println!("dropped replication slot {slot}");
        }
    }
    Ok(())
}
