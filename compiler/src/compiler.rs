//! The incremental compiler: keeps what it derived from every Service and
//! EndpointSlice, recompiles only the services a change touches, and keeps ids
//! stable while the objects exist.
//!
//! Updates go to change trackers that drop updates whose derived facts equal
//! what is held and changes that cancel out before a sync, as kube-proxy's do;
//! [`Compiler::sync`] then recompiles the services the remaining changes touch
//! and reports the ones whose rules changed.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use switchyard_api::ruleset::{Ruleset, ServicePortRule};
use switchyard_api::validation::{NameFormat, check_rule};

use crate::diagnostic::{ObjectKind, Reason};
use crate::frontends::{Claimant, Claims, Frontend, frontends};
use crate::join::{Allocators, ServiceIds, join_service};
use crate::keys::{PortKey, ServiceKey, SliceKey};
use crate::service::{ServiceInfo, service_info};
use crate::slice::{SliceInfo, slice_info};
use crate::tracker::ChangeTracker;
use crate::{CompileSettings, Diagnostic, NotAdopted};

/// The namespace of an object that names none (as `kubectl apply` assumes).
const DEFAULT_NAMESPACE: &str = "default";

/// A service's compiled ports before frontend conflicts are resolved.
#[derive(Debug, Default)]
struct Candidates {
    created: Option<Time>,
    rules: Vec<ServicePortRule>,
    ids: ServiceIds,
    /// The rules in the output when a frontend conflict excludes some (the
    /// common case, none excluded, shares `rules`).
    partial: Option<Vec<ServicePortRule>>,
}

impl Candidates {
    fn output(&self) -> &[ServicePortRule] {
        self.partial.as_deref().unwrap_or(&self.rules)
    }
}

/// The incremental compiler.
#[derive(Debug, Default)]
pub struct Compiler {
    settings: CompileSettings,
    services: ChangeTracker<ServiceKey, ServiceInfo>,
    slices: ChangeTracker<SliceKey, SliceInfo>,
    /// The slices of each service, sorted by name (a few per service: a Vec).
    slices_of: HashMap<ServiceKey, Vec<SliceKey>>,
    candidates: HashMap<ServiceKey, Candidates>,
    claims: Claims,
    /// The services with rules in the output.
    emitted: BTreeSet<ServiceKey>,
    /// The output of services recompiled in this sync, before the recompile.
    previous_output: HashMap<ServiceKey, Vec<ServicePortRule>>,
    /// How many services the last sync recompiled.
    recompiled: usize,
    /// Ports skipped for a frontend conflict, per service.
    conflicts: HashMap<ServiceKey, Vec<Diagnostic>>,
    /// Ports skipped because the agents' validation would refuse them, per service.
    refused: HashMap<ServiceKey, Vec<Diagnostic>>,
    ids: Allocators,
    /// Services whose published ids were adopted, recompiled by the first
    /// sync whether or not they still exist (a gone one gives its ids back).
    adopted: Vec<ServiceKey>,
}

impl Compiler {
    pub fn new(settings: CompileSettings) -> Compiler {
        Compiler {
            settings,
            ..Compiler::default()
        }
    }

