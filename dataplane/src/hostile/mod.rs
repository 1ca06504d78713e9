//! Property tests that drive hostile names through compile → link → render
//! and check that each format's text holds exactly the planned objects (no
//! rule, set, element or line more or less, every comment what
//! [`crate::escape`] made of it): by a structural parse of the text, and as
//! root by the kernel tool in a namespace the test creates and deletes. One
//! test per format (`iptables.rs`: iptables-restore and ip6tables-restore;
//! `ipset.rs`: ipset restore with the IPVS mode's rules that match its sets;
//! `nftables.rs`: `nft -c -f`, `nft -f` and netlink) and one for the
//! listings `switchyard plan` prints (`listings.rs`). Cases come from a
//! fixed seed ([`config`]).
//!
//! The names reach the renderers two ways: Services and EndpointSlices
//! through the real compiler (which skips what its validation refuses),
//! and a ruleset built directly, as a hand-written
//! `ProxyRuleset` or a file given to `plan` would be, which nothing
//! validated.

mod ipset;
mod iptables;
mod listings;
mod nftables;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseResult, TestRunner};
use switchyard_api::Mode;
use switchyard_api::policy::{LinkedRuleset, link};
use switchyard_api::ruleset::Ruleset;
use switchyard_compiler::{CompileSettings, Snapshot, compile, parse_objects};

use crate::nftables::tests::{node, sample_ruleset};
use crate::settings::Settings;

/// The issue's example: a Service name that ends the comment's quotes and
/// starts an `-A INPUT -j ACCEPT` line of its own.
pub const ISSUE: &str = "web\"\n-A INPUT -j ACCEPT\n#";

/// Strings made to leave their place: quotes, backslashes, newlines, `#`,
/// `;`, braces, NUL, non-ASCII, empty, longer than any limit.
pub fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(ISSUE.to_string()),
        Just(String::new()),
        "[a-z0-9\"'\\\\\n\r\t #;{}\\x00$@.:/é\u{202e}-]{1,40}",
        "[a-z\"\n]{250,300}",
        any::<String>(),
    ]
}

/// Namespace, name and port name of one service port.
pub type Names = (String, String, String);

/// What one case renders: the names of the compiled services, and of the
/// sample ruleset's six service ports.
#[derive(Clone, Debug)]
pub struct Hostile {
    pub compiled: [Names; 2],
    pub direct: Vec<Names>,
}

pub fn hostile() -> impl Strategy<Value = Hostile> {
    let names = || (hostile_text(), hostile_text(), hostile_text());
    ([names(), names()], proptest::collection::vec(names(), 6))
        .prop_map(|(compiled, direct)| Hostile { compiled, direct })
}

/// A YAML double-quoted scalar holding exactly `text`: everything but
/// printable ASCII escaped, so no character is folded or refused by the parser.
fn yaml_quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            ' '..='~' if c != '"' && c != '\\' => out.push(c),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// A LoadBalancer Service with every kind of frontend, affinity and Local
/// policy, and its slice with endpoints here and elsewhere (the sample
/// ruleset has the dual-stack and endpoint-less cases); `n` numbers them.
fn objects_yaml(n: usize, (namespace, name, port): &Names) -> String {
    let (ns, svc, port) = (yaml_quoted(namespace), yaml_quoted(name), yaml_quoted(port));
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: {svc}, namespace: {ns}}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  clusterIP: 172.30.1.{n}
  clusterIPs: [172.30.1.{n}]
  externalIPs: [203.0.113.{n}]
  loadBalancerSourceRanges: [198.51.100.0/24]
  healthCheckNodePort: 3100{n}
  sessionAffinity: ClientIP
  ports:
  - {{name: {port}, port: 80, protocol: TCP, targetPort: 8080, nodePort: 3000{n}}}
status:
  loadBalancer:
    ingress:
    - {{ip: 198.51.100.{n}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: slice-{n}
  namespace: {ns}
  labels: {{kubernetes.io/service-name: {svc}}}
addressType: IPv4
endpoints:
- addresses: [10.0.1.{n}]
  nodeName: node-a
- addresses: [10.0.2.{n}]
  nodeName: node-b
ports:
- {{name: {port}, port: 8080, protocol: TCP}}
"#
    )
}

/// The case's ruleset: the compiled services (ids moved past the sample's)
/// and the sample ruleset under the hostile names.
pub fn ruleset(input: &Hostile) -> Ruleset {
    let yaml: String = input
        .compiled
        .iter()
        .enumerate()
        .map(|(i, names)| objects_yaml(i + 1, names))
        .collect();
    let objects = parse_objects(&yaml).expect("escaped YAML parses");
    let mut compiled = compile(&Snapshot::from(objects), &CompileSettings::default()).ruleset;
    let mut ruleset = sample_ruleset();
    for (rule, (namespace, name, port)) in ruleset.services.iter_mut().zip(&input.direct) {
        rule.namespace = namespace.clone();
        rule.name = name.clone();
        rule.port_name = port.clone();
    }
    for (i, rule) in compiled.services.iter_mut().enumerate() {
        rule.id = 100 + i as u32;
    }
    ruleset.services.append(&mut compiled.services);
    ruleset
}

pub fn linked(input: &Hostile) -> LinkedRuleset {
    link(&ruleset(input), &node())
}

/// The case's ruleset with harmless, distinct names in place of the
/// hostile ones (the listings' twin: the same services, ports and endpoints).
pub fn benign_twin(input: &Hostile) -> LinkedRuleset {
    let mut twin = ruleset(input);
    for (i, rule) in twin.services.iter_mut().enumerate() {
        rule.namespace = format!("ns{i}");
        rule.name = format!("svc{i}");
        rule.port_name = format!("p{i}");
    }
    link(&twin, &node())
}

/// The entries where two maps differ, for a failure message.
pub fn differences<K: Ord + Debug, V: PartialEq + Debug>(
    got: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
) -> String {
    let keys: BTreeSet<&K> = got.keys().chain(want.keys()).collect();
    keys.into_iter()
        .filter(|k| got.get(k) != want.get(k))
        .map(|k| {
            format!(
                "{k:?}:\n  got  {:?}\n  want {:?}\n",
                got.get(k),
                want.get(k)
            )
        })
        .collect()
}

/// The nftables tests' settings (local traffic detection, a service CIDR) for `mode`.
pub fn settings(mode: Mode) -> Settings {
    Settings {
        mode,
        ..crate::nftables::tests::settings()
    }
}

/// The seed of every run unless `PROPTEST_RNG_SEED` says otherwise, so CI
/// sees the same cases each time.
const SEED: u64 = 20;

/// `cases` cases (each one runs the kernel tools several times) from the
/// fixed [`SEED`]; `PROPTEST_CASES` and `PROPTEST_RNG_SEED` run others.
fn config(cases: u32) -> Config {
    let env = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            env.cases
        } else {
            cases
        },
        rng_seed: match env.rng_seed {
            RngSeed::Random => RngSeed::Fixed(SEED),
            seed => seed,
        },
        failure_persistence: None,
        ..env
    }
}

/// Run `test` on `cases` hostile cases ([`config`]); a failing case panics
/// with its input, shrunk.
pub fn for_cases(cases: u32, test: impl Fn(Hostile) -> TestCaseResult) {
    let result = TestRunner::new(config(cases)).run(&hostile(), test);
    if let Err(e) = result {
        panic!("{e}");
    }
}
