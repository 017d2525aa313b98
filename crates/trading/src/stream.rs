//! The live price stream's fan-out. The feed publishes each price update
//! once; every instance hears it and hands it to its WebSocket clients.
//!
//! With Redis, updates travel over Redis pub/sub (channel
//! `{namespace}:prices`), so a client on any instance sees the updates of
//! every instance's feed. Without Redis the hub is in-process only.
//!
//! Inside the process one `tokio::sync::broadcast` channel of fixed
//! capacity carries updates to the connections: its ring buffer is shared,
//! so memory does not grow with slow clients. A client that falls a whole
//! ring behind is told so (`Lagged`) and disconnected.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::price::Price;

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
    channel: String,
    publisher: Option<ConnectionManager>,
    connections: AtomicUsize,
    max_connections: usize,
    relay: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.relay.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
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
    /// An in-process hub, or one relayed through Redis at `redis_url`.
    pub async fn new(
        redis_url: Option<&str>,
        namespace: &str,
        max_connections: usize,
    ) -> anyhow::Result<Hub> {
        let (tx, _) = broadcast::channel(CAPACITY);
        let channel = format!("{namespace}:prices");
        let (publisher, client) = match redis_url {
            Some(url) => {
                let client = redis::Client::open(url)?;
                // A publisher that reconnects by itself; a failed publish
                // loses one tick, the next one follows within a second.
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_millis(500)));
                let manager = match tokio::time::timeout(
                    Duration::from_secs(3),
                    ConnectionManager::new_with_config(client.clone(), config),
                )
                .await
                {
                    Ok(Ok(m)) => Some(m),
                    _ => {
                        tracing::warn!(
                            "price stream: Redis not reachable; updates stay in this instance until it is"
                        );
                        None
                    }
                };
                (manager, Some(client))
            }
            None => (None, None),
        };
        let hub = Hub {
            inner: Arc::new(Inner {
                tx,
                channel,
                publisher,
                connections: AtomicUsize::new(0),
                max_connections,
                relay: std::sync::Mutex::new(None),
            }),
        };
        if let Some(client) = client {
            let task = tokio::spawn(relay(
                client,
                hub.inner.channel.clone(),
                hub.inner.tx.clone(),
            ));
            if let Ok(mut slot) = hub.inner.relay.lock() {
                *slot = Some(task);
            }
        }
        Ok(hub)
    }

    /// Sends an update to every instance's clients (this one's included).
    pub async fn publish(&self, price: &Price) {
        let Ok(json) = serde_json::to_string(price) else {
            return;
        };
        match &self.inner.publisher {
            Some(conn) => {
                let mut conn = conn.clone();
                let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(&self.inner.channel)
                    .arg(&json)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "price stream: publish failed; delivering locally");
                    self.local(&price.symbol, json);
                }
            }
            None => self.local(&price.symbol, json),
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

/// Relays `channel` into the broadcast channel, resubscribing after any
/// error (messages published while disconnected are gone: a price stream
/// only needs the next update).
async fn relay(client: redis::Client, channel: String, tx: broadcast::Sender<Tick>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(json) = msg.get_payload::<String>() else {
                            continue;
                        };
                        let symbol = serde_json::from_str::<Price>(&json)
                            .map(|p| p.symbol)
                            .unwrap_or_default();
                        if symbol.is_empty() {
                            continue;
                        }
                        let _ = tx.send(Tick {
                            symbol: symbol.into(),
                            json: json.into(),
                        });
                    }
                    tracing::debug!("price stream: Redis subscription ended; resubscribing");
                }
                Err(e) => tracing::debug!(error = %e, "price stream: subscribe failed"),
            },
            Err(e) => tracing::debug!(error = %e, "price stream: cannot reach Redis"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
