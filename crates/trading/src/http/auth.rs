//! Who is calling, as extractors: [`Caller`] for any authenticated request,
//! [`ActingFor`] for `/api/users/{id}/...`, which only that user's session
//! (or the service token) may use.
//!
//! A session is looked up by the SHA-256 of the bearer token in the
//! `session` family (written through, 30 minutes), so an authenticated
//! request costs an L1 hit, not a database query. The expiry is checked
//! here against the clock, whatever the cache holds.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::error::ApiError;
use super::extract::UserId;
use crate::app::AppState;
use crate::session::{self, TokenHash, constant_time_eq, now_ms, token_hash};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A user's session.
    User {
        /// Whose session.
        user_id: i64,
        /// The token's hash (how logout finds the session).
        token_hash: TokenHash,
    },
    /// The configured service token: an internal caller that may act for
    /// any user (load tests, back office). Off unless configured.
    Service,
}

/// The bearer token of a request, if it carries one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty() && t.len() <= 256)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        if let Some(service) = &app.service_token
            && constant_time_eq(service.as_bytes(), token.as_bytes())
        {
            return Ok(Caller::Service);
        }
        let hash = token_hash(token);
        let now = now_ms();
        let session = app.session(&hash).await?.ok_or(ApiError::Unauthorized)?;
        if session.is_expired(now) {
            return Err(ApiError::Unauthorized);
        }
        if session.wants_extension(now) {
            extend(app, &hash, now).await;
        }
        Ok(Caller::User {
            user_id: session.user_id,
            token_hash: hash,
        })
    }
}

/// Sliding expiry: database first, then the cache (write-through, the
/// expiry is the version). A failure only means the session is not
/// extended this time; the request itself goes on.
async fn extend(app: &AppState, hash: &TokenHash, now: u64) {
    let db = app.db.clone();
    let expires = now + session::SESSION_TTL.as_millis() as u64;
    let key = *hash;
    let result = app
        .sessions
        .write_through(hash, async move {
            match db.extend_session(&key, expires, now).await? {
                Some(s) => Ok(larder::Versioned {
                    version: s.expires_at_ms,
                    value: s,
                }),
                None => Err(crate::db::DbError::NotFound),
            }
        })
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "session not extended");
    }
}

/// The user an `/api/users/{id}/...` request acts for: the path's id, once
/// the caller is shown to be that user (or the service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActingFor(pub i64);

impl FromRequestParts<AppState> for ActingFor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        // Authentication first: an anonymous caller learns nothing, not
        // even whether the id is well formed.
        let caller = Caller::from_request_parts(parts, app).await?;
        let UserId(id) = UserId::from_request_parts(parts, app).await?;
        match caller {
            Caller::Service => Ok(ActingFor(id)),
            Caller::User { user_id, .. } if user_id == id => Ok(ActingFor(id)),
            Caller::User { .. } => Err(ApiError::Forbidden),
        }
    }
}
