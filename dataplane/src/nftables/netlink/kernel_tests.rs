//! Real kernel: an incremental transaction sent over netlink leaves exactly
//! what `nft -f` leaves for the same transaction, and a failing batch changes
//! nothing and names its command. Everything runs in `synft<pid>-nl-…`
//! namespaces (`testns`: the socket is opened on a thread inside one);
//! skipped, loudly, when not root.

use std::collections::BTreeSet;

use switchyard_api::ruleset::{IpFamily, Protocol, Ruleset, SessionAffinity, TrafficPolicy};

use super::{NetlinkError, NftNetlink};
use crate::ebpf::masq_ports::MasqueradePorts;
use crate::nftables::diff::Applied;
use crate::nftables::ir::{
    Chain, Dir, Key, Match, Pick, PickKey, Plan, Pool, Rule, Set, SetKind, Stmt, Table, TableId,
    Value, Verdict,
};
use crate::nftables::tests::{cidr, endpoint, ip, linked, sample_ruleset, service, settings};
use crate::nftables::transaction::{Command, Transaction};
use crate::nftables::{render, transaction};
use crate::testns::{self, Netns, TestNetns, node_and_pod, vip_reply};

/// Both tables as `nft list` prints them, and their bytecode
/// (`--debug=netlink`; elements sorted, as they come in hash order, and
/// rule handles dropped).
fn listing(ns: &Netns) -> String {
    let mut out = String::new();
    for fam in ["ip", "ip6"] {
        out += &ns.sh(&format!("nft list table {fam} switchyard"));
        let debug = ns.sh(&format!("nft --debug=netlink list table {fam} switchyard"));
        let mut elements = Vec::new();
        for line in debug.lines() {
            if line.starts_with("\telement") {
                elements.push(line.to_string());
                continue;
            }
            elements.sort();
            for e in elements.drain(..) {
                out += &e;
                out.push('\n');
            }
            let rule_header = line.starts_with(fam) && !line.contains(" @");
            if rule_header {
                out += &line.split(' ').take(3).collect::<Vec<_>>().join(" ");
            } else {
                out += line;
            }
            out.push('\n');
        }
        elements.sort();
        out += &elements.join("\n");
    }
    out
}

fn plan(rs: &Ruleset) -> Plan {
    render::render(&linked(rs), &settings())
}

