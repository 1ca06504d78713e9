//! A `ProxyRuleset` shard as a whole, and a generation of shards together:
//! the layout is consistent, every service port valid ([`check_rule`]), and
//! ids and service ports unique within the shard and across the generation.
//!
//! Across shards the check is incremental ([`GenerationIndex`]): a sync that
//! replaces one shard looks at that shard's ids only.

use std::collections::{HashMap, HashSet};

use crate::ruleset::{ProxyRulesetSpec, ServicePortRule};
use crate::validation::limits::{MAX_SERVICE_PORTS_PER_SHARD, MAX_SHARDS};
use crate::validation::rule::{FieldError, check_rule};

/// Why a shard is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("layout.shardCount: {0} is not a power of two up to {MAX_SHARDS}")]
    ShardCount(u32),
    #[error("shard: {shard} is not below layout.shardCount {count}")]
    Index { shard: u32, count: u32 },
    #[error("serviceCount: {declared}, but the shard has {actual} service ports")]
    ServiceCount { declared: u32, actual: usize },
    #[error("services: {count} service ports, more than {MAX_SERVICE_PORTS_PER_SHARD}")]
    TooManyServicePorts { count: usize },
    #[error("services[{index}].{error}")]
    Rule { index: usize, error: FieldError },
    #[error("services[{index}]: {what} is also in services[{first}]")]
    Duplicate {
        index: usize,
        first: usize,
        what: Claim,
    },
    #[error("services[{index}]: {what} is also in shard {other}")]
    ClaimedElsewhere {
        index: usize,
        what: Claim,
        other: u32,
    },
}

/// What must be unique across a generation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Claim {
    /// A service port id (the eBPF maps' service slot).
    ServicePortId(u32),
    /// An endpoint id (the eBPF maps' backend slot).
    EndpointId(u32),
    /// `namespace/name:port/protocol` (chain and set names derive from it).
    ServicePort(String),
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::ServicePortId(id) => write!(f, "service port id {id}"),
            Claim::EndpointId(id) => write!(f, "endpoint id {id}"),
            Claim::ServicePort(name) => write!(f, "service port {name}"),
        }
    }
}

/// Everything `rule` claims: its id, its service port, its endpoints' ids.
fn claims(rule: &ServicePortRule) -> impl Iterator<Item = Claim> + '_ {
    [
        Claim::ServicePortId(rule.id),
        Claim::ServicePort(format!("{}/{}", rule.service_port_name(), rule.protocol)),
    ]
    .into_iter()
    .chain(rule.endpoints.iter().map(|e| Claim::EndpointId(e.id)))
}

/// Check one shard on its own.
pub fn check_shard(spec: &ProxyRulesetSpec) -> Result<(), ShardError> {
    let count = spec.layout.shard_count;
    if !count.is_power_of_two() || count > MAX_SHARDS {
        return Err(ShardError::ShardCount(count));
    }
    if spec.shard >= count {
        return Err(ShardError::Index {
            shard: spec.shard,
            count,
        });
    }
    let services = &spec.ruleset.services;
    if services.len() > MAX_SERVICE_PORTS_PER_SHARD {
        return Err(ShardError::TooManyServicePorts {
            count: services.len(),
        });
    }
    if spec.service_count as usize != services.len() {
        return Err(ShardError::ServiceCount {
            declared: spec.service_count,
            actual: services.len(),
        });
    }
    let mut first_claims: HashMap<Claim, usize> = HashMap::new();
    for (index, rule) in services.iter().enumerate() {
        check_rule(rule).map_err(|error| ShardError::Rule { index, error })?;
        for claim in claims(rule) {
            if let Some(&first) = first_claims.get(&claim) {
                return Err(ShardError::Duplicate {
                    index,
                    first,
                    what: claim,
                });
            }
            first_claims.insert(claim, index);
        }
    }
    Ok(())
}

/// Which shard of the current layout holds each id and service port.
#[derive(Debug, Default)]
pub struct GenerationIndex {
    owners: HashMap<Claim, u32>,
}

