//! `scenario --mode <iptables|nftables|ipvs|ebpf> FILE...`: run scenario files
//! (or directories of them) against the mode's real dataplane in network
//! namespaces; one PASS/FAIL/SKIP line per flow, then `N passed, M failed`.
//! The hidden `__serve` ([`switchyard_lab::traffic::role`]) and `__connect`
//! subcommands are the child processes the runner starts inside namespaces.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use switchyard_api::Mode;
use switchyard_dataplane::ebpf::probe::Capabilities;
use switchyard_dataplane::ebpf::tc::TcAttachMode;
use switchyard_lab::probe;
use switchyard_lab::reference::Reference;
use switchyard_lab::reference::random::{self, RandomStates};
use switchyard_lab::reference::vm::HostSide;
use switchyard_lab::runner::{self, Options, Totals};
use switchyard_lab::traffic::role;
use switchyard_lab::{cleanup, hooks, netns, vm};

#[derive(Parser)]
#[command(about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    child: Option<ChildRole>,
    /// The dataplane mode under test.
    #[arg(long)]
    mode: Option<Mode>,
    /// Per-attempt timeout after which a connection counts as dropped. On a
    /// loaded machine the ICMP error answering a rejected SYN can take longer
    /// than half a second (softirq work deferred to ksoftirqd); a shorter
    /// timeout turns such a REJECT into an apparent DROP.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Run inside Debian's stock kernel in qemu (IPVS does so by itself when
    /// this kernel lacks it).
    #[arg(long)]
    vm: bool,
    /// How the eBPF mode's tc programs attach: auto (TCX when the kernel has
    /// it), tcx, or classic (clsact + cls_bpf).
    #[arg(long, default_value = "auto")]
    tc_attach: TcAttachMode,
    /// Also send every flow to a node run by the real kube-proxy (iptables,
    /// nftables, and ipvs in the VM, where the control plane stays on this
    /// host), the state written through a real API server; a
    /// flow passes when both meet the scenario, or the difference is listed
    /// in `reference::differences`.
    #[arg(long)]
    reference: Option<ReferenceKind>,
    /// With `--reference kube-proxy` in iptables mode: after every stage,
    /// also require the node's iptables-save to be kube-proxy's
    /// (`reference::rules`).
    #[arg(long, requires = "reference")]
    compare_rules: bool,
    /// With `--reference kube-proxy`: also run random states, `SEED[:COUNT]`
    /// (`reference::random`), written to a scenario file whose path is
    /// printed; each flow passes when Switchyard does what kube-proxy does.
    #[arg(long, requires = "reference")]
    random: Option<RandomStates>,
    /// Scenario files or directories of them.
    files: Vec<String>,
}

/// What a run is compared with.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ReferenceKind {
    KubeProxy,
}

#[derive(Subcommand)]
enum ChildRole {
    /// `__serve` (and `__traffic`): the lab's traffic roles.
    #[command(flatten)]
    Traffic(role::ChildRole),
    #[command(name = "__connect", hide = true)]
    Connect {
        #[arg(long)]
        proto: String,
        #[arg(long)]
        src: IpAddr,
        /// First source port (attempt i uses src_port + i; 0: kernel's choice).
        #[arg(long, default_value_t = 0)]
        src_port: u16,
        /// Every attempt uses exactly src_port.
        #[arg(long)]
        fixed_port: bool,
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        timeout_ms: u64,
        #[arg(long)]
        sequential: bool,
        #[arg(long)]
        cgroup: Option<PathBuf>,
    },
}

fn child(role: ChildRole) -> ExitCode {
    cleanup::child_setup();
    match role {
        ChildRole::Traffic(role) => role::run(role),
        ChildRole::Connect {
            proto,
            src,
            src_port,
            fixed_port,
            dst,
            count,
            timeout_ms,
            sequential,
            cgroup,
        } => {
            let Some(protocol) = probe::parse_protocol(&proto) else {
                eprintln!("__connect: unknown protocol {proto}");
                return ExitCode::FAILURE;
            };
            if let Some(cg) = cgroup
                && let Err(e) = probe::join_cgroup(&cg)
            {
                println!("error joining cgroup {}: {e}", cg.display());
                return ExitCode::FAILURE;
            }
            let timeout = Duration::from_millis(timeout_ms);
            for a in probe::connect(
                protocol,
                probe::Source {
                    ip: src,
                    port: src_port,
                    step: u16::from(!fixed_port && src_port != 0),
                },
                dst,
                count,
                timeout,
                sequential,
            ) {
                println!("{a}");
            }
            ExitCode::SUCCESS
        }
    }
}

