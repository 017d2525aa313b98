//! `trading`: run the reference service, or seed its database.

use clap::Parser;
use trading::settings::{Cli, Command};
use trading::{app, telemetry};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before the runtime: the OTLP exporter's HTTP client is a blocking one,
    // which must be made (and dropped, with the guard) outside tokio.
    let _telemetry = telemetry::init()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => app::serve(cli.serve).await,
        Some(Command::Serve(args)) => app::serve(args).await,
        Some(Command::Seed(args)) => app::seed_command(args).await,
        Some(Command::Worker(args)) => app::worker_command(args).await,
        Some(Command::CdcDropSlot(args)) => trading::cdc::drop_slot_command(args).await,
    }
}
