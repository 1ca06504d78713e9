//! `versus`: Switchyard against the real kube-proxy of the pinned release,
//! in one run, on this machine, on the same states of one real control
//! plane; one table with ratios.
//!
//! The lab cluster runs the operator and a node agent as processes (the
//! agent with a scratch bpffs and cgroup, never the host's root cgroup); for
//! each size and mode (iptables, nftables, then eBPF, which kube-proxy lacks)
//! the bench starts kube-proxy in a network namespace of its own (its flags
//! are the reference's: nothing reaches the host), lets it program the state
//! (its full sync), switches the agent's pool to the mode (the agent's full
//! sync), then writes single-endpoint changes to Services whose endpoints
//! really listen behind each node: per change, the time until the new
//! endpoint answers a connect to the Service address from inside each node
//! (network programming latency), and the mean partial sync each program
//! reports. Then first-packet connect latency through a Service address
//! against a direct connect, and memory. Sync figures are what the program
//! reports about itself: kube-proxy's
//! `kubeproxy_sync_{full,partial}_proxy_rules_duration_seconds` (IPv4's
//! proxier) and the agent's histograms of the same names; memory is
//! `/proc/PID/status`. The parts are in `switchyard_lab::bench::versus`.
//!
//! A size that fails (kube-proxy not synced within its size's deadline, say)
//! ends the run, larger sizes being slower still; the table of what was
//! measured is printed all the same, with the size that stopped it and why.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use switchyard_api::Mode;
use switchyard_lab::bench::prober;
use switchyard_lab::bench::states::Size;
use switchyard_lab::bench::versus::measure::{Counts, measure_mode};
use switchyard_lab::bench::versus::rig::Rig;
use switchyard_lab::bench::versus::switchyard::{switch_agent, wait_published_and_applied};
use switchyard_lab::bench::versus::table::Results;
use switchyard_lab::bench::versus::{SYNC_BASE, VersusError, measure_error};
use switchyard_lab::cleanup;
use switchyard_lab::cluster::layout::{self, Layout};
use switchyard_lab::traffic::role::{self, ChildRole};

#[derive(Parser)]
#[command(about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// The cluster's servers (`__serve`) and the probers inside nodes
    /// (`__probe`), run by re-executing this binary.
    #[command(subcommand)]
    child: Option<Child>,
    /// A run of a few minutes: 1000x5 and 2000x5, 20 changes and 200
    /// connects each (at 5000x5 kube-proxy's iptables mode did not finish
    /// its first sync in ten minutes on the two-core machine: see the README).
    #[arg(long)]
    quick: bool,
    /// States as SERVICESxENDPOINTS, measured in increasing order.
    #[arg(long, value_delimiter = ',', default_values_t = ["1000x5", "5000x5", "5000x50", "10000x5", "44000x5"].map(String::from))]
    sizes: Vec<String>,
    /// Single-endpoint changes per size and mode (the programming latency's samples).
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Connects per target (Service address and endpoint) per size and mode.
    #[arg(long, default_value_t = 1000)]
    connects: usize,
    /// Switchyard's modes to measure, a subset of iptables, nftables and
    /// ebpf (measured in that order whatever the order given here). With
    /// one mode, only the first size has a mode switch to measure: the
    /// agent already runs the mode at the next. At 5,000 Services
    /// kube-proxy's iptables mode did not finish its first sync in ten
    /// minutes on the two-core machine: larger sizes take `--modes nftables,ebpf`.
    #[arg(long, value_delimiter = ',', default_values_t = MODES)]
    modes: Vec<Mode>,
}

#[derive(Subcommand)]
enum Child {
    #[command(flatten)]
    Traffic(ChildRole),
    #[command(name = prober::ROLE, hide = true)]
    Probe(prober::ProbeArgs),
}

/// Switchyard's modes in the order measured: kube-proxy's first, so that
/// eBPF is compared with both of them at the same size (no IPVS in this kernel).
const MODES: [Mode; 3] = [Mode::Iptables, Mode::Nftables, Mode::Ebpf];

