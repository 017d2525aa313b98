//! Stock prices: written through by the price feed, cached two seconds.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What `GET /api/stocks/{symbol}/price` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({"symbol": "AAPL", "price": "189.42", "version": 1834})))]
pub struct Price {
    /// Ticker symbol.
    #[schema(value_type = crate::schema::Symbol)]
    pub symbol: String,
    /// Last traded price.
    #[schema(value_type = crate::schema::Decimal)]
    pub price: Decimal,
    /// Bumped by every update: the cache keeps the highest.
    pub version: u64,
}
