//! `scenario --mode ipvs` on a host whose kernel lacks IPVS, and `scenario
//! --vm` for any mode (eBPF on Debian's stock kernel): the same binary runs
//! again inside the VM with the scenario files, and its lines stream back.
//! With `--reference kube-proxy` the control plane stays on the host and
//! kube-proxy runs in the guest ([`crate::reference::vm`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use switchyard_api::Mode;
use switchyard_api::policy::{LinkedRuleset, LinkedServicePort};
use switchyard_api::ruleset::Endpoint;

use super::{ExtraFile, GUEST_PAYLOAD, IN_VM_ENV, VmError, VmRunner, host_has_ipvs};
use crate::hooks::{DataplaneFactory, KernelHooks, ModeHooks};
use crate::reference::vm::HostSide;
use crate::scenario::{Expected, Flow};

/// Per-attempt connection timeout inside the VM at least: software emulation
/// is slow enough that 400 ms would turn slow answers into drops.
pub const VM_MIN_TIMEOUT_MS: u64 = 3000;

/// The deadlock guard of a VM run of `files` scenario files: generous, as
/// a file with a kube-proxy reference takes one to three minutes under
/// emulation on a loaded machine.
fn deadlock_guard(files: usize) -> Duration {
    let files = u64::try_from(files).unwrap_or(u64::MAX);
    Duration::from_secs(600_u64.saturating_add(files.saturating_mul(240)))
}

/// Whether IPVS scenarios must run in the VM: the kernel has no IPVS and we
/// are not already inside.
pub fn needs_vm() -> bool {
    std::env::var_os(IN_VM_ENV).is_none() && !host_has_ipvs()
}

/// Run this scenario binary in the VM with `--mode <mode>`, `args` and
/// `files` (already expanded to files), printing its output as it arrives;
/// returns the VM command's exit code. With `host`, the guest reaches its
/// API server and runs kube-proxy.
pub fn run_scenarios_in_vm(
    mode: Mode,
    args: &[String],
    files: &[String],
    timeout_ms: u64,
    host: Option<&HostSide>,
) -> Result<i32, VmError> {
    let exe =
        std::env::current_exe().map_err(|e| VmError::io("find this binary", Path::new("."), e))?;
    let mut extra = Vec::new();
    let mut guest_paths = Vec::new();
    for f in files {
        let host = std::fs::canonicalize(f)
            .map_err(|e| VmError::io("find a scenario", Path::new(f), e))?;
        // Not at the host path: the guest mounts fresh tmpfs on /tmp and /run,
        // which would hide a checkout living there (as CI's clones may).
        let guest = format!("{GUEST_PAYLOAD}{}", host.display());
        guest_paths.push(guest.clone());
        extra.push(ExtraFile { host, guest });
    }
    let mode = format!("--mode={mode}");
    let timeout = format!("--timeout-ms={}", timeout_ms.max(VM_MIN_TIMEOUT_MS));
    let mut all = vec![mode.as_str(), timeout.as_str()];
    all.extend(args.iter().map(String::as_str));
    all.extend(guest_paths.iter().map(String::as_str));
    let mut vm = VmRunner::new()?.timeout(deadlock_guard(files.len()));
    if let Some(host) = host {
        vm = host.prepare(vm);
        extra.extend_from_slice(host.files());
    }
    // The harness's debugging switch reaches the guest too.
    if let Ok(v) = std::env::var("SWITCHYARD_E2E_DUMP") {
        vm = vm.env("SWITCHYARD_E2E_DUMP", &v);
    }
    eprintln!(
        "scenario: running in a VM with Debian's {}",
        vm.kernel_version()
    );
    let out = vm.run_with(&exe, &all, &extra, &mut |line| println!("{line}"))?;
    Ok(out.exit_code)
}

/// The harness hooks of the IPVS mode: the kernel backend, plus the flows IPVS
/// cannot carry by design, reported as SKIP with the reason.
pub struct IpvsHooks;

