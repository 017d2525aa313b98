//! Applying what the stream says changed: the same machinery as the
//! service's own invalidations (Redis, the bus, this process's L1, the loads
//! in flight), except that a failure is returned instead of deferred. The
//! listener confirms a position to PostgreSQL only once everything before it
//! was applied here, so a failure means "read it again", not "lost".

use super::mapping::Invalidations;
use crate::Error;
use crate::bus::Event;
use crate::cache::{Shared, echo_key};
use crate::family::unlink_matching;
use crate::key::matches_pattern;
use crate::registry::void_tagged;
use crate::scripts;
use crate::tier::redis::Batch;

/// Commands per pipeline: large transactions go out in slices.
const PER_BATCH: usize = 512;

/// Drops the loads in flight and this process's L1 copies: what is done
/// even when Redis cannot be reached.
pub(crate) fn apply_locally(shared: &Shared, inv: &Invalidations) {
    for key in inv.keys.keys() {
        shared.flights.void(key);
    }
    for tag in &inv.tags {
        void_tagged(&shared.flights, &shared.families, tag);
    }
    for pattern in &inv.patterns {
        shared
            .flights
            .void_matching(|k| matches_pattern(pattern, k));
    }
    if let Some(l1) = &shared.l1 {
        for key in inv.keys.keys() {
            l1.invalidate(key);
        }
        for tag in &inv.tags {
            l1.invalidate_tag(tag);
        }
        for pattern in &inv.patterns {
            l1.invalidate_pattern(pattern);
        }
    }
}

/// Applies `inv` in Redis and tells every process; `Ok` once Redis has all
/// of it.
pub(crate) async fn apply(shared: &Shared, inv: &Invalidations) -> Result<(), Error> {
    // Loads that started before the change may hold the old rows: void them
    // before the deletes, so none stores its value after.
    apply_locally(shared, inv);
    let Some(l2) = &shared.l2 else {
        return Ok(());
    };
    let mut pipe = Batch::new();
    let mut queued = 0usize;
    for (key, version) in &inv.keys {
        let lease = format!("{key}:lease");
        match version {
            Some(v) => {
                pipe.cmd("EVALSHA")
                    .arg(scripts::DEL_IF_OLDER.get_hash())
                    .arg(2)
                    .arg(key)
                    .arg(&lease)
                    .arg(scripts::version_arg(*v))
                    .ignore();
            }
            None => {
                pipe.cmd("UNLINK").arg(key).arg(&lease).ignore();
            }
        }
        // Processes waiting on a lease of this key look again.
        pipe.cmd("PUBLISH")
            .arg(&shared.fill_channel)
            .arg(key)
            .ignore();
        if let Some(bus) = &shared.bus {
            bus.add(&mut pipe, &Event::Key(key.clone()));
        }
        queued += 1;
        if queued >= PER_BATCH {
            l2.run_batch::<()>("UNLINK (change stream)", &pipe).await?;
            pipe = Batch::new();
            queued = 0;
        }
    }
    for tag in &inv.tags {
        shared.add_tag_bump(&mut pipe, tag);
        queued += 1;
        if queued >= PER_BATCH {
            l2.run_batch::<()>("INCR (change stream)", &pipe).await?;
            pipe = Batch::new();
            queued = 0;
        }
    }
    if queued > 0 {
        l2.run_batch::<()>("INCR (change stream)", &pipe).await?;
    }
    for pattern in &inv.patterns {
        unlink_matching(l2, pattern).await?;
        if let Some(bus) = &shared.bus {
            let mut pipe = Batch::new();
            bus.add(&mut pipe, &Event::Pattern(pattern.clone()));
            l2.run_batch::<()>("XADD", &pipe).await?;
        }
    }
    // And again, now that Redis has it: a load that started during the
    // round trips may have read an old value from Redis before the deletes
    // and put it in L1 since (see `Ctx::invalidate_key`).
    apply_locally(shared, inv);
    Ok(())
}

/// Which of `xids` their writers already invalidated. Without Redis there
/// are no marks: every transaction is applied.
pub(crate) async fn echoes(shared: &Shared, xids: &[u32]) -> Result<Vec<bool>, Error> {
    let Some(l2) = &shared.l2 else {
        return Ok(vec![false; xids.len()]);
    };
    if xids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = Batch::new();
    for xid in xids {
        pipe.cmd("EXISTS").arg(echo_key(&shared.namespace, *xid));
    }
    let found: Vec<u8> = l2.run_batch("EXISTS (echo)", &pipe).await?;
    Ok(found.into_iter().map(|n| n > 0).collect())
}
