//! `dataplane-bench`: control-plane and first-packet cost of the nftables and
//! iptables backends, inside network namespaces it creates and removes.
//!
//! For every size (services × endpoints) and mode: a full sync, then
//! single-endpoint-change syncs (each times the agent's whole `sync`: render,
//! diff, apply). Then first-packet TCP connect latency to a service VIP with
//! `--latency-services` services programmed, against a direct connect to the
//! endpoint's IP. Prints one table with ratios.
//!
//! `--nft-tables` measures the nftables mode once per number of tables its
//! service chains are spread over (`auto`: the backend's own choice).
//!
//! `--quick` is a smoke run small enough for a test.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use switchyard_api::Mode;
use switchyard_api::policy::{
    Linked, LinkedRuleset, LinkedShards, NodeInfo, RefusedShard, ShardLinker, link,
};
use switchyard_api::ruleset::{
    Cidr, Endpoint, Protocol, ProxyRulesetSpec, Ruleset, ServicePortRule, ShardLayout,
};
use switchyard_dataplane::exec::RealRunner;
use switchyard_dataplane::nftables::NftablesBackend;
use switchyard_dataplane::nftables::table_count::TableCount;
use switchyard_dataplane::settings::{LocalDetector, Settings};
use switchyard_dataplane::{ApplyStats, Dataplane, for_mode};
use switchyard_lab::agent::NodeAgent;
use switchyard_lab::bench::connect::{Latency, connects};
use switchyard_lab::bench::table::{micros, ratio, secs};
use switchyard_lab::cleanup;
use switchyard_lab::netns::{Netns, NetnsError};

#[derive(Parser)]
#[command(about)]
struct Cli {
    /// Sizes as SERVICESxENDPOINTS.
    #[arg(long, value_delimiter = ',', default_values_t = ["5000x5".to_string(), "10000x5".to_string(), "44000x5".to_string(), "5000x50".to_string()])]
    sizes: Vec<String>,
    /// Service counts (5 endpoints each); replaces --sizes.
    #[arg(long, value_delimiter = ',')]
    services: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_values_t = [Mode::Nftables, Mode::Iptables])]
    modes: Vec<Mode>,
    /// Single-endpoint-change syncs per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// Services programmed while measuring connect latency.
    #[arg(long, default_value_t = 10000)]
    latency_services: usize,
    /// Connects per target (VIP and direct).
    #[arg(long, default_value_t = 1000)]
    connects: usize,
    /// Smoke run: 300x5 and 100x50, latency at 300 services, 100 connects.
    #[arg(long)]
    quick: bool,
    /// nftables: tables per family to spread service chains over, each
    /// measured as a row of its own (`auto`: the backend's default).
    #[arg(long, value_delimiter = ',', default_values_t = ["auto".to_string()])]
    nft_tables: Vec<String>,
}

/// One measured dataplane: a mode, and for nftables its number of tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Variant {
    mode: Mode,
    tables: TableCount,
}

impl Variant {
    fn label(&self) -> String {
        match (self.mode, self.tables) {
            (Mode::Nftables, TableCount::Fixed(n)) => format!("nftables, {n} tables"),
            (mode, _) => mode.to_string(),
        }
    }

    fn dataplane(&self) -> Result<Box<dyn Dataplane>, switchyard_dataplane::BackendError> {
        match self.mode {
            Mode::Nftables => Ok(Box::new(NftablesBackend::with_tables(
                Arc::new(RealRunner),
                self.tables,
            ))),
            mode => for_mode(mode, Arc::new(RealRunner)),
        }
    }
}

