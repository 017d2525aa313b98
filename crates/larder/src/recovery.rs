//! What happens to invalidations while Redis is unreachable, and after.
//!
//! A write or an invalidation that cannot reach Redis (it failed, or the
//! breaker is open) still drops this process's L1 copy at once, and is
//! *deferred*: its key, tag or pattern goes into a bounded journal, and the
//! call returns without an error (the database has the write; the caller has
//! nothing better to do than carry on). When the breaker closes again, the
//! journal is replayed — the Redis copies deleted, the tags bumped, the
//! other processes told through the bus — and then this process's whole L1
//! is flushed, since its bus connection may have missed other processes'
//! invalidations meanwhile. Until the replay, processes that still reach
//! Redis may serve the old value there: for at most the outage, and never
//! beyond the entry's TTL.
//!
//! Past `MAX_DEFERRED` distinct entries the journal stops listing them and
//! the replay deletes every family's keys instead (a pattern per family).
//! A process that dies with a non-empty journal loses it: the Redis copies
//! then age out by their TTL.

use std::sync::{Arc, Weak};

use tokio::sync::Notify;

use crate::Error;
use crate::breaker::BreakerState;
use crate::bus::Event;
use crate::cache::{Shared, TaskGuard};
use crate::deferred::Journal;
use crate::family::unlink_matching;
use crate::key::KeyLayout;
use crate::tier::redis::Batch;

/// Invalidations per replay round trip.
const REPLAY_BATCH: usize = 500;

/// How often the task looks in: to retry invalidations deferred by a lone
/// failure (the breaker stayed closed: no recovery will announce itself),
/// and to probe an open breaker when no request does.
const TICK: std::time::Duration = std::time::Duration::from_millis(250);
/// Starts the recovery task of the cache behind `shared`; `recoveries` is
/// woken whenever a breaker in front of Redis closes (on a cluster, any
/// master's).
pub(crate) fn spawn(shared: Weak<Shared>, recoveries: Arc<Notify>) -> TaskGuard {
    let task = tokio::spawn(async move {
        // Registered before each recovery is handled, so that one landing
        // while the previous replay runs is not missed.
        let mut next = Box::pin(recoveries.notified());
        next.as_mut().enable();
        loop {
            let recovered = tokio::select! {
                _ = next.as_mut() => true,
                _ = tokio::time::sleep(TICK) => false,
            };
            if recovered {
                next.set(recoveries.notified());
                next.as_mut().enable();
            }
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let Some(l2) = &shared.l2 else { return };
            match (recovered, l2.breaker_state()) {
                (true, _) => recover(&shared).await,
                (false, BreakerState::Closed) => {
                    if shared.deferred.len() > 0 {
                        retry(&shared).await;
                    }
                }
                // Open: a PING, which the breaker lets through as its probe
                // once it is due (and refuses before, without I/O). Without
                // it, a process with no traffic would stay open.
                (false, _) => l2.probe().await,
            }
        }
    });
    TaskGuard(task)
}

/// Replays what is deferred; what fails stays for the next try.
async fn retry(shared: &Shared) -> (usize, bool) {
    let journal = shared.deferred.take();
    let (count, overflowed) = (journal.len(), journal.overflowed);
    if !journal.is_empty()
        && let Err((e, undone)) = replay(shared, journal).await
    {
        tracing::warn!(error = %e, "replaying deferred invalidations failed; will try again");
        shared.deferred.restore(undone);
    }
    (count, overflowed)
}

/// After an outage: replay the journal, then flush L1.
async fn recover(shared: &Shared) {
    let (replayed, overflowed) = retry(shared).await;
    if let Some(l1) = &shared.l1 {
        l1.invalidate_all();
    }
    metrics::counter!("larder_redis_recoveries_total").increment(1);
    tracing::info!(
        replayed,
        overflowed,
        "redis recovered: deferred invalidations replayed, in-process tier flushed"
    );
}

/// Delivers the journal. On failure, returns what is still undone.
async fn replay(shared: &Shared, mut journal: Journal) -> Result<(), (Error, Journal)> {
    let Some(l2) = &shared.l2 else {
        return Ok(());
    };
    if journal.overflowed {
        // Everything: each family's keys, by a pattern of wildcards.
        let patterns: Vec<String> = shared
            .policies
            .values()
            .map(|p| KeyLayout::full(&shared.namespace, &p.template).match_all())
            .collect();
        for pattern in patterns {
            journal.patterns.insert(pattern);
        }
        journal.overflowed = false;
        if let Some(l1) = &shared.l1 {
            l1.invalidate_all();
        }
    }
    let keys: Vec<String> = journal.keys.iter().cloned().collect();
    for batch in keys.chunks(REPLAY_BATCH) {
        let mut pipe = Batch::new();
        for key in batch {
            pipe.cmd("UNLINK")
                .arg(key)
                .arg(format!("{key}:lease"))
                .ignore();
            pipe.cmd("PUBLISH")
                .arg(&shared.fill_channel)
                .arg(key)
                .ignore();
            if let Some(bus) = &shared.bus {
                bus.add(&mut pipe, &Event::Key(key.clone()));
            }
        }
        if let Err(e) = l2.run_batch::<()>("UNLINK (replay)", &pipe).await {
            return Err((e, journal));
        }
        for key in batch {
            journal.keys.remove(key);
        }
    }
    let tags: Vec<String> = journal.tags.iter().cloned().collect();
    for batch in tags.chunks(REPLAY_BATCH) {
        let mut pipe = Batch::new();
        for tag in batch {
            shared.add_tag_bump(&mut pipe, tag);
        }
        if let Err(e) = l2.run_batch::<()>("INCR (replay)", &pipe).await {
            return Err((e, journal));
        }
        for tag in batch {
            journal.tags.remove(tag);
        }
    }
    let patterns: Vec<String> = journal.patterns.iter().cloned().collect();
    for pattern in patterns {
        let delivered = async {
            unlink_matching(l2, &pattern).await?;
            if let Some(bus) = &shared.bus {
                let mut pipe = Batch::new();
                bus.add(&mut pipe, &Event::Pattern(pattern.clone()));
                l2.run_batch::<()>("XADD (replay)", &pipe).await?;
            }
            Ok::<(), Error>(())
        };
        if let Err(e) = delivered.await {
            return Err((e, journal));
        }
        journal.patterns.remove(&pattern);
    }
    Ok(())
}
