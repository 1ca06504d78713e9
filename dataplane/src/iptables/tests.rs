//! Render golden tests and apply/cleanup tests against fake kernel tools.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use switchyard_api::Mode;
use switchyard_api::policy::{LinkedRuleset, NodeInfo, link};
use switchyard_compiler::{CompileSettings, Snapshot, compile, parse_objects};
use switchyard_testkit::golden::assert_golden;

use super::*;
use crate::conntrack::fake::FakeConntrack;
use crate::conntrack::{ConntrackTable, UdpFlow};
use crate::ebpf::masq_ports::MasqueradePorts;
use crate::exec::{Call, ExecError, FakeRunner, Runner};
use crate::settings::{LocalDetector, Settings};
use crate::sysctl::FakeSysctl;

const OVERALL: &str = include_str!("testdata/overall.yaml");

fn node() -> NodeInfo {
    NodeInfo {
        name: "test-node".into(),
        zone: None,
        addresses: vec![
            "192.168.0.2".parse().unwrap(),
            "192.168.1.2".parse().unwrap(),
        ],
    }
}

fn linked(yaml: &str) -> LinkedRuleset {
    let objects = parse_objects(yaml).unwrap();
    let compiled = compile(&Snapshot::from(objects), &CompileSettings::default());
    assert!(
        compiled.diagnostics.is_empty(),
        "{:?}",
        compiled.diagnostics
    );
    link(&compiled.ruleset, &node())
}

fn settings() -> Settings {
    let mut s = Settings::defaults(Mode::Iptables);
    s.local_detector = LocalDetector::Cidrs(vec!["10.0.0.0/8".parse().unwrap()]);
    s
}

/// Compare with a golden file; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, actual: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/iptables/testdata");
    assert_golden(&dir.join(name), actual);
}

#[test]
fn overall_render_matches_golden() {
    let plan = render::render(&linked(OVERALL), &settings());
    golden("overall.golden", &plan.to_string());
}

#[test]
fn dual_stack_render_matches_golden() {
    let mut node = node();
    node.addresses.push("2001:db8::1".parse().unwrap());
    let objects = parse_objects(include_str!("testdata/dual-stack.yaml")).unwrap();
    let compiled = compile(&Snapshot::from(objects), &CompileSettings::default());
    let mut s = settings();
    s.local_detector = LocalDetector::Cidrs(vec![
        "10.0.0.0/8".parse().unwrap(),
        "fd00:10::/64".parse().unwrap(),
    ]);
    let plan = render::render(&link(&compiled.ruleset, &node), &s);
    golden("dual-stack.golden", &plan.to_string());
}

#[test]
fn masquerade_all_and_no_detector_render() {
    let ruleset = linked(OVERALL);
    let mut all = settings();
    all.masquerade_all = true;
    let text = render::render(&ruleset, &all).to_string();
    assert!(text.contains(
        r#"-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-MARK-MASQ"#
    ));
    let none = render::render(&ruleset, &Settings::defaults(Mode::Iptables)).to_string();
    assert!(
        !none.contains("ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s")
    );
    assert!(!none.contains("pod traffic for"));
}

/// Beside a draining eBPF mode, TCP and UDP are masqueraded on the ports
/// eBPF's masquerade leaves (the agent sets them); the rest as before.
#[test]
fn masquerade_beside_ebpf_takes_tcp_and_udp_ports_outside_ebpfs() {
    let mut beside = settings();
    beside.masquerade_ports = Some(MasqueradePorts {
        min: 32768,
        max: 65535,
    });
    let text = render::render(&linked(OVERALL), &beside).to_string();
    let postrouting: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("-A KUBE-POSTROUTING") && l.contains("MASQUERADE"))
        .collect();
    let comment =
        r#"-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT""#;
    let family = [
        format!("{comment} -p tcp -j MASQUERADE --to-ports 32768-65535 --random-fully"),
        format!("{comment} -p udp -j MASQUERADE --to-ports 32768-65535 --random-fully"),
        format!("{comment} -j MASQUERADE --random-fully"),
    ];
    assert_eq!(
        postrouting,
        [family.clone(), family].concat(),
        "IPv4 and IPv6"
    );
}

