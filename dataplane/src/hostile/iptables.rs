//! iptables-restore and ip6tables-restore: both texts the iptables mode
//! makes (the listing `plan` prints, which is iptables-restore input too, and
//! the writer's full-sync input) are parsed here, and as root checked with
//! `--test`, restored into a test namespace and read back with iptables-save:
//! each time exactly the plan's chains, each with the plan's rules in order
//! and their comments as escaped.

use std::collections::BTreeMap;

use proptest::prop_assert;
use proptest::test_runner::TestCaseResult;
use switchyard_api::Mode;

use super::{differences, for_cases, linked, settings};
use crate::escape;
use crate::exec::Runner;
use crate::iptables::escape::{COMMENT_MAX, argv};
use crate::iptables::plan::FamilyPlan;
use crate::iptables::render::render;
use crate::iptables::restore::{Found, tools};
use crate::iptables::rule::{Match, Rule};
use crate::testns::{self, Netns, TestNetns};

/// Per table and chain, the comment of each rule in order.
pub type Chains = BTreeMap<(String, String), Vec<Option<String>>>;

fn comment_of(words: &[String]) -> Option<String> {
    let at = words.iter().position(|w| w == "--comment")?;
    words.get(at + 1).cloned()
}

/// What iptables-save shows, or what an iptables-restore input holds (the
/// structural parse): every chain of ours, the built-in chains that have
/// rules, and any line that is none of those under `("?", line)`.
pub fn saved(save: &str) -> Chains {
    let mut out = Chains::new();
    let mut table = String::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut words = decl.split(' ');
            let (chain, policy) = (words.next().unwrap_or(""), words.next());
            if policy == Some("-") {
                out.insert((table.clone(), chain.to_string()), Vec::new());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let words = argv(rule);
            out.entry((table.clone(), words[0].clone()))
                .or_default()
                .push(comment_of(&words[1..]));
        } else if let Some(rule) = line.strip_prefix("-I ") {
            // `-I <builtin> 1 <rule>`: a jump a full write puts first.
            let words = argv(rule);
            out.entry((table.clone(), words[0].clone()))
                .or_default()
                .insert(0, comment_of(&words[2..]));
        } else if !(line.is_empty() || line.starts_with('#') || line == "COMMIT") {
            out.insert(("?".into(), line.to_string()), Vec::new());
        }
    }
    out
}

/// What the plan holds, with its jumps from the built-in chains.
pub fn planned(plan: &FamilyPlan) -> Chains {
    // A rule's comment, or the one kube-proxy writes among a jump's matches.
    let comment = |r: &Rule| {
        let text = r.comment.as_deref().or_else(|| {
            r.matches.iter().find_map(|m| match m {
                Match::Comment(c) => Some(c.as_str()),
                _ => None,
            })
        });
        text.map(|c| escape::comment(c, COMMENT_MAX).into_owned())
    };
    let mut out = Chains::new();
    for table in crate::iptables::rule::Table::ALL {
        for c in plan.chains(table) {
            let rules = c.rules.iter().map(comment).collect();
            out.insert((table.as_str().to_string(), c.name.clone()), rules);
        }
    }
    for j in &plan.jumps {
        out.entry((j.table.as_str().to_string(), j.builtin.to_string()))
            .or_default()
            .push(comment(&j.rule));
    }
    out
}

/// Check `text` with `--test`, replace the family's tables with it (no
/// `--noflush`: what an earlier case left goes) and read them back.
pub fn restore_and_save(ns: &Netns, plan: &FamilyPlan, text: &str) -> Chains {
    let (_, restore, save) = tools(plan.family);
    let runner = ns.runner();
    for args in [&["-w", "--test"][..], &["-w"]] {
        if let Err(e) = runner.run(restore, args, Some(text.as_bytes())) {
            panic!("{restore} {args:?} refused the text: {e}\n{text}");
        }
    }
    saved(&runner.run(save, &[], None).unwrap())
}

/// `text` holds exactly the plan's chains and rules: as parsed here and, in
/// a namespace, as the kernel took it.
pub fn check_text(
    ns: Option<&Netns>,
    plan: &FamilyPlan,
    text: &str,
    want: &Chains,
) -> TestCaseResult {
    let parsed = saved(text);
    prop_assert!(&parsed == want, "parse:\n{}", differences(&parsed, want));
    if let Some(ns) = ns {
        let got = restore_and_save(ns, plan, text);
        prop_assert!(&got == want, "kernel:\n{}", differences(&got, want));
    }
    Ok(())
}

#[test]
fn hostile_names_never_add_or_change_iptables_rules() {
    let ns = testns::create("hostile-ipt");
    for_cases(16, |input| {
        let plan = render(&linked(&input), &settings(Mode::Iptables));
        for fp in &plan.families {
            let (input, _) = fp.restore_input(None, &Found::default()).unwrap();
            for text in [fp.to_string(), input] {
                check_text(ns.as_ref(), fp, &text, &planned(fp))?;
            }
        }
        Ok(())
    });
}
