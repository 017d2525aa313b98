//! larder's reference service: the article's stock-trading API on PostgreSQL
//! (or embedded SQLite), cached with larder.
//!
//! Where a request goes: `http/` has one module per resource (the handler and
//! its routes); a handler asks a cache family (`app::AppState`) for the data,
//! and the family's loader is a query in `db/`. `http/auth.rs` says who is
//! calling, `http/rate_limit.rs` how often they may; the price feed
//! (`feed.rs`) writes through and publishes to the WebSocket stream
//! (`stream.rs`, `http/stream.rs`); `live.rs` samples what the dashboard
//! (`static/dashboard.html`) shows; `cdc.rs` invalidates from PostgreSQL's
//! change stream when `LARDER_CDC` is on.

pub mod app;
pub mod cdc;
pub mod db;
pub mod depth;
pub mod feed;
pub mod http;
pub mod live;
pub mod order;
pub mod portfolio;
pub mod price;
pub mod profile;
pub mod schema;
pub mod session;
pub mod settings;
pub mod stream;
pub mod telemetry;
pub mod watchlist;
