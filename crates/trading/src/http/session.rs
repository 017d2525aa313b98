//! `POST /api/sessions` (login), `GET /api/sessions/me`,
//! `DELETE /api/sessions/me` (logout). Sessions are written through: the
//! database row first, then the `session` family.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{
    ApiError, BadRequest, Forbidden, InternalError, PayloadTooLarge, TooManyRequests, Unauthorized,
    Unavailable,
};
use super::extract::JsonBody;
use crate::app::AppState;
use crate::db::DbError;
use crate::order::rfc3339;
use crate::session::{self, Session, new_token, now_ms, password, token_hash};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/sessions", post(login))
        .route("/api/sessions/me", get(me).delete(logout))
}

/// The body of `POST /api/sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = LoginRequest)]
pub(super) struct Credentials {
    email: String,
    #[schema(format = Password)]
    password: String,
}

/// A new session.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Session)]
pub(super) struct Created {
    /// The bearer token: 64 hex characters.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    token: String,
    #[schema(value_type = crate::schema::UserId)]
    user_id: i64,
    /// When the session expires unless used.
    #[schema(value_type = crate::schema::Timestamp)]
    expires_at: String,
}

/// The caller's session.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SessionInfo)]
pub(super) struct Me {
    #[schema(value_type = crate::schema::UserId)]
    user_id: i64,
    /// When the session expires unless used; each use slides it to 30
    /// minutes from now (at most once a minute).
    #[schema(value_type = crate::schema::Timestamp)]
    expires_at: String,
}

/// Logs in.
#[utoipa::path(
    post,
    path = "/api/sessions",
    tag = "sessions",
    operation_id = "createSession",
    summary = "Log in",
    description = "Checks the credentials and opens a session; its token goes in `Authorization: Bearer <token>`. Sessions are cached write-through with a sliding 30-minute expiry. Login attempts are rate limited more tightly than other requests.",
    request_body = Credentials,
    responses(
        (status = 201, description = "The new session.", body = Created),
        (status = 400, response = BadRequest),
        (status = 401, description = "Wrong email or password.", body = super::error::ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
async fn login(
    State(app): State<AppState>,
    JsonBody(creds): JsonBody<Credentials>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    if creds.email.len() > 254 || creds.password.len() > 1024 {
        return Err(ApiError::Unauthorized);
    }
    let found = app.db.login(&creds.email).await?;
    let (user_id, stored) = match found {
        Some((id, Some(hash))) => (Some(id), hash),
        // Unknown email: verify against a decoy hash anyway, so that a
        // wrong email costs the same time as a wrong password (no account
        // enumeration by timing).
        _ => (None, password::decoy().to_string()),
    };
    // argon2 is CPU-bound by design: off the async workers, a core's worth
    // at a time (the request's deadline bounds the wait for a slot).
    let _slot = app
        .login_slots
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let pw = creds.password;
    let ok = tokio::task::spawn_blocking(move || password::verify(&pw, &stored))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let Some(user_id) = user_id.filter(|_| ok) else {
        metrics::counter!("trading_logins_total", "result" => "refused").increment(1);
        return Err(ApiError::Unauthorized);
    };
    let token = new_token();
    let hash = token_hash(&token);
    let session = Session {
        user_id,
        expires_at_ms: now_ms() + session::SESSION_TTL.as_millis() as u64,
    };
    let db = app.db.clone();
    let stored = session.clone();
    let key = hash;
    app.sessions
        .write_through(&hash, async move {
            db.create_session(&key, &stored).await?;
            Ok::<_, DbError>(larder::Versioned {
                version: stored.expires_at_ms,
                value: stored,
            })
        })
        .await?;
    metrics::counter!("trading_logins_total", "result" => "ok").increment(1);
    Ok((
        StatusCode::CREATED,
        Json(Created {
            token,
            user_id,
            expires_at: rfc3339(session.expires_at_ms as i64),
        }),
    ))
}

/// The caller's session.
#[utoipa::path(
    get,
    path = "/api/sessions/me",
    tag = "sessions",
    operation_id = "getSession",
    summary = "Get the current session",
    description = "The session of the bearer token. Sliding expiry: each use of a session extends it to 30 minutes from now (at most once a minute). The service token has no session: `403`.",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The session.", body = Me),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
async fn me(State(app): State<AppState>, caller: Caller) -> Result<Json<Me>, ApiError> {
    let Caller::User { token_hash, .. } = caller else {
        // The service token acts for users; it is not a session.
        return Err(ApiError::Forbidden);
    };
    // Read again: the extractor may just have extended it.
    let s = app
        .session(&token_hash)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    Ok(Json(Me {
        user_id: s.user_id,
        expires_at: rfc3339(s.expires_at_ms as i64),
    }))
}

/// Deletes the row, then the cached copy in every process: after this
/// returns, the token is refused everywhere.
#[utoipa::path(
    delete,
    path = "/api/sessions/me",
    tag = "sessions",
    operation_id = "deleteSession",
    summary = "Log out",
    description = "Ends the session of the bearer token, in every instance. The service token has no session: `403`.",
    security(("bearerAuth" = [])),
    responses(
        (status = 204, description = "The session is ended."),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
async fn logout(State(app): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    let Caller::User { token_hash, .. } = caller else {
        // The service token acts for users; it is not a session.
        return Err(ApiError::Forbidden);
    };
    app.db.delete_session(&token_hash, now_ms()).await?;
    app.sessions.invalidate(&token_hash).await?;
    Ok(StatusCode::NO_CONTENT)
}
