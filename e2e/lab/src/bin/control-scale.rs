//! `control-scale`: the control path at scale. The operator (a process) and
//! `--agents` node agents (tasks of this process, each with its own API
//! client, recording instead of programming a kernel) against the lab's real
//! kube-apiserver with `--services` Services × 5 endpoints; one row per
//! operator shard budget. Prints one table; see [`switchyard_lab::scale`].
//!
//! Needs the `switchyard-operator` executable of the same build next to this
//! one (`cargo build --release -p switchyard-operator -p switchyard-lab`) or
//! `--operator`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use switchyard_compiler::DEFAULT_SHARD_BUDGET_BYTES;
use switchyard_lab::cleanup;
use switchyard_lab::scale::{self, Options, Row};

#[derive(Parser)]
#[command(about)]
struct Cli {
    /// Node agents [default: 200; --quick: 20].
    #[arg(long)]
    agents: Option<usize>,
    /// Services, 5 endpoints each [default: 10000; --quick: 1000].
    #[arg(long)]
    services: Option<usize>,
    /// Operator shard budgets in bytes, one row each (default: the operator's default).
    #[arg(long, value_delimiter = ',')]
    budgets: Vec<usize>,
    /// Single-endpoint changes per row [default: 20; --quick: 5].
    #[arg(long)]
    changes: Option<usize>,
    /// The switchyard-operator executable (default: next to this one).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// A run of a few minutes: smaller defaults (flags given still count).
    #[arg(long)]
    quick: bool,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn kib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1024.0)
}

fn table(rows: &[Row], options: &Options) -> String {
    let mut out = format!(
        "{} agents, {} services × 5 endpoints, {} single-endpoint changes per row\n\n",
        options.agents, options.services, options.changes
    );
    out.push_str("| shard budget | shards | list MiB | first sync s | relist s | change p50 / p99 ms (all nodes) | p50 / p99 ms (per node) | KiB/agent/change: shards + own status | kube-proxy KiB (JSON / protobuf) | shards × kube-proxy (protobuf / JSON) | operator CPU s start / ms per change | operator RSS / peak MiB |\n");
    out.push_str(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let mut all = r.all_nodes.clone();
        all.sort();
        let mut each = r.per_node.clone();
        each.sort();
        let ratio = |kube_proxy: u64| r.shard_bytes as f64 / kube_proxy.max(1) as f64;
        out.push_str(&format!(
            "| {} KiB | {} | {:.1} | {:.1} | {:.1} | {} / {} | {} / {} | {} + {} | {} / {} | {:.1} / {:.1} | {:.1} / {} | {:.0} / {:.0} |\n",
            r.budget / 1024,
            r.shards,
            r.list_bytes as f64 / (1024.0 * 1024.0),
            r.first_sync.as_secs_f64(),
            r.relist.as_secs_f64(),
            ms(percentile(&all, 50.0)),
            ms(percentile(&all, 99.0)),
            ms(percentile(&each, 50.0)),
            ms(percentile(&each, 99.0)),
            kib(r.shard_bytes),
            kib(r.other_bytes),
            kib(r.slice_json_bytes),
            kib(r.slice_protobuf_bytes),
            ratio(r.slice_protobuf_bytes),
            ratio(r.slice_json_bytes),
            r.operator_cpu_start.as_secs_f64(),
            ms(r.operator_cpu_change),
            r.operator_rss_kib as f64 / 1024.0,
            r.operator_peak_kib as f64 / 1024.0,
        ));
    }
    out
}

fn operator_path(cli: &Cli) -> Result<PathBuf, String> {
    if let Some(path) = &cli.operator {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let path = exe.with_file_name("switchyard-operator");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it with this bench (cargo build --release -p switchyard-operator -p switchyard-lab) or pass --operator",
            path.display()
        ))
    }
}

fn main() -> ExitCode {
    cleanup::install_signal_cleanup();
    let cli = Cli::parse();
    let (agents, services, changes) = if cli.quick {
        (20, 1000, 5)
    } else {
        (200, 10_000, 20)
    };
    let operator = match operator_path(&cli) {
        Ok(path) => path,
        Err(e) => {
            eprintln!("control-scale: {e}");
            return ExitCode::FAILURE;
        }
    };
    let budgets = if cli.budgets.is_empty() {
        vec![DEFAULT_SHARD_BUDGET_BYTES]
    } else {
        cli.budgets.clone()
    };
    let options = Options {
        agents: cli.agents.unwrap_or(agents).max(1),
        services: cli.services.unwrap_or(services).max(1),
        budgets,
        changes: cli.changes.unwrap_or(changes).max(1),
        operator,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("control-scale: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(scale::run(&options, |line| {
        eprintln!("control-scale: {line}")
    }));
    match result {
        Ok(rows) => {
            print!("{}", table(&rows, &options));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("control-scale: {e}");
            ExitCode::FAILURE
        }
    }
}
