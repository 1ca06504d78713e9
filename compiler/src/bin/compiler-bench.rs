//! Compiler benchmark: full and single-change incremental compile (compile +
//! shard) at several cluster sizes, with time and peak memory.
//!
//! `cargo run --release -p switchyard-compiler --bin compiler-bench`
//!
//! Each size runs in a child process (the same binary, `--child S E`) so its
//! peak RSS (`VmHWM`) is its own. Single-threaded throughout.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use switchyard_compiler::{CompileSettings, Compiler, ShardSettings, Sharder, labels};

const SIZES: [(u32, u32); 4] = [(1_000, 5), (10_000, 5), (44_000, 5), (5_000, 50)];
const INCREMENTAL_RUNS: usize = 200;

fn service(i: u32) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(format!("ns-{}", i % 100)),
            name: Some(format!("svc-{i}")),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(Ipv4Addr::from(0x0a60_0000 + i).to_string()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn slice(i: u32, endpoints: u32, ready_mask: u64) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(format!("ns-{}", i % 100)),
            name: Some(format!("svc-{i}-abcde")),
            labels: Some(BTreeMap::from([(
                labels::SERVICE_NAME.to_string(),
                format!("svc-{i}"),
            )])),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
        endpoints: (0..endpoints)
            .map(|e| Endpoint {
                addresses: vec![Ipv4Addr::from(0x6400_0000 + i * endpoints + e).to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready_mask & (1 << (e % 64)) != 0),
                    ..EndpointConditions::default()
                }),
                node_name: Some(format!("node-{}", (i + e) % 500)),
                zone: Some(format!("zone-{}", e % 3)),
                ..Endpoint::default()
            })
            .collect(),
    }
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs one size; prints one tab-separated line of results.
fn child(services: u32, endpoints: u32) -> Result<(), String> {
    let objects: Vec<(Service, EndpointSlice)> = (0..services)
        .map(|i| (service(i), slice(i, endpoints, u64::MAX)))
        .collect();
    let (rss_inputs, _) = memory_kib();

    let start = Instant::now();
    let mut compiler = Compiler::new(CompileSettings::default());
    for (s, e) in &objects {
        compiler.update_service(s).map_err(|d| d.to_string())?;
        compiler
            .update_endpoint_slice(e)
            .map_err(|d| d.to_string())?;
    }
    let changed = compiler.sync();
    let compiled = start.elapsed();
    let mut sharder = Sharder::new(ShardSettings::default());
    let update = sharder.sync(&compiler, &changed);
    let full = start.elapsed();
    let (_, hwm_full) = memory_kib();

    // One endpoint of one service flips readiness per run.
    let mut times = Vec::with_capacity(INCREMENTAL_RUNS);
    let mut shards_written = BTreeSet::new();
    for run in 0..INCREMENTAL_RUNS {
        let i = (run as u32 * 7919) % services;
        let changed_slice = slice(i, endpoints, !(1u64 << (run % endpoints as usize)));
        let start = Instant::now();
        compiler
            .update_endpoint_slice(&changed_slice)
            .map_err(|d| d.to_string())?;
        let changed = compiler.sync();
        let written = sharder.sync(&compiler, &changed);
        times.push(start.elapsed());
        if changed.len() != 1 {
            return Err(format!(
                "one slice change touched {} services",
                changed.len()
            ));
        }
        shards_written.insert(written.changed.len());
        // Restore, untimed.
        compiler
            .update_endpoint_slice(&objects[i as usize].1)
            .map_err(|d| d.to_string())?;
        let changed = compiler.sync();
        sharder.sync(&compiler, &changed);
    }
    times.sort();
    let (_, hwm_end) = memory_kib();
    println!(
        "{services}\t{endpoints}\t{:.1}\t{:.1}\t{:.3}\t{:.3}\t{}\t{}\t{}\t{}\t{:?}",
        ms(compiled),
        ms(full),
        ms(times[times.len() / 2]),
        ms(times[times.len() * 99 / 100]),
        update.layout.shard_count,
        rss_inputs / 1024,
        hwm_full.saturating_sub(rss_inputs) / 1024,
        hwm_end / 1024,
        shards_written,
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, services, endpoints] = args.as_slice()
        && flag == "--child"
    {
        let (Ok(services), Ok(endpoints)) = (services.parse(), endpoints.parse()) else {
            eprintln!("usage: compiler-bench [--child SERVICES ENDPOINTS]");
            return ExitCode::FAILURE;
        };
        return match child(services, endpoints) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("compiler-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Ok(me) = std::env::current_exe() else {
        eprintln!("compiler-bench: cannot find its own executable");
        return ExitCode::FAILURE;
    };
    println!(
        "| services × endpoints | full compile ms | full compile + shard ms | incremental median ms | incremental p99 ms | shards | inputs MiB | compile peak Δ MiB | process peak MiB | shards written per change |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (services, endpoints) in SIZES {
        let out = Command::new(&me)
            .args(["--child", &services.to_string(), &endpoints.to_string()])
            .output();
        match out {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout);
                let cols: Vec<&str> = text.trim().split('\t').skip(2).collect();
                println!(
                    "| {}k × {} | {} |",
                    services / 1000,
                    endpoints,
                    cols.join(" | ")
                );
            }
            Ok(out) => {
                eprintln!(
                    "size {services}×{endpoints} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("size {services}×{endpoints}: cannot run child: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
