//! Byte for byte: a batch of ours is what nft 1.0.6 sends for the text of
//! the same commands, compared without root against captures of nft
//! (`testdata/netlink/*.hex`, annotated per attribute). With root and
//! strace, `the_fixtures_are_what_nft_sends` captures nft anew and checks
//! the files (`UPDATE_GOLDEN=1` rewrites them).

use std::io::Write;
use std::process::{Command as Process, Stdio};
use std::sync::Arc;

use netlink_packet_core::NLM_F_ACK;
use switchyard_api::ruleset::{IpFamily, Protocol};

use super::commands::batch;
use super::dump::{self, Attr, Message, Value};
use super::kernel_tests::every_expression_steps;
use super::uapi::{
    NFTA_DYNSET_SET_ID, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_LOOKUP_SET_ID,
    NFTA_SET_ELEM_LIST_SET_ID,
};
use crate::nftables::ir::{
    BaseChain, Chain, ChainType, Hook, Key, Pick, PickKey, Pool, Priority, Set, SetKind, Table,
    TableId,
};
use crate::nftables::tests::{cidr, golden, testdata};
use crate::nftables::transaction::Command;
use crate::testns::{self, Netns, TestNetns};

/// Commands sent as one batch (one `nft -f`) onto the tables `before` leaves.
struct Case {
    name: &'static str,
    before: String,
    commands: Vec<Command>,
}

fn text(commands: &[Command]) -> String {
    commands.iter().map(Command::to_string).collect()
}

/// Every command kind, a base chain of each hook, interval sets (the zero
/// end element nft adds, adjacent prefixes, one reaching the last address),
/// sets and maps of every kind, elements with every verdict, and rules with
/// every match and statement the plan builds.
fn cases() -> Vec<Case> {
    let mut cases = vec![Case {
        name: "sets",
        before: "add table ip switchyard\nadd table ip6 switchyard\n".into(),
        commands: sets(),
    }];
    let tables = tables();
    let before = text(&tables);
    cases.push(Case {
        name: "tables",
        before: String::new(),
        commands: tables,
    });
    cases.push(Case {
        name: "interval-deletes",
        before,
        commands: vec![
            Command::DeleteElements {
                table: TableId::main(IpFamily::V4),
                set: "local".to_string(),
                keys: vec![
                    Key::Prefix(cidr("240.0.0.0/4")),
                    Key::Prefix(cidr("10.0.0.0/9")),
                ],
            },
            Command::DropTable(TableId::main(IpFamily::V6)),
        ],
    });
    let [mut added, edited, mut removed] = every_expression_steps();
    // nft sends the elements of an interval set made in the same batch
    // twice (once without the zero end element); with the sets made first
    // it sends them once, as we do.
    let (sets, rest): (Vec<Command>, Vec<Command>) = added
        .2
        .into_iter()
        .partition(|c| matches!(c, Command::AddSet { .. }));
    added.1 += &text(&sets);
    added.2 = rest;
    // A set flushed and the emptied chain deleted, in the same batch.
    removed.2.insert(0, flush_set("nl-ports"));
    removed.2.extend(
        [IpFamily::V4, IpFamily::V6].map(|family| Command::DeleteChain {
            table: TableId::main(family),
            name: "nl-every-expression".to_string(),
        }),
    );
    for (name, (_, before, commands)) in [
        ("every-expression-added", added),
        ("every-expression-edited", edited),
        ("every-expression-removed", removed),
    ] {
        cases.push(Case {
            name,
            before,
            commands,
        });
    }
    cases
}

fn flush_set(name: &str) -> Command {
    Command::FlushSet {
        table: TableId::main(IpFamily::V4),
        name: name.to_string(),
        map: true,
    }
}

/// A set of every kind, with and without timeout and comment, and pick maps.
fn sets() -> Vec<Command> {
    let set = |family, name: &str, kind, timeout, comment: Option<&str>| {
        let mut set = Set::new(kind, comment);
        set.timeout_seconds = timeout;
        Command::AddSet {
            table: TableId::main(family),
            name: name.to_string(),
            set,
        }
    };
    let (v4, v6) = (IpFamily::V4, IpFamily::V6);
    vec![
        set(v4, "aff", SetKind::Addr, Some(600), None),
        set(v4, "m", SetKind::AddrProtoPortVerdict, None, Some("a map")),
        set(v4, "hp", SetKind::AddrPair, None, Some("pairs")),
        set(v4, "d", SetKind::AddrProtoPort, None, Some("ports")),
        set(v4, "pp", SetKind::ProtoPortVerdict, None, None),
        set(v4, "s", SetKind::Addr, None, Some("Active")),
        set(v6, "aff6", SetKind::Addr, Some(30), Some("c")),
        set(v6, "m6", SetKind::AddrProtoPortVerdict, None, None),
        set(v6, "hp6", SetKind::AddrPair, None, None),
        set(v6, "d6", SetKind::AddrProtoPort, None, None),
        pick(v4, PickKey::Vip, Protocol::Tcp, 5),
        pick(v4, PickKey::NodePort, Protocol::Udp, 2),
        pick(v6, PickKey::Vip, Protocol::Sctp, 1),
        pick(v6, PickKey::NodePort, Protocol::Tcp, 12),
    ]
}

