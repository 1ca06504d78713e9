//! A cluster state of several hundred MiB is read, parsed, compiled and
//! sharded in bounded time and memory (and one over the cap is refused:
//! `cli/tests/plan.rs`, `node-agent/tests/standalone.rs`).
//!
//! Bench-style, so ignored by default; run it optimized:
//! `cargo test --release -p switchyard-compiler --test state_size -- --ignored --nocapture`
//! (`STATE_MIB` sets the size, 300 by default).

use std::io::Write;
use std::time::Instant;

use switchyard_api::validation::check_shard;
use switchyard_api::validation::limits::MAX_SHARD_BYTES;
use switchyard_compiler::{
    CompileSettings, Compiler, MAX_STATE_BYTES, Objects, ShardSettings, Sharder, StateReader,
    parse_into,
};

/// Services with one slice of `endpoints` endpoints each, padded like real
/// objects (labels, annotations, target references), until `bytes` are written.
fn write_state(out: &mut impl Write, bytes: u64, endpoints: u32) -> std::io::Result<u32> {
    let mut written = 0u64;
    let mut services = 0u32;
    while written < bytes {
        let i = services;
        let ip = std::net::Ipv4Addr::from(0x0a60_0000 + i);
        let mut text = format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: ns-{ns}\n  labels: {{app: svc-{i}, team: team-{team}}}\n  annotations: {{note: \"an annotation of the length real ones have\"}}\nspec:\n  type: ClusterIP\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  ports:\n  - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}\n  selector: {{app: svc-{i}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-abcde\n  namespace: ns-{ns}\n  labels: {{kubernetes.io/service-name: svc-{i}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n",
            ns = i % 100,
            team = i % 7,
        );
        for e in 0..endpoints {
            let address = std::net::Ipv4Addr::from(0x0b00_0000 + i * endpoints + e);
            text.push_str(&format!(
                "- addresses: [{address}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: node-{}\n  zone: zone-{}\n  targetRef: {{kind: Pod, name: svc-{i}-pod-{e}, namespace: ns-{}}}\n",
                e % 50,
                e % 3,
                i % 100
            ));
        }
        out.write_all(text.as_bytes())?;
        written += text.len() as u64;
        services += 1;
    }
    Ok(services)
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "bench-style: several hundred MiB; run with --release -- --ignored"]
fn a_state_of_several_hundred_mib_is_handled_in_bounded_memory() {
    let mib: u64 = std::env::var("STATE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let bytes = mib << 20;
    assert!(bytes < MAX_STATE_BYTES, "under the cap");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.yaml");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let started = Instant::now();
    let services = write_state(&mut file, bytes, 10).unwrap();
    drop(file);
    println!(
        "wrote {mib} MiB, {services} services, in {:.1?}",
        started.elapsed()
    );

    let started = Instant::now();
    let text = StateReader::default().read_file(&path).unwrap();
    let mut objects = Objects::default();
    parse_into(&mut objects, "state.yaml", &text).unwrap();
    drop(text);
    println!("read and parsed in {:.1?}", started.elapsed());
    assert_eq!(objects.services.len() as u32, services);

    let started = Instant::now();
    let mut compiler = Compiler::new(CompileSettings::default());
    for service in std::mem::take(&mut objects.services) {
        compiler.update_service(&service).unwrap();
    }
    for slice in std::mem::take(&mut objects.endpoint_slices) {
        compiler.update_endpoint_slice(&slice).unwrap();
    }
    let changed = compiler.sync();
    let mut sharder = Sharder::new(ShardSettings::default());
    let update = sharder.sync(&compiler, &changed);
    println!(
        "compiled and sharded in {:.1?}: {} shards",
        started.elapsed(),
        update.changed.len()
    );
    assert!(compiler.diagnostics().is_empty());
    for shard in &update.changed {
        assert!(serde_json::to_vec(shard).unwrap().len() <= MAX_SHARD_BYTES);
        assert_eq!(check_shard(shard), Ok(()));
    }
    let peak = peak_rss_kib() << 10;
    println!(
        "peak memory {} MiB, {:.1}x the input",
        peak >> 20,
        peak as f64 / bytes as f64
    );
    assert!(peak < 16 * bytes, "peak memory {peak} bytes");
}
