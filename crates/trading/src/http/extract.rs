//! Typed request parts.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::error::ApiError;

/// A user id from the path (`/api/users/{id}/...`): a positive 64-bit
/// integer, or a 400 that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserId(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for UserId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let bad = || ApiError::BadRequest("user id must be a positive integer".into());
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| bad())?;
        match raw.parse::<i64>() {
            Ok(id) if id > 0 => Ok(UserId(id)),
            _ => Err(bad()),
        }
    }
}