/// A pick map (`typeof`, of each protocol's `dport`).
fn pick(family: IpFamily, key: PickKey, protocol: Protocol, n: u32) -> Command {
    let pick = Pick {
        key,
        pool: Pool::Cluster,
        protocol,
        n,
    };
    Command::AddSet {
        table: TableId::main(family),
        name: pick.map(),
        set: pick.set(),
    }
}

/// Both tables replaced: base chains of every hook, and interval sets.
fn tables() -> Vec<Command> {
    let mut v4 = Table::new(IpFamily::V4);
    v4.set("local", SetKind::Prefix, "local ranges");
    for c in ["10.128.0.0/9", "10.0.0.0/9", "192.0.2.1/32", "240.0.0.0/4"] {
        v4.element("local", Key::Prefix(cidr(c)), None);
    }
    let base = [
        ("filter-input", ChainType::Filter, Hook::Input, -10),
        ("filter-output", ChainType::Filter, Hook::Output, 10),
        ("filter-forward", ChainType::Filter, Hook::Forward, -10),
        ("nat-prerouting", ChainType::Nat, Hook::Prerouting, 0),
    ];
    for (name, kind, hook, offset) in base {
        let priority = Priority::Dstnat(offset);
        let chain = Chain {
            base: Some(BaseChain {
                kind,
                hook,
                priority,
            }),
            rules: Default::default(),
        };
        v4.chains.insert(name.to_string(), chain);
    }
    let postrouting = BaseChain {
        kind: ChainType::Nat,
        hook: Hook::Postrouting,
        priority: Priority::Srcnat(0),
    };
    v4.chains.insert(
        "nat-postrouting".to_string(),
        Chain {
            base: Some(postrouting),
            rules: Default::default(),
        },
    );
    let mut v6 = Table::new(IpFamily::V6);
    v6.set("any", SetKind::Prefix, "everything");
    v6.element("any", Key::Prefix(cidr("::/0")), None);
    vec![
        Command::ReplaceTable(Arc::new(v4)),
        Command::ReplaceTable(Arc::new(v6)),
    ]
}

/// Our batch for `commands`, numbered from 0 as nft numbers its batches.
fn ours(commands: &[Command]) -> Vec<u8> {
    let mut batch = batch(commands, u32::MAX);
    batch.end();
    batch.chunks.concat()
}

fn fixture_name(case: &Case) -> String {
    format!("netlink/{}.hex", case.name)
}

/// nft's messages as we send them. Two differences, both on purpose:
/// - nft names a set also by a number where a message or expression refers
///   to it (`NFTA_SET_ELEM_LIST_SET_ID`, `NFTA_LOOKUP_SET_ID`,
///   `NFTA_DYNSET_SET_ID`: the set's id in the batch, or a number of nft's
///   cache for a set the kernel holds); the kernel looks a set up by name
///   first, so we send the name only;
/// - we ask for an ACK of the last command (`NLM_F_ACK`), the one answer
///   that tells the batch was committed.
fn as_we_send(mut nft: Vec<Message>) -> Vec<Message> {
    for m in &mut nft {
        if is_setelem(m.kind) {
            m.attrs.retain(|a| a.kind != NFTA_SET_ELEM_LIST_SET_ID);
        }
        strip_set_ids(&mut m.attrs, None);
    }
    let last = nft.len().saturating_sub(2);
    if let Some(m) = nft.get_mut(last) {
        m.flags |= NLM_F_ACK;
    }
    nft
}

fn is_setelem(kind: u16) -> bool {
    let subsys = (libc::NFNL_SUBSYS_NFTABLES as u16) << 8;
    [libc::NFT_MSG_NEWSETELEM, libc::NFT_MSG_DELSETELEM]
        .iter()
        .any(|m| kind == subsys | *m as u16)
}

