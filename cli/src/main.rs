//! `switchyard`: plan and diff what nodes would program, print the CRDs, run a
//! live mode migration of a small cluster built from network namespaces, and
//! start a real control plane by hand (`lab up`/`lab down`). Hidden roles
//! run the demo's processes, so that the demo needs no other executable than
//! this one: `__operator` and `__node-agent` the operator and the node agent
//! (the code of their own binaries), `__serve` and `__traffic` the servers and
//! clients of its traffic (the lab's).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use switchyard_api::Mode;
use switchyard_cli::demo::{AGENT_ROLE, DemoOptions, Layout, OPERATOR_ROLE, run_demo};
use switchyard_cli::diff::{DiffRequest, diff};
use switchyard_cli::input::load_state;
use switchyard_cli::manuals::mode_parser;
use switchyard_cli::plan::{Cluster, PlanRequest, exit, plan};

const PLAN_EXAMPLES: &str = "\
Examples:
  # What would worker-1 program, from manifests in a Git checkout plus the live Nodes:
  kubectl get nodes -o yaml > nodes.yaml
  switchyard plan -f manifests/ -f nodes.yaml --node worker-1

  # Straight from the cluster, as nftables regardless of the node's pool:
  kubectl get svc,endpointslices,nodes,proxyconfigs -A -o yaml | switchyard plan -f - --mode nftables

  # For a CI job: machine-readable, exit 1 on invalid input, 2 on a pool conflict:
  switchyard plan -f manifests/ -f nodes.yaml --format json > plan.json

Exit codes: 0 fine, 1 invalid input (the message names the object and field),
2 a node is selected by two ProxyConfigs of equal priority.";

const DIFF_EXAMPLES: &str = "\
Examples:
  # Review a migration: both modes' rules for worker-1 and their behaviour compared:
  switchyard diff --from ipvs --to nftables -f manifests/ -f nodes.yaml --node worker-1

  # Fail a CI job when the two modes would serve the services differently:
  switchyard diff --from iptables --to nftables -f state.yaml --fail-on-difference

Exit codes: 0 fine (differences are printed), 1 invalid input, 2 a pool conflict,
3 a behaviour difference with --fail-on-difference.";

const DEMO_EXAMPLES: &str = "\
Examples:
  # Run as root: 3 nodes, 4 services, iptables -> nftables, one node per batch:
  sudo switchyard demo --from iptables --to nftables

  # Bigger, and back the other way, two nodes at a time:
  sudo switchyard demo --from nftables --to iptables --nodes 4 --services 8 --batch 2

  # Onto eBPF, and off it:
  sudo switchyard demo --from nftables --to ebpf
  sudo switchyard demo --from ebpf --to iptables

  # The demo cluster's objects, and what its first node would program:
  switchyard demo --print-state | switchyard plan -f - --node node-0

Modes: iptables, nftables and ebpf (ipvs needs the ip_vs kernel module).
It starts a real control plane (Kubernetes' programs in target/k8s/bin, built by
e2e/k8s/build.sh), the operator and a node agent per node as processes, and
changes the mode with `kubectl patch` as a user would; it prints the kubeconfig
and a `kubectl ... get proxynodes -w` line to follow along from another terminal.
The traffic is processes too: per service, each node's client pod keeps a TCP
connection and two UDP sockets to its cluster IP and opens new ones, and an
external client does the same to every node port of every node. It reports
connections attempted and failed, established connections dropped, UDP answers
lost, answers from a wrong address and each node's switch time.
Everything lives in network namespaces named sydemo-<pid>-*, with no route out
of the machine, in $TMPDIR/switchyard-demo-*, and for eBPF in a bpffs mount
$TMPDIR/sydemo-<pid>-*-bpffs and a cgroup sydemo-<pid>-* per node (the node's
agent and client pod run in it: eBPF's socket programs never attach to the
host's root cgroup); all is removed at the end, on error and on Ctrl-C.
Exit code: 0 when no connection failed, no established connection dropped and
no answer was lost or came from a wrong address.";

const LAB_EXAMPLES: &str = "\
Examples:
  # A control plane with Switchyard's CRDs, RBAC and admission policy, until Ctrl-C:
  switchyard lab up

  # From another terminal (the kubeconfig path is printed by `up`):
  kubectl --kubeconfig /tmp/switchyard-lab-<pid>-0/admin.kubeconfig apply -f config/samples/nftables.yaml

  # Stop a running `up`, or clear what a killed one left:
  switchyard lab down

Needs Kubernetes' programs in target/k8s/bin (built by e2e/k8s/build.sh).";

const COMPLETION_EXAMPLES: &str = "\
Examples:
  # bash, for this shell and for every new one:
  source <(switchyard completion bash)
  switchyard completion bash > /etc/bash_completion.d/switchyard

  # zsh (a directory on $fpath), fish:
  switchyard completion zsh > \"${fpath[1]}/_switchyard\"
  switchyard completion fish > ~/.config/fish/completions/switchyard.fish";

const MAN_EXAMPLES: &str = "\
Examples:
  # Pages for switchyard and its commands, node-agent and switchyard-operator:
  sudo switchyard man /usr/local/share/man/man1
  man switchyard-plan

  # Read one without installing:
  switchyard man ./man && man -l ./man/switchyard-diff.1";

const CRDGEN_EXAMPLES: &str = "\
Examples:
  switchyard crdgen > crds.yaml
  switchyard crdgen | kubectl apply -f -";

const ABOUT: &str = "Plan, compare and demonstrate Switchyard's service dataplanes";
const AFTER_HELP: &str = "Run `switchyard <command> --help` for examples.";

#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version = env!("SWITCHYARD_VERSION"),
    about = ABOUT,
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    User(UserCommand),
    /// The operator (what `switchyard-operator` runs): the demo's operator processes.
    #[command(name = OPERATOR_ROLE, hide = true)]
    Operator(switchyard_operator::app::Args),
    /// The node agent (what `node-agent` runs): the demo's agent processes.
    #[command(name = AGENT_ROLE, hide = true)]
    NodeAgent(switchyard_agent::app::Cli),
    /// The demo's servers and clients (`__serve`, `__traffic`).
    #[command(flatten)]
    Traffic(switchyard_lab::traffic::role::ChildRole),
}