/// The variants `cli` asks for, in its order.
fn variants(cli: &Cli) -> Result<Vec<Variant>, BenchError> {
    let mut out = Vec::new();
    for &mode in &cli.modes {
        if mode != Mode::Nftables {
            out.push(Variant {
                mode,
                tables: TableCount::default(),
            });
            continue;
        }
        for t in &cli.nft_tables {
            let tables = match t.as_str() {
                "auto" => TableCount::default(),
                n => TableCount::Fixed(n.parse().map_err(|_| BenchError::Tables(t.clone()))?),
            };
            out.push(Variant { mode, tables });
        }
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Harness(#[from] switchyard_lab::HarnessError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{mode} sync: {message}")]
    Sync { mode: Mode, message: String },
    #[error("bad size {0:?} (want SERVICESxENDPOINTS)")]
    Size(String),
    #[error("bad table count {0:?} (want auto or a number)")]
    Tables(String),
    #[error(
        "ebpf is measured by `cargo run --release -p switchyard-lab --bin ebpf-bench` (its cgroup hooks need a scratch cgroup, not the node's root)"
    )]
    EbpfHere,
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the bench's shards do not make a complete generation")]
    Incomplete,
    #[error(transparent)]
    Refused(#[from] RefusedShard),
}

/// What the agent would apply: the generation linked now, refused or not.
fn applied(linked: Linked) -> Result<LinkedShards, BenchError> {
    if let Some(refused) = linked.refused {
        return Err(refused.into());
    }
    linked.shards.ok_or(BenchError::Incomplete)
}

const NODE: &str = "bench-node";
/// The service connects go to has its endpoints on the pod: 10.1.0.10 + k.
const POD_BASE: [u8; 4] = [10, 1, 0, 10];
const ENDPOINT_PORT: u16 = 8080;

fn size(text: &str) -> Result<(usize, usize), BenchError> {
    let (s, e) = text
        .split_once('x')
        .ok_or_else(|| BenchError::Size(text.into()))?;
    let parse = |v: &str| v.parse().map_err(|_| BenchError::Size(text.into()));
    Ok((parse(s)?, parse(e)?))
}

fn vip(index: usize) -> IpAddr {
    let i = u32::try_from(index).unwrap_or(u32::MAX);
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 30, 0, 0)) + i))
}

fn endpoint(id: u32, ip: IpAddr) -> Endpoint {
    Endpoint {
        node_name: Some(format!("node-{}", id % 50)),
        ..Endpoint::new(id, ip, ENDPOINT_PORT)
    }
}

fn pod_ip(k: usize) -> IpAddr {
    let [a, b, c, d] = POD_BASE;
    IpAddr::V4(Ipv4Addr::new(a, b, c, d + u8::try_from(k).unwrap_or(0)))
}

/// The pod's addresses that service 0's endpoints use.
const POD_ADDRESSES: usize = 5;

/// `services` ClusterIP services with `endpoints` endpoints each; service 0's
/// endpoints are the pod's addresses (at most [`POD_ADDRESSES`], each once),
/// the rest are never contacted.
fn synthetic(services: usize, endpoints: usize) -> Ruleset {
    let mut next = 0u32;
    let services = (0..services)
        .map(|s| {
            let count = if s == 0 {
                endpoints.min(POD_ADDRESSES)
            } else {
                endpoints
            };
            let rule_endpoints = (0..count)
                .map(|k| {
                    next += 1;
                    let ip = if s == 0 {
                        pod_ip(k)
                    } else {
                        IpAddr::V4(Ipv4Addr::from(
                            u32::from(Ipv4Addr::new(10, 64, 0, 0)) + next,
                        ))
                    };
                    endpoint(next, ip)
                })
                .collect();
            ServicePortRule {
                port_name: "http".into(),
                cluster_ips: vec![vip(s)],
                endpoints: rule_endpoints,
                ..ServicePortRule::new(
                    u32::try_from(s).unwrap_or(u32::MAX),
                    &format!("ns-{}", s % 100),
                    &format!("svc-{s}"),
                    Protocol::Tcp,
                    80,
                )
            }
        })
        .collect();
    Ruleset { services }
}

fn node() -> NodeInfo {
    NodeInfo {
        name: NODE.into(),
        zone: None,
        addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1))],
    }
}

fn settings(mode: Mode) -> Settings {
    let cidr = |s: &str| s.parse::<Cidr>().ok();
    let mut s = Settings::defaults(mode);
    s.local_detector = LocalDetector::Cidrs(cidr("10.0.0.0/8").into_iter().collect());
    s.service_cidrs = cidr("172.30.0.0/16").into_iter().collect();
    s
}

/// Wall time, and CPU time (this thread plus the tools it ran): on a shared
/// machine the CPU time is the steadier figure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Timing {
    wall: Duration,
    cpu: Duration,
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(tv.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(tv.tv_usec).unwrap_or(0))
}

/// CPU time of this thread plus every waited-for child of the process.
fn cpu_now() -> Duration {
    // SAFETY: both calls only write the zeroed structs passed to them.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        Duration::new(
            u64::try_from(ts.tv_sec).unwrap_or(0),
            u32::try_from(ts.tv_nsec).unwrap_or(0),
        ) + timeval(ru.ru_utime)
            + timeval(ru.ru_stime)
    }
}