/// Drop the set numbers of lookups and dynsets (`set_id`: the attribute
/// that is one, in the data of the expression `attrs` belong to).
fn strip_set_ids(attrs: &mut Vec<Attr>, set_id: Option<u16>) {
    if let Some(kind) = set_id {
        attrs.retain(|a| a.kind != kind);
        return;
    }
    let name = attrs.iter().find_map(|a| match &a.value {
        Value::Bytes(b) if a.kind == NFTA_EXPR_NAME => Some(b.clone()),
        _ => None,
    });
    let set_id = match name.as_deref() {
        Some(b"lookup\0") => Some(NFTA_LOOKUP_SET_ID),
        Some(b"dynset\0") => Some(NFTA_DYNSET_SET_ID),
        _ => None,
    };
    for a in attrs {
        if let Value::Nested(children) = &mut a.value {
            strip_set_ids(children, set_id.filter(|_| a.kind == NFTA_EXPR_DATA));
        }
    }
}

/// The lines where two annotated batches differ (at most 5).
fn differences(ours: &[u8], nft: &[u8]) -> String {
    let (ours, nft) = (
        dump::annotate(&dump::parse(ours)),
        dump::annotate(&dump::parse(nft)),
    );
    let (ours, nft): (Vec<&str>, Vec<&str>) = (ours.lines().collect(), nft.lines().collect());
    let line = |lines: &[&str], i: usize| lines.get(i).copied().unwrap_or("(none)").to_string();
    let mut out = String::new();
    for i in (0..ours.len().max(nft.len()))
        .filter(|i| ours.get(*i) != nft.get(*i))
        .take(5)
    {
        out += &format!(
            "line {i}:\n ours: {}\n  nft: {}\n",
            line(&ours, i),
            line(&nft, i)
        );
    }
    out
}

#[test]
fn the_encoder_sends_the_bytes_nft_sends() {
    let mut failed = String::new();
    for case in cases() {
        let fixture = std::fs::read_to_string(testdata(&fixture_name(&case))).unwrap();
        let captured = dump::unhex(&fixture);
        let nft = dump::parse(&captured);
        assert_eq!(dump::emit(&nft), captured, "{}: parse and emit", case.name);
        let expected = dump::emit(&as_we_send(nft));
        let got = ours(&case.commands);
        if got != expected {
            if let Some(dir) = std::env::var_os("NL_DUMP") {
                let dir = std::path::PathBuf::from(dir);
                let ours = dump::annotate(&dump::parse(&got));
                let theirs = dump::annotate(&dump::parse(&expected));
                std::fs::write(dir.join(format!("{}.ours", case.name)), ours).unwrap();
                std::fs::write(dir.join(format!("{}.nft", case.name)), theirs).unwrap();
            }
            failed += &format!("{}:\n{}", case.name, differences(&got, &expected));
        }
    }
    assert!(failed.is_empty(), "batches differ from nft's:\n{failed}");
}

/// What `nft -f` sends for `script` in `ns`: the bytes of its `sendmsg`
/// calls (the batch; its cache queries are `sendto`), from strace's dump.
fn capture(ns: &Netns, script: &str) -> Vec<u8> {
    let mut child = Process::new("ip")
        .args(["netns", "exec", ns.name(), "strace", "-e", "trace=sendmsg"])
        .args(["-e", "write=all", "-xx", "-s", "0", "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(script.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nft -f under strace: {trace}");
    // ` | 00000  14 00 00 00 10 00 01 00  00 00 … 00  ascii |`
    let dump: String = trace
        .lines()
        .filter_map(|l| l.strip_prefix(" | ")?.get(7..56))
        .collect();
    dump::unhex(&dump)
}

#[test]
fn the_fixtures_are_what_nft_sends() {
    let strace = Process::new("strace").arg("-V").output();
    if strace.is_err() {
        eprintln!("SKIP: capturing nft needs strace");
        return;
    }
    for (i, case) in cases().iter().enumerate() {
        let Some(ns) = testns::create(&format!("nl-bytes-{i}")) else {
            return;
        };
        if !case.before.is_empty() {
            ns.nft(&case.before);
        }
        let script = text(&case.commands);
        let captured = capture(&ns, &script);
        let mut fixture = format!(
            "# What `nft -f` (nft 1.0.6) sends for case `{}` of bytes_tests.rs,\n\
             # captured with strace by `the_fixtures_are_what_nft_sends`:\n",
            case.name
        );
        for line in script.lines() {
            fixture += &format!("#   {line}\n");
        }
        fixture += &dump::annotate(&dump::parse(&captured));
        golden(&fixture_name(case), &fixture);
    }
}