/// What a person runs.
#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Print what a node would program: its pool, mode and rules in the mode's native form.
    #[command(after_help = PLAN_EXAMPLES)]
    Plan {
        /// Kubernetes YAML: files, directories, or - for standard input
        /// (repeatable; at most 512 MiB in all).
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Plan only this node (default: every Node in the input).
        #[arg(long)]
        node: Option<String>,
        /// Render this mode instead of the pool's.
        #[arg(long, value_parser = mode_parser())]
        mode: Option<Mode>,
        /// `text` for people, `json` for pipelines.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Compare two modes for the same state: rules side by side and a behaviour check.
    #[command(after_help = DIFF_EXAMPLES)]
    Diff {
        /// The mode the nodes run now.
        #[arg(long, value_parser = mode_parser())]
        from: Mode,
        /// The mode to compare it with.
        #[arg(long, value_parser = mode_parser())]
        to: Mode,
        /// Kubernetes YAML: files, directories, or - for standard input
        /// (repeatable; at most 512 MiB in all).
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Compare on this node only (default: every Node in the input).
        #[arg(long)]
        node: Option<String>,
        /// Exit 3 when the modes would serve some service differently.
        #[arg(long)]
        fail_on_difference: bool,
        /// `text` for people, `json` for pipelines.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// A real control plane (etcd, kube-apiserver, kube-controller-manager) on loopback.
    #[command(after_help = LAB_EXAMPLES)]
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// Print the CustomResourceDefinitions as YAML.
    #[command(after_help = CRDGEN_EXAMPLES)]
    Crdgen,
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    #[command(after_help = COMPLETION_EXAMPLES)]
    Completion {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write manual pages (switchyard, its commands, node-agent, switchyard-operator) into a directory.
    #[command(after_help = MAN_EXAMPLES)]
    Man {
        /// Where the pages go (created if missing).
        dir: PathBuf,
    },
    /// Build a small cluster from network namespaces and migrate it live between two modes.
    #[command(after_help = DEMO_EXAMPLES)]
    Demo {
        /// The mode every node starts in: iptables, nftables or ebpf.
        #[arg(long, default_value = "iptables", value_parser = mode_parser())]
        from: Mode,
        /// The mode the pool migrates to: iptables, nftables or ebpf.
        #[arg(long, default_value = "nftables", value_parser = mode_parser())]
        to: Mode,
        /// Nodes (network namespaces with their pods).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=8))]
        nodes: u8,
        /// Services (alternately NodePort and ClusterIP, each with a TCP and a UDP port).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=50))]
        services: u8,
        /// Nodes switched at once (the rollout's maxUnavailable).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
        /// Seconds of traffic before the mode change and after the rollout.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
        /// Print the demo cluster's Kubernetes objects (for `plan -f -`) and exit.
        #[arg(long)]
        print_state: bool,
    },
}

#[derive(Subcommand, Debug)]
enum LabAction {
    /// Start it, install the CRDs, RBAC and admission policy, run until Ctrl-C.
    Up {
        /// The kustomization to install.
        #[arg(long, default_value_os_t = switchyard_cli::lab::default_config())]
        config: PathBuf,
    },
    /// Stop a running `lab up` and remove what a killed one left.
    Down,
}

/// `switchyard` as a person uses it: [`Cli`] without the hidden roles, for
/// completions and manual pages (clap_complete would offer hidden commands).
fn user_cli() -> clap::Command {
    UserCommand::augment_subcommands(
        clap::Command::new("switchyard")
            .version(env!("SWITCHYARD_VERSION"))
            .about(ABOUT)
            .after_help(AFTER_HELP)
            .subcommand_required(true),
    )
}

fn main() -> ExitCode {
    // The roles set up their own logs, as their binaries do.
    let command = match Cli::parse().command {
        Command::Operator(args) => return role(switchyard_operator::app::run(args)),
        Command::NodeAgent(cli) => return role(switchyard_agent::app::run(cli)),
        Command::Traffic(child) => return switchyard_lab::traffic::role::run(child),
        Command::User(command) => command,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
                // kube's client logs every non-2xx answer as an error; the
                // callers report the failures that matter, and the lab's
                // readiness probe expects some.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,kube_client::client::builder=off")
                }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if matches!(
        command,
        UserCommand::Demo { .. }
            | UserCommand::Lab {
                action: LabAction::Up { .. }
            }
    ) {
        // Before any thread starts: Ctrl-C (SIGINT/SIGTERM/SIGHUP) removes every
        // namespace, program and directory the command made.
        switchyard_lab::cleanup::install_signal_cleanup();
    }
    match run(command) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(exit::INVALID)
        }
    }
}

