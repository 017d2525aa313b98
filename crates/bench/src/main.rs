//! `bench`: drives larder's reference service (or any compatible URL) and
//! prints the article's before/after table.

mod bus;
mod cdc;
mod ceiling;
mod load;
mod portfolio;
mod report;
mod scrape;
mod service;
mod stampede;
mod write_behind;
mod ws;
mod ws_fleet;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bench",
    version,
    about = "Load scenarios for larder's reference service"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Cache-aside before/after: GET /api/users/{id}/portfolio with the
    /// cache off, then on, at the same offered load.
    Portfolio(portfolio::PortfolioArgs),
    /// Write-behind: writes/s into the queue, rows/s into PostgreSQL with
    /// batching and one row at a time.
    WriteBehind(write_behind::WriteBehindArgs),
    /// Invalidation bus: time from `invalidate` in one process to the L1
    /// drop in another.
    Bus(bus::BusArgs),
    /// Change stream: time from a COMMIT in PostgreSQL to the L1 drop in
    /// another process (the bus alone measured beside it).
    Cdc(cdc::CdcArgs),
    /// Cache stampede: a cold key, a cold start and a hot key expiring
    /// under load; larder vs the article's mutex-and-sleep, same run.
    Stampede(stampede::StampedeArgs),
    /// Live price stream: idle WebSocket connections one instance holds
    /// and memory per connection, against idle HTTP keep-alives.
    Ws(ws::WsArgs),
    /// The article's 100,000 concurrent price-stream clients: held at once
    /// by several instances, every sampled client still receiving prices.
    WsFleet(ws_fleet::FleetArgs),
    /// The HTTP ceiling: a bare handler, the warm portfolio read, 304s and
    /// a price read, same client and body size, in one run (needs wrk).
    Ceiling(ceiling::CeilingArgs),
    /// The bare handler of `ceiling` (started by it).
    #[command(hide = true)]
    CeilingBare(ceiling::BareArgs),
    /// One client process of ws-fleet (started by it).
    #[command(hide = true)]
    WsHold(ws_fleet::HoldArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Portfolio(args) => portfolio::run(args).await,
        Scenario::WriteBehind(args) => write_behind::run(args).await,
        Scenario::Bus(args) => bus::run(args).await,
        Scenario::Cdc(args) => cdc::run(args).await,
        Scenario::Stampede(args) => stampede::run(args).await,
        Scenario::Ceiling(args) => ceiling::run(args).await,
        Scenario::CeilingBare(args) => ceiling::bare(args).await,
        Scenario::Ws(args) => ws::run(args).await,
        Scenario::WsFleet(args) => ws_fleet::run(args).await,
        Scenario::WsHold(args) => ws_fleet::hold(args).await,
    }
}
