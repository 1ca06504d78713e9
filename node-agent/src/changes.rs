//! What a sync changed, for kube-proxy's change counters and its network
//! programming latency: the service ports applied now against those applied
//! by the previous successful sync. A service port the linker kept (same
//! `Arc`) did not change; otherwise its frontends and policies (a service
//! change) and its endpoints (an endpoint change) are compared. Counted per
//! service port, where kube-proxy counts Service and EndpointSlice events.
//!
//! Network programming latency is kube-proxy's: the time from the
//! EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time` (carried
//! in the rule as `lastChangeTriggerTime`) to the sync that applied it,
//! observed once per trigger time, and only for changes made after the agent
//! started (the first lists carry old times that measure nothing).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use switchyard_api::policy::{LinkedRuleset, LinkedServicePort};
use switchyard_api::ruleset::ServicePortRule;

/// The changes one sync applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Service ports added, removed, or with changed frontends or policies.
    pub services: u64,
    /// Service ports whose endpoints changed.
    pub endpoints: u64,
    /// Per newly applied trigger time: how long ago it was.
    pub programming: Vec<Duration>,
}

/// The service ports of the last successful sync, by id.
#[derive(Debug)]
pub struct ChangeTracker {
    started: SystemTime,
    applied: HashMap<u32, Arc<LinkedServicePort>>,
}

fn without_endpoints(rule: &ServicePortRule) -> ServicePortRule {
    ServicePortRule {
        endpoints: Vec::new(),
        last_change_trigger_time: None,
        ..rule.clone()
    }
}

impl ChangeTracker {
    /// A tracker of an agent started at `started` (wall clock).
    pub fn new(started: SystemTime) -> ChangeTracker {
        ChangeTracker {
            started,
            applied: HashMap::new(),
        }
    }

    /// `linked` was applied at `now`: what changed since the last call.
    pub fn applied(&mut self, linked: &LinkedRuleset, now: SystemTime) -> Changes {
        let mut changes = Changes::default();
        let mut previous = std::mem::take(&mut self.applied);
        for port in &linked.services {
            let new = &port.rule;
            match previous.remove(&new.id) {
                Some(old) if Arc::ptr_eq(&old, port) => {}
                Some(old) => {
                    if old.rule.endpoints != new.endpoints {
                        changes.endpoints += 1;
                    }
                    if without_endpoints(&old.rule) != without_endpoints(new) {
                        changes.services += 1;
                    }
                    if old.rule.last_change_trigger_time != new.last_change_trigger_time {
                        self.observe(new, now, &mut changes);
                    }
                }
                None => {
                    changes.services += 1;
                    self.observe(new, now, &mut changes);
                }
            }
            self.applied.insert(new.id, Arc::clone(port));
        }
        changes.services += previous.len() as u64;
        changes
    }

    fn observe(&self, rule: &ServicePortRule, now: SystemTime, changes: &mut Changes) {
        let Some(trigger) = &rule.last_change_trigger_time else {
            return;
        };
        let trigger = SystemTime::from(trigger.0);
        if trigger < self.started {
            return;
        }
        if let Ok(latency) = now.duration_since(trigger) {
            changes.programming.push(latency);
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use switchyard_api::policy::{NodeInfo, link};
    use switchyard_api::ruleset::{Endpoint, Protocol, Ruleset};

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn rule(id: u32, endpoints: &[&str], trigger_ms: Option<i64>) -> ServicePortRule {
        ServicePortRule {
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            endpoints: endpoints
                .iter()
                .enumerate()
                .map(|(i, ip)| Endpoint::new(i as u32 + 1, ip.parse().unwrap(), 8080))
                .collect(),
            last_change_trigger_time: trigger_ms
                .map(|ms| MicroTime(k8s_openapi::jiff::Timestamp::from_millisecond(ms).unwrap())),
            ..ServicePortRule::new(id, "ns", &format!("svc{id}"), Protocol::Tcp, 80)
        }
    }

    fn linked(rules: Vec<ServicePortRule>) -> LinkedRuleset {
        link(&Ruleset { services: rules }, &NodeInfo::default())
    }

    #[test]
    fn counts_service_and_endpoint_changes_per_service_port() {
        let mut t = ChangeTracker::new(at(1000));
        let first = t.applied(
            &linked(vec![rule(1, &["10.0.0.1"], None), rule(2, &[], None)]),
            at(1001),
        );
        assert_eq!((first.services, first.endpoints), (2, 0), "both new");
        let mut same = linked(vec![rule(1, &["10.0.0.1"], None), rule(2, &[], None)]);
        same.services[0] = Arc::clone(&t.applied[&1]);
        let unchanged = t.applied(&same, at(1002));
        assert_eq!((unchanged.services, unchanged.endpoints), (0, 0));
        let mut moved = rule(2, &[], None);
        moved.port = 8080;
        let next = t.applied(&linked(vec![rule(1, &["10.0.0.2"], None), moved]), at(1003));
        assert_eq!((next.services, next.endpoints), (1, 1));
        let gone = t.applied(&linked(vec![]), at(1004));
        assert_eq!((gone.services, gone.endpoints), (2, 0), "removed ports");
    }

    #[test]
    fn programming_latency_from_trigger_times_after_the_start_once_each() {
        let mut t = ChangeTracker::new(at(1000));
        // Listed at start: a change made before the agent ran measures nothing.
        let start = t.applied(
            &linked(vec![rule(1, &["10.0.0.1"], Some(900_000))]),
            at(1001),
        );
        assert!(start.programming.is_empty());
        let change = t.applied(
            &linked(vec![rule(1, &["10.0.0.2"], Some(1_002_250))]),
            at(1003),
        );
        assert_eq!(change.programming, vec![Duration::from_millis(750)]);
        let relinked = t.applied(
            &linked(vec![rule(1, &["10.0.0.2"], Some(1_002_250))]),
            at(1010),
        );
        assert!(relinked.programming.is_empty(), "observed once");
    }
}
