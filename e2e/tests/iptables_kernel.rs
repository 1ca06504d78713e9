//! The iptables backend against the real kernel in a namespace of its own:
//! restart recovery removes a previous instance's leftovers, and cleanup
//! removes every trace of the mode and nothing else (needs root).

use std::process::Command;
use std::sync::Arc;

use switchyard_api::Mode;
use switchyard_api::policy::{LinkedRuleset, link};
use switchyard_dataplane::Dataplane;
use switchyard_dataplane::exec::RealRunner;
use switchyard_dataplane::iptables::IptablesBackend;
use switchyard_dataplane::sysctl::ProcSysctl;
use switchyard_lab::agent::NodeAgent;
use switchyard_lab::netns::Netns;
use switchyard_lab::runner::{compile_stage, node_info, settings_for};
use switchyard_lab::scenario::Scenario;

fn in_ns(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn overall() -> (Scenario, LinkedRuleset) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/overall.yaml");
    let scenario = Scenario::load(path).unwrap_or_else(|e| panic!("{e}"));
    let addresses = scenario.node.parsed_addresses().unwrap_or_default();
    let stage = scenario.stages().remove(0);
    let compiled = compile_stage(&scenario.node, &stage);
    let linked = link(&compiled.ruleset, &node_info(&scenario.node, &addresses));
    (scenario, linked)
}

fn agent(ns: &Netns) -> NodeAgent {
    NodeAgent::start(
        ns,
        Box::new(|| {
            let b: Box<dyn Dataplane> = Box::new(IptablesBackend::new(
                Arc::new(RealRunner),
                Arc::new(ProcSysctl),
            ));
            Ok(b)
        }),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn restart_recovery_and_cleanup_touch_only_our_chains() {
    let ns = Netns::create(&format!("syipt-{}-kernel", std::process::id()))
        .unwrap_or_else(|e| panic!("{e}"));
    // Someone else's rules, which must survive.
    in_ns(&ns, &["iptables", "-t", "nat", "-N", "FOREIGN"]);
    in_ns(
        &ns,
        &["iptables", "-t", "nat", "-A", "PREROUTING", "-j", "FOREIGN"],
    );
    in_ns(
        &ns,
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
        ],
    );

    let (scenario, linked) = overall();
    let settings = settings_for(&scenario.node, Mode::Iptables);
    let first = agent(&ns);
    first
        .sync(&linked, &settings)
        .unwrap_or_else(|e| panic!("{e}"));
    let saved = in_ns(&ns, &["iptables-save"]);
    assert!(saved.contains(":KUBE-SVC-XPGD46QRK7WJZT7O"), "{saved}");
    let localnet = || in_ns(&ns, &["cat", "/proc/sys/net/ipv4/conf/all/route_localnet"]);
    assert_eq!(localnet().trim(), "1");
    // Cleanup puts back what this instance changed.
    assert!(
        first.cleanup().unwrap_or_else(|e| panic!("{e}")),
        "mode still present"
    );
    assert_eq!(localnet().trim(), "0");
    assert!(!in_ns(&ns, &["iptables-save"]).contains("KUBE-"));
    first
        .sync(&linked, &settings)
        .unwrap_or_else(|e| panic!("{e}"));
    // The agent restarts: a new instance that never saw svc1 syncs without it.
    drop(first);
    let mut without_svc1 = linked.clone();
    without_svc1.services.retain(|s| s.rule.name != "svc1");
    let second = agent(&ns);
    second
        .sync(&without_svc1, &settings)
        .unwrap_or_else(|e| panic!("{e}"));
    let saved = in_ns(&ns, &["iptables-save"]);
    assert!(!saved.contains("KUBE-SVC-XPGD46QRK7WJZT7O"), "{saved}");
    assert!(!saved.contains("KUBE-SEP-SXIVWICOYRO3J4NJ"), "{saved}");
    assert!(saved.contains(":KUBE-SVC-GNZBNJ2PO5MGZ6GT"), "{saved}");
    // A jump rule is inserted once, not once per sync.
    let jumps = saved
        .matches(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        )
        .count();
    assert_eq!(jumps, 1, "{saved}");

    assert!(
        second.cleanup().unwrap_or_else(|e| panic!("{e}")),
        "mode still present"
    );
    for save in ["iptables-save", "ip6tables-save"] {
        let saved = in_ns(&ns, &[save]);
        assert!(!saved.contains("KUBE-"), "{save}: {saved}");
    }
    let saved = in_ns(&ns, &["iptables-save"]);
    assert!(
        saved.contains(":FOREIGN") && saved.contains("-A PREROUTING -j FOREIGN"),
        "{saved}"
    );
    assert!(saved.contains("--dport 22 -j ACCEPT"), "{saved}");
}
