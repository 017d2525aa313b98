//! larder's reference service: the article's stock-trading API on PostgreSQL
//! (or embedded SQLite), cached with larder.
//!
//! Where a request goes: `http/` has one module per resource (the handler and
//! its routes); a handler asks a cache family (`app::AppState`) for the data,
//! and the family's loader is a query in `db/`.

pub mod app;
pub mod db;
pub mod feed;
pub mod http;
pub mod portfolio;
pub mod price;
pub mod profile;
pub mod settings;
pub mod telemetry;
pub mod watchlist;
