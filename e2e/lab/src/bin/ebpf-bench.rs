//! eBPF dataplane figures (issue 10): first-packet connect latency through
//! socket-level load balancing at N services vs a direct connect, the time of
//! one endpoint change, and the agent's memory with N services / M endpoints.
//!
//! Everything happens in a network namespace, a bpffs and a child cgroup this
//! program creates and removes. Prints one table.
//!
//! `cargo run -p switchyard-lab --bin ebpf-bench -- [--services N] [--endpoints M] [--connects K]`

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use switchyard_api::Mode;
use switchyard_api::policy::{NodeInfo, link};
use switchyard_api::ruleset::{Endpoint, Protocol, Ruleset, ServicePortRule};
use switchyard_dataplane::Backend;
use switchyard_dataplane::ebpf::EbpfBackend;
use switchyard_dataplane::ebpf::kernel::{AyaKernel, KernelConfig};
use switchyard_dataplane::ebpf::scratch::{ScratchBpffs, ScratchCgroup};
use switchyard_dataplane::settings::Settings;
use switchyard_lab::bench::memory::Memory;
use switchyard_lab::netns::{Netns, NetnsError, enter_on_exec};

const BACKEND: &str = "10.200.0.1:8080";
/// Interleaved measurement rounds per connect kind.
const ROUNDS: u32 = 21;

/// The bench's namespace: only `lo`, with the backend's address on it.
fn namespace(name: &str) -> Result<Netns, NetnsError> {
    let ns = Netns::create(name)?;
    ns.ip(&["addr", "add", "10.200.0.1/32", "dev", "lo"])?;
    Ok(ns)
}

/// This process's memory now.
fn memory() -> Memory {
    Memory::of("self").unwrap_or_default()
}

/// Resident memory once freed heap is handed back (what the agent keeps).
fn retained_rss_kib() -> u64 {
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe { libc::malloc_trim(0) };
    memory().rss_kib
}

fn endpoint(id: u32, ip: IpAddr) -> Endpoint {
    Endpoint {
        node_name: Some("bench-node".into()),
        ..Endpoint::new(id, ip, 8080)
    }
}

/// `services` service ports with `per` endpoints each; service 0's endpoints
/// are all the local listener, the rest are unreachable addresses.
fn ruleset(services: u32, per: u32, generation: u32) -> Ruleset {
    let rules = (0..services)
        .map(|s| {
            let rule_endpoints = (0..per)
                .map(|e| {
                    let id = s * per + e + 1;
                    let ip = if s == 0 {
                        IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1))
                    } else {
                        // the last endpoint of service 1 changes between generations
                        let last = if s == 1 && e == per - 1 {
                            generation
                        } else {
                            0
                        };
                        IpAddr::V4(Ipv4Addr::from(0x0ac9_0000 + id + last * 0x0010_0000))
                    };
                    endpoint(id, ip)
                })
                .collect();
            ServicePortRule {
                cluster_ips: vec![IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + s))],
                endpoints: rule_endpoints,
                ..ServicePortRule::new(s + 1, "bench", &format!("svc{s}"), Protocol::Tcp, 80)
            }
        })
        .collect();
    Ruleset { services: rules }
}

fn median<T: Ord + Copy>(mut v: Vec<T>) -> Option<T> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Child: connect `count` times to `dst`, print the median connect() time in ns.
fn client(dst: SocketAddr, count: u32) -> ExitCode {
    let mut samples = Vec::new();
    for _ in 0..count {
        let start = Instant::now();
        match TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
            Ok(s) => {
                samples.push(start.elapsed().as_nanos());
                drop(s);
            }
            Err(e) => {
                eprintln!("connect {dst}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{}", median(samples).unwrap_or(0));
    ExitCode::SUCCESS
}

/// Median connect time of a client process in `ns` (and in `cgroup`, if given).
fn measure(
    ns: &Netns,
    cgroup: Option<&ScratchCgroup>,
    dst: &str,
    count: u32,
) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let procs = cgroup
        .map(|c| {
            std::ffi::CString::new(c.dir().join("cgroup.procs").as_os_str().as_encoded_bytes())
        })
        .transpose()
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["__client", dst, &count.to_string()])
        .stdout(Stdio::piped());
    enter_on_exec(&mut cmd, ns.open().map_err(|e| e.to_string())?);
    // SAFETY: only async-signal-safe calls between fork and exec (open,
    // write, close) on a path prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(p) = &procs {
                let f = libc::open(p.as_ptr(), libc::O_WRONLY);
                if f < 0 || libc::write(f, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(f);
            }
            Ok(())
        });
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("client for {dst} failed"));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("client output: {e}"))
}