    /// A compiler that keeps the ids of a published ruleset: a service port
    /// or endpoint that still exists gets the id it was published with, and
    /// no other one gets an id the ruleset holds, so the shards it leaves
    /// alone and the ones it rewrites never claim one id twice.
    pub fn adopting<'a>(
        settings: CompileSettings,
        published: impl IntoIterator<Item = &'a ServicePortRule>,
    ) -> Result<Compiler, NotAdopted> {
        let mut by_service: HashMap<ServiceKey, Vec<&ServicePortRule>> = HashMap::new();
        let (mut port_ids, mut endpoint_ids) = (BTreeSet::new(), BTreeSet::new());
        for rule in published {
            if !port_ids.insert(rule.id) {
                return Err(NotAdopted::DuplicateId {
                    what: "service port",
                    id: rule.id,
                });
            }
            for endpoint in &rule.endpoints {
                if !endpoint_ids.insert(endpoint.id) {
                    return Err(NotAdopted::DuplicateId {
                        what: "endpoint",
                        id: endpoint.id,
                    });
                }
            }
            by_service
                .entry(ServiceKey::of(rule))
                .or_default()
                .push(rule);
        }
        let ids = Allocators::holding(&port_ids, &endpoint_ids).ok_or(NotAdopted::SparseIds)?;
        let mut compiler = Compiler {
            ids,
            ..Compiler::new(settings)
        };
        for (key, rules) in by_service {
            let ids = ServiceIds::published(rules).ok_or_else(|| NotAdopted::DuplicatePort {
                service: key.to_string(),
            })?;
            let candidates = Candidates {
                ids,
                ..Candidates::default()
            };
            compiler.candidates.insert(key.clone(), candidates);
            compiler.adopted.push(key);
        }
        Ok(compiler)
    }

    /// Add or replace a Service. An object without a name is not tracked.
    pub fn update_service(&mut self, service: &Service) -> Result<(), Diagnostic> {
        let key = object_key(&service.metadata, ObjectKind::Service)?;
        let info = service_info(&key, service, &self.settings);
        self.services.update(key, Some(info));
        Ok(())
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        self.services.update(ServiceKey::new(namespace, name), None);
    }

    /// Add or replace an EndpointSlice. An object without a name is not tracked.
    pub fn update_endpoint_slice(&mut self, slice: &EndpointSlice) -> Result<(), Diagnostic> {
        let key = object_key(&slice.metadata, ObjectKind::EndpointSlice)?;
        let info = slice_info(&key, slice, &self.settings);
        self.slices.update(key, Some(info));
        Ok(())
    }

    pub fn delete_endpoint_slice(&mut self, namespace: &str, name: &str) {
        self.slices.update(SliceKey::new(namespace, name), None);
    }

    /// Recompile every service touched since the last sync; returns the
    /// services whose rules in the output changed.
    pub fn sync(&mut self) -> BTreeSet<ServiceKey> {
        let mut dirty: BTreeSet<ServiceKey> = self
            .services
            .take_changes()
            .into_iter()
            .map(|change| change.key)
            .collect();
        dirty.extend(self.adopted.drain(..));
        for change in self.slices.take_changes() {
            let slice = change.key;
            if let Some(service) = change.previous.and_then(|s| s.service) {
                let service = ServiceKey::new(slice.namespace.clone(), service);
                if let Some(names) = self.slices_of.get_mut(&service) {
                    if let Ok(at) = names.binary_search(&slice) {
                        names.remove(at);
                    }
                    if names.is_empty() {
                        self.slices_of.remove(&service);
                    }
                }
                dirty.insert(service);
            }
            if let Some(service) = self.slices.get(&slice).and_then(|s| s.service.clone()) {
                let service = ServiceKey::new(slice.namespace.clone(), service);
                let names = self.slices_of.entry(service.clone()).or_default();
                if let Err(at) = names.binary_search(&slice) {
                    names.insert(at, slice);
                }
                dirty.insert(service);
            }
        }
        self.recompiled = dirty.len();
        let mut affected = BTreeSet::new();
        for key in &dirty {
            self.recompile(key, &mut affected);
        }
        self.ids.recycle();
        affected.into_iter().filter(|key| self.emit(key)).collect()
    }

    /// Recompile one service's candidates and update its frontend claims; adds
    /// every service whose output may change to `affected`.
    fn recompile(&mut self, key: &ServiceKey, affected: &mut BTreeSet<ServiceKey>) {
        let mut old = self.candidates.remove(key).unwrap_or_default();
        let (created, rules) = match self.services.get(key) {
            Some(info) => {
                let slices: Vec<&SliceInfo> = self
                    .slices_of
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter_map(|slice| self.slices.get(slice))
                    .collect();
                let rules = join_service(&info.ports, &slices, &mut old.ids, &mut self.ids);
                (info.created.clone(), self.checked(key, rules))
            }
            None => {
                std::mem::take(&mut old.ids).release_all(&mut self.ids);
                self.refused.remove(key);
                (None, Vec::new())
            }
        };
        affected.insert(key.clone());
        let changed = created != old.created || rules != old.rules;
        if changed {
            let mut touched = BTreeSet::new();
            for rule in &old.rules {
                let claimant = claimant(old.created.clone(), rule);
                for frontend in frontends(rule) {
                    self.claims.release(&frontend, &claimant);
                    touched.insert(frontend);
                }
            }
            for rule in &rules {
                let claimant = claimant(created.clone(), rule);
                for frontend in frontends(rule) {
                    self.claims.claim(frontend, claimant.clone());
                    touched.insert(frontend);
                }
            }
            for frontend in &touched {
                affected.extend(self.claims.claimants(frontend).map(|c| c.service.clone()));
            }
        }
        let (rules, partial) = if changed {
            let previous = old.partial.take().unwrap_or(old.rules);
            self.previous_output.insert(key.clone(), previous);
            (rules, None)
        } else {
            (old.rules, old.partial)
        };
        if !rules.is_empty() || !old.ids.is_empty() {
            self.candidates.insert(
                key.clone(),
                Candidates {
                    created,
                    rules,
                    ids: old.ids,
                    partial,
                },
            );
        }
    }

    /// The rules the agents accept ([`check_rule`]); the others are reported.
    /// What the compiler writes passes this by construction except for
    /// limits that only the joined rule shows (endpoints from many slices).
    fn checked(&mut self, key: &ServiceKey, rules: Vec<ServicePortRule>) -> Vec<ServicePortRule> {
        let mut refused = Vec::new();
        let rules = rules
            .into_iter()
            .filter(|rule| match check_rule(rule) {
                Ok(()) => true,
                Err(e) => {
                    refused.push(Diagnostic {
                        kind: ObjectKind::Service,
                        namespace: key.namespace.clone(),
                        name: key.name.clone(),
                        reason: Reason::InvalidRule,
                        message: format!("{} skipped: {e}", port_label(rule)),
                    });
                    false
                }
            })
            .collect();
        if refused.is_empty() {
            self.refused.remove(key);
        } else {
            self.refused.insert(key.clone(), refused);
        }
        rules
    }

    /// Put the service's conflict-free ports into the output; true when they changed.
    fn emit(&mut self, key: &ServiceKey) -> bool {
        let mut conflicts = Vec::new();
        let mut partial = None;
        if let Some(candidates) = self.candidates.get(key) {
            let mut kept = Vec::new();
            for rule in &candidates.rules {
                let lost: Vec<(Frontend, &Claimant)> = frontends(rule)
                    .into_iter()
                    .filter_map(|f| {
                        self.claims
                            .winner(&f)
                            .filter(|w| !w.is(rule))
                            .map(|w| (f, w))
                    })
                    .collect();
                if lost.is_empty() {
                    kept.push(rule);
                } else {
                    conflicts.push(conflict_diagnostic(key, rule, &lost));
                }
            }
            if !conflicts.is_empty() {
                partial = Some(kept.into_iter().cloned().collect::<Vec<_>>());
            }
        }
        if conflicts.is_empty() {
            self.conflicts.remove(key);
        } else {
            self.conflicts.insert(key.clone(), conflicts);
        }
        let previous = self.previous_output.remove(key);
        let Some(candidates) = self.candidates.get_mut(key) else {
            self.emitted.remove(key);
            return previous.is_some_and(|p| !p.is_empty());
        };
        let changed = match &previous {
            Some(previous) => {
                previous.as_slice() != partial.as_deref().unwrap_or(&candidates.rules)
            }
            None => candidates.partial != partial,
        };
        candidates.partial = partial;
        if candidates.output().is_empty() {
            self.emitted.remove(key);
        } else {
            self.emitted.insert(key.clone());
        }
        changed
    }

    /// How many services the last [`Compiler::sync`] recompiled (a metric:
    /// changes that were no-ops or cancelled out recompile nothing).
    pub fn recompiled_last_sync(&self) -> usize {
        self.recompiled
    }

    /// The whole compiled ruleset, in `namespace/name` and port order.
    pub fn ruleset(&self) -> Ruleset {
        Ruleset {
            services: self
                .rules()
                .flat_map(|(_, rules)| rules.iter().cloned())
                .collect(),
        }
    }

    /// The compiled rules per service, in `namespace/name` order.
    pub fn rules(&self) -> impl Iterator<Item = (&ServiceKey, &[ServicePortRule])> {
        self.emitted
            .iter()
            .map(|key| (key, self.service_rules(key)))
    }

    /// The compiled rules of one service (empty when it has none).
    pub fn service_rules(&self, key: &ServiceKey) -> &[ServicePortRule] {
        self.candidates
            .get(key)
            .map(Candidates::output)
            .unwrap_or_default()
    }

    /// Every current diagnostic, sorted.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut all: Vec<Diagnostic> = self
            .services
            .values()
            .flat_map(|s| s.diagnostics.iter())
            .chain(self.slices.values().flat_map(|s| s.diagnostics.iter()))
            .chain(self.conflicts.values().flatten())
            .chain(self.refused.values().flatten())
            .cloned()
            .collect();
        all.sort();
        all
    }
}

