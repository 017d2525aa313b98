//! `trading`: run the reference service, or seed its database.

use clap::Parser;
use trading::settings::{Cli, Command};
use trading::{app, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging();
    match cli.command {
        None => app::serve(cli.serve).await,
        Some(Command::Serve(args)) => app::serve(args).await,
        Some(Command::Seed(args)) => app::seed_command(args).await,
        Some(Command::Worker(args)) => app::worker_command(args).await,
        Some(Command::CdcDropSlot(args)) => trading::cdc::drop_slot_command(args).await,
    }
}
