//! `node-agent`: the Switchyard node agent (the DaemonSet process), and a
//! standalone mode that applies a directory of YAML without a cluster
//! ([`switchyard_agent::app`]).

use clap::Parser;
use switchyard_agent::app::{AppError, Cli, run};

#[tokio::main]
async fn main() -> Result<(), AppError> {
    run(Cli::parse().command).await
}