/// One Service with `endpoints` endpoints (two slices: at most 1000 each).
fn service_with_endpoints(endpoints: usize) -> String {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: ns1}\n\
         spec:\n  clusterIP: 172.30.0.50\n  clusterIPs: [172.30.0.50]\n  \
         ports: [{name: p80, port: 80, protocol: TCP}]\n",
    );
    for slice in 0..endpoints.div_ceil(1000) {
        yaml.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: big-{slice}, namespace: ns1, labels: {{kubernetes.io/service-name: big}}}}\n\
             addressType: IPv4\nports: [{{name: p80, port: 8080, protocol: TCP}}]\nendpoints:\n"
        ));
        for i in (slice * 1000)..endpoints.min((slice + 1) * 1000) {
            yaml.push_str(&format!(
                "- {{addresses: [10.1.{}.{}]}}\n",
                i / 250,
                i % 250 + 1
            ));
        }
    }
    yaml
}

/// kube-proxy's large cluster mode: past 1000 endpoints its rules of and to
/// endpoint chains carry no comment, so neither do ours, or the rules differ
/// from kube-proxy's and every restore carries a third more text.
#[test]
fn endpoint_rules_lose_their_comments_past_a_thousand_endpoints_as_kube_proxys_do() {
    let sep = "-A KUBE-SEP-";
    let to_sep = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains("-j KUBE-SEP-"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let at = |n| render::render(&linked(&service_with_endpoints(n)), &settings()).to_string();

    let small = at(1000);
    let sep_rules: Vec<&str> = small.lines().filter(|l| l.starts_with(sep)).collect();
    assert_eq!(sep_rules.len(), 2000);
    assert!(
        sep_rules
            .iter()
            .all(|l| l.contains("--comment ns1/big:p80 "))
    );
    assert!(
        to_sep(&small)
            .iter()
            .all(|l| l.contains("--comment \"ns1/big:p80 -> 10.1."))
    );

    let large = at(1001);
    let sep_rules: Vec<&str> = large.lines().filter(|l| l.starts_with(sep)).collect();
    assert_eq!(sep_rules.len(), 2002);
    assert!(
        sep_rules.iter().all(|l| !l.contains("--comment")),
        "{sep_rules:?}"
    );
    let to_sep = to_sep(&large);
    assert_eq!(to_sep.len(), 1001);
    assert!(
        to_sep.iter().all(|l| !l.contains("--comment")),
        "{to_sep:?}"
    );
    // The Service's own rules keep theirs, as kube-proxy's do.
    assert!(large.contains(r#"--comment "ns1/big:p80 cluster IP""#));
}

/// kube-proxy orders a port's endpoints by their `ip:port` text (its
/// `byEndpoint`): the policy chain's first rule goes to 10.1.0.10:8080
/// (`0` sorts before `:`), then 10.1.0.1:8080, then 10.1.0.2:8080; in
/// numeric order the chain's rules differ from kube-proxy's.
#[test]
fn policy_chain_takes_endpoints_in_kube_proxys_text_order_not_numeric_order() {
    let text = render::render(&linked(&service_with_endpoints(10)), &settings()).to_string();
    let order: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains("-j KUBE-SEP-"))
        .filter_map(|l| l.split(" -> ").nth(1)?.split('"').next())
        .collect();
    let mut expected: Vec<String> = (1..=10).map(|i| format!("10.1.0.{i}:8080")).collect();
    expected.sort();
    assert_eq!(order, expected);
    assert_eq!(
        order[..3],
        ["10.1.0.10:8080", "10.1.0.1:8080", "10.1.0.2:8080"]
    );
}

/// Kernel tools answering from a script: canned stdout per (program, first args).
#[derive(Default)]
struct ScriptedRunner {
    inner: FakeRunner,
    answers: Mutex<BTreeMap<String, Result<String, String>>>,
}

impl ScriptedRunner {
    fn answer(&self, key: &str, result: Result<&str, &str>) {
        self.answers.lock().unwrap().insert(
            key.to_string(),
            result.map(str::to_string).map_err(str::to_string),
        );
    }

    fn calls(&self) -> Vec<Call> {
        self.inner.calls()
    }
}

impl Runner for ScriptedRunner {
    fn conntrack(&self) -> Arc<dyn ConntrackTable> {
        self.inner.conntrack()
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, ExecError> {
        self.inner.run(program, args, stdin)?;
        let key = format!(
            "{program} {}",
            args.iter().take(4).copied().collect::<Vec<_>>().join(" ")
        );
        let answers = self.answers.lock().unwrap();
        let found = answers
            .iter()
            .filter(|(k, _)| key.starts_with(k.as_str()))
            .max_by_key(|(k, _)| k.len());
        match found {
            None => Ok(String::new()),
            Some((_, Ok(out))) => Ok(out.clone()),
            Some((_, Err(stderr))) => Err(ExecError::Failed {
                program: program.into(),
                args: args.join(" "),
                status: "exit status: 1".into(),
                stderr: stderr.clone(),
            }),
        }
    }
}

fn restores(runner: &ScriptedRunner) -> Vec<String> {
    runner
        .calls()
        .into_iter()
        .filter(|c| c.program.ends_with("-restore"))
        .filter_map(|c| c.stdin)
        .collect()
}

fn backend(runner: &Arc<ScriptedRunner>, sysctl: &Arc<FakeSysctl>) -> IptablesBackend {
    IptablesBackend::new(runner.clone(), sysctl.clone())
}

#[test]
fn first_sync_writes_everything_with_its_jumps_in_one_restore() {
    let runner = Arc::new(ScriptedRunner::default());
    let sysctl = Arc::new(FakeSysctl::default());
    let mut b = backend(&runner, &sysctl);
    let plan = b.render(&linked(OVERALL), &settings());
    let stats = b.apply(&plan).unwrap();
    assert!(stats.full);
    assert_eq!(stats.objects, stats.written);
    let inputs = restores(&runner);
    assert!(inputs[0].contains(":KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]"));
    let inserts: Vec<&str> = inputs[0].lines().filter(|l| l.starts_with("-I ")).collect();
    assert_eq!(inserts.len(), plan.families[0].jumps.len());
    assert!(inserts.contains(
        &"-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    ));
    assert!(
        runner.calls().iter().all(|c| c.program != "iptables"),
        "no jump is written outside the restore"
    );
    assert_eq!(sysctl.get(ROUTE_LOCALNET).as_deref(), Some("1"));
}

/// iptables -> ipvs failed with "CHAIN_DEL failed (Device or resource busy):
/// chain KUBE-PROXY-FIREWALL" when the chains of the same names were removed
/// by one mode while the other's jumps still pointed at them.
#[test]
fn full_sync_takes_over_the_ipvs_modes_chains_and_jumps_in_the_same_restore() {
    let runner = Arc::new(ScriptedRunner::default());
    runner.answer(
        "iptables-save -t filter",
        Ok("*filter\n:INPUT ACCEPT [0:0]\n:KUBE-IPVS-FILTER - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n\
            -A INPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-FILTER\n\
            -A INPUT -m comment --comment \"kube-proxy firewall rules\" -j KUBE-PROXY-FIREWALL\n\
            -A INPUT -j CNI-INPUT\nCOMMIT\n"),
    );
    let sysctl = Arc::new(FakeSysctl::default());
    let mut b = backend(&runner, &sysctl);
    b.apply(&b.render(&linked(OVERALL), &settings())).unwrap();
    let input = &restores(&runner)[0];
    let filter = &input[input.find("*filter").unwrap()..];
    let pos = |line: &str| {
        filter
            .find(line)
            .unwrap_or_else(|| panic!("{line}:\n{input}"))
    };
    let old_jump =
        "-D INPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-FILTER";
    assert!(pos(old_jump) < pos("-X KUBE-IPVS-FILTER"));
    assert!(filter.contains(
        "-D INPUT -m comment --comment \"kube-proxy firewall rules\" -j KUBE-PROXY-FIREWALL"
    ));
    let new_jump = "-I INPUT 1 -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL";
    assert!(filter.contains(new_jump), "{new_jump}:\n{input}");
    assert!(!filter.contains("-X KUBE-PROXY-FIREWALL"));
    assert!(!input.contains("CNI-INPUT"));
}

#[test]
fn incremental_sync_rewrites_only_changed_chains() {
    let runner = Arc::new(ScriptedRunner::default());
    let sysctl = Arc::new(FakeSysctl::default());
    let mut b = backend(&runner, &sysctl);
    b.apply(&b.render(&linked(OVERALL), &settings())).unwrap();
    let before = restores(&runner).len();

    // Same state: nothing is written.
    let stats = b.apply(&b.render(&linked(OVERALL), &settings())).unwrap();
    assert_eq!((stats.written, stats.full), (0, false));
    assert_eq!(restores(&runner).len(), before);

    // svc1's endpoint moves: its SVC chain is rewritten, the old SEP deleted,
    // the new one created; nothing else.
    let moved = OVERALL.replace("addresses: [10.180.0.1]", "addresses: [10.180.0.9]");
    let stats = b.apply(&b.render(&linked(&moved), &settings())).unwrap();
    // Two rules each in the rewritten SVC chain and the new SEP chain.
    assert!(!stats.full && stats.written == 4, "{stats:?}");
    let input = restores(&runner).pop().unwrap();
    let declared: Vec<&str> = input.lines().filter(|l| l.starts_with(':')).collect();
    assert_eq!(declared.len(), 3, "{input}");
    assert!(input.contains(":KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]"));
    assert!(input.contains("-X KUBE-SEP-SXIVWICOYRO3J4NJ"));
    assert!(input.contains("--to-destination 10.180.0.9:80"));
    assert!(!input.contains("*filter"));

    // After invalidate the next sync is full again.
    b.invalidate();
    assert!(
        b.apply(&b.render(&linked(&moved), &settings()))
            .unwrap()
            .full
    );
}

#[test]
fn full_sync_deletes_leftover_chains_of_ours_only() {
    let runner = Arc::new(ScriptedRunner::default());
    runner.answer(
        "iptables-save -t nat",
        Ok("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-OLDOLDOLDOLDOLD0 - [0:0]\n:DOCKER - [0:0]\nCOMMIT\n"),
    );
    let sysctl = Arc::new(FakeSysctl::default());
    let mut b = backend(&runner, &sysctl);
    b.apply(&b.render(&linked(OVERALL), &settings())).unwrap();
    let input = &restores(&runner)[0];
    assert!(input.contains("-X KUBE-SVC-OLDOLDOLDOLDOLD0"));
    assert!(!input.contains("DOCKER"));
}

#[test]
fn cleanup_removes_our_jumps_and_chains_and_restores_route_localnet() {
    let runner = Arc::new(ScriptedRunner::default());
    runner.answer(
        "iptables-save -t nat",
        Ok("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]\n:CNI-HOSTPORT - [0:0]\nCOMMIT\n"),
    );
    let sysctl = Arc::new(FakeSysctl::default());
    sysctl.write(ROUTE_LOCALNET, "0").unwrap();
    let mut b = backend(&runner, &sysctl);
    b.apply(&b.render(&linked(OVERALL), &settings())).unwrap();
    // The jump rules are gone once deleted.
    runner.answer("iptables -w -t", Err("Bad rule"));
    runner.answer("ip6tables -w -t", Err("Bad rule"));
    b.cleanup().unwrap();
    let input = restores(&runner).pop().unwrap();
    assert!(
        input.contains("-X KUBE-SERVICES\n-X KUBE-SEP-AAAAAAAAAAAAAAAA\n"),
        "{input}"
    );
    assert!(!input.contains("CNI-HOSTPORT"));
    assert_eq!(sysctl.get(ROUTE_LOCALNET).as_deref(), Some("0"));
}

#[test]
fn restore_failure_keeps_the_previous_state() {
    let runner = Arc::new(ScriptedRunner::default());
    let sysctl = Arc::new(FakeSysctl::default());
    let mut b = backend(&runner, &sysctl);
    b.apply(&b.render(&linked(OVERALL), &settings())).unwrap();
    runner.answer("iptables-restore", Err("line 3 failed"));
    let moved = OVERALL.replace("addresses: [10.180.0.1]", "addresses: [10.180.0.9]");
    assert!(b.apply(&b.render(&linked(&moved), &settings())).is_err());
    // The failed change is retried in full on the next sync.
    runner.answer("iptables-restore", Ok(""));
    let stats = b.apply(&b.render(&linked(&moved), &settings())).unwrap();
    assert_eq!(stats.written, 4);
}

#[test]
fn udp_endpoint_removal_deletes_conntrack_entries() {
    let runner = Arc::new(ScriptedRunner::default());
    let sysctl = Arc::new(FakeSysctl::default());
    let mut b = backend(&runner, &sysctl);
    let flow = |reply: &str| UdpFlow {
        orig_src: "10.9.0.1:4000".parse().unwrap(),
        orig_dst: "172.30.0.41:80".parse().unwrap(),
        reply_src: reply.parse().unwrap(),
        zone: None,
    };
    let (gone, moved_to) = (flow("10.180.0.1:8080"), flow("10.180.0.9:8080"));
    let table = Arc::new(FakeConntrack::with(vec![gone, moved_to]));
    b.conntrack = table.clone();
    let udp = OVERALL.replace("protocol: TCP", "protocol: UDP");
    b.apply(&b.render(&linked(&udp), &settings())).unwrap();
    let moved = udp.replace("addresses: [10.180.0.1]", "addresses: [10.180.0.9]");
    b.apply(&b.render(&linked(&moved), &settings())).unwrap();
    assert_eq!(table.flows(), [moved_to]);
}

/// A chain name that skipped validation and the hash (only a plan built by
/// hand has one) is refused before iptables-restore runs.
#[test]
fn chain_name_iptables_cannot_carry_is_refused_before_any_tool_runs() {
    let runner = Arc::new(ScriptedRunner::default());
    let sysctl = Arc::new(FakeSysctl::default());
    let mut b = backend(&runner, &sysctl);
    let mut plan = b.render(&linked(OVERALL), &settings());
    plan.families[0].nat[0].name = "KUBE-SVC-X\n-A INPUT -j ACCEPT".into();
    let err = b.apply(&plan).unwrap_err();
    assert!(
        matches!(&err, BackendError::Name { source, .. } if source.kind == "chain"),
        "{err}"
    );
    assert!(restores(&runner).is_empty());
}

/// The record of what was applied is updated chain by chain: a chain left
/// out of it (or a vanished one kept) would make later syncs skip or keep
/// rules the kernel does not have.
#[test]
fn incremental_syncs_record_the_same_as_a_full_copy() {
    let runner = Arc::new(ScriptedRunner::default());
    let sysctl = Arc::new(FakeSysctl::default());
    let mut b = backend(&runner, &sysctl);
    let moved = OVERALL.replace("addresses: [10.180.0.1]", "addresses: [10.180.0.9]");
    let removed = OVERALL.replace(
        "{name: svc1, namespace: ns1}",
        "{name: svc9, namespace: ns1}",
    );
    for yaml in [OVERALL, &moved, &removed, OVERALL] {
        let plan = b.render(&linked(yaml), &settings());
        b.apply(&plan).unwrap();
        let expected: Vec<_> = plan.families.iter().map(|f| Some(f.applied())).collect();
        assert_eq!(b.applied.to_vec(), expected);
    }
}