/// Per family, a chain with every match and statement and a set of every
/// kind (`edited`: fewer elements, changed values, one rule less), to add to
/// the sample table.
fn every_expression(edited: bool) -> Vec<Table> {
    let mut tables = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        let mut t = Table::new(family);
        let (a, b, prefixes, ranges) = match family {
            IpFamily::V4 => (
                ip("10.0.1.5"),
                ip("10.0.2.5"),
                ["10.20.0.0/20", "10.0.0.0/8", "10.0.0.1/32", "0.0.0.0/0"],
                // Adjacent, a single address, and one reaching the last address.
                ["10.0.0.0/9", "10.128.0.0/9", "192.0.2.1/32", "240.0.0.0/4"],
            ),
            IpFamily::V6 => (
                ip("fd00:10::5"),
                ip("fd00:10::6"),
                ["fd00:20::/60", "fd00::/64", "fd00:10::5/128", "::/0"],
                [
                    "fd00::/64",
                    "fd00:0:0:1::/64",
                    "fd00:10::5/128",
                    "ffff::/16",
                ],
            ),
        };
        let mut add_set = |name: &str,
                           kind: SetKind,
                           timeout: Option<u32>,
                           comment: Option<&str>,
                           elements: Vec<(Key, Option<Verdict>)>| {
            let mut set = Set::new(kind, comment);
            set.timeout_seconds = timeout;
            let keep = elements.len().saturating_sub(usize::from(edited));
            let elements = elements.into_iter().map(|(k, v)| (k, v.map(Value::from)));
            set.elements = elements.take(keep).collect();
            t.sets.insert(name.to_string(), set);
        };
        let jump = Verdict::Jump("mark-for-masquerade".to_string());
        let goto = Verdict::Goto("reject-chain".to_string());
        add_set(
            "nl-addrs",
            SetKind::Addr,
            None,
            Some("a \"quoted\" comment"),
            vec![(Key::Addr(a), None), (Key::Addr(b), None)],
        );
        add_set("nl-affinity", SetKind::Addr, Some(30), None, vec![]);
        add_set(
            "nl-ranges",
            SetKind::Prefix,
            None,
            Some("ranges"),
            ranges
                .iter()
                .map(|c| (Key::Prefix(cidr(c)), None))
                .collect(),
        );
        add_set(
            "nl-pairs",
            SetKind::AddrPair,
            None,
            Some("pairs"),
            vec![(Key::AddrPair(a, a), None), (Key::AddrPair(a, b), None)],
        );
        add_set(
            "nl-dests",
            SetKind::AddrProtoPort,
            None,
            Some("destinations"),
            vec![
                (Key::AddrProtoPort(a, Protocol::Tcp, 80), None),
                (Key::AddrProtoPort(b, Protocol::Udp, 53), None),
            ],
        );
        add_set(
            "nl-ports",
            SetKind::ProtoPortVerdict,
            None,
            None,
            vec![
                (Key::ProtoPort(Protocol::Tcp, 80), Some(Verdict::Accept)),
                (Key::ProtoPort(Protocol::Udp, 53), Some(Verdict::Drop)),
                (
                    Key::ProtoPort(Protocol::Sctp, 9),
                    Some(if edited {
                        Verdict::Drop
                    } else {
                        Verdict::Return
                    }),
                ),
                (Key::ProtoPort(Protocol::Tcp, 30000), Some(jump.clone())),
            ],
        );
        add_set(
            "nl-services",
            SetKind::AddrProtoPortVerdict,
            None,
            Some("services"),
            vec![
                (
                    Key::AddrProtoPort(a, Protocol::Tcp, 80),
                    Some(if edited { jump.clone() } else { goto.clone() }),
                ),
                (Key::AddrProtoPort(b, Protocol::Udp, 53), Some(jump.clone())),
                (
                    Key::AddrProtoPort(a, Protocol::Sctp, 65535),
                    Some(Verdict::Accept),
                ),
            ],
        );
        // Pick maps of both keys, of no pick the sample uses (`edited`:
        // one endpoint moved, one gone).
        let (port, moved) = (8080, if edited { 9090 } else { 8080 });
        let (vip_pick, nodeport_pick) = (
            Pick {
                key: PickKey::Vip,
                pool: Pool::Cluster,
                protocol: Protocol::Tcp,
                n: 7,
            },
            Pick {
                key: PickKey::NodePort,
                pool: Pool::Local,
                protocol: Protocol::Sctp,
                n: 2,
            },
        );
        let mut vip = vip_pick.set();
        vip.elements = [(a, 80, 0), (a, 80, 1), (b, 443, 0)]
            .into_iter()
            .map(|(ip, p, k)| (Key::AddrPortIndex(ip, p, k), Some(Value::Endpoint(b, port))))
            .collect();
        vip.elements.insert(
            Key::AddrPortIndex(a, 80, 2),
            Some(Value::Endpoint(a, moved)),
        );
        let mut nodeport = nodeport_pick.set();
        nodeport
            .elements
            .insert(Key::PortIndex(30080, 0), Some(Value::Endpoint(a, moved)));
        if !edited {
            nodeport
                .elements
                .insert(Key::PortIndex(30080, 1), Some(Value::Endpoint(b, port)));
        }
        t.sets.insert(vip_pick.map(), vip);
        t.sets.insert(nodeport_pick.map(), nodeport);
        let mut rules = vec![
            Rule::new(
                vec![Match::L4Proto(Protocol::Tcp)],
                vec![Stmt::DnatPick(vip_pick)],
            ),
            Rule::new(
                vec![Match::L4Proto(Protocol::Sctp)],
                vec![Stmt::DnatPick(nodeport_pick)],
            ),
            Rule::new(
                vec![
                    Match::Addr(Dir::Saddr, a),
                    Match::Addr(Dir::Daddr, b),
                    Match::Dport(Protocol::Sctp, 99),
                ],
                vec![Stmt::Verdict(Verdict::Accept)],
            )
            .with_comment("a \"quoted\" comment"),
            Rule::new(
                vec![
                    Match::AddrInSet {
                        dir: Dir::Daddr,
                        set: "nl-addrs".to_string(),
                        negate: true,
                    },
                    Match::AddrInSet {
                        dir: Dir::Saddr,
                        set: "nl-addrs".to_string(),
                        negate: false,
                    },
                ],
                vec![Stmt::Verdict(Verdict::Drop)],
            ),
            Rule::new(
                vec![
                    Match::CtStatusDnat,
                    Match::AddrPairInSet("nl-pairs".to_string()),
                ],
                vec![Stmt::Verdict(jump.clone())],
            ),
            Rule::new(
                vec![Match::DaddrProtoPortInSet("nl-dests".to_string())],
                vec![Stmt::Verdict(jump.clone())],
            ),
            Rule::new(
                vec![
                    Match::FibDaddrLocal,
                    Match::DaddrNotLoopback,
                    Match::L4Proto(Protocol::Udp),
                ],
                vec![Stmt::VmapProtoPort("nl-ports".to_string())],
            ),
            Rule::new(
                vec![Match::CtStateNew, Match::FibSaddrLocal],
                vec![Stmt::VmapAddrProtoPort(
                    Dir::Daddr,
                    "nl-services".to_string(),
                )],
            ),
            Rule::new(
                vec![],
                vec![Stmt::VmapAddrProtoPort(
                    Dir::Saddr,
                    "nl-services".to_string(),
                )],
            ),
            Rule::new(
                vec![Match::MarkClear(0x4000)],
                vec![Stmt::MarkOr(0x4000), Stmt::MarkXor(0x8001)],
            )
            .with_comment("marks"),
            Rule::new(
                vec![
                    Match::NumgenZero(3),
                    Match::AddrInSet {
                        dir: Dir::Saddr,
                        set: "nl-affinity".to_string(),
                        negate: false,
                    },
                    Match::Dport(Protocol::Tcp, 80),
                ],
                vec![
                    Stmt::UpdateSaddr("nl-affinity".to_string()),
                    Stmt::Dnat(b, 8080),
                ],
            ),
            Rule::new(
                vec![Match::Dport(Protocol::Udp, 53)],
                vec![Stmt::Masquerade(None)],
            ),
            Rule::new(
                vec![Match::L4Proto(Protocol::Tcp)],
                vec![Stmt::Masquerade(Some(MasqueradePorts {
                    min: 32768,
                    max: 65535,
                }))],
            ),
            Rule::new(vec![], vec![Stmt::Reject]),
            Rule::new(vec![], vec![Stmt::Verdict(Verdict::Return)]),
            Rule::new(vec![], vec![Stmt::Verdict(goto.clone())]),
        ];
        rules.extend(prefixes.iter().map(|p| {
            Rule::new(
                vec![Match::SaddrInPrefix(cidr(p))],
                vec![Stmt::Verdict(Verdict::Return)],
            )
        }));
        if edited {
            rules.remove(0);
        }
        t.chains
            .insert("nl-every-expression".to_string(), Chain::regular(rules));
        tables.push(t);
    }
    tables
}

