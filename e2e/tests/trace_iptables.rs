//! The packet tracer over the iptables backend's typed plan agrees with every
//! flow of every scenario in `e2e/scenarios/` (pure: no kernel involved).

use std::collections::BTreeSet;
use std::net::IpAddr;

use switchyard_api::Mode;
use switchyard_api::policy::link;
use switchyard_dataplane::iptables::render;
use switchyard_dataplane::iptables::rule::Table;
use switchyard_dataplane::iptables::trace::{self, Origin, Packet, Verdict};
use switchyard_lab::runner::{self, compile_stage, node_info, settings_for};
use switchyard_lab::scenario::{Expected, Scenario};

#[test]
fn tracer_agrees_with_every_scenario_flow() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in runner::expand_paths(&[dir.to_string()]) {
        let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let addresses = scenario.node.parsed_addresses().unwrap_or_default();
        let node = node_info(&scenario.node, &addresses);
        let settings = settings_for(&scenario.node, Mode::Iptables);
        // As in the lab: the sources of fromNode flows sit on the node's loopback.
        let mut local: Vec<IpAddr> = node.addresses.clone();
        local.extend(scenario.node_extra_addresses());
        for stage in scenario.stages() {
            let compiled = compile_stage(&scenario.node, &stage);
            let plan = render::render(&link(&compiled.ruleset, &node), &settings);
            for family in &plan.families {
                for table in Table::ALL {
                    let chains = family.chains(table);
                    let jumps = chains.iter().flat_map(|c| &c.rules).chain(
                        family
                            .jumps
                            .iter()
                            .filter(|j| j.table == table)
                            .map(|j| &j.rule),
                    );
                    for target in jumps.filter_map(|r| r.jump_target()) {
                        if !chains.iter().any(|c| c.name == target) {
                            failures
                                .push(format!("{path}: {}jump to missing {target}", stage.label));
                        }
                    }
                }
            }
            for flow in stage.flows {
                let family = plan
                    .families
                    .iter()
                    .find(|f| f.family == switchyard_api::ruleset::IpFamily::of(&flow.dest_ip))
                    .unwrap_or_else(|| panic!("no plan for {}", flow.dest_ip));
                let origin = if flow.from_node
                    || flow.source_ip.is_loopback()
                    || local.contains(&flow.source_ip)
                {
                    Origin::Node
                } else {
                    Origin::Remote
                };
                let packet = Packet {
                    origin,
                    protocol: flow.protocol,
                    source: flow.source_ip,
                    destination: flow.dest_ip,
                    port: flow.dest_port,
                };
                let outcomes = trace::trace(family, &local, &packet);
                let verdicts: BTreeSet<Verdict> =
                    outcomes.iter().map(|o| o.verdict.clone()).collect();
                let want: BTreeSet<Verdict> = match Expected::parse(&flow.output) {
                    Ok(Expected::Endpoints(set)) => {
                        set.into_iter().map(Verdict::Endpoint).collect()
                    }
                    Ok(Expected::Reject) => [Verdict::Reject].into(),
                    Ok(Expected::Drop) => [Verdict::Drop].into(),
                    Ok(Expected::Accept) => [Verdict::Accept].into(),
                    Ok(Expected::Untranslated) | Err(_) => [Verdict::Untranslated].into(),
                    // Judged against kube-proxy's packets only: nothing to trace.
                    Ok(Expected::Reference) => continue,
                };
                let masq_ok = flow
                    .masq
                    .is_none_or(|m| outcomes.iter().all(|o| o.masquerade == m));
                checked += 1;
                if verdicts != want || !masq_ok {
                    failures.push(format!(
                        "{path}: {}{}: expected {} masq={:?}, traced {outcomes:?}",
                        stage.label, flow.name, flow.output, flow.masq
                    ));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} flows traced");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
