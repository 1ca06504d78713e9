//! `node-agent`: the Switchyard node agent (the DaemonSet process), and a
//! standalone mode that applies a directory of YAML without a cluster
//! ([`switchyard_agent::app`]).

use std::process::ExitCode;

use clap::Parser;
use switchyard_agent::app::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