/// The commands turning the `old` extra objects into the `new` ones (both
/// from [`every_expression`]; `None`: there were none, or they go).
fn every_expression_step(old: Option<&[Table]>, new: Option<&[Table]>) -> Transaction {
    let mut tx = Transaction::default();
    let none: Vec<Table> = Vec::new();
    let (old, new) = (old.unwrap_or(&none), new.unwrap_or(&none));
    for family in [IpFamily::V4, IpFamily::V6] {
        let o = old.iter().find(|t| t.family == family);
        let n = new.iter().find(|t| t.family == family);
        if let Some(n) = n {
            for (name, set) in &n.sets {
                let before = o.and_then(|o| o.sets.get(name));
                if before.is_none() {
                    tx.add_set(TableId::main(family), name, set);
                }
                let was = before.map(|b| &b.elements);
                let gone = was
                    .into_iter()
                    .flatten()
                    .filter(|(k, v)| set.elements.get(*k) != Some(*v));
                tx.delete_elements(TableId::main(family), name, gone.map(|(k, _)| k));
                let added = set
                    .elements
                    .iter()
                    .filter(|(k, v)| was.and_then(|w| w.get(*k)) != Some(*v));
                tx.add_elements(TableId::main(family), name, added);
            }
            for (name, chain) in &n.chains {
                if o.is_some_and(|o| o.chains.contains_key(name)) {
                    tx.flush_chain(TableId::main(family), name);
                } else {
                    tx.add_chain(TableId::main(family), name, chain);
                }
                tx.add_rules(TableId::main(family), name, chain);
            }
        } else if let Some(o) = o {
            for name in o.chains.keys() {
                tx.flush_chain(TableId::main(family), name);
            }
            for (name, set) in &o.sets {
                tx.delete_set(TableId::main(family), name, set);
            }
        }
    }
    tx
}

