//! The OpenAPI 3.1 document (`GET /openapi.json`), derived from the code
//! with utoipa rather than written by hand: each operation from the
//! `#[utoipa::path]` on its handler, each schema from the Rust type the
//! handler reads or writes (`#[derive(ToSchema)]`), the error responses from
//! [`super::error`], the cache validators from [`super::caching`]. A handler
//! that changes its types changes the document with it; a route added to the
//! router without a path here fails `openapi_documents_every_route`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{HeaderBuilder, ObjectBuilder, Type};
use utoipa::{Modify, OpenApi};

use super::error::{
    BadRequest, Conflict, ErrorBody, Forbidden, InternalError, NotFound, PayloadTooLarge,
    TooManyRequests, Unauthorized, Unavailable,
};
use super::{account, ops, portfolio, price, profile, session, stream, watchlist};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "larder trading service",
        description = include_str!("openapi.md"),
    ),
    servers((url = "/")),
    tags(
        (name = "users", description = "A user's data; bearer token of that user (or the service token)."),
        (name = "stocks", description = "Market data."),
        (name = "sessions", description = "Logging in and out."),
        (name = "orders", description = "Trading."),
        (name = "ops", description = "Operations: health, readiness, metrics, dashboard."),
    ),
    paths(
        portfolio::portfolio,
        watchlist::watchlist,
        watchlist::update,
        profile::profile,
        profile::update,
        account::balance,
        account::trades,
        price::price,
        price::depth,
        session::login,
        session::me,
        session::logout,
        account::place,
        stream::prices,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::openapi,
        ops::dashboard,
        ops::stats,
    ),
    components(
        schemas(
            ErrorBody,
            crate::schema::Decimal,
            crate::schema::Symbol,
            crate::schema::UserId,
            crate::schema::Timestamp,
            crate::portfolio::Portfolio,
            crate::portfolio::Holding,
            crate::price::Price,
            crate::depth::Depth,
            crate::depth::Book,
            crate::depth::Level,
            crate::watchlist::Watchlist,
            crate::watchlist::WatchlistUpdate,
            watchlist::WithPrices,
            crate::profile::Profile,
            crate::profile::ProfileUpdate,
            crate::order::OrderRequest,
            crate::order::Side,
            crate::order::Receipt,
            crate::order::Trade,
            crate::order::Balance,
            account::Trades,
            session::Credentials,
            session::Created,
            session::Me,
            ops::Health,
            ops::CacheInfo,
            ops::Readiness,
            ops::Stats,
            crate::live::Point,
        ),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
            TooManyRequests,
            Unavailable,
            InternalError,
        ),
    ),
    modifiers(&SharedComponents),
)]
struct Api;

/// What the derive has no attribute for: the bearer scheme and the
/// response headers the operations refer to by `$ref`.
struct SharedComponents;

impl Modify for SharedComponents {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <token>`: a session token from `POST /api/sessions` \
                         (64 hex characters), valid for the session's own user; or the configured \
                         service token, which may act for any user.",
                    ))
                    .build(),
            ),
        );
        let header = |description: &str, schema: ObjectBuilder| {
            HeaderBuilder::new()
                .description(Some(description))
                .schema(Some(schema.build()))
                .build()
        };
        let string = || ObjectBuilder::new().schema_type(Type::String);
        components.headers.insert(
            "RetryAfter".into(),
            header(
                "Seconds to wait before retrying.",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .into(),
        );
        components.headers.insert(
            "ETag".into(),
            header(
                "Strong ETag of the body (a hash of it: the same data gives the same ETag in every instance).",
                string(),
            )
            .into(),
        );
        components.headers.insert(
            "CacheControl".into(),
            header(
                "`private, max-age=N` for per-user data (with `Vary: Authorization`), \
                 `public, max-age=N` for market data; N is what is left of the cached entry's freshness.",
                string(),
            )
            .into(),
        );
    }
}

/// The document as served (`GET /openapi.json` renders it once).
pub fn document() -> String {
    Api::openapi().to_pretty_json().unwrap_or_else(|e| {
        // Serializing in-memory structs does not fail; if it ever did, the
        // route still answers JSON and the log says why.
        tracing::error!(error = %e, "the OpenAPI document could not be rendered");
        r#"{"error": "the OpenAPI document could not be rendered"}"#.to_owned()
    })
}
