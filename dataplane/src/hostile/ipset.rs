//! ipset restore: the IPVS mode's sets for hostile names, parsed from the
//! `ipset restore` input and, as root, restored into a test namespace and
//! read back with `ipset save` (exactly the plan's sets and members); the
//! mode's iptables rules, which match those sets, are checked next to them
//! as in `iptables.rs`. (Set names are the mode's own and members typed:
//! this shows that no name reaches the text; `ipvs::ipset` refuses a set
//! name ipset cannot carry.)

use std::collections::{BTreeMap, BTreeSet};

use proptest::prop_assert;
use switchyard_api::Mode;

use super::iptables::{check_text, planned};
use super::{differences, for_cases, linked, settings};
use crate::exec::Runner;
use crate::iptables::restore::Found;
use crate::ipvs::plan::IpSet;
use crate::ipvs::{ipset, render};
use crate::testns::{self, TestNetns};

/// Members per set name.
type Sets = BTreeMap<String, BTreeSet<String>>;

/// What `ipset save` shows, or what an `ipset restore` input holds (the
/// structural parse); a line that is none of `create`, `add`, `flush` under
/// `"?" + line`.
fn saved(save: &str) -> Sets {
    let mut out = Sets::new();
    for line in save.lines() {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("create"), Some(name), _) => {
                out.entry(name.to_string()).or_default();
            }
            (Some("add"), Some(name), Some(member)) => {
                out.entry(name.to_string())
                    .or_default()
                    .insert(member.to_string());
            }
            (Some("flush"), Some(_), None) => {}
            _ => {
                out.insert(format!("?{line}"), BTreeSet::new());
            }
        }
    }
    out
}

fn planned_sets(sets: &[IpSet]) -> Sets {
    sets.iter()
        .map(|s| {
            let members = s.entries.iter().map(ToString::to_string).collect();
            (s.name.clone(), members)
        })
        .collect()
}

#[test]
fn hostile_names_never_add_or_change_ipsets() {
    let ns = testns::create("hostile-ipset");
    for_cases(16, |input| {
        let plan = render::render(&linked(&input), &settings(Mode::Ipvs));
        let text = ipset::restore_text(&plan.ipsets).unwrap();
        let want = planned_sets(&plan.ipsets);
        let parsed = saved(&text);
        prop_assert!(parsed == want, "parse:\n{}", differences(&parsed, &want));
        if let Some(ns) = &ns {
            let tools = ns.runner();
            if let Err(e) = tools.run("ipset", &["restore"], Some(text.as_bytes())) {
                panic!("ipset refused the text: {e}\n{text}");
            }
            let got = saved(&tools.run("ipset", &["save"], None).unwrap());
            prop_assert!(got == want, "kernel:\n{}", differences(&got, &want));
        }
        for fp in &plan.rules {
            let (input, _) = fp.restore_input(None, &Found::default()).unwrap();
            check_text(ns.as_ref(), fp, &input, &planned(fp))?;
        }
        Ok(())
    });
}
