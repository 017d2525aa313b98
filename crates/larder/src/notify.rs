//! Fill notifications: how a process waiting for another process's load
//! learns that it landed, without polling.
//!
//! The process holding a key's load lease publishes the key on
//! `<ns>:fills` when it fills (or gives up on) the key. Each process keeps
//! one subscription and wakes its local waiters for that key. Pub/sub may
//! drop a message (during a reconnect): waiters also have a deadline, and a
//! reconnect wakes them all so that they look again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// The waiters of one process, by key.
#[derive(Default)]
pub(crate) struct Waiters {
    map: Mutex<HashMap<String, Weak<Notify>>>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<Notify>>> {
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The notifier of `key`, shared by everyone waiting on it here.
    pub fn for_key(&self, key: &str) -> Arc<Notify> {
        let mut map = self.lock();
        if let Some(n) = map.get(key).and_then(Weak::upgrade) {
            return n;
        }
        if map.len() > 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let n = Arc::new(Notify::new());
        map.insert(key.to_owned(), Arc::downgrade(&n));
        n
    }

    fn wake(&self, key: &str) {
        let n = self.lock().get(key).and_then(Weak::upgrade);
        if let Some(n) = n {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        let all: Vec<Arc<Notify>> = self.lock().values().filter_map(Weak::upgrade).collect();
        for n in all {
            n.notify_waiters();
        }
    }
}

/// The subscription task; stops when dropped.
pub(crate) struct Subscription {
    task: JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes to `channel` and wakes `waiters` for every key published.
/// The receiver resolves once the first subscription is in place: a cache
/// that takes leases before it would miss the fills it waits for.
pub(crate) fn subscribe(
    dialer: crate::tier::redis::Dialer,
    channel: String,
    waiters: Arc<Waiters>,
    connect_timeout: Duration,
) -> (Subscription, oneshot::Receiver<()>) {
    let (subscribed_tx, subscribed) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        let mut backoff = Duration::from_millis(50);
        // Which node to subscribe on (a cluster's nodes all relay plain
        // pub/sub): the next one after each failure.
        let mut attempt = 0usize;
        loop {
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
                    // Whatever was published while we were away: look again.
                    waiters.wake_all();
                }
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    if let Ok(key) = std::str::from_utf8(msg.get_payload_bytes()) {
                        waiters.wake(key);
                    }
                }
                Ok::<(), String>(())
            };
            if let Err(e) = session.await {
                attempt += 1;
                tracing::debug!(error = %e, "fill notifications disconnected; reconnecting");
            } else {
                backoff = Duration::from_millis(50);
            }
            waiters.wake_all();
            // Bounded exponential backoff; the wait is the point here.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
    (Subscription { task }, subscribed)
}