/// Run the same command in the VM; with `--reference kube-proxy`, the
/// control plane on this host for the guest's kube-proxy.
fn run_in_vm(cli: &Cli, mode: Mode) -> ExitCode {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        println!("FAIL {what}: {e}");
        println!("0 passed, 1 failed");
        ExitCode::FAILURE
    };
    let files = runner::expand_paths(&cli.files);
    let mut args = vec![format!("--tc-attach={}", cli.tc_attach)];
    let host = match cli.reference {
        None => None,
        Some(ReferenceKind::KubeProxy) => match HostSide::start() {
            Ok(host) => Some(host),
            Err(e) => return failed("kube-proxy reference", &e),
        },
    };
    if host.is_some() {
        args.push("--reference=kube-proxy".into());
    }
    if cli.compare_rules {
        args.push("--compare-rules".into());
    }
    if let Some(states) = cli.random {
        args.push(format!("--random={states}"));
    }
    match vm::scenario::run_scenarios_in_vm(mode, &args, &files, cli.timeout_ms, host.as_ref()) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => failed(&format!("{mode} VM"), &e),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(role) = cli.child {
        return child(role);
    }
    cleanup::install_signal_cleanup();
    let Some(mode) = cli.mode else {
        eprintln!("--mode is required");
        return ExitCode::from(2);
    };
    let in_vm = std::env::var_os(vm::IN_VM_ENV).is_some();
    if (cli.vm && !in_vm) || (mode == Mode::Ipvs && vm::scenario::needs_vm()) {
        return run_in_vm(&cli, mode);
    }
    let options = Options {
        timeout: Duration::from_millis(cli.timeout_ms),
        compare_rules: cli.compare_rules,
    };
    let mut tags: Vec<String> = Mode::ALL
        .iter()
        .map(|m| runner::mode_tag(*m).to_string())
        .collect();
    tags.extend(Mode::ALL.iter().map(|m| runner::reference_tag(*m)));
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    for name in netns::sweep_orphans(&tags) {
        eprintln!("removed namespace {name} left by a killed run");
    }
    if mode == Mode::Ebpf {
        eprintln!(
            "scenario: eBPF tc programs attach with {}",
            cli.tc_attach.resolve(Capabilities::probe().tcx)
        );
    }
    let mut reference = match cli.reference {
        None => None,
        Some(ReferenceKind::KubeProxy) => match Reference::start(mode) {
            Ok(r) => Some(r),
            Err(e) => {
                println!("FAIL kube-proxy reference: {e}");
                println!("0 passed, 1 failed");
                return ExitCode::FAILURE;
            }
        },
    };
    let mut files = runner::expand_paths(&cli.files);
    if let Some(states) = cli.random {
        match random::write(states, &std::env::temp_dir()) {
            Ok(path) => {
                eprintln!("scenario: random states {states} in {}", path.display());
                files.push(path.display().to_string());
            }
            Err(e) => {
                println!("FAIL random states {states}: {e}");
                println!("0 passed, 1 failed");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut hooks = hooks::hooks_for(mode, cli.tc_attach);
    let mut totals = Totals::default();
    for (i, path) in files.iter().enumerate() {
        match runner::run_file(path, i, hooks.as_mut(), &options, reference.as_mut()) {
            Ok(t) => {
                totals.passed += t.passed;
                totals.failed += t.failed;
                totals.skipped += t.skipped;
            }
            Err(e) => {
                println!("FAIL {path}: {e}");
                totals.failed += 1;
            }
        }
    }
    println!("{}", totals.summary());
    if totals.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