/// Every expression added to the sample table, edited, and removed: the
/// table before each step as nft text, and the step's commands.
pub(super) fn every_expression_steps() -> [(&'static str, String, Vec<Command>); 3] {
    let base_text = transaction(None, &plan(&sample_ruleset()))
        .tx
        .text()
        .unwrap();
    let (every, edited) = (every_expression(false), every_expression(true));
    let added = every_expression_step(None, Some(&every));
    let changed = every_expression_step(Some(&every), Some(&edited));
    let removed = every_expression_step(Some(&edited), None);
    let after_added = format!("{base_text}{}", added.text().unwrap());
    let after_edited = format!("{after_added}{}", changed.text().unwrap());
    [
        ("every expression added", base_text, added.commands),
        ("every expression edited", after_added, changed.commands),
        ("every expression removed", after_edited, removed.commands),
    ]
}

/// The sample ruleset and variants of it: changed endpoints, no endpoints,
/// session affinity, IPv6 services, source ranges.
fn rulesets() -> [Ruleset; 6] {
    let base = sample_ruleset();
    let mut changed = base.clone();
    changed.services[0].endpoints[1] = endpoint(19, "10.0.9.5", "node-z");
    changed.services.retain(|s| s.name != "sticky");
    let mut emptied = base.clone();
    emptied.services[0].endpoints.clear();
    emptied.services.push(service(
        7,
        "new",
        "172.30.0.70",
        vec![endpoint(71, "10.0.1.70", "node-a")],
    ));
    let mut sticky = base.clone();
    sticky.services[0].session_affinity = Some(SessionAffinity {
        timeout_seconds: 30,
    });
    let mut v6 = base.clone();
    v6.services[5].endpoints[0] = endpoint(63, "fd00:10::19", "node-a");
    let mut lb6 = service(
        8,
        "lb6",
        "fd00:30::80",
        vec![
            endpoint(81, "fd00:10::81", "node-a"),
            endpoint(82, "fd00:10::82", "node-b"),
        ],
    );
    lb6.node_port = Some(30081);
    lb6.load_balancer_ips = vec![ip("fd00:40::1")];
    lb6.load_balancer_source_ranges = vec![cidr("fd00:50::/56"), cidr("2001:db8::/32")];
    lb6.external_traffic_policy = TrafficPolicy::Local;
    lb6.session_affinity = Some(SessionAffinity {
        timeout_seconds: 60,
    });
    v6.services.push(lb6);
    let mut ranges = base.clone();
    ranges.services[1].load_balancer_source_ranges =
        vec![cidr("10.20.0.0/20"), cidr("198.51.100.0/24")];
    ranges.services[0].node_port = Some(30090);
    [base, changed, emptied, sticky, v6, ranges]
}

/// Steps (the table before, as nft text, and the incremental commands) that
/// cover every command, match, statement, key and verdict (checked by the test).
fn scenarios() -> Vec<(&'static str, String, Vec<Command>)> {
    let [base, changed, emptied, sticky, v6, ranges] = rulesets();
    let mut longer = sticky.clone();
    longer.services[0].session_affinity = Some(SessionAffinity {
        timeout_seconds: 45,
    });
    let pairs = vec![
        (
            "an endpoint change and a removed service",
            plan(&base),
            plan(&changed),
        ),
        (
            "no endpoints, and a new service",
            plan(&base),
            plan(&emptied),
        ),
        ("session affinity on", plan(&base), plan(&sticky)),
        ("session affinity off", plan(&sticky), plan(&base)),
        ("an affinity timeout changed", plan(&sticky), plan(&longer)),
        (
            "IPv6 endpoints and an IPv6 load balancer",
            plan(&base),
            plan(&v6),
        ),
        ("the IPv6 load balancer removed", plan(&v6), plan(&base)),
        ("source ranges and a NodePort", plan(&base), plan(&ranges)),
        ("everything removed", plan(&base), plan(&Ruleset::default())),
        ("everything added", plan(&Ruleset::default()), plan(&base)),
    ];
    let mut steps: Vec<(&str, String, Vec<Command>)> = pairs
        .into_iter()
        .map(|(what, a, b)| {
            let full = transaction(None, &a).tx.text().unwrap();
            let step = transaction(Some(&Applied::of(a)), &b);
            assert!(!step.full, "{what}: incremental");
            (what, full, step.tx.commands)
        })
        .collect();
    // The periodic resync: everything rewritten in place (sets flushed).
    let resync = crate::nftables::resync(&Applied::of(plan(&sticky)), &plan(&emptied));
    assert!(resync.replaced.is_empty(), "in place");
    steps.push((
        "the periodic resync, in place",
        transaction(None, &plan(&sticky)).tx.text().unwrap(),
        resync.tx.commands,
    ));
    steps.extend(every_expression_steps());
    steps
}

/// The kinds of commands, matches, statements, keys and verdicts in `commands`
/// (variant names, from their Debug form).
fn kinds(commands: &[Command], seen: &mut BTreeSet<String>) {
    fn name(debug: String) -> String {
        debug
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or_default()
            .to_string()
    }
    for c in commands {
        seen.insert(name(format!("{c:?}")));
        match c {
            Command::AddRule { rule, .. } => {
                seen.extend(rule.matches.iter().map(|m| name(format!("{m:?}"))));
                seen.extend(rule.stmts.iter().map(|s| name(format!("{s:?}"))));
                seen.extend(rule.stmts.iter().filter_map(|s| match s {
                    Stmt::Verdict(v) => Some(format!("rule {}", name(format!("{v:?}")))),
                    _ => None,
                }));
            }
            Command::AddElements { elements, .. } => {
                for (k, v) in elements {
                    seen.insert(name(format!("{k:?}")));
                    let value = v.as_ref().map(|v| match v {
                        Value::Verdict(v) => name(format!("{v:?}")),
                        Value::Endpoint(..) => "Endpoint".to_string(),
                    });
                    seen.extend(value.map(|v| format!("element {v}")));
                }
            }
            Command::AddSet { set, .. } if set.timeout_seconds.is_some() => {
                seen.insert("AddSet timeout".to_string());
            }
            _ => {}
        }
    }
}

#[test]
fn incremental_transactions_over_netlink_leave_what_nft_leaves() {
    let Some(by_netlink) = testns::create("nl-netlink") else {
        return;
    };
    let Some(by_nft) = testns::create("nl-nft") else {
        return;
    };
    let mut seen = BTreeSet::new();
    let mut steps = scenarios();
    // The chain the last step flushed, deleted (as the next sync would).
    let deletes = [IpFamily::V4, IpFamily::V6]
        .map(|family| Command::DeleteChain {
            table: TableId::main(family),
            name: "nl-every-expression".to_string(),
        })
        .to_vec();
    steps.push(("the flushed chain deleted", String::new(), deletes));

    for (what, full, commands) in steps {
        if !full.is_empty() {
            by_netlink.nft(&full);
            by_nft.nft(&full);
        }
        assert!(NftNetlink::supports(&commands), "{what}");
        kinds(&commands, &mut seen);
        let script: String = commands.iter().map(Command::to_string).collect();
        by_nft.nft(&script);
        by_netlink
            .netlink(move |nl| nl.apply(&commands))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_same(&format!("{what} ({script})"), &by_netlink, &by_nft);
    }

    let expected = [
        // Commands.
        "AddSet",
        "AddSet timeout",
        "DeleteSet",
        "FlushSet",
        "AddElements",
        "DeleteElements",
        "AddChain",
        "FlushChain",
        "DeleteChain",
        "AddRule",
        // Matches.
        "Addr",
        "AddrInSet",
        "SaddrInPrefix",
        "AddrPairInSet",
        "DaddrProtoPortInSet",
        "DaddrNotLoopback",
        "Dport",
        "L4Proto",
        "CtStateNew",
        "CtStatusDnat",
        "FibSaddrLocal",
        "FibDaddrLocal",
        "MarkClear",
        "NumgenZero",
        // Statements.
        "VmapAddrProtoPort",
        "VmapProtoPort",
        "UpdateSaddr",
        "MarkOr",
        "MarkXor",
        "Masquerade",
        "Dnat",
        "DnatPick",
        "Reject",
        "rule Accept",
        "rule Drop",
        "rule Return",
        "rule Jump",
        "rule Goto",
        // Keys and element values.
        "AddrPair",
        "AddrProtoPort",
        "Prefix",
        "ProtoPort",
        "AddrPortIndex",
        "PortIndex",
        "element Endpoint",
        "element Accept",
        "element Drop",
        "element Return",
        "element Jump",
        "element Goto",
    ];
    let missing: Vec<&str> = expected
        .into_iter()
        .filter(|k| !seen.contains(*k))
        .collect();
    assert!(missing.is_empty(), "not covered: {missing:?}");
}

#[test]
fn a_cluster_ip_reaches_the_endpoint_that_netlink_put_in() {
    let Some((node, pod)) = node_and_pod("nl") else {
        return;
    };
    let web = |endpoint_ip: &str| Ruleset {
        services: vec![service(
            1,
            "web",
            "172.30.0.10",
            vec![endpoint(11, endpoint_ip, "node-a")],
        )],
    };
    // Loaded by nft pointing nowhere; netlink moves it to the pod.
    let (before, after) = (plan(&web("10.0.1.99")), plan(&web("10.0.1.5")));
    node.nft(&transaction(None, &before).tx.text().unwrap());
    let commands = transaction(Some(&Applied::of(before)), &after).tx.commands;
    node.netlink(move |nl| nl.apply(&commands)).unwrap();
    assert_eq!(vip_reply(&node, &pod), "pod-10.0.1.5");
}

#[test]
fn a_failing_command_aborts_the_batch_and_is_named() {
    let Some(ns) = testns::create("nl-fail") else {
        return;
    };
    let base = plan(&sample_ruleset());
    ns.nft(&transaction(None, &base).tx.text().unwrap());
    let before = listing(&ns);

    let element = |set: &str, key: Key| Command::AddElements {
        table: TableId::main(IpFamily::V4),
        set: set.to_string(),
        elements: vec![(key, None)],
    };
    let bad = vec![
        element("cluster-ips", Key::Addr(ip("172.30.8.8"))),
        Command::AddChain {
            table: TableId::main(IpFamily::V4),
            name: "nl-new".to_string(),
            base: None,
        },
        Command::AddRule {
            table: TableId::main(IpFamily::V4),
            chain: "no-such-chain".to_string(),
            rule: Rule::new(vec![], vec![Stmt::Verdict(Verdict::Accept)]),
        },
        element("hairpin", Key::AddrPair(ip("10.0.9.9"), ip("10.0.9.9"))),
    ];
    let good = vec![element("cluster-ips", Key::Addr(ip("172.30.9.9")))];
    let (failed, then) = ns.netlink(move |nl| (nl.apply(&bad), nl.apply(&good)));
    match failed {
        Err(NetlinkError::Command { command, source }) => {
            assert_eq!(command, "add rule ip switchyard no-such-chain accept");
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT), "{source}");
        }
        other => panic!("expected the rule to fail: {other:?}"),
    }
    // Nothing of the failed batch landed; the socket goes on working.
    then.unwrap();
    let after = listing(&ns);
    assert_ne!(after, before);
    ns.nft("delete element ip switchyard cluster-ips { 172.30.9.9 }");
    assert_eq!(listing(&ns), before, "the failed batch changed nothing");
}

