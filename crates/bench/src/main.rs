//! `bench`: drives larder's reference service (or any compatible URL) and
//! prints the article's before/after table.

mod load;
mod portfolio;
mod report;
mod scrape;
mod service;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Portfolio(args) => portfolio::run(args).await,
    }
}
