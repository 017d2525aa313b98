//! Orders, balances and trades: the article's "never cache" data. Every
//! read goes to the database; an order executes in one transaction.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest quantity one order may ask for.
pub const MAX_QTY: i64 = 1_000_000;

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Pay cash, get shares.
    Buy,
    /// Give shares, get cash.
    Sell,
}

impl Side {
    /// As stored in the `trades.side` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }

    /// From the `trades.side` column.
    pub fn parse(s: &str) -> Option<Side> {
        match s {
            "buy" => Some(Side::Buy),
            "sell" => Some(Side::Sell),
            _ => None,
        }
    }
}

/// `POST /api/orders`: a market order for the caller, executed at once at
/// the instrument's last price.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// Ticker symbol.
    #[schema(value_type = crate::schema::Symbol)]
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// Shares: 1 to 1,000,000 (`MAX_QTY`).
    #[schema(minimum = 1, maximum = 1_000_000)]
    #[serde(deserialize_with = "whole_number")]
    pub qty: i64,
}

/// An integer as JSON Schema counts them: `3` or `3.0` (a client in a
/// language with only floats sends the latter), never `3.5`.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match serde_json::Number::deserialize(d)? {
        n if n.is_i64() => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom("not an integer")),
        n => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() <= 9.0e15 => Ok(f as i64),
            _ => Err(serde::de::Error::custom(format!(
                "{n} is not a whole number"
            ))),
        },
    }
}

impl OrderRequest {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !crate::watchlist::valid_symbol(&self.symbol) {
            return Err("symbol must be 1 to 20 of A-Z, 0-9, `.`, `&`, `-`".into());
        }
        if !(1..=MAX_QTY).contains(&self.qty) {
            return Err(format!("qty must be between 1 and {MAX_QTY}"));
        }
        Ok(())
    }
}

/// One executed trade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Trade {
    /// The trade's id (increasing).
    pub trade_id: i64,
    /// Ticker symbol.
    #[schema(value_type = crate::schema::Symbol)]
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// Shares.
    #[schema(minimum = 1)]
    pub qty: i64,
    /// Price per share it executed at.
    #[schema(value_type = crate::schema::Decimal)]
    pub price: Decimal,
    /// `qty * price`: what the balance paid or received.
    #[schema(value_type = crate::schema::Decimal)]
    pub amount: Decimal,
    /// When, RFC 3339.
    #[schema(value_type = crate::schema::Timestamp)]
    pub executed_at: String,
}

/// The answer to an executed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Order)]
pub struct Receipt {
    /// Whose order.
    #[schema(value_type = crate::schema::UserId)]
    pub user_id: i64,
    /// The trade it made.
    #[serde(flatten)]
    pub trade: Trade,
    /// The cash balance after it.
    #[schema(value_type = crate::schema::Decimal)]
    pub balance: Decimal,
}

/// `GET /api/users/{id}/balance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Balance {
    /// Whose.
    #[schema(value_type = crate::schema::UserId)]
    pub user_id: i64,
    /// Cash available.
    #[schema(value_type = crate::schema::Decimal)]
    pub balance: Decimal,
}

/// Unix milliseconds as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_validated() {
        let ok = OrderRequest {
            symbol: "TCS".into(),
            side: Side::Buy,
            qty: 10,
        };
        assert!(ok.validate().is_ok());
        for (symbol, qty) in [
            ("TCS", 0),
            ("TCS", -1),
            ("TCS", MAX_QTY + 1),
            ("", 1),
            ("*", 1),
        ] {
            let bad = OrderRequest {
                symbol: symbol.into(),
                qty,
                ..ok.clone()
            };
            assert!(bad.validate().is_err(), "{symbol} {qty}");
        }
        let unknown: Result<OrderRequest, _> =
            serde_json::from_str(r#"{"symbol":"TCS","side":"buy","qty":1,"price":"1"}"#);
        assert!(unknown.is_err(), "a client cannot name its own price");
        let side: Result<OrderRequest, _> =
            serde_json::from_str(r#"{"symbol":"TCS","side":"short","qty":1}"#);
        assert!(side.is_err());
        let whole: OrderRequest =
            serde_json::from_str(r#"{"symbol":"TCS","side":"buy","qty":3.0}"#).unwrap();
        assert_eq!(whole.qty, 3);
        for qty in ["3.5", "\"3\"", "1e300", "true"] {
            let body = format!(r#"{{"symbol":"TCS","side":"buy","qty":{qty}}}"#);
            assert!(
                serde_json::from_str::<OrderRequest>(&body).is_err(),
                "{qty}"
            );
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.500Z");
    }
}
