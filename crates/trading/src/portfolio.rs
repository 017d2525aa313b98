//! The article's first cached endpoint: a user's portfolio.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A user's holdings valued at each instrument's last price.
///
/// Money is `Decimal` end to end (NUMERIC in the database, strings such as
/// `"1234.50"` in JSON), never a binary float.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Portfolio {
    /// The user.
    #[schema(value_type = crate::schema::UserId)]
    pub user_id: i64,
    /// One entry per instrument held, by symbol.
    pub holdings: Vec<Holding>,
    /// Sum of the holdings' market values, computed by the database.
    #[schema(value_type = crate::schema::Decimal)]
    pub total_market_value: Decimal,
}

/// One instrument in a portfolio.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Holding {
    /// Ticker symbol.
    #[schema(value_type = crate::schema::Symbol)]
    pub symbol: String,
    /// Shares held.
    pub qty: i64,
    /// The instrument's last traded price.
    #[schema(value_type = crate::schema::Decimal)]
    pub last_price: Decimal,
    /// `qty * last_price`.
    #[schema(value_type = crate::schema::Decimal)]
    pub market_value: Decimal,
}
