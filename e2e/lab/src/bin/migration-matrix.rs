//! `migration-matrix [--modes iptables,nftables,ebpf] [--pairs FROM:TO,...]`:
//! for every ordered pair of modes, switch a node while traffic runs and count
//! what was lost; one table, then `N passed, M failed` (pairs). Pairs that
//! involve IPVS run in the stock-kernel VM when this kernel lacks IPVS
//! (`--vm`: every pair there). A pair from `kube-proxy-iptables` or
//! `kube-proxy-nftables` takes the node over from the real kube-proxy by the
//! README's runbook (`--agent` and `--operator` name the binaries it runs).
//! The hidden `__serve` / `__traffic` subcommands
//! are the child processes started inside namespaces.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use switchyard_api::Mode;
use switchyard_api::ruleset::Protocol;
use switchyard_dataplane::ebpf::tc::TcAttachMode;
use switchyard_lab::cluster::processes::{Program, Programs};
use switchyard_lab::migration::traffic::{self, Stream};
use switchyard_lab::migration::{self, Pair, Row, Timing};
use switchyard_lab::probe::{self, Listen};
use switchyard_lab::vm::{IN_VM_ENV, VmRunner};
use switchyard_lab::{cleanup, netns, vm};

#[derive(Parser)]
#[command(about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    child: Option<ChildRole>,
    /// Every ordered pair of these modes.
    #[arg(long, value_delimiter = ',', default_values_t = Mode::ALL)]
    modes: Vec<Mode>,
    /// Only these pairs (FROM:TO), instead of every pair of --modes; FROM
    /// may be `kube-proxy-MODE` (an adoption from a running kube-proxy).
    #[arg(long, value_delimiter = ',')]
    pairs: Vec<Pair>,
    /// The node agent's binary, for adoptions.
    #[arg(long, requires = "operator")]
    agent: Option<PathBuf>,
    /// The operator's binary, for adoptions.
    #[arg(long, requires = "agent")]
    operator: Option<PathBuf>,
    /// Run every pair inside Debian's stock kernel in qemu.
    #[arg(long)]
    vm: bool,
    /// How the eBPF mode's tc programs attach: auto, tcx, or classic.
    #[arg(long, default_value = "auto")]
    tc_attach: TcAttachMode,
}

#[derive(Subcommand)]
enum ChildRole {
    #[command(name = "__serve", hide = true)]
    Serve {
        #[arg(long)]
        listen: Vec<Listen>,
    },
    #[command(name = "__traffic", hide = true)]
    Traffic {
        #[arg(long)]
        proto: String,
        #[arg(long)]
        src: IpAddr,
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long)]
        endpoint: Vec<SocketAddr>,
        #[arg(long)]
        period_ms: u64,
        #[arg(long)]
        timeout_ms: u64,
        #[arg(long)]
        cgroup: Option<PathBuf>,
    },
}

fn child(role: ChildRole) -> ExitCode {
    cleanup::child_setup();
    let result = match role {
        ChildRole::Serve { listen } => probe::serve(&listen).map_err(|e| e.to_string()),
        ChildRole::Traffic {
            proto,
            src,
            dst,
            endpoint,
            period_ms,
            timeout_ms,
            cgroup,
        } => traffic_child(
            &proto,
            Stream {
                protocol: Protocol::Tcp,
                source: src,
                dest: dst,
                endpoints: endpoint.into_iter().collect::<BTreeSet<_>>(),
                period: Duration::from_millis(period_ms),
                timeout: Duration::from_millis(timeout_ms),
            },
            cgroup,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The parent reads this instead of `ready` or the counts.
            println!("error {e}");
            ExitCode::FAILURE
        }
    }
}

fn traffic_child(proto: &str, stream: Stream, cgroup: Option<PathBuf>) -> Result<(), String> {
    let protocol = probe::parse_protocol(proto).ok_or_else(|| format!("protocol {proto}"))?;
    if let Some(cg) = cgroup {
        probe::join_cgroup(&cg).map_err(|e| format!("joining cgroup {}: {e}", cg.display()))?;
    }
    let counts = traffic::run(&Stream { protocol, ..stream }).map_err(|e| e.to_string())?;
    println!("{counts}");
    Ok(())
}

/// Run `pairs` in the VM; their rows (the guest prints each as a line).
fn rows_in_vm(pairs: &[Pair], tc_attach: TcAttachMode) -> Result<Vec<Row>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let pairs: Vec<String> = pairs.iter().map(Pair::to_string).collect();
    let args = [
        format!("--pairs={}", pairs.join(",")),
        format!("--tc-attach={tc_attach}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let vm = VmRunner::new()
        .map_err(|e| e.to_string())?
        .timeout(Duration::from_secs(900));
    eprintln!(
        "migration-matrix: {} pairs in a VM with Debian's {}",
        pairs.len(),
        vm.kernel_version()
    );
    let mut rows = Vec::new();
    vm.run_with(&exe, &args, &[], &mut |line| match Row::parse_line(line) {
        Ok(row) => rows.push(row),
        Err(_) => eprintln!("vm: {line}"),
    })
    .map_err(|e| e.to_string())?;
    Ok(rows)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(role) = cli.child {
        return child(role);
    }
    cleanup::install_signal_cleanup();
    let pairs = if cli.pairs.is_empty() {
        Pair::all_of(&cli.modes)
    } else {
        cli.pairs.clone()
    };
    let in_vm = std::env::var_os(IN_VM_ENV).is_some();
    let (vm_pairs, here): (Vec<Pair>, Vec<Pair>) = pairs
        .iter()
        .partition(|p| (cli.vm && !in_vm) || (p.involves(Mode::Ipvs) && vm::scenario::needs_vm()));
    for name in netns::sweep_orphans(&[migration::TAG]) {
        eprintln!("removed namespace {name} left by a killed run");
    }
    // Absolute: they run in the control plane's directory.
    let absolute = |path: &PathBuf| std::path::absolute(path).unwrap_or_else(|_| path.clone());
    let programs = cli
        .agent
        .as_ref()
        .zip(cli.operator.as_ref())
        .map(|(agent, operator)| Programs {
            operator: Program::new(absolute(operator)),
            agent: Program::new(absolute(agent)),
        });
    let timing = if in_vm { Timing::VM } else { Timing::HOST };
    let mut rows = Vec::new();
    for (i, pair) in here.iter().enumerate() {
        let row = migration::run_pair(*pair, i, timing, cli.tc_attach, programs.as_ref());
        if in_vm {
            println!("{}", row.line());
        }
        rows.push(row);
    }
    if !vm_pairs.is_empty() {
        match rows_in_vm(&vm_pairs, cli.tc_attach) {
            Ok(got) => rows.extend(got),
            Err(e) => eprintln!("migration-matrix: the VM: {e}"),
        }
        // A pair the VM did not report failed.
        for pair in vm_pairs {
            if !rows.iter().any(|r| r.pair == pair) {
                rows.push(migration::Row::failed(pair, "no result from the VM".into()));
            }
        }
    }
    println!("{}", migration::table(&rows));
    if rows.iter().all(Row::passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