/// The agent's mode before the first state: not the first measured, so that
/// each size's first mode is a switch; never iptables, whose first sync of
/// a large state is the slowest.
fn starting_mode(measured: &[Mode]) -> Mode {
    if measured.first() == Some(&Mode::Nftables) {
        Mode::Ebpf
    } else {
        Mode::Nftables
    }
}

fn sizes(cli: &Cli) -> Result<Vec<Size>, VersusError> {
    let texts: Vec<String> = if cli.quick {
        vec!["1000x5".into(), "2000x5".into()]
    } else {
        cli.sizes.clone()
    };
    let mut sizes = texts
        .iter()
        .map(|t| t.parse::<Size>().map_err(VersusError::Size))
        .collect::<Result<Vec<_>, _>>()?;
    sizes.sort();
    Ok(sizes)
}

/// The modes of `MODES` that `cli` asks for, in its order.
fn modes(cli: &Cli) -> Result<Vec<Mode>, VersusError> {
    if let Some(other) = cli.modes.iter().find(|m| !MODES.contains(m)) {
        return Err(measure_error(
            format!("--modes {other}"),
            "not measured here (no IPVS in this kernel)",
        ));
    }
    Ok(MODES
        .into_iter()
        .filter(|m| cli.modes.contains(m))
        .collect())
}

/// SIGSTOP (`true`) or SIGCONT every operator replica of the rig's cluster.
fn hold_operators(rig: &mut Rig, stop: bool) -> Result<(), VersusError> {
    for operator in rig.cluster.operators_mut() {
        operator.hold(stop)?;
    }
    Ok(())
}

/// Every size and mode in turn, into `results`, until one fails.
fn run(cli: &Cli, results: &mut Results) -> Result<(), VersusError> {
    let sizes = sizes(cli)?;
    let modes = modes(cli)?;
    let counts = if cli.quick {
        Counts {
            changes: 20,
            connects: 200,
        }
    } else {
        Counts {
            changes: cli.changes,
            connects: cli.connects,
        }
    };
    let began = Instant::now();
    let mut rig = Rig::start()?;
    // Verified through the demo Service: the probed ones are not published yet.
    let demo = format!("{}/{}", layout::NAMESPACE, Layout::service_name(0));
    switch_agent(&mut rig, starting_mode(&modes), SYNC_BASE, &demo)?;
    eprintln!("versus: cluster up in {:?}", began.elapsed());
    let mut run = 0;
    for &size in &sizes {
        // The operator is held while the state is written (not measured):
        // running, it publishes every second what is written so far, a new
        // layout of up to 65,536 shards each time the shard count doubles,
        // and the two cores write the state several times slower. Let go,
        // it publishes the whole state once.
        hold_operators(&mut rig, true).map_err(|e| e.at(size, None))?;
        let grown = rig.runtime.block_on(rig.state.grow(size));
        hold_operators(&mut rig, false).map_err(|e| e.at(size, None))?;
        grown.map_err(|e| VersusError::from(e).at(size, None))?;
        eprintln!("versus: {size} written at {:?}", began.elapsed());
        wait_published_and_applied(&rig, size, &Layout::node_name(0))
            .map_err(|e| e.at(size, None))?;
        eprintln!(
            "versus: {size} written and applied at {:?}",
            began.elapsed()
        );
        for &mode in &modes {
            run += 1;
            let m = measure_mode(&mut rig, size, mode, run, counts)
                .map_err(|e| e.at(size, Some(mode)))?;
            results.add(size, mode, m);
            eprintln!("versus: {size} {mode} measured at {:?}", began.elapsed());
        }
    }
    eprintln!("versus: done in {:?}", began.elapsed());
    Ok(())
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    match cli.child.take() {
        Some(Child::Traffic(role)) => return role::run(role),
        Some(Child::Probe(args)) => return prober::child(args),
        None => {}
    }
    cleanup::install_signal_cleanup();
    let mut results = Results::default();
    let outcome = run(&cli, &mut results);
    println!("{}", results.finish());
    println!("ratios are kube-proxy / Switchyard: above 1× Switchyard is faster (smaller)");
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The first line names the size, the mode and the log to read;
            // the whole error (with the log's end) goes to stderr.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            println!("stopped, not measured: {first}");
            eprintln!("versus: {text}");
            ExitCode::FAILURE
        }
    }
}
