//! Market depth: the top of the order book, five levels a side, written
//! through by the price feed and cached one second (the article's table).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Levels shown on each side.
pub const LEVELS: usize = 5;

/// One price level: how many shares are bid or offered at `price`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Level {
    /// Price of the level.
    #[schema(value_type = crate::schema::Decimal)]
    pub price: Decimal,
    /// Shares at that price.
    #[schema(minimum = 0)]
    pub qty: i64,
}

/// Bids (best, highest first) and asks (best, lowest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Book {
    /// Buyers, highest price first (at most 5 levels).
    #[schema(max_items = 5)]
    pub bids: Vec<Level>,
    /// Sellers, lowest price first (at most 5 levels).
    #[schema(max_items = 5)]
    pub asks: Vec<Level>,
}

/// `GET /api/stocks/{symbol}/depth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Depth {
    /// Ticker symbol.
    #[schema(value_type = crate::schema::Symbol)]
    pub symbol: String,
    /// The book.
    #[serde(flatten)]
    pub book: Book,
    /// Bumped on every update; the cache keeps the highest.
    pub version: u64,
}

impl Book {
    /// A book around `last`: levels a tick (0.05%, at least 0.01) apart,
    /// sizes from `sizes` (the simulator's randomness; `None`: a fixed
    /// shape, for instruments the feed has not reached yet).
    pub fn around(last: Decimal, sizes: Option<&mut dyn FnMut() -> i64>) -> Book {
        let tick = (last * Decimal::new(5, 4))
            .round_dp(2)
            .max(Decimal::new(1, 2));
        let mut fixed = {
            let mut n = 0i64;
            move || {
                n += 1;
                100 * n
            }
        };
        let sizes: &mut dyn FnMut() -> i64 = match sizes {
            Some(f) => f,
            None => &mut fixed,
        };
        let mut bids = Vec::with_capacity(LEVELS);
        let mut asks = Vec::with_capacity(LEVELS);
        for i in 1..=LEVELS as i64 {
            let bid = (last - tick * Decimal::from(i)).max(Decimal::new(1, 2));
            bids.push(Level {
                price: bid,
                qty: sizes(),
            });
            asks.push(Level {
                price: last + tick * Decimal::from(i),
                qty: sizes(),
            });
        }
        Book { bids, asks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn books_are_ordered_around_the_last_price() {
        let last = Decimal::new(250000, 2);
        let book = Book::around(last, None);
        assert_eq!(book.bids.len(), LEVELS);
        assert_eq!(book.asks.len(), LEVELS);
        assert!(book.bids.windows(2).all(|w| w[0].price > w[1].price));
        assert!(book.asks.windows(2).all(|w| w[0].price < w[1].price));
        assert!(book.bids[0].price < last && book.asks[0].price > last);
        let cheap = Book::around(Decimal::new(2, 2), None);
        assert!(cheap.bids.iter().all(|l| l.price > Decimal::ZERO));
    }
}
