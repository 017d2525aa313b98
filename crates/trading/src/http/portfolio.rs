//! `GET /api/users/{id}/portfolio`: cache-aside, 60 s (the article's
//! `getUserPortfolio`, minus its bugs).

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use super::auth::ActingFor;
use super::caching::{CachedJson, IfNoneMatch};
use super::error::{
    ApiError, BadRequest, Forbidden, InternalError, NotFound, TooManyRequests, Unauthorized,
    Unavailable,
};
use crate::app::AppState;
use crate::portfolio::Portfolio;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/users/{id}/portfolio", get(portfolio))
}

/// The user's portfolio, from the cache or (on a miss) the database: the
/// body rendered once per fill, a 304 when the client holds it already. An
/// unknown user is a 404 and is remembered as such by the cache.
#[utoipa::path(
    get,
    path = "/api/users/{id}/portfolio",
    tag = "users",
    operation_id = "getPortfolio",
    summary = "Get a user's portfolio",
    description = "The user's holdings valued at each instrument's last price. Cached: cache-aside, 60 s (an unknown user is cached as such).",
    security(("bearerAuth" = [])),
    params(("id" = crate::schema::UserId, Path, description = "The user id: a positive 64-bit integer (anything else is a 400)."), IfNoneMatch),
    responses(
        CachedJson<Portfolio>,
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
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