impl ModeHooks for IpvsHooks {
    fn mode(&self) -> Mode {
        Mode::Ipvs
    }

    fn dataplane(&self) -> DataplaneFactory {
        KernelHooks { mode: Mode::Ipvs }.dataplane()
    }

    fn unsupported_in(&self, flow: &Flow, ruleset: &LinkedRuleset) -> Option<String> {
        ipvs_cannot_express(flow, ruleset).map(str::to_string)
    }
}

/// A frontend of a service port a flow is sent to.
enum Frontend<'a> {
    /// A cluster IP: internal traffic policy.
    Internal(&'a LinkedServicePort),
    /// An external IP, load-balancer IP or NodePort: external traffic policy.
    External(&'a LinkedServicePort),
}

fn frontend<'a>(flow: &Flow, ruleset: &'a LinkedRuleset) -> Option<Frontend<'a>> {
    ruleset
        .services
        .iter()
        .filter(|sp| sp.rule.protocol == flow.protocol)
        .find_map(|sp| {
            let r = &sp.rule;
            let on_port = r.port == flow.dest_port;
            if on_port && r.cluster_ips.contains(&flow.dest_ip) {
                Some(Frontend::Internal(sp))
            } else if (on_port
                && (r.external_ips.contains(&flow.dest_ip)
                    || r.load_balancer_ips.contains(&flow.dest_ip)))
                || (r.node_port == Some(flow.dest_port)
                    && ruleset.node.addresses.contains(&flow.dest_ip))
            {
                Some(Frontend::External(sp))
            } else {
                None
            }
        })
}

fn endpoint_set<'a>(endpoints: impl Iterator<Item = &'a Endpoint>) -> BTreeSet<SocketAddr> {
    endpoints.map(|b| SocketAddr::new(b.ip, b.port)).collect()
}

/// Why IPVS (as kube-proxy's IPVS mode) cannot give `flow` its expected outcome.
pub fn ipvs_cannot_express(flow: &Flow, ruleset: &LinkedRuleset) -> Option<&'static str> {
    let expected = Expected::parse(&flow.output).ok()?;
    let node_port = ruleset
        .services
        .iter()
        .any(|sp| sp.rule.protocol == flow.protocol && sp.rule.node_port == Some(flow.dest_port));
    if flow.dest_ip.is_loopback() && node_port && expected != Expected::Untranslated {
        return Some(
            "IPVS does not serve NodePorts on localhost (kube-proxy's IPVS mode never did; \
             localhostNodePorts is an iptables feature)",
        );
    }
    let Some(front) = frontend(flow, ruleset) else {
        let service_address = ruleset.services.iter().any(|sp| {
            let r = &sp.rule;
            r.cluster_ips
                .iter()
                .chain(&r.external_ips)
                .chain(&r.load_balancer_ips)
                .any(|ip| *ip == flow.dest_ip)
        });
        return (service_address && expected != Expected::Reject).then_some(
            "IPVS puts service addresses on kube-ipvs0, so other ports of a service address are \
             the node's own, and kube-proxy's IPVS mode rejects them (KUBE-IPVS-FILTER)",
        );
    };
    let (sp, used) = match front {
        Frontend::Internal(sp) => (sp, endpoint_set(sp.internal_endpoints())),
        Frontend::External(sp) => (sp, endpoint_set(sp.external_endpoints())),
    };
    match expected {
        Expected::Drop if used.is_empty() && sp.has_any_endpoints => Some(
            "IPVS answers a virtual server without real servers with ICMP port unreachable; \
             it cannot drop",
        ),
        Expected::Endpoints(want)
            if matches!(front, Frontend::External(_))
                && sp.external_policy_local()
                && want != used =>
        {
            Some(
                "externalTrafficPolicy=Local: IPVS has one virtual server per address, so \
                 traffic from pods and the node to an external address also gets only local \
                 endpoints (no short circuit to all endpoints)",
            )
        }
        _ => None,
    }
}