/// Run a role (the operator or the agent) to its end, as its binary's `main` does.
fn role<E: std::fmt::Display>(work: impl Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: UserCommand) -> Result<u8, String> {
    match command {
        UserCommand::Plan {
            files,
            node,
            mode,
            format,
        } => {
            let cluster = Cluster::new(load_state(&files).map_err(|e| e.to_string())?);
            let report = plan(
                &cluster,
                &PlanRequest { node, mode },
                &switchyard_cli::real_backends(),
            )
            .map_err(|e| e.to_string())?;
            match format {
                Format::Text => {
                    print!("{}", report.to_text());
                }
                Format::Json => print!("{}", report.to_json()),
            }
            Ok(report.exit_code)
        }
        UserCommand::Diff {
            from,
            to,
            files,
            node,
            fail_on_difference,
            format,
        } => {
            let cluster = Cluster::new(load_state(&files).map_err(|e| e.to_string())?);
            let request = DiffRequest { from, to, node };
            let report = diff(&cluster, &request, &switchyard_cli::real_backends())
                .map_err(|e| e.to_string())?;
            match format {
                Format::Text => print!("{}", report.to_text()),
                Format::Json => print!("{}", report.to_json()),
            }
            Ok(report.exit_code(fail_on_difference))
        }
        UserCommand::Lab {
            action: LabAction::Up { config },
        } => match switchyard_cli::lab::up(&config, &mut std::io::stdout())? {},
        UserCommand::Lab {
            action: LabAction::Down,
        } => {
            switchyard_cli::lab::down(&mut std::io::stdout())?;
            Ok(exit::OK)
        }
        UserCommand::Completion { shell } => {
            switchyard_cli::manuals::completion(user_cli(), shell, &mut std::io::stdout());
            Ok(exit::OK)
        }
        UserCommand::Man { dir } => {
            let commands = vec![
                user_cli(),
                switchyard_agent::app::Cli::command(),
                switchyard_operator::app::Args::command(),
            ];
            switchyard_cli::manuals::write_man_pages(commands, &dir).map_err(|e| e.to_string())?;
            println!("manual pages written to {}", dir.display());
            Ok(exit::OK)
        }
        UserCommand::Crdgen => {
            let yaml = switchyard_api::crds_yaml().map_err(|e| format!("CRD YAML: {e}"))?;
            print!("{yaml}");
            Ok(exit::OK)
        }
        UserCommand::Demo {
            from,
            to,
            nodes,
            services,
            batch,
            settle,
            print_state,
        } => {
            if print_state {
                print!("{}", Layout { nodes, services }.state_yaml(from, batch));
                return Ok(exit::OK);
            }
            let cli = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
            let options = DemoOptions {
                from,
                to,
                nodes,
                services,
                batch,
                settle: std::time::Duration::from_secs_f64(settle.clamp(0.0, 600.0)),
                progress: switchyard_cli::demo::Progress::stdout(),
                programs: DemoOptions::programs_of(&cli),
            };
            let report = run_demo(options).map_err(|e| e.to_string())?;
            print!("{}", report.to_text());
            Ok(if report.clean() {
                exit::OK
            } else {
                exit::INVALID
            })
        }
    }
}