#[test]
fn what_netlink_cannot_send_is_refused_before_sending() {
    let base = plan(&sample_ruleset());
    let full = transaction(None, &base).tx.commands;
    assert!(NftNetlink::supports(&full), "table replacement");
    let dnat = Rule::new(vec![], vec![Stmt::Dnat(ip("fd00::1"), 80)]);
    let wrong_rule = Command::AddRule {
        table: TableId::main(IpFamily::V4),
        chain: "c".to_string(),
        rule: dnat.clone(),
    };
    let wrong_prefix = Command::AddElements {
        table: TableId::main(IpFamily::V4),
        set: "ranges".to_string(),
        elements: vec![(Key::Prefix(cidr("fd00::/64")), None)],
    };
    let mut table = Table::new(IpFamily::V4);
    table.push("c", dnat);
    let wrong_table = Command::ReplaceTable(std::sync::Arc::new(table));
    for c in [wrong_rule, wrong_prefix, wrong_table] {
        assert!(!NftNetlink::supports(std::slice::from_ref(&c)), "{c}");
    }
}

/// `nft list ruleset` of both namespaces, and their listings while tables exist.
fn assert_same(what: &str, by_netlink: &Netns, by_nft: &Netns) {
    let (got, want) = (listing(by_netlink), listing(by_nft));
    if got != want {
        let diff: Vec<String> = got
            .lines()
            .zip(want.lines())
            .filter(|(g, w)| g != w)
            .take(10)
            .map(|(g, w)| format!("netlink: {g}\n    nft: {w}"))
            .collect();
        panic!("{what}: listings differ:\n{}", diff.join("\n"));
    }
}

