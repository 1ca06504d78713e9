//! nftables: the listing `plan` prints (which is `nft -f` input too) is
//! parsed here; as root it and the full-sync transaction are checked with
//! `nft -c -f` and applied with `nft -f`, and the transaction again over
//! netlink, in a test namespace. Each time the result is exactly the plan's
//! tables: its chains with their rules in order, its sets and maps with
//! their element counts, every comment as escaped (`nft -j list ruleset`
//! in the kernel). Service ports whose names nftables cannot carry are
//! skipped by the render.

use std::collections::BTreeMap;

use proptest::test_runner::TestCaseResult;
use serde_json::Value;
use switchyard_api::Mode;

use super::{differences, for_cases, linked, settings};
use crate::exec::Runner;
use crate::nftables::escape;
use crate::nftables::ir::Plan;
use crate::nftables::render::render;
use crate::nftables::text::family_word;
use crate::nftables::transaction;
use crate::testns::{self, Netns, TestNetns};

/// Per family and chain, the comment of each rule; per family and set,
/// its comment and element count.
#[derive(Debug, Default, PartialEq)]
struct Tables {
    chains: BTreeMap<(String, String), Vec<Option<String>>>,
    sets: BTreeMap<(String, String), (Option<String>, usize)>,
}

fn listed(json: &str) -> Tables {
    let v: Value = serde_json::from_str(json).unwrap();
    let mut out = Tables::default();
    let text = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    for item in v["nftables"].as_array().unwrap() {
        if let Some(c) = item.get("chain") {
            let key = (text(c, "family").unwrap(), text(c, "name").unwrap());
            out.chains.entry(key).or_default();
        } else if let Some(r) = item.get("rule") {
            let key = (text(r, "family").unwrap(), text(r, "chain").unwrap());
            out.chains.entry(key).or_default().push(text(r, "comment"));
        } else if let Some(s) = item.get("set").or_else(|| item.get("map")) {
            let key = (text(s, "family").unwrap(), text(s, "name").unwrap());
            let elements = s.get("elem").and_then(Value::as_array).map_or(0, Vec::len);
            out.sets.insert(key, (text(s, "comment"), elements));
        }
    }
    out
}

/// The comment a rule or set line ends with (nft strings have no escapes).
fn trailing_comment(line: &str) -> Option<String> {
    let quoted = line.strip_suffix('"')?;
    let at = quoted.rfind("comment \"")?;
    Some(quoted[at + "comment \"".len()..].to_string())
}

/// The structural parse of a listing (the `nft list` form `plan` prints)
/// without the kernel: one table per family, chains and sets one tab in,
/// their lines two tabs in, elements continued three tabs in; any other
/// line lands under `("?", line)`.
fn parsed(listing: &str) -> Tables {
    let mut out = Tables::default();
    let (mut family, mut chain, mut set) = (String::new(), None, None);
    for line in listing.lines() {
        let words: Vec<&str> = line.trim_start_matches('\t').split(' ').collect();
        match (line.len() - line.trim_start_matches('\t').len(), &words[..]) {
            (0, ["table", fam, "switchyard", "{"]) => family = fam.to_string(),
            (1, ["chain", name, "{"]) => {
                let key = (family.clone(), name.to_string());
                out.chains.insert(key.clone(), Vec::new());
                (chain, set) = (Some(key), None);
            }
            (1, ["set" | "map", name, "{"]) => {
                let key = (family.clone(), name.to_string());
                out.sets.insert(key.clone(), (None, 0));
                (chain, set) = (None, Some(key));
            }
            (0, ["#", ..]) => {}
            (0 | 1, ["}"]) => (chain, set) = (None, None),
            (2, ["type", .., "policy", _]) if chain.is_some() => {}
            (2, _) if chain.is_some() => {
                let rules = out.chains.get_mut(chain.as_ref().unwrap()).unwrap();
                rules.push(trailing_comment(line));
            }
            (2, ["comment", ..]) if set.is_some() => {
                out.sets.get_mut(set.as_ref().unwrap()).unwrap().0 = trailing_comment(line);
            }
            (2, ["elements", "=", ..]) | (3, _) if set.is_some() => {
                let elements = line.split(',').count();
                out.sets.get_mut(set.as_ref().unwrap()).unwrap().1 +=
                    elements - 1 + usize::from(line.ends_with('}'));
            }
            (2, ["type" | "typeof" | "flags" | "timeout", ..]) if set.is_some() => {}
            _ => {
                out.chains
                    .insert(("?".into(), line.to_string()), Vec::new());
            }
        }
    }
    out
}

fn planned(plan: &Plan) -> Tables {
    let mut out = Tables::default();
    let comment = |c: &Option<String>| c.as_deref().map(|c| escape::comment(c).into_owned());
    for family in plan.families() {
        let table = plan.table(family).unwrap();
        let fam = family_word(family).to_string();
        for (name, chain) in &table.chains {
            let rules = chain.rules.iter().map(|r| comment(&r.comment)).collect();
            out.chains.insert((fam.clone(), name.clone()), rules);
        }
        for (name, set) in &table.sets {
            let value = (comment(&set.comment), set.elements.len());
            out.sets.insert((fam.clone(), name.clone()), value);
        }
    }
    out
}

fn nft(ns: &Netns, args: &[&str], stdin: Option<&str>) -> String {
    match ns.runner().run("nft", args, stdin.map(str::as_bytes)) {
        Ok(out) => out,
        Err(e) => panic!("nft {args:?} refused: {e}\n{}", stdin.unwrap_or("")),
    }
}

fn same(how: &str, got: &Tables, want: &Tables) -> TestCaseResult {
    let chains = differences(&got.chains, &want.chains);
    let sets = differences(&got.sets, &want.sets);
    proptest::prop_assert!(got == want, "{how}:\n{chains}{sets}");
    Ok(())
}

#[test]
fn hostile_names_never_add_or_change_nftables_objects() {
    let ns = testns::create("hostile-nft");
    for_cases(16, |input| {
        let plan = render(&linked(&input), &settings(Mode::Nftables));
        let expected = planned(&plan);
        let listing = plan.to_string();
        same("parse", &parsed(&listing), &expected)?;
        let Some(ns) = &ns else {
            return Ok(());
        };
        let check = |how| {
            same(
                how,
                &listed(&nft(ns, &["-j", "list", "ruleset"], None)),
                &expected,
            )
        };
        let tx = transaction(None, &plan).tx;
        let script = tx.text().unwrap();
        nft(ns, &["flush", "ruleset"], None);
        for text in [&listing, &script] {
            nft(ns, &["-c", "-f", "-"], Some(text));
        }
        nft(ns, &["-f", "-"], Some(&listing));
        check("the listing")?;
        nft(ns, &["flush", "ruleset"], None);
        nft(ns, &["-f", "-"], Some(&script));
        check("nft -f")?;
        ns.netlink(|nl| nl.apply(&tx.commands)).unwrap();
        check("netlink")?;
        Ok(())
    });
}
