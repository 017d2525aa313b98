//! `GET/PUT /api/users/{id}/watchlist`: cache-aside five minutes; writes go
//! behind (the article's `updateWatchlist`): acknowledged once cached and
//! queued, persisted in batches by the service's worker.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use super::error::ApiError;
use super::extract::{JsonBody, UserId};
use crate::app::AppState;
use crate::watchlist::{Watchlist, WatchlistUpdate};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/users/{id}/watchlist", get(watchlist).put(update))
}

/// The user's watchlist (a write not yet persisted included).
async fn watchlist(
    State(app): State<AppState>,
    UserId(id): UserId,
) -> Result<Json<Arc<Watchlist>>, ApiError> {
    let db = app.db.clone();
    app.watchlists
        .get_or_load(&id, move || async move { db.watchlist(id).await })
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))
}

/// Caches and queues the new watchlist; 202 Accepted: the database gets it
/// shortly, and reads return it meanwhile.
async fn update(
    State(app): State<AppState>,
    UserId(id): UserId,
    JsonBody(body): JsonBody<WatchlistUpdate>,
) -> Result<(StatusCode, Json<Watchlist>), ApiError> {
    body.validate().map_err(ApiError::BadRequest)?;
    // A write for a user who does not exist would only fail in the worker.
    app.profile(id).await?;
    let watchlist = Watchlist {
        user_id: id,
        symbols: body.symbols,
    };
    app.watchlists.write_behind(&id, watchlist.clone()).await?;
    Ok((StatusCode::ACCEPTED, Json(watchlist)))
}
