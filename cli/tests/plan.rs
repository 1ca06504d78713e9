//! `switchyard plan` end to end through the binary: golden outputs per mode on
//! a sample state, the pool decision, JSON, and invalid input with its messages
//! and exit codes. `UPDATE_GOLDEN=1 cargo test -p switchyard-cli`
//! rewrites the golden files (review the diff).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use switchyard_testkit::golden::assert_golden;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn state() -> String {
    dir().join("state/sample.yaml").display().to_string()
}

fn switchyard(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Compare with (or, when asked, rewrite) a golden file.
fn golden(name: &str, actual: &str) {
    assert_golden(&dir().join("golden").join(name), actual);
}

fn plan_mode_golden(mode: &str) {
    let out = switchyard(
        &["plan", "-f", &state(), "--node", "worker-1", "--mode", mode],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    golden(&format!("plan-worker-1-{mode}.txt"), &stdout(&out));
}

#[test]
fn iptables_plan_matches_golden() {
    plan_mode_golden("iptables");
}

#[test]
fn nftables_plan_matches_golden() {
    plan_mode_golden("nftables");
}

#[test]
fn ebpf_plan_matches_golden() {
    plan_mode_golden("ebpf");
}

#[test]
fn ipvs_plan_matches_golden() {
    plan_mode_golden("ipvs");
}

#[test]
fn pool_decides_the_mode_and_json_is_stable() {
    let out = switchyard(
        &[
            "plan",
            "-f",
            &state(),
            "--node",
            "worker-2",
            "--format",
            "json",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let node = &json["nodes"][0];
    assert_eq!(node["node"], "worker-2");
    assert_eq!(node["pool"], "legacy");
    assert_eq!(node["mode"], "iptables");
    assert_eq!(node["modeSource"], "pool");
    assert_eq!(node["servicePorts"], 4);
    golden("plan-worker-2.json", &stdout(&out));
}

#[test]
fn stdin_and_directories_are_read_like_files() {
    let text = std::fs::read_to_string(state()).unwrap();
    let piped = switchyard(&["plan", "-f", "-", "--node", "worker-2"], Some(&text));
    let file = switchyard(&["plan", "-f", &state(), "--node", "worker-2"], None);
    let dir_in = switchyard(
        &[
            "plan",
            "-f",
            &dir().join("state").display().to_string(),
            "--node",
            "worker-2",
        ],
        None,
    );
    assert_eq!(piped.status.code(), Some(0), "{}", stderr(&piped));
    assert_eq!(stdout(&piped), stdout(&file));
    assert_eq!(stdout(&dir_in), stdout(&file));
    assert!(
        stdout(&file).starts_with("# node worker-2: pool legacy; mode iptables; 4 service ports\n")
    );
}

/// Plan an invalid state: its exit code and the combined output.
fn plan_invalid(file: &str, extra: &[&str]) -> (Option<i32>, String) {
    let path = dir().join("invalid").join(file).display().to_string();
    let mut args = vec!["plan", "-f", path.as_str()];
    args.extend_from_slice(extra);
    let out = switchyard(&args, None);
    (out.status.code(), stdout(&out) + &stderr(&out))
}

#[test]
fn a_field_of_the_wrong_type_names_document_object_and_field() {
    let (code, text) = plan_invalid("port-not-a-number.yaml", &[]);
    assert_eq!(code, Some(1));
    assert!(
        text.contains(
            "port-not-a-number.yaml: document 2: Service \"web\": field `spec.ports[0].port`"
        ),
        "{text}"
    );
}

#[test]
fn broken_yaml_names_the_document() {
    let (code, text) = plan_invalid("broken.yaml", &[]);
    assert_eq!(code, Some(1));
    assert!(
        text.contains("broken.yaml: document 2: not valid YAML"),
        "{text}"
    );
}

#[test]
fn unsupported_kinds_are_named() {
    let (code, text) = plan_invalid("deployment.yaml", &[]);
    assert_eq!(code, Some(1));
    assert!(
        text.contains("kind \"Deployment\" is not supported"),
        "{text}"
    );
}

#[test]
fn compiler_diagnostics_name_the_service_and_field_and_fail() {
    let (code, text) = plan_invalid("bad-cluster-ip.yaml", &["--mode", "iptables"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("invalid: Service default/bad: InvalidClusterIP:"),
        "{text}"
    );
    assert!(text.contains("10.96.0.300"), "{text}");
    // The other service is still planned.
    assert!(
        text.contains("default/good:http has no endpoints"),
        "{text}"
    );
}

#[test]
fn hostile_names_are_skipped_with_their_field_and_never_reach_the_rules() {
    for mode in ["iptables", "ipvs", "nftables", "ebpf"] {
        let (code, text) = plan_invalid("hostile-names.yaml", &["--mode", mode]);
        assert_eq!(code, Some(1), "{mode}: {text}");
        for skipped in [
            r#"invalid: Service default/web\"\n-A INPUT -j ACCEPT: InvalidName: metadata.name: "web\"\n-A INPUT -j ACCEPT": a DNS-1035 label"#,
            r#"invalid: Service default/good: InvalidPortName: spec.ports[0].name: "http\n-A INPUT -j ACCEPT": a lowercase RFC 1123 label"#,
            r#"invalid: EndpointSlice default/good-1: InvalidNodeName: endpoints[0].nodeName: "worker-1\n-A INPUT -j ACCEPT""#,
            r#"invalid: Node: metadata.name: "worker-2\n-A INPUT -j ACCEPT": a lowercase RFC 1123 subdomain"#,
        ] {
            assert!(text.contains(skipped), "{mode}: no {skipped:?} in\n{text}");
        }
        // The line the data would have started is still inside its message.
        assert!(
            !text
                .lines()
                .any(|l| l.trim_start().starts_with("-A INPUT -j ACCEPT")),
            "{mode}: a rule line came from the input:\n{text}"
        );
        // The valid rest is planned: worker-1, its endpoint, the good port.
        assert!(text.contains("# node worker-1:"), "{mode}: {text}");
        assert!(!text.contains("# node worker-2"), "{mode}: {text}");
        assert!(text.contains("10.0.0.6"), "{mode}: {text}");
        assert!(!text.contains("10.96.0.31"), "{mode}: {text}");
    }
}

#[test]
fn input_over_the_size_cap_is_refused_before_it_is_read() {
    let dir = std::env::temp_dir().join(format!("sy-plan-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let huge = dir.join("huge.yaml");
    // Sparse: as large as it says, without the disk space or the time.
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(512 * 1024 * 1024 + 1)
        .unwrap();
    let out = switchyard(&["plan", "-f", huge.to_str().unwrap()], None);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("huge.yaml: the state is larger than 536870912 bytes, the most that is read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unusable_proxyconfig_settings_name_the_field() {
    let (code, text) = plan_invalid("bad-setting.yaml", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("# invalid: ProxyConfig legacy: ProxyConfig minSyncPeriod:"),
        "{text}"
    );
}

#[test]
fn a_node_in_two_pools_of_equal_priority_is_a_conflict() {
    let (code, text) = plan_invalid("conflict.yaml", &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(
            "# node worker-1: CONFLICT: selected by ProxyConfigs a, b with equal priority 5"
        ),
        "{text}"
    );
}

#[test]
fn an_unknown_node_lists_the_known_ones() {
    let out = switchyard(&["plan", "-f", &state(), "--node", "worker-9"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Node \"worker-9\" is not in the input (it has: worker-1, worker-2)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn crdgen_prints_the_api_crds() {
    let out = switchyard(&["crdgen"], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), switchyard_api::crds_yaml().unwrap());
}

#[test]
fn every_subcommand_has_help_with_examples() {
    for sub in ["plan", "diff", "demo", "crdgen"] {
        let out = switchyard(&[sub, "--help"], None);
        assert_eq!(out.status.code(), Some(0), "{sub}");
        assert!(
            stdout(&out).contains("Examples:"),
            "{sub}: {}",
            stdout(&out)
        );
    }
}

#[test]
fn the_demo_state_plans_for_its_pool() {
    let state = switchyard(
        &["demo", "--print-state", "--nodes", "2", "--services", "3"],
        None,
    );
    assert_eq!(state.status.code(), Some(0));
    let out = switchyard(
        &["plan", "-f", "-", "--node", "node-1"],
        Some(&stdout(&state)),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("# node node-1: pool demo; mode iptables; 6 service ports\n"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn demo_refuses_modes_it_cannot_run_here() {
    let out = switchyard(&["demo", "--from", "ipvs", "--to", "nftables"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("ipvs is not available in the demo: IPVS needs the ip_vs kernel module"),
        "{}",
        stderr(&out)
    );
    let out = switchyard(&["demo", "--from", "nftables", "--to", "nftables"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--from and --to are both nftables"),
        "{}",
        stderr(&out)
    );
}
