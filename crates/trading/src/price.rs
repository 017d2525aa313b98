//! Stock prices: written through by the price feed, cached two seconds.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// What `GET /api/stocks/{symbol}/price` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// Ticker symbol.
    pub symbol: String,
    /// Last traded price.
    pub price: Decimal,
    /// Bumped by every update: the cache keeps the highest.
    pub version: u64,
}
