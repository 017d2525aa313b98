//! `GET /ws/prices?symbols=TCS,INFY`: a WebSocket that first sends the
//! current price of each symbol asked for (from the cache, one multi-key
//! round trip), then pushes each update (`{"symbol","price","version"}`),
//! from whichever instance's feed made it (see [`crate::stream`]). A client
//! may see a price twice around the snapshot; `version` orders them.
//!
//! Memory per connection is bounded: small read and write buffers, one
//! receiver on the shared ring, and a client that cannot keep up (it falls
//! a ring behind, or one send takes longer than [`SEND_TIMEOUT`]) is
//! disconnected with close code 1013 ("try again later").

use std::collections::HashSet;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::error::{ApiError, BadRequest, TooManyRequests, Unavailable};
use crate::app::AppState;
use crate::stream::{Slot, Tick};

/// Longest one message may take to reach a client.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Most symbols one connection may follow.
pub const MAX_SYMBOLS: usize = 50;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ws/prices", get(prices))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    symbols: String,
}

/// Opens the price stream: the snapshot, then every update.
#[utoipa::path(
    get,
    path = "/ws/prices",
    tag = "stocks",
    operation_id = "streamPrices",
    summary = "Stream prices (WebSocket)",
    description = "A WebSocket upgrade (`Connection: Upgrade`, `Upgrade: websocket`). Once open, the server first sends the current price of each asked symbol that exists (in symbol order), then pushes a text message for each price update of the asked symbols, each a JSON `Price` object `{\"symbol\", \"price\", \"version\"}`. A client that does not keep up with the stream is disconnected.",
    params(
        ("symbols" = String, Query, description = "Comma-separated ticker symbols, up to 50 (e.g. `AAA,BBB`).",
            pattern = r"^ *[A-Z0-9.&-]{1,20} *(, *[A-Z0-9.&-]{1,20} *){0,49}$", example = "AAPL,MSFT"),
        ("Upgrade" = String, Header, description = "`websocket`: the WebSocket upgrade (RFC 6455)."),
        ("Connection" = String, Header, description = "`Upgrade`: the WebSocket upgrade (RFC 6455)."),
        ("Sec-WebSocket-Version" = String, Header, description = "WebSocket protocol version: `13`."),
        ("Sec-WebSocket-Key" = String, Header, description = "16 random bytes, base64 (RFC 6455 §4.1).",
            pattern = "^[A-Za-z0-9+/]{22}==$"),
    ),
    responses(
        (status = 101, description = "Switching protocols: the WebSocket is open; each server message is a JSON text message shaped like `#/components/schemas/Price`."),
        (status = 400, response = BadRequest),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
)]
async fn prices(
    State(app): State<AppState>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // A plain GET (a browser tab, a health checker) gets a JSON 400 like
    // every other client error, not axum's plain-text rejection.
    let ws = ws.map_err(|e| {
        ApiError::BadRequest(format!(
            "a WebSocket upgrade is expected: {}",
            e.body_text()
        ))
    })?;
    let Query(query) = query.map_err(|_| {
        ApiError::BadRequest("give the symbols to follow: /ws/prices?symbols=TCS,INFY".into())
    })?;
    let symbols: HashSet<String> = query
        .symbols
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if symbols.is_empty()
        || symbols.len() > MAX_SYMBOLS
        || !symbols.iter().all(|s| crate::watchlist::valid_symbol(s))
    {
        return Err(ApiError::BadRequest(format!(
            "symbols: 1 to {MAX_SYMBOLS} comma-separated symbols of A-Z, 0-9, `.`, `&`, `-`"
        )));
    }
    // Subscribed before the snapshot is read: an update in between is
    // delivered (perhaps twice), never lost.
    let Some((slot, rx)) = app.hub.subscribe() else {
        return Err(ApiError::Unavailable(anyhow::anyhow!(
            "this instance holds its maximum of price-stream connections"
        )));
    };
    let snapshot = snapshot(&app, &symbols).await;
    Ok(ws
        // Clients only send pings and close frames.
        .max_message_size(4 * 1024)
        .max_frame_size(4 * 1024)
        // The defaults are 128 KiB each: most of an idle connection's cost.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .on_upgrade(move |socket| follow(socket, snapshot, symbols, rx, slot)))
}

/// The current prices of `symbols` as JSON texts (unknown symbols left
/// out). Without them (the database is down and nothing is cached) the
/// stream starts with the next update.
async fn snapshot(app: &AppState, symbols: &HashSet<String>) -> Vec<String> {
    let mut wanted: Vec<String> = symbols.iter().cloned().collect();
    wanted.sort();
    match app.prices_of(&wanted).await {
        Ok(prices) => prices
            .into_iter()
            .flatten()
            .filter_map(|p| serde_json::to_string(&*p).ok())
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "price stream: no snapshot");
            Vec::new()
        }
    }
}

/// Pushes matching ticks until the client leaves or falls behind.
async fn follow(
    mut socket: WebSocket,
    snapshot: Vec<String>,
    symbols: HashSet<String>,
    mut rx: tokio::sync::broadcast::Receiver<Tick>,
    _slot: Slot,
) {
    for json in snapshot {
        match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::text(json))).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
    loop {
        tokio::select! {
            tick = rx.recv() => match tick {
                Ok(tick) => {
                    if !symbols.contains(&*tick.symbol) {
                        continue;
                    }
                    let send = socket.send(Message::text(&*tick.json));
                    match tokio::time::timeout(SEND_TIMEOUT, send).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return,
                        Err(_) => {
                            metrics::counter!("trading_ws_dropped_total", "reason" => "send_timeout").increment(1);
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    metrics::counter!("trading_ws_dropped_total", "reason" => "lagged").increment(1);
                    let close = Message::Close(Some(CloseFrame {
                        code: 1013,
                        reason: "too slow: reconnect".into(),
                    }));
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(close)).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                // Pings are answered by the library; anything else from the
                // client is ignored; a close or an error ends the stream.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
