//! `switchyard-operator`: the ProxyConfig controller and the ruleset publisher,
//! run by whichever replica holds the Lease ([`switchyard_operator::app`]).

use std::process::ExitCode;

use clap::Parser;
use switchyard_operator::app::{Args, run};

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
