//! A user's watchlist: cache-aside five minutes, written behind.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most symbols one watchlist holds.
pub const MAX_SYMBOLS: usize = 50;

/// What `GET /api/users/{id}/watchlist` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Watchlist {
    /// The user.
    #[schema(value_type = crate::schema::UserId)]
    pub user_id: i64,
    /// Ticker symbols, in the user's order.
    #[schema(value_type = Vec<crate::schema::Symbol>, max_items = 50)]
    pub symbols: Vec<String>,
}

/// The body of `PUT /api/users/{id}/watchlist`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchlistUpdate {
    /// The new list: at most 50 distinct ticker symbols, in order.
    #[schema(value_type = Vec<crate::schema::Symbol>, max_items = 50)]
    pub symbols: Vec<String>,
}

/// Whether `s` can be a ticker symbol: 1 to 20 of `A-Z 0-9 . & -`.
pub fn valid_symbol(s: &str) -> bool {
    (1..=20).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"&.-".contains(&b))
}

impl WatchlistUpdate {
    /// Checks the list; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.symbols.len() > MAX_SYMBOLS {
            return Err(format!("a watchlist holds at most {MAX_SYMBOLS} symbols"));
        }
        if let Some(bad) = self.symbols.iter().find(|s| !valid_symbol(s)) {
            return Err(format!(
                "`{}` is not a ticker symbol",
                bad.chars().take(40).collect::<String>()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.symbols.iter().find(|s| !seen.insert(s.as_str())) {
            return Err(format!("`{dup}` is listed twice"));
        }
        Ok(())
    }
}