#[test]
fn full_syncs_over_netlink_leave_what_nft_leaves() {
    let Some(by_netlink) = testns::create("nl-full-netlink") else {
        return;
    };
    let Some(by_nft) = testns::create("nl-full-nft") else {
        return;
    };
    let mut rulesets = rulesets().to_vec();
    rulesets.push(Ruleset::default());
    rulesets.push(sample_ruleset());
    // Into empty namespaces first, then each over the one before.
    for (n, rs) in rulesets.iter().enumerate() {
        let tx = transaction(None, &plan(rs)).tx;
        assert!(tx.replaces_tables());
        assert!(NftNetlink::supports(&tx.commands), "ruleset {n}");
        by_nft.nft(&tx.text().unwrap());
        let commands = tx.commands;
        by_netlink
            .netlink(move |nl| nl.apply(&commands))
            .unwrap_or_else(|e| panic!("ruleset {n}: {e}"));
        assert_same(&format!("ruleset {n}"), &by_netlink, &by_nft);
    }

    // Elements added to a replaced interval set (which holds the zero end
    // element already: nft leaves it out, netlink sends it again).
    let ranges = vec![Command::AddElements {
        table: TableId::main(IpFamily::V4),
        set: render::LOCAL_RANGES.to_string(),
        elements: vec![
            (Key::Prefix(cidr("192.168.0.0/16")), None),
            (Key::Prefix(cidr("224.0.0.0/3")), None),
        ],
    }];
    by_nft.nft(&ranges[0].to_string());
    by_netlink.netlink(move |nl| nl.apply(&ranges)).unwrap();
    assert_same("prefixes added", &by_netlink, &by_nft);

    let drop = vec![
        Command::DropTable(TableId::main(IpFamily::V4)),
        Command::DropTable(TableId::main(IpFamily::V6)),
    ];
    let twice = [drop.clone(), drop].concat();
    by_netlink
        .netlink(move |nl| nl.apply(&twice))
        .expect("dropping absent tables is no error");
    assert_eq!(by_netlink.sh("nft list ruleset"), "");
}