fn claimant(created: Option<Time>, rule: &ServicePortRule) -> Claimant {
    Claimant {
        created,
        service: ServiceKey::of(rule),
        port: PortKey::of(rule),
    }
}

fn conflict_diagnostic(
    key: &ServiceKey,
    rule: &ServicePortRule,
    lost: &[(Frontend, &Claimant)],
) -> Diagnostic {
    let lost: Vec<String> = lost
        .iter()
        .map(|(f, w)| format!("{f} is used by {w}"))
        .collect();
    Diagnostic {
        kind: ObjectKind::Service,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        reason: Reason::DuplicateFrontend,
        message: format!("{} skipped: {}", port_label(rule), lost.join(", ")),
    }
}

/// `port 80/TCP`, or `port "http" (80/TCP)` for a named port.
fn port_label(rule: &ServicePortRule) -> String {
    if rule.port_name.is_empty() {
        format!("port {}/{}", rule.port, rule.protocol)
    } else {
        format!(
            "port {:?} ({}/{})",
            rule.port_name, rule.port, rule.protocol
        )
    }
}

/// The object's key, its namespace and name valid as the API server holds
/// them: namespaces are DNS-1123 labels, Service names DNS-1035 labels,
/// EndpointSlice names DNS-1123 subdomains.
fn object_key(meta: &ObjectMeta, kind: ObjectKind) -> Result<ServiceKey, Diagnostic> {
    let namespace = meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let name = meta.name.as_deref().unwrap_or_default();
    let skipped = |reason, message| Diagnostic {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        reason,
        message,
    };
    if name.is_empty() {
        return Err(skipped(
            Reason::MissingName,
            "metadata.name: unset; object skipped".to_string(),
        ));
    }
    let name_format = match kind {
        ObjectKind::Service => NameFormat::Dns1035Label,
        ObjectKind::EndpointSlice => NameFormat::Dns1123Subdomain,
    };
    for (field, format, value) in [
        ("metadata.namespace", NameFormat::Dns1123Label, namespace),
        ("metadata.name", name_format, name),
    ] {
        if let Err(e) = format.check(value) {
            return Err(skipped(
                Reason::InvalidName,
                format!("{field}: {e}; object skipped"),
            ));
        }
    }
    Ok(ServiceKey::new(namespace, name))
}
