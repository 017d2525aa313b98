//! The API's one error type: every failure a handler can have, mapped to a
//! status code and a JSON body `{"error": "..."}`.
//!
//! Internal details (SQL errors, Redis messages) are logged here and never
//! sent to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::{Content, HeaderBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, Type};
use utoipa::{ToResponse, ToSchema};

use crate::db::DbError;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error, examples(json!({"error": "user 42 not found"})))]
pub struct ErrorBody {
    /// What went wrong (never internal details).
    pub error: String,
}

/// What a handler returns on failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No valid session (401).
    #[error(
        "a valid session is required: log in with POST /api/sessions and send `Authorization: Bearer <token>`"
    )]
    Unauthorized,
    /// The session is valid but not for this resource (403).
    #[error("this session may not act for that user")]
    Forbidden,
    /// Too many requests; retry after this many seconds (429).
    #[error("too many requests; retry after {0} s")]
    TooManyRequests(u64),
    /// Well formed, but the business rules refuse it (422), e.g. an order
    /// the balance cannot pay for.
    #[error("{0}")]
    Unprocessable(String),
    /// The resource does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The write conflicts with existing data (409).
    #[error("{0}")]
    Conflict(String),
    /// The request body is over the limit (413).
    #[error("request body too large")]
    PayloadTooLarge,
    /// A dependency (the database) is down or too slow: retry later (503).
    #[error("service temporarily unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// A bug (500).
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Unavailable(e) => tracing::warn!(
                error = format!("{e:#}"),
                "request failed: dependency unavailable"
            ),
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed: internal error")
            }
            _ => {}
        }
        let mut response = (
            self.status(),
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::TooManyRequests(secs) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Conflict(_) => ApiError::Conflict("conflicts with existing data".into()),
            e if e.is_unavailable() => ApiError::Unavailable(e.into()),
            e => ApiError::Internal(e.into()),
        }
    }
}

impl From<larder::Error> for ApiError {
    fn from(e: larder::Error) -> Self {
        match e {
            // The loader is a database query: classify its error.
            larder::Error::Loader(inner) | larder::Error::Persist(inner) => match inner
                .downcast_ref::<DbError>()
            {
                Some(DbError::Conflict(_)) => {
                    ApiError::Conflict("conflicts with existing data".into())
                }
                Some(db) if db.is_unavailable() => ApiError::Unavailable(anyhow::Error::new(inner)),
                _ => ApiError::Internal(anyhow::Error::new(inner)),
            },
            // Only writes report Redis failures (reads fall back): a write
            // that needs Redis cannot be taken now.
            e @ larder::Error::Redis { .. } => ApiError::Unavailable(e.into()),
            // The family's hard timeout: the database is too slow right now.
            e @ larder::Error::Timeout { .. } => ApiError::Unavailable(e.into()),
            other => ApiError::Internal(other.into()),
        }
    }
}

/// An error status as the OpenAPI document shows it: the [`ErrorBody`] and
/// what the status means here, a reusable response in
/// `#/components/responses` that operations refer to by name.
fn error_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        Content::new(Some(Ref::from_schema_name("Error"))),
    )
}

/// Declares the reusable error responses, one unit type each, listed in
/// `http::openapi` and named in each operation's `responses(...)`.
macro_rules! error_responses {
    ($($(#[$doc:meta])* $name:ident => $response:expr;)*) => {$(
        $(#[$doc])*
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
                (stringify!($name), RefOr::T($response.build()))
            }
        }
    )*};
}

error_responses! {
    /// 400: [`ApiError::BadRequest`].
    BadRequest => error_response(
        "Malformed request: a bad path parameter, malformed JSON, a missing, mistyped or unknown field, or a value out of range.",
    );
    /// 401: [`ApiError::Unauthorized`].
    Unauthorized => error_response(
        "No valid session: the bearer token is missing, unknown or expired.",
    )
    .header(
        "WWW-Authenticate",
        HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(Type::String).build()))
            .description(Some("`Bearer`."))
            .build(),
    );
    /// 403: [`ApiError::Forbidden`].
    Forbidden => error_response(
        "The session is valid but may not act for this user (or the service token was used where only a session will do).",
    );
    /// 404: [`ApiError::NotFound`].
    NotFound => error_response("No such user or instrument.");
    /// 409: [`ApiError::Conflict`].
    Conflict => error_response("The write conflicts with existing data (e.g. an email already in use).");
    /// 413: [`ApiError::PayloadTooLarge`].
    PayloadTooLarge => error_response("The request body is over 64 KiB.");
    /// 429: [`ApiError::TooManyRequests`].
    TooManyRequests => error_response(
        "Rate limited (per client IP and per session; logging in is limited more tightly): retry after `Retry-After` seconds.",
    )
    .header_ref("Retry-After", Ref::new("#/components/headers/RetryAfter"));
    /// 503: [`ApiError::Unavailable`], and requests over the deadline.
    Unavailable => error_response(
        "A dependency (the database, or Redis for a write that needs it) is unavailable, or the request timed out: retry later.",
    );
    /// 500: [`ApiError::Internal`].
    InternalError => error_response("Internal error (details are logged, never sent).");
}