/// 20k services × 5 endpoints in one batch (~150k rules and elements per
/// family): accepted whole; the time against `nft -f` of the same text is
/// printed, not asserted.
#[test]
fn a_large_full_sync_goes_over_netlink() {
    let Some(by_netlink) = testns::create("nl-large-netlink") else {
        return;
    };
    let Some(by_nft) = testns::create("nl-large-nft") else {
        return;
    };
    let mut next = 0;
    let services = (0..20_000u32)
        .map(|s| {
            let endpoints = (0..5)
                .map(|_| {
                    next += 1;
                    let ip = std::net::Ipv4Addr::from(0x0a40_0000 + next);
                    endpoint(next, &ip.to_string(), "node-b")
                })
                .collect();
            let vip = format!("172.30.{}.{}", s / 250, s % 250 + 1);
            service(s + 1, &format!("svc-{s}"), &vip, endpoints)
        })
        .collect();
    let plan = plan(&Ruleset { services });
    let chains = plan.table(IpFamily::V4).unwrap().chains.len();
    let tx = transaction(None, &plan).tx;
    let text = tx.text().unwrap();
    let commands = tx.commands;

    let started = std::time::Instant::now();
    by_netlink
        .netlink(move |nl| nl.apply(&commands))
        .expect("the large batch");
    let netlink = started.elapsed();
    let started = std::time::Instant::now();
    by_nft.nft(&text);
    let nft = started.elapsed();
    eprintln!(
        "20k services x 5 endpoints, {} MB of nft text: netlink {netlink:?}, nft -f {nft:?}",
        text.len() >> 20
    );

    let listed = by_netlink.sh("nft list table ip switchyard");
    let listed = listed.lines().filter(|l| l.starts_with("\tchain ")).count();
    assert_eq!(listed, chains);
}

#[test]
fn a_failing_table_replacement_changes_nothing_and_names_the_object() {
    let Some(ns) = testns::create("nl-fail-full") else {
        return;
    };
    let base = plan(&sample_ruleset());
    ns.nft(&transaction(None, &base).tx.text().unwrap());
    let before = listing(&ns);
    let mut table = base.table(IpFamily::V4).unwrap();
    table.push(
        "services",
        Rule::new(vec![], vec![Stmt::Verdict(Verdict::Jump("nowhere".into()))]),
    );
    let bad = vec![Command::ReplaceTable(std::sync::Arc::new(table))];
    match ns.netlink(move |nl| nl.apply(&bad)) {
        Err(NetlinkError::Command { command, source }) => {
            assert_eq!(
                command,
                "replace table ip switchyard: add rule ip switchyard services jump nowhere"
            );
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT), "{source}");
        }
        other => panic!("expected the rule to fail: {other:?}"),
    }
    assert_eq!(listing(&ns), before, "the failed batch changed nothing");
}
