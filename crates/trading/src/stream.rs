//! The live price stream's fan-out. The feed publishes each price update
//! once; every instance hears it and hands it to its WebSocket clients.
//!
//! With Redis, updates travel over Redis pub/sub (channel
//! `{namespace}:prices`, through [`Cache::publish`] and [`Cache::subscribe`],
//! which work on one server, Sentinel and Cluster alike), so a client on any
//! instance sees the updates of every instance's feed. Without Redis the hub
//! is in-process only.
//!
//! Inside the process one `tokio::sync::broadcast` channel of fixed
//! capacity carries updates to the connections: its ring buffer is shared,
//! so memory does not grow with slow clients. A client that falls a whole
//! ring behind is told so (`Lagged`) and disconnected.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use larder::{Cache, Subscription};
use tokio::sync::broadcast;

use crate::price::Price;

/// The pub/sub channel (under the cache's namespace).
const CHANNEL: &str = "prices";

/// Updates buffered for all connections together.
pub const CAPACITY: usize = 1024;

/// One price update, encoded once for every connection.
#[derive(Debug, Clone)]
pub struct Tick {
    /// Ticker symbol (what connections filter on).
    pub symbol: Arc<str>,
    /// The JSON text sent to clients: `{"symbol","price","version"}`.
    pub json: Arc<str>,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    tx: broadcast::Sender<Tick>,
    /// Publishes to every instance (with Redis).
    cache: Cache,
    connections: AtomicUsize,
    max_connections: usize,
    /// Relays other instances' ticks (with Redis); stops when dropped.
    _relay: Option<Subscription>,
}

/// Holds one connection slot; frees it on drop.
pub struct Slot(Hub);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.inner.connections.fetch_sub(1, Relaxed);
        metrics::gauge!("trading_ws_connections").decrement(1.0);
    }
}

impl Hub {
    /// A hub relayed through the cache's Redis, or in-process without one.
    pub fn new(cache: &Cache, max_connections: usize) -> Hub {
        let (tx, _) = broadcast::channel(CAPACITY);
        // Messages published while the relay reconnects are gone: a price
        // stream only needs the next update, so a gap needs no action.
        let relay = {
            let tx = tx.clone();
            cache.subscribe(CHANNEL, move |payload| relay(&tx, payload), || {})
        };
        Hub {
            inner: Arc::new(Inner {
                tx,
                cache: cache.clone(),
                connections: AtomicUsize::new(0),
                max_connections,
                _relay: relay,
            }),
        }
    }

    /// Sends an update to every instance's clients (this one's included).
    pub async fn publish(&self, price: &Price) {
        let Ok(json) = serde_json::to_string(price) else {
            return;
        };
        match self.inner.cache.publish(CHANNEL, json.as_bytes()).await {
            Ok(true) => {}
            // No Redis: this instance's clients only.
            Ok(false) => self.local(&price.symbol, json),
            Err(e) => {
                // A failed publish loses one tick for the other instances; the
                // next follows within a second.
                tracing::debug!(error = %e, "price stream: publish failed; delivering locally");
                self.local(&price.symbol, json);
            }
        }
    }

    fn local(&self, symbol: &str, json: String) {
        // No receivers is not an error: nobody is watching.
        let _ = self.inner.tx.send(Tick {
            symbol: symbol.into(),
            json: json.into(),
        });
    }

    /// A receiver for a new connection, with its slot; `None` when the
    /// instance already holds its maximum of connections.
    pub fn subscribe(&self) -> Option<(Slot, broadcast::Receiver<Tick>)> {
        let taken = self.inner.connections.fetch_add(1, Relaxed);
        let slot = Slot(self.clone());
        metrics::gauge!("trading_ws_connections").increment(1.0);
        if taken >= self.inner.max_connections {
            return None; // the slot's drop gives it back
        }
        Some((slot, self.inner.tx.subscribe()))
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Relaxed)
    }
}

/// Hands one published tick to this instance's connections.
fn relay(tx: &broadcast::Sender<Tick>, payload: &[u8]) {
    let Ok(json) = std::str::from_utf8(payload) else {
        return;
    };
    let symbol = serde_json::from_str::<Price>(json)
        .map(|p| p.symbol)
        .unwrap_or_default();
    if symbol.is_empty() {
        return;
    }
    // No receivers is not an error: nobody is watching.
    let _ = tx.send(Tick {
        symbol: symbol.into(),
        json: json.into(),
    });
}
