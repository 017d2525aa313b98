//! `GET/PUT /api/users/{id}/profile`: cache-aside, one hour; a write deletes
//! the cached profile and invalidates everything tagged with the user.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::auth::ActingFor;
use super::caching::{CachedJson, IfNoneMatch};
use super::error::{
    ApiError, BadRequest, Conflict, Forbidden, InternalError, NotFound, PayloadTooLarge,
    TooManyRequests, Unauthorized, Unavailable,
};
use super::extract::JsonBody;
use crate::app::AppState;
use crate::profile::{Profile, ProfileUpdate};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/users/{id}/profile", get(profile).put(update))
}

/// The user's profile, from the cache or the database (private; a 304
/// when the client holds the current one).
#[utoipa::path(
    get,
    path = "/api/users/{id}/profile",
    tag = "users",
    operation_id = "getProfile",
    summary = "Get a user's profile",
    description = "The user's name and email. Cached: cache-aside, 1 h; a `PUT` deletes the cached copy.",
    security(("bearerAuth" = [])),
    params(("id" = crate::schema::UserId, Path, description = "The user id: a positive 64-bit integer (anything else is a 400)."), IfNoneMatch),
    responses(
        CachedJson<Profile>,
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
async fn profile(
    State(app): State<AppState>,
    ActingFor(id): ActingFor,
    if_none_match: IfNoneMatch,
) -> Result<CachedJson<Profile>, ApiError> {
    let db = app.db.clone();
    let profile = app
        .profiles
        .get_or_load_rendered(&id, move || async move { db.profile(id).await })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))?;
    Ok(CachedJson::private(profile, if_none_match))
}

/// Writes the database, then deletes the cached profile and bumps the
/// user's tag, so that every process drops its portfolio, watchlist and
/// profile copies (the article's "delete on write" and pattern
/// invalidation, without the pattern).
#[utoipa::path(
    put,
    path = "/api/users/{id}/profile",
    tag = "users",
    operation_id = "putProfile",
    summary = "Update a user's profile",
    description = "Writes the database, then deletes the cached profile and invalidates everything cached for the user (in every instance).",
    security(("bearerAuth" = [])),
    params(("id" = crate::schema::UserId, Path, description = "The user id: a positive 64-bit integer (anything else is a 400).")),
    request_body = ProfileUpdate,
    responses(
        (status = 200, description = "The updated profile.", body = Profile),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
async fn update(
    State(app): State<AppState>,
    ActingFor(id): ActingFor,
    JsonBody(body): JsonBody<ProfileUpdate>,
) -> Result<Json<Profile>, ApiError> {
    body.validate().map_err(ApiError::BadRequest)?;
    let (updated, xid) = app
        .db
        .update_profile(id, &body)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))?;
    // The database has the write. If Redis is unreachable, larder drops this
    // process's copies now and replays both invalidations when Redis answers
    // again; these only fail on a programming error (a bad tag template).
    if let Err(e) = app.profiles.invalidate(&id).await {
        tracing::warn!(user = id, error = %e, "profile updated, but its cached copy could not be deleted");
    }
    if let Err(e) = app.cache.invalidate_tag("user:{user_id}", &id).await {
        tracing::warn!(user = id, error = %e, "profile updated, but the user's cached data could not be invalidated");
    }
    // Both invalidations are made: the change stream need not repeat them.
    app.skip_echo(xid).await;
    Ok(Json(updated))
}
