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

/// CPU time of the calling thread: the machine may be shared, so wall time
/// alone overstates what one core needs.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.unsigned_abs(),
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
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

/// Wall and thread-CPU time since a start.
#[derive(Clone, Copy)]
struct Clock(Instant, Duration);

impl Clock {
    fn start() -> Clock {
        Clock(Instant::now(), thread_cpu())
    }

    fn elapsed(self) -> (Duration, Duration) {
        (self.0.elapsed(), thread_cpu().saturating_sub(self.1))
    }
}

/// Runs one size; prints one tab-separated line of table cells.
fn child(services: u32, endpoints: u32) -> Result<(), String> {
    let objects: Vec<(Service, EndpointSlice)> = (0..services)
        .map(|i| (service(i), slice(i, endpoints, u64::MAX)))
        .collect();
    let (rss_inputs, _) = memory_kib();

    let clock = Clock::start();
    let mut compiler = Compiler::new(CompileSettings::default());
    for (s, e) in &objects {
        compiler.update_service(s).map_err(|d| d.to_string())?;
        compiler
            .update_endpoint_slice(e)
            .map_err(|d| d.to_string())?;
    }
    let changed = compiler.sync();
    let compiled = clock.elapsed();
    let mut sharder = Sharder::new(ShardSettings::default());
    let update = sharder.sync(&compiler, &changed);
    let sharded = clock.elapsed();
    let (_, hwm_full) = memory_kib();
    drop(update.changed);

    // One endpoint of one service flips readiness per run.
    let mut wall = Vec::with_capacity(INCREMENTAL_RUNS);
    let mut cpu = Vec::with_capacity(INCREMENTAL_RUNS);
    let mut shards_written = BTreeSet::new();
    for run in 0..INCREMENTAL_RUNS {
        let i = (run as u32 * 7919) % services;
        let changed_slice = slice(i, endpoints, !(1u64 << (run % endpoints as usize)));
        let clock = Clock::start();
        compiler
            .update_endpoint_slice(&changed_slice)
            .map_err(|d| d.to_string())?;
        let changed = compiler.sync();
        let written = sharder.sync(&compiler, &changed);
        let (w, c) = clock.elapsed();
        wall.push(w);
        cpu.push(c);
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
    wall.sort();
    cpu.sort();
    let median = INCREMENTAL_RUNS / 2;
    let p99 = INCREMENTAL_RUNS * 99 / 100;
    let cells = [
        format!("{:.0} / {:.0}", ms(compiled.1), ms(compiled.0)),
        format!("{:.0} / {:.0}", ms(sharded.1), ms(sharded.0)),
        format!("{:.3} / {:.3}", ms(cpu[median]), ms(wall[median])),
        format!("{:.3} / {:.3}", ms(cpu[p99]), ms(wall[p99])),
        update.layout.shard_count.to_string(),
        (rss_inputs / 1024).to_string(),
        (hwm_full.saturating_sub(rss_inputs) / 1024).to_string(),
        format!("{shards_written:?}"),
    ];
    println!("{}", cells.join("\t"));
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
    println!("times: thread CPU / wall, ms; memory: RSS, MiB");
    println!(
        "| services × endpoints | full compile | full compile + shard | incremental median | incremental p99 | shards | inputs | compile peak Δ | shards written per change |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (services, endpoints) in SIZES {
        let out = Command::new(&me)
            .args(["--child", &services.to_string(), &endpoints.to_string()])
            .output();
        match out {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout);
                let cols: Vec<&str> = text.trim().split('\t').collect();
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
