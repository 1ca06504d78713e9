//! `switchyard diff` through the binary on the sample state.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::path::Path;
use std::process::{Command, Output};

fn diff(args: &[&str]) -> Output {
    let state = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/state/sample.yaml");
    let mut all = vec!["diff", "-f", state.to_str().unwrap(), "--node", "worker-1"];
    all.extend_from_slice(args);
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(&all)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn iptables_to_nftables_shows_both_rulesets_and_flags_the_known_differences() {
    let out = diff(&["--from", "iptables", "--to", "nftables", "--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    let node = &report["nodes"][0];
    let from: Vec<&str> = node["fromRules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    let to: Vec<&str> = node["toRules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert!(from.contains(&"*nat"), "iptables-restore form");
    assert!(to.iter().any(|l| l.starts_with("table ip ")), "nft form");

    // The behaviour both implement, from the one linked ruleset.
    let shop = node["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["servicePort"] == "default/shop:https")
        .unwrap();
    assert_eq!(
        shop["fromPods"],
        serde_json::json!(["10.244.1.9:8443", "10.244.2.9:8443"])
    );
    assert_eq!(
        shop["fromOutside"],
        serde_json::json!(["10.244.1.9:8443"]),
        "eTP Local on worker-1"
    );

    let traffic: Vec<&str> = node["differences"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["traffic"].as_str())
        .collect();
    assert_eq!(
        traffic,
        [
            "to a cluster IP on a port no service uses",
            "to a node port",
            "to a node port on 127.0.0.1"
        ]
    );
    // iptables' plan, traced with its backend's tracer, does what link says;
    // the nftables backend has no tracer to run.
    assert_eq!(node["traces"][0]["mode"], "iptables");
    assert_eq!(node["traces"][0]["traced"], true);
    assert_eq!(
        node["traces"][0]["probes"], 8,
        "5 frontends and 3 cluster IPs on an unused port"
    );
    assert_eq!(node["traces"][0]["mismatches"], serde_json::json!([]));
    assert_eq!(node["traces"][1]["traced"], false);

    let unknown_port = &node["differences"][0];
    assert_eq!(unknown_port["to"], "rejected (ICMP port unreachable)");
    assert_eq!(unknown_port["affects"].as_array().unwrap().len(), 4);
}

#[test]
fn fail_on_difference_sets_the_exit_code() {
    let out = diff(&[
        "--from",
        "iptables",
        "--to",
        "nftables",
        "--fail-on-difference",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("DIFFERENT traffic to a cluster IP on a port no service uses"),
        "{text}"
    );
    assert!(text.lines().next().unwrap().starts_with("# node worker-1"));
}

#[test]
fn a_mode_compared_with_itself_has_no_difference() {
    let out = diff(&[
        "--from",
        "iptables",
        "--to",
        "iptables",
        "--fail-on-difference",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let report = json(&out);
    assert_eq!(report["nodes"][0]["differences"], serde_json::json!([]));
    assert_eq!(
        report["nodes"][0]["fromRules"],
        report["nodes"][0]["toRules"]
    );
}
