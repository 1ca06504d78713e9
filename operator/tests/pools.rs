//! Pool assignment: label selectors, priorities, ties and unmatched nodes.

mod common;

use common::objects::{config, node, selector};
use switchyard_api::Mode;
use switchyard_operator::pools::{NodeConflict, assign_pools};

#[test]
fn selectors_match_labels_and_every_expression_operator() {
    let nodes = vec![
        node("a", &[("zone", "z1"), ("gpu", "yes")]),
        node("b", &[("zone", "z2")]),
        node("c", &[("zone", "z3"), ("legacy", "")]),
        node("d", &[]),
    ];
    let cases: Vec<(&str, _, Vec<&str>)> = vec![
        ("match-labels", selector(&[("zone", "z1")], &[]), vec!["a"]),
        (
            "in",
            selector(&[], &[("zone", "In", &["z1", "z2"])]),
            vec!["a", "b"],
        ),
        (
            "not-in",
            selector(&[], &[("zone", "NotIn", &["z1"])]),
            vec!["b", "c", "d"],
        ),
        (
            "exists",
            selector(&[], &[("legacy", "Exists", &[])]),
            vec!["c"],
        ),
        (
            "does-not-exist",
            selector(&[], &[("gpu", "DoesNotExist", &[])]),
            vec!["b", "c", "d"],
        ),
        (
            "both",
            selector(&[("gpu", "yes")], &[("zone", "In", &["z1"])]),
            vec!["a"],
        ),
        ("everything", selector(&[], &[]), vec!["a", "b", "c", "d"]),
    ];
    for (name, sel, expected) in cases {
        let a = assign_pools(&nodes, &[config(name, Mode::Nftables, 0, sel)]);
        let got: Vec<&str> = a.nodes_of(name).collect();
        assert_eq!(got, expected, "selector {name}");
        assert_eq!(a.unassigned.len(), 4 - expected.len(), "selector {name}");
    }
}

#[test]
fn the_highest_priority_wins_a_node() {
    let nodes = vec![node("a", &[("role", "edge")]), node("b", &[])];
    let configs = vec![
        config("default", Mode::Iptables, 0, selector(&[], &[])),
        config("edge", Mode::Ebpf, 10, selector(&[("role", "edge")], &[])),
    ];
    let a = assign_pools(&nodes, &configs);
    assert_eq!(a.assigned["a"], "edge");
    assert_eq!(a.assigned["b"], "default");
    assert!(a.conflicts.is_empty() && a.unassigned.is_empty());
}

#[test]
fn a_tie_is_a_conflict_on_every_pool_involved_and_assigns_nothing() {
    let nodes = vec![
        node("a", &[("x", "1")]),
        node("b", &[("x", "1"), ("y", "1")]),
    ];
    let configs = vec![
        config("p", Mode::Iptables, 5, selector(&[("x", "1")], &[])),
        config("q", Mode::Nftables, 5, selector(&[("y", "1")], &[])),
        config("low", Mode::Ipvs, 1, selector(&[], &[])),
    ];
    let a = assign_pools(&nodes, &configs);
    assert_eq!(a.assigned.get("a").map(String::as_str), Some("p"));
    assert!(!a.assigned.contains_key("b"));
    let conflict = NodeConflict {
        node: "b".into(),
        pools: vec!["p".into(), "q".into()],
        priority: 5,
    };
    assert_eq!(a.conflicts_of("p"), std::slice::from_ref(&conflict));
    assert_eq!(a.conflicts_of("q"), &[conflict]);
    assert!(a.conflicts_of("low").is_empty());
}

#[test]
fn an_invalid_selector_selects_nothing_and_is_reported() {
    let nodes = vec![node("a", &[("x", "1")])];
    let configs = vec![config(
        "bad",
        Mode::Iptables,
        0,
        selector(&[], &[("x", "Near", &["1"])]),
    )];
    let a = assign_pools(&nodes, &configs);
    assert!(a.assigned.is_empty());
    assert!(a.unassigned.contains("a"));
    assert!(a.invalid_selectors.contains_key("bad"));
}
