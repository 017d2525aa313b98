//! Plain Redis pub/sub with reconnection: fill notifications, and
//! [`Cache::subscribe`](crate::Cache::subscribe) for applications (the
//! reference service's price stream).
//!
//! Pub/sub delivers at most once: what is published while a subscriber
//! reconnects is gone. So each subscriber is told when that may have
//! happened (`on_gap`) and decides: fill waiters look again, a price stream
//! just takes the next tick. Invalidations do not travel this way (see
//! `bus.rs`, a stream that replays).
//!
//! On a cluster, a plain `PUBLISH` reaches the subscribers of every node, so
//! one subscription on any node hears the whole cluster; after a failure
//! the next attempt goes to the next node. Sharded pub/sub (`SPUBLISH`)
//! would keep a message on its slot's node, but then a process must
//! subscribe on every node to hear every key's fills; for messages that
//! every process wants, the plain kind is the one that fits.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::tier::redis::Dialer;

/// A running subscription; dropping it unsubscribes.
#[must_use = "the subscription ends when this is dropped"]
pub struct Subscription {
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes to `channel` through `dialer`, calling `on_message` with each
/// payload and `on_gap` after every reconnection (messages may have been
/// missed). The receiver resolves once the first subscription is in place.
pub(crate) fn listen(
    dialer: Dialer,
    channel: String,
    connect_timeout: Duration,
    on_message: impl Fn(&[u8]) + Send + Sync + 'static,
    on_gap: impl Fn() + Send + Sync + 'static,
) -> (Subscription, oneshot::Receiver<()>) {
    let (subscribed_tx, subscribed) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        let mut backoff = Duration::from_millis(50);
        // Which node to subscribe on (a cluster's nodes all relay plain
        // pub/sub): the next one after each failure.
        let mut attempt = 0usize;
        loop {
            let generation = dialer.generation();
            let session = async {
                let client = dialer.pubsub_client(attempt).map_err(|e| e.to_string())?;
                let mut pubsub = tokio::time::timeout(connect_timeout, client.get_async_pubsub())
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                pubsub
                    .subscribe(&channel)
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(tx) = subscribed_tx.take() {
                    let _ = tx.send(());
                } else {
                    on_gap();
                }
                let mut messages = pubsub.on_message();
                loop {
                    // A Sentinel failover moved the master: a subscription on
                    // the old one (if it still answers) hears nothing new.
                    let next = tokio::time::timeout(Duration::from_secs(1), messages.next()).await;
                    match next {
                        Ok(Some(msg)) => on_message(msg.get_payload_bytes()),
                        Ok(None) => break,
                        Err(_) if dialer.generation() != generation => break,
                        Err(_) => {}
                    }
                }
                Ok::<(), String>(())
            };
            if let Err(e) = session.await {
                attempt += 1;
                tracing::debug!(error = %e, channel, "pub/sub disconnected; reconnecting");
            } else {
                backoff = Duration::from_millis(50);
            }
            on_gap();
            // Bounded exponential backoff; the wait is the point here.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
    (Subscription { task }, subscribed)
}
