//! `GET /api/users/{id}/portfolio`: cache-aside, 60 s (the article's
//! `getUserPortfolio`, minus its bugs).

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use super::auth::ActingFor;
use super::caching::{CachedJson, IfNoneMatch};
use super::error::ApiError;
use crate::app::AppState;
use crate::portfolio::Portfolio;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/users/{id}/portfolio", get(portfolio))
}

/// The user's portfolio, from the cache or (on a miss) the database: the
/// body rendered once per fill, a 304 when the client holds it already. An
/// unknown user is a 404 and is remembered as such by the cache.
async fn portfolio(
    State(app): State<AppState>,
    ActingFor(id): ActingFor,
    if_none_match: IfNoneMatch,
) -> Result<CachedJson<Portfolio>, ApiError> {
    let db = app.db.clone();
    let portfolio = app
        .portfolios
        .get_or_load_rendered(&id, move || async move { db.portfolio(id).await })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))?;
    Ok(CachedJson::private(portfolio, if_none_match))
}