impl GenerationIndex {
    /// Replace shards: `changed` holds their new content (each already
    /// passed [`check_shard`]), `old` their previous service ports. Nothing
    /// is recorded unless no claim of a changed shard is held by another
    /// shard that keeps it.
    pub fn replace<'a>(
        &mut self,
        changed: &[&ProxyRulesetSpec],
        old: impl IntoIterator<Item = &'a ServicePortRule>,
    ) -> Result<(), (u32, ShardError)> {
        let replaced: HashSet<u32> = changed.iter().map(|s| s.shard).collect();
        let mut incoming: HashMap<Claim, u32> = HashMap::new();
        for spec in changed {
            for (index, rule) in spec.ruleset.services.iter().enumerate() {
                for claim in claims(rule) {
                    // A shard being replaced gives up what it held before.
                    let other = match incoming.get(&claim) {
                        Some(&shard) => Some(shard),
                        None => self
                            .owners
                            .get(&claim)
                            .copied()
                            .filter(|o| !replaced.contains(o)),
                    };
                    if let Some(other) = other {
                        return Err((
                            spec.shard,
                            ShardError::ClaimedElsewhere {
                                index,
                                what: claim,
                                other,
                            },
                        ));
                    }
                    incoming.insert(claim, spec.shard);
                }
            }
        }
        for rule in old {
            for claim in claims(rule) {
                if self
                    .owners
                    .get(&claim)
                    .is_some_and(|o| replaced.contains(o))
                {
                    self.owners.remove(&claim);
                }
            }
        }
        self.owners.extend(incoming);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Endpoint, Protocol, Ruleset, ShardLayout};

    fn rule(id: u32, name: &str, endpoint_id: u32) -> ServicePortRule {
        ServicePortRule {
            cluster_ips: vec![format!("10.96.0.{id}").parse().unwrap()],
            endpoints: vec![Endpoint::new(
                endpoint_id,
                format!("10.0.0.{endpoint_id}").parse().unwrap(),
                8080,
            )],
            ..ServicePortRule::new(id, "ns", name, Protocol::Tcp, 80)
        }
    }

    fn spec(shard: u32, count: u32, services: Vec<ServicePortRule>) -> ProxyRulesetSpec {
        ProxyRulesetSpec {
            shard,
            layout: ShardLayout {
                epoch: 1,
                shard_count: count,
            },
            generation: 1,
            service_count: services.len() as u32,
            ruleset: Ruleset { services },
        }
    }

    #[test]
    fn shard_layout_counts_and_rules_are_checked() {
        let good = spec(1, 2, vec![rule(1, "a", 1), rule(2, "b", 2)]);
        assert_eq!(check_shard(&good), Ok(()));
        let error = |edit: fn(&mut ProxyRulesetSpec)| {
            let mut s = good.clone();
            edit(&mut s);
            check_shard(&s).unwrap_err().to_string()
        };
        assert_eq!(
            error(|s| s.layout.shard_count = 3),
            "layout.shardCount: 3 is not a power of two up to 65536"
        );
        assert_eq!(
            error(|s| s.shard = 2),
            "shard: 2 is not below layout.shardCount 2"
        );
        assert_eq!(
            error(|s| s.service_count = 5),
            "serviceCount: 5, but the shard has 2 service ports"
        );
        assert!(
            error(|s| s.ruleset.services[1].name = "B".into())
                .starts_with("services[1].name: \"B\"")
        );
        assert_eq!(
            error(|s| s.ruleset.services[1].id = 1),
            "services[1]: service port id 1 is also in services[0]"
        );
        assert_eq!(
            error(|s| s.ruleset.services[1].endpoints[0].id = 1),
            "services[1]: endpoint id 1 is also in services[0]"
        );
        assert_eq!(
            error(|s| s.ruleset.services[1].name = "a".into()),
            "services[1]: service port ns/a/TCP is also in services[0]"
        );
    }

    #[test]
    fn generation_index_finds_ids_claimed_by_two_shards() {
        let mut index = GenerationIndex::default();
        let a = spec(0, 2, vec![rule(1, "a", 1)]);
        let b = spec(1, 2, vec![rule(2, "b", 2)]);
        assert_eq!(index.replace(&[&a, &b], []), Ok(()));

        // Shard 1 now reuses endpoint id 1, which shard 0 still holds.
        let b2 = spec(1, 2, vec![rule(2, "b", 1)]);
        assert_eq!(
            index.replace(&[&b2], &b.ruleset.services),
            Err((
                1,
                ShardError::ClaimedElsewhere {
                    index: 0,
                    what: Claim::EndpointId(1),
                    other: 0
                }
            ))
        );
        // Refused: nothing was recorded, so shard 1's old ids still count.
        let c = spec(0, 2, vec![rule(1, "a", 2)]);
        assert!(index.replace(&[&c], &a.ruleset.services).is_err());

        // Shard 0 gives id 1 up in the same sync as shard 1 takes it: accepted.
        let a2 = spec(0, 2, vec![rule(1, "a", 3)]);
        let old: Vec<&ServicePortRule> = a
            .ruleset
            .services
            .iter()
            .chain(&b.ruleset.services)
            .collect();
        assert_eq!(index.replace(&[&a2, &b2], old), Ok(()));
        // And afterwards shard 0 cannot take it back while shard 1 holds it.
        let a3 = spec(0, 2, vec![rule(1, "a", 1)]);
        assert!(index.replace(&[&a3], &a2.ruleset.services).is_err());
        // Two changed shards claiming the same id refuse the later one.
        let mut fresh = GenerationIndex::default();
        let twin = spec(1, 2, vec![rule(1, "z", 9)]);
        assert!(matches!(
            fresh.replace(&[&a, &twin], []),
            Err((
                1,
                ShardError::ClaimedElsewhere {
                    what: Claim::ServicePortId(1),
                    other: 0,
                    ..
                }
            ))
        ));
    }
}