/// The node's agent thread with the variant's dataplane.
fn start_agent(ns: &Netns, variant: Variant) -> Result<NodeAgent, BenchError> {
    let factory = move || variant.dataplane();
    Ok(NodeAgent::start(ns, Box::new(factory))?)
}

/// Sync `ruleset` on the agent thread, timed there.
fn sync_timed(
    agent: &NodeAgent,
    mode: Mode,
    ruleset: LinkedRuleset,
) -> Result<(Timing, ApplyStats), BenchError> {
    let settings = settings(mode);
    agent
        .submit("apply rules", move |active| {
            let dataplane = active.as_mut().ok_or("no dataplane")?;
            let (result, timing) = timed(|| dataplane.sync(&ruleset, &settings));
            result
                .map(|stats| (timing, stats))
                .map_err(|e| e.to_string())
        })?
        .wait()?
        .map_err(|message| BenchError::Sync { mode, message })
}

/// Service ports per shard: what a 256 KiB shard budget (the operator's
/// default before 4 KiB) holds at 5 endpoints each; the bench measures the
/// dataplane, not the shard layout.
const SHARD_SERVICES: usize = 400;

/// The ruleset cut into shards of one layout, as the operator publishes it
/// (a power of two of them, the last ones possibly empty).
fn shard(ruleset: Ruleset) -> Vec<ProxyRulesetSpec> {
    let mut chunks: Vec<&[ServicePortRule]> = ruleset.services.chunks(SHARD_SERVICES).collect();
    chunks.resize(chunks.len().next_power_of_two(), &[]);
    let layout = ShardLayout {
        epoch: 1,
        shard_count: u32::try_from(chunks.len()).unwrap_or(u32::MAX),
    };
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, services)| ProxyRulesetSpec {
            shard: u32::try_from(i).unwrap_or(u32::MAX),
            layout,
            generation: 1,
            service_count: u32::try_from(services.len()).unwrap_or(u32::MAX),
            ruleset: Ruleset {
                services: services.to_vec(),
            },
        })
        .collect()
}

/// Run `f` on this thread, with its wall and CPU time.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Timing) {
    let (start, cpu) = (Instant::now(), cpu_now());
    let out = f();
    let timing = Timing {
        wall: start.elapsed(),
        cpu: cpu_now().saturating_sub(cpu),
    };
    (out, timing)
}

struct SyncResult {
    full: Timing,
    incremental: Timing,
    objects: u32,
}

fn ns_name(tag: &str) -> String {
    format!("synft{}-{tag}", std::process::id())
}

fn bench_sync(
    variant: Variant,
    services: usize,
    endpoints: usize,
    changes: usize,
) -> Result<SyncResult, BenchError> {
    let mode = variant.mode;
    let ns = Netns::create(&ns_name(&format!(
        "{}-{services}x{endpoints}",
        mode.as_str()
    )))?;
    let agent = start_agent(&ns, variant)?;
    // As the agent gets them: shards, linked by a ShardLinker that reuses
    // what did not change (its time is part of each sync's figure).
    let mut shards = shard(synthetic(services, endpoints));
    let mut linker = ShardLinker::default();
    let (linked, _) = timed(|| linker.link(&shards, &node()));
    let (full, stats) = sync_timed(&agent, mode, applied(linked)?.linked)?;
    let mut times = Vec::new();
    for c in 0..changes {
        // One endpoint of one service moves to a new address.
        let s = 1 + (c * 7919) % services.saturating_sub(1).max(1);
        let s = s.min(services - 1);
        let shard = &mut shards[s / SHARD_SERVICES];
        shard.generation += 1;
        let b = &mut shard.ruleset.services[s % SHARD_SERVICES].endpoints[0];
        b.ip = IpAddr::V4(Ipv4Addr::new(10, 200, (c / 256) as u8, (c % 256) as u8));
        b.id += 1_000_000;
        let (linked, link_time) = timed(|| linker.link(&shards, &node()));
        let (mut t, st) = sync_timed(&agent, mode, applied(linked)?.linked)?;
        t.wall += link_time.wall;
        t.cpu += link_time.cpu;
        if st.full {
            eprintln!("warning: {mode} change sync {c} was a full sync");
        }
        times.push(t);
    }
    agent.remove()?;
    times.sort();
    Ok(SyncResult {
        full,
        incremental: times.get(times.len() / 2).copied().unwrap_or_default(),
        objects: stats.objects,
    })
}

