//! `migration-matrix [--modes iptables,nftables,ebpf] [--pairs FROM:TO,...]`:
//! for every ordered pair of modes, switch a node while traffic runs and count
//! what was lost; one table, then `N passed, M failed` (pairs). Pairs that
//! involve IPVS run in the stock-kernel VM when this kernel lacks IPVS
//! (`--vm`: every pair there), in one boot. A pair from `kube-proxy-MODE`
//! takes the node over from the real kube-proxy by the README's runbook
//! (`--agent` and `--operator` name the binaries it runs); in the VM (from
//! kube-proxy's ipvs mode) each such pair has a boot of its own, with its
//! own control plane on this host ([`HostSide`]) and everything else in the
//! guest.
//! The hidden `__serve` / `__traffic` subcommands
//! ([`switchyard_lab::traffic::role`]) are the child processes started
//! inside namespaces.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use switchyard_api::Mode;
use switchyard_dataplane::ebpf::tc::TcAttachMode;
use switchyard_lab::cluster::processes::{Program, Programs};
use switchyard_lab::migration::{self, Pair, Row, Source, Timing};
use switchyard_lab::reference::vm::HostSide;
use switchyard_lab::traffic::role::{self, ChildRole};
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

/// Run `pairs` in one VM boot; their rows (the guest prints each as a
/// line). An adoption (`programs`: the operator's and the agent's binaries)
/// gets a control plane on this host, which the guest reaches.
fn rows_in_vm(
    pairs: &[Pair],
    tc_attach: TcAttachMode,
    programs: Option<&Programs>,
) -> Result<Vec<Row>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let names: Vec<String> = pairs.iter().map(Pair::to_string).collect();
    let mut args = vec![
        format!("--pairs={}", names.join(",")),
        format!("--tc-attach={tc_attach}"),
    ];
    let mut vm = VmRunner::new()
        .map_err(|e| e.to_string())?
        .timeout(Duration::from_secs(900));
    let host = match programs {
        Some(programs) => {
            let mut host = HostSide::start().map_err(|e| format!("the control plane: {e}"))?;
            let guest = host
                .add_switchyard(&programs.operator.path, &programs.agent.path)
                .map_err(|e| e.to_string())?;
            args.push(format!("--operator={}", guest.operator.display()));
            args.push(format!("--agent={}", guest.agent.display()));
            vm = host.prepare(vm);
            Some(host)
        }
        None => None,
    };
    let files = host.as_ref().map_or(&[][..], HostSide::files);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    eprintln!(
        "migration-matrix: {} in a VM with Debian's {}",
        names.join(", "),
        vm.kernel_version()
    );
    let mut rows = Vec::new();
    vm.run_with(
        &exe,
        &args,
        files,
        &mut |line| match Row::parse_line(line) {
            Ok(row) => rows.push(row),
            Err(_) => eprintln!("vm: {line}"),
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(rows)
}

/// The VM runs of `pairs`: one boot for our modes' pairs, one per adoption.
fn vm_runs(pairs: &[Pair]) -> Vec<Vec<Pair>> {
    let (adoptions, ours): (Vec<Pair>, Vec<Pair>) = pairs
        .iter()
        .partition(|p| matches!(p.from, Source::KubeProxy(_)));
    let shared = (!ours.is_empty()).then_some(ours);
    shared
        .into_iter()
        .chain(adoptions.into_iter().map(|p| vec![p]))
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(role) = cli.child {
        return role::run(role);
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
        .zip(std::env::current_exe().ok())
        .map(|((agent, operator), this)| Programs {
            operator: Program::new(absolute(operator)),
            agent: Program::new(absolute(agent)),
            traffic: Program::new(this),
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
    for run in vm_runs(&vm_pairs) {
        let adoption = matches!(run.first().map(|p| p.from), Some(Source::KubeProxy(_)));
        let programs = programs.as_ref().filter(|_| adoption);
        match rows_in_vm(&run, cli.tc_attach, programs) {
            Ok(got) => rows.extend(got),
            Err(e) => eprintln!("migration-matrix: the VM: {e}"),
        }
        // A pair the VM did not report failed.
        for pair in run {
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
