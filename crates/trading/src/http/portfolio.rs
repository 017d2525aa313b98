//! `GET /api/users/{id}/portfolio`: cache-aside, 60 s (the article's
//! `getUserPortfolio`, minus its bugs).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::auth::ActingFor;
use super::error::ApiError;
use crate::app::AppState;
use crate::portfolio::Portfolio;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/users/{id}/portfolio", get(portfolio))
}

/// The user's portfolio, from the cache or (on a miss) the database. An
/// unknown user is a 404 and is remembered as such by the cache.
async fn portfolio(
    State(app): State<AppState>,
    ActingFor(id): ActingFor,
) -> Result<Json<Arc<Portfolio>>, ApiError> {
    let db = app.db.clone();
    app.portfolios
        .get_or_load(&id, move || async move { db.portfolio(id).await })
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))
}
