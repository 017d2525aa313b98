//! JSON Schemas for values the API carries as plain strings and numbers,
//! whose rules Rust's types do not say: money as a decimal string, ticker
//! symbols, user ids. Fields name them with `#[schema(value_type = ...)]`,
//! so the OpenAPI document (`http/openapi.rs`) states each rule once, as
//! the validation code enforces it.

use std::borrow::Cow;

use serde_json::json;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

/// Declares a schema-only type: `name` in `#/components/schemas`, the
/// schema built by `$schema`.
macro_rules! schema_type {
    ($(#[$doc:meta])* $name:ident => $schema:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                RefOr::T(Schema::Object($schema.build()))
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

schema_type!(
    /// Money: `rust_decimal::Decimal` serializes as a JSON string, never a
    /// binary float.
    Decimal => ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"^-?[0-9]+(\.[0-9]+)?$"))
        .description(Some(
            "A decimal amount of money, serialized as a JSON string (never a binary float).",
        ))
        .examples([json!("1234.50")])
);

schema_type!(
    /// A ticker symbol, as `watchlist::valid_symbol` accepts it.
    Symbol => ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(20))
        .pattern(Some(r"^[A-Z0-9.&-]{1,20}$"))
        .description(Some("Ticker symbol: 1 to 20 of A-Z, 0-9, `.`, `&`, `-`."))
        .examples([json!("AAPL"), json!("BRK.B")])
);

schema_type!(
    /// A user id: positive (the path extractor rejects anything else).
    UserId => ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(1))
        .description(Some("A user id."))
);

schema_type!(
    /// An RFC 3339 timestamp, as `order::rfc3339` writes them.
    Timestamp => ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .description(Some("An RFC 3339 timestamp (UTC)."))
);
