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

/// A ticker symbol from the path (`/api/stocks/{symbol}/...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Symbol {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let bad =
            || ApiError::BadRequest("symbol must be 1 to 20 of A-Z, 0-9, `.`, `&`, `-`".into());
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| bad())?;
        if crate::watchlist::valid_symbol(&raw) {
            Ok(Symbol(raw))
        } else {
            Err(bad())
        }
    }
}

/// A JSON request body whose problems (malformed JSON, a missing or unknown
/// field, a wrong type, a missing `Content-Type`) are a 400 with a JSON
/// error, like every other client error, rather than axum's plain text.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(match rejection {
                axum::extract::rejection::JsonRejection::BytesRejection(_) => {
                    ApiError::PayloadTooLarge
                }
                other => ApiError::BadRequest(other.body_text()),
            }),
        }
    }
}
