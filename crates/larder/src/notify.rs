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

use tokio::sync::{Notify, oneshot};

use crate::pubsub::Subscription;

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

/// Subscribes to `channel` and wakes `waiters` for every key published.
/// The receiver resolves once the first subscription is in place: a cache
/// that takes leases before it would miss the fills it waits for.
pub(crate) fn subscribe(
    dialer: crate::tier::redis::Dialer,
    channel: String,
    waiters: Arc<Waiters>,
    connect_timeout: Duration,
) -> (Subscription, oneshot::Receiver<()>) {
    let on_message = {
        let waiters = Arc::clone(&waiters);
        move |payload: &[u8]| {
            if let Ok(key) = std::str::from_utf8(payload) {
                waiters.wake(key);
            }
        }
    };
    // Whatever was published while we were away: look again.
    let on_gap = move || waiters.wake_all();
    crate::pubsub::listen(dialer, channel, connect_timeout, on_message, on_gap)
}
