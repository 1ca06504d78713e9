//! `switchyard-operator`: the ProxyConfig controller and the ruleset publisher,
//! run by whichever replica holds the Lease ([`switchyard_operator::app`]).

use clap::Parser;
use switchyard_operator::app::{Args, StartError, run};

#[tokio::main]
async fn main() -> Result<(), StartError> {
    run(Args::parse()).await
}
