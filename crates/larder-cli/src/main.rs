//! `larder`, the operator's command line.
//!
//! It connects as the service does (`REDIS_URL`, `REDIS_CLUSTER_URLS` or the
//! Sentinel settings, `LARDER_NAMESPACE`, the families of
//! `LARDER_CACHE_CONFIG`) and works through the library's [`larder::admin`]
//! API, so that what it does (an invalidation reaching every process's L1,
//! a replayed write keeping its version) is what the service would do.
//!
//! Exit codes, for scripts: 0 done; 1 an error (Redis unreachable, a bad
//! configuration); 2 a usage error; 3 a check that did not pass (`drain`
//! timed out, a family under the hit-rate floor in `stats`, a dead letter
//! that is not there); 4 `inspect` found no entry.

mod commands;
mod connect;
mod print;
mod scrape;

use std::process::ExitCode;

use clap::Parser;

use crate::connect::Connection;

/// larder's operator tool: inspect and invalidate cache entries, sample
/// families, watch the write-behind queue and the invalidation bus.
#[derive(Debug, Parser)]
#[command(name = "larder", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// Print JSON (one document per command; one line per event for `bus tail`).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: commands::Command,
}

/// What a command found, as the exit code says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Ok,
    /// A check did not pass.
    CheckFailed,
    /// Nothing there.
    NotFound,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli.command, &cli.connection, cli.json).await {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::CheckFailed) => ExitCode::from(3),
        Ok(Outcome::NotFound) => ExitCode::from(4),
        Err(e) => {
            eprintln!("larder: {e:#}");
            ExitCode::FAILURE
        }
    }
}