fn arg(args: &[String], name: &str, default: u32) -> u32 {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn bench(services: u32, per: u32, connects: u32) -> Result<(), String> {
    let tag = format!("sybpf-{}-bench", std::process::id());
    let ns = namespace(&tag).map_err(|e| e.to_string())?;
    let bpffs = ScratchBpffs::mount(&format!("{tag}-bpffs")).map_err(|e| e.to_string())?;
    let cgroup = ScratchCgroup::create(&tag).map_err(|e| e.to_string())?;
    let config = KernelConfig {
        pin_root: bpffs.dir().join("switchyard"),
        cgroup: Some(cgroup.dir().to_path_buf()),
        ..KernelConfig::default()
    };

    // The "agent": a thread in the namespace that owns the backend.
    let report = ns
        .run(|| -> Result<Vec<(String, String)>, String> {
            let listener = TcpListener::bind(BACKEND).map_err(|e| e.to_string())?;
            std::thread::spawn(move || for _ in listener.incoming() {});
            let mut backend = EbpfBackend::new(AyaKernel::new(config));
            let syncs = measure_syncs(&mut backend, services, per)?;
            let connects = measure_connects(&ns, &cgroup, connects)?;
            backend.cleanup().map_err(|e| e.to_string())?;
            Ok(report_rows(services, per, &syncs, &connects))
        })
        .map_err(|e| e.to_string())??;
    println!("| eBPF dataplane | value |");
    println!("| --- | --- |");
    for (k, v) in report {
        println!("| {k} | {v} |");
    }
    Ok(())
}

/// What loading, a full sync and endpoint changes cost.
struct Syncs {
    load: Duration,
    render: Duration,
    full: Duration,
    full_written: u32,
    /// Median of 11 endpoint changes, and the map writes it took.
    update: Duration,
    update_written: u32,
    rss_before_kib: u64,
    rss_after_kib: u64,
    rss_peak_kib: u64,
}

fn measure_syncs(
    backend: &mut EbpfBackend<AyaKernel>,
    services: u32,
    per: u32,
) -> Result<Syncs, String> {
    let node = NodeInfo {
        name: "bench-node".into(),
        zone: None,
        addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1))],
    };
    // No devices: the namespace has only lo, so no tc program is attached.
    let settings = Settings::defaults(Mode::Ebpf);
    let rss_before_kib = retained_rss_kib();
    // Load and attach the programs first, so the next apply is map writes only.
    let start = Instant::now();
    let empty = backend.render(&link(&Ruleset::default(), &node), &settings);
    backend.apply(&empty).map_err(|e| e.to_string())?;
    let load = start.elapsed();
    let rs = ruleset(services, per, 0);
    let start = Instant::now();
    let linked = link(&rs, &node);
    let plan = backend.render(&linked, &settings);
    let render = start.elapsed();
    let stats = backend.apply(&plan).map_err(|e| e.to_string())?;
    let full = start.elapsed();
    drop((plan, linked));
    let rss_after_kib = retained_rss_kib();
    let rss_peak_kib = memory().peak_kib;

    let mut updates = Vec::new();
    for generation in 1..=11 {
        let rs = ruleset(services, per, generation);
        let linked = link(&rs, &node);
        let plan = backend.render(&linked, &settings);
        let start = Instant::now();
        let s = backend.apply(&plan).map_err(|e| e.to_string())?;
        updates.push((start.elapsed(), s.written));
    }
    updates.sort();
    let (update, update_written) = updates[updates.len() / 2];
    Ok(Syncs {
        load,
        render,
        full,
        full_written: stats.written,
        update,
        update_written,
        rss_before_kib,
        rss_after_kib,
        rss_peak_kib,
    })
}

/// Median connect times in ns: via the ClusterIP, direct, and direct from
/// inside the hooked cgroup.
struct Connects {
    via_lb: u64,
    direct: u64,
    direct_in_cgroup: u64,
}

fn measure_connects(ns: &Netns, cgroup: &ScratchCgroup, connects: u32) -> Result<Connects, String> {
    // Interleaved rounds, so machine noise hits all three alike.
    let vip = "10.96.0.0:80";
    let (mut lb, mut plain, mut hooked) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        lb.push(measure(ns, Some(cgroup), vip, connects / ROUNDS)?);
        plain.push(measure(ns, None, BACKEND, connects / ROUNDS)?);
        hooked.push(measure(ns, Some(cgroup), BACKEND, connects / ROUNDS)?);
    }
    Ok(Connects {
        via_lb: median(lb).unwrap_or(0),
        direct: median(plain).unwrap_or(1),
        direct_in_cgroup: median(hooked).unwrap_or(0),
    })
}

fn report_rows(services: u32, per: u32, s: &Syncs, c: &Connects) -> Vec<(String, String)> {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ratio = c.via_lb as f64 / c.direct as f64;
    [
        (
            "services / endpoints",
            format!("{services} / {}", services * per),
        ),
        ("load + attach programs", format!("{:.1} ms", ms(s.load))),
        (
            "full sync: link + render + map writes",
            format!(
                "{} entries in {:.1} ms (link + render {:.1} ms)",
                s.full_written,
                ms(s.full),
                ms(s.render)
            ),
        ),
        (
            "one endpoint change (median of 11)",
            format!("{:.3} ms, {} map writes", ms(s.update), s.update_written),
        ),
        (
            "connect() via ClusterIP (socket LB), median",
            format!("{} ns", c.via_lb),
        ),
        (
            "connect() direct, no hook, median",
            format!("{} ns", c.direct),
        ),
        (
            "connect() direct, hook attached, median",
            format!("{} ns", c.direct_in_cgroup),
        ),
        (
            "ratio ClusterIP / direct (target <= 1.1)",
            format!("{ratio:.2}"),
        ),
        (
            "agent RSS before / after load, ruleset held (target <= 64 MiB)",
            format!(
                "{} / {} MiB",
                s.rss_before_kib / 1024,
                s.rss_after_kib / 1024
            ),
        ),
        (
            "agent peak RSS during the full sync",
            format!("{} MiB", s.rss_peak_kib / 1024),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__client") {
        let (Some(dst), Some(count)) = (
            args.get(2).and_then(|a| a.parse().ok()),
            args.get(3).and_then(|a| a.parse().ok()),
        ) else {
            return ExitCode::FAILURE;
        };
        return client(dst, count);
    }
    match bench(
        arg(&args, "--services", 10_000),
        arg(&args, "--endpoints", 10),
        arg(&args, "--connects", 2000),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ebpf-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