/// Latency per variant: (direct, vip) at `services` services.
fn bench_latency(
    variants: &[Variant],
    services: usize,
    count: usize,
) -> Result<Vec<(Variant, Latency, Latency)>, BenchError> {
    let node_ns = Netns::create(&ns_name("lat-node"))?;
    let pod_ns = Netns::create(&ns_name("lat-pod"))?;
    let veth = format!("synft{}", std::process::id());
    let sh = |ns: &Netns, script: &str| ns.exec("sh", &["-c", script], None);
    sh(
        &node_ns,
        &format!(
            "ip link add {veth}a type veth peer name {veth}b && ip link set {veth}b netns {} && \
             ip addr add 10.1.0.1/16 dev {veth}a && ip link set {veth}a up && \
             ip route add 172.30.0.0/16 dev {veth}a",
            pod_ns.name()
        ),
    )?;
    let mut pod_setup = format!("ip link set {veth}b up");
    for k in 0..POD_ADDRESSES {
        let _ = write!(pod_setup, " && ip addr add {}/16 dev {veth}b", pod_ip(k));
    }
    sh(&pod_ns, &pod_setup)?;

    // The server: accept and close; the socket is the pod namespace's.
    let listener = pod_ns
        .run(|| TcpListener::bind(("0.0.0.0", ENDPOINT_PORT)))?
        .map_err(|source| BenchError::Io {
            what: "listen in pod",
            source,
        })?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });

    let ruleset = synthetic(services, 5);
    let direct = SocketAddr::new(pod_ip(0), ENDPOINT_PORT);
    let service = SocketAddr::new(vip(0), 80);
    let mut out = Vec::new();
    for &variant in variants {
        let agent = start_agent(&node_ns, variant)?;
        sync_timed(&agent, variant.mode, link(&ruleset, &node()))?;
        let measured = node_ns
            .run(|| connects(&[direct, service], count))?
            .map_err(|source| BenchError::Io {
                what: "connect",
                source,
            })?;
        agent.remove()?;
        let mut it = measured.into_iter();
        if let (Some(d), Some(v)) = (it.next(), it.next()) {
            out.push((variant, d, v));
        }
    }
    Ok(out)
}

fn timing(t: Timing) -> String {
    format!("{} (cpu {})", secs(t.wall), secs(t.cpu))
}

fn run(cli: &Cli) -> Result<(), BenchError> {
    if cli.modes.contains(&Mode::Ebpf) {
        return Err(BenchError::EbpfHere);
    }
    let (sizes, latency_services, connects_n) = if cli.quick {
        (vec![(300, 5), (100, 50)], 300, 100)
    } else if !cli.services.is_empty() {
        (
            cli.services.iter().map(|&s| (s, 5)).collect(),
            cli.latency_services,
            cli.connects,
        )
    } else {
        (
            cli.sizes
                .iter()
                .map(|s| size(s))
                .collect::<Result<_, _>>()?,
            cli.latency_services,
            cli.connects,
        )
    };
    let changes = if cli.quick { 2 } else { cli.changes };
    let variants = variants(cli)?;

    println!(
        "| size | mode | objects | full sync | endpoint change (link + sync) | full vs nftables | change vs nftables |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for &(services, endpoints) in &sizes {
        let mut results: Vec<(Variant, SyncResult)> = Vec::new();
        for &variant in &variants {
            let r = bench_sync(variant, services, endpoints, changes)?;
            results.push((variant, r));
        }
        let base = results
            .iter()
            .find(|(v, _)| v.mode == Mode::Nftables)
            .map(|(_, r)| (r.full, r.incremental));
        for (variant, r) in &results {
            let (rf, ri) = base.map_or(("-".into(), "-".into()), |(f, i)| {
                (
                    ratio(r.full.wall, f.wall),
                    ratio(r.incremental.wall, i.wall),
                )
            });
            println!(
                "| {services}×{endpoints} | {} | {} | {} | {} | {rf} | {ri} |",
                variant.label(),
                r.objects,
                timing(r.full),
                timing(r.incremental)
            );
        }
    }

    println!();
    println!(
        "first-packet TCP connect latency, {latency_services} services, {connects_n} connects each:"
    );
    println!(
        "| mode | direct median | direct p99 | VIP median | VIP p99 | median ratio | p99 ratio |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (variant, d, v) in bench_latency(&variants, latency_services, connects_n)? {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            variant.label(),
            micros(d.p50),
            micros(d.p99),
            micros(v.p50),
            micros(v.p99),
            ratio(v.p50, d.p50),
            ratio(v.p99, d.p99)
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    cleanup::install_signal_cleanup();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dataplane-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
