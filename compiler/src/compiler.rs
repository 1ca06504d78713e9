//! The incremental compiler: keeps what it derived from every Service and
//! EndpointSlice, recompiles only the services a change touches, and keeps ids
//! stable while the objects exist.
//!
//! Updates whose derived facts equal what is already held are dropped at once
//! (kube-proxy's change trackers do the same); [`Compiler::sync`] then
//! recompiles the touched services and reports the ones whose rules changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use switchyard_api::ruleset::{Ruleset, ServicePortRule};

use crate::diagnostic::{ObjectKind, Reason};
use crate::frontends::{Claimant, Claims, Frontend, frontends};
use crate::join::{Allocators, ServiceIds, join_service};
use crate::keys::{PortKey, ServiceKey, SliceKey};
use crate::service::{ServiceInfo, service_info};
use crate::slice::{SliceInfo, slice_info};
use crate::{CompileSettings, Diagnostic};

/// The namespace of an object that names none (as `kubectl apply` assumes).
const DEFAULT_NAMESPACE: &str = "default";

/// A service's compiled ports before frontend conflicts are resolved.
#[derive(Debug, Default)]
struct Candidates {
    created: Option<Time>,
    rules: Vec<ServicePortRule>,
    ids: ServiceIds,
}

/// The incremental compiler.
#[derive(Debug, Default)]
pub struct Compiler {
    settings: CompileSettings,
    services: HashMap<ServiceKey, ServiceInfo>,
    slices: HashMap<SliceKey, SliceInfo>,
    /// Slice names (same namespace) per service, in name order.
    slices_of: HashMap<ServiceKey, BTreeSet<String>>,
    candidates: HashMap<ServiceKey, Candidates>,
    claims: Claims,
    /// The rules in the output, per service (services with none are absent).
    emitted: BTreeMap<ServiceKey, Vec<ServicePortRule>>,
    /// Ports skipped for a frontend conflict, per service.
    conflicts: HashMap<ServiceKey, Vec<Diagnostic>>,
    ids: Allocators,
    /// Services to recompile at the next sync.
    dirty: BTreeSet<ServiceKey>,
}

impl Compiler {
    pub fn new(settings: CompileSettings) -> Compiler {
        Compiler {
            settings,
            ..Compiler::default()
        }
    }

    /// Add or replace a Service. An object without a name is not tracked.
    pub fn update_service(&mut self, service: &Service) -> Result<(), Diagnostic> {
        let key = object_key(&service.metadata, ObjectKind::Service)?;
        let info = service_info(&key, service, &self.settings);
        if self.services.get(&key) != Some(&info) {
            self.services.insert(key.clone(), info);
            self.dirty.insert(key);
        }
        Ok(())
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let key = ServiceKey::new(namespace, name);
        if self.services.remove(&key).is_some() {
            self.dirty.insert(key);
        }
    }

    /// Add or replace an EndpointSlice. An object without a name is not tracked.
    pub fn update_endpoint_slice(&mut self, slice: &EndpointSlice) -> Result<(), Diagnostic> {
        let key = object_key(&slice.metadata, ObjectKind::EndpointSlice)?;
        let info = slice_info(&key, slice, &self.settings);
        if self.slices.get(&key) == Some(&info) {
            return Ok(());
        }
        self.forget_slice(&key);
        if let Some(service) = &info.service {
            let service = ServiceKey::new(key.namespace.clone(), service.clone());
            self.slices_of
                .entry(service.clone())
                .or_default()
                .insert(key.name.clone());
            self.dirty.insert(service);
        }
        self.slices.insert(key, info);
        Ok(())
    }

    pub fn delete_endpoint_slice(&mut self, namespace: &str, name: &str) {
        let key = SliceKey::new(namespace, name);
        self.forget_slice(&key);
        self.slices.remove(&key);
    }

    fn forget_slice(&mut self, key: &SliceKey) {
        let Some(service) = self.slices.get(key).and_then(|s| s.service.as_ref()) else {
            return;
        };
        let service = ServiceKey::new(key.namespace.clone(), service.clone());
        if let Some(names) = self.slices_of.get_mut(&service) {
            names.remove(&key.name);
            if names.is_empty() {
                self.slices_of.remove(&service);
            }
        }
        self.dirty.insert(service);
    }

    /// Recompile every service touched since the last sync; returns the
    /// services whose rules in the output changed.
    pub fn sync(&mut self) -> BTreeSet<ServiceKey> {
        let mut affected = BTreeSet::new();
        for key in std::mem::take(&mut self.dirty) {
            self.recompile(&key, &mut affected);
        }
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
                    .filter_map(|name| {
                        self.slices
                            .get(&SliceKey::new(key.namespace.clone(), name.clone()))
                    })
                    .collect();
                let rules = join_service(&info.ports, &slices, &mut old.ids, &mut self.ids);
                (info.created.clone(), rules)
            }
            None => {
                std::mem::take(&mut old.ids).release_all(&mut self.ids);
                (None, Vec::new())
            }
        };
        affected.insert(key.clone());
        if created != old.created || rules != old.rules {
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
        if !rules.is_empty() || !old.ids.is_empty() {
            self.candidates.insert(
                key.clone(),
                Candidates {
                    created,
                    rules,
                    ids: old.ids,
                },
            );
        }
    }

    /// Put the service's conflict-free ports into the output; true when they changed.
    fn emit(&mut self, key: &ServiceKey) -> bool {
        let mut rules = Vec::new();
        let mut conflicts = Vec::new();
        for candidate in self.candidates.get(key).into_iter() {
            for rule in &candidate.rules {
                let me = claimant(candidate.created.clone(), rule);
                let lost: Vec<(Frontend, &Claimant)> = frontends(rule)
                    .into_iter()
                    .filter_map(|f| self.claims.winner(&f).filter(|w| **w != me).map(|w| (f, w)))
                    .collect();
                if lost.is_empty() {
                    rules.push(rule.clone());
                } else {
                    conflicts.push(conflict_diagnostic(key, rule, &lost));
                }
            }
        }
        if conflicts.is_empty() {
            self.conflicts.remove(key);
        } else {
            self.conflicts.insert(key.clone(), conflicts);
        }
        let old = self.emitted.get(key).map(Vec::as_slice).unwrap_or_default();
        if old == rules.as_slice() {
            return false;
        }
        if rules.is_empty() {
            self.emitted.remove(key);
        } else {
            self.emitted.insert(key.clone(), rules);
        }
        true
    }

    /// The whole compiled ruleset, in `namespace/name` and port order.
    pub fn ruleset(&self) -> Ruleset {
        Ruleset {
            services: self.emitted.values().flatten().cloned().collect(),
        }
    }

    /// The compiled rules per service, in `namespace/name` order.
    pub fn rules(&self) -> impl Iterator<Item = (&ServiceKey, &[ServicePortRule])> {
        self.emitted.iter().map(|(k, v)| (k, v.as_slice()))
    }

    /// The compiled rules of one service (empty when it has none).
    pub fn service_rules(&self, key: &ServiceKey) -> &[ServicePortRule] {
        self.emitted.get(key).map(Vec::as_slice).unwrap_or_default()
    }

    /// Every current diagnostic, sorted.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut all: Vec<Diagnostic> = self
            .services
            .values()
            .flat_map(|s| s.diagnostics.iter())
            .chain(self.slices.values().flat_map(|s| s.diagnostics.iter()))
            .chain(self.conflicts.values().flatten())
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
    let port = if rule.port_name.is_empty() {
        format!("port {}/{}", rule.port, rule.protocol)
    } else {
        format!(
            "port {:?} ({}/{})",
            rule.port_name, rule.port, rule.protocol
        )
    };
    Diagnostic {
        kind: ObjectKind::Service,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        reason: Reason::DuplicateFrontend,
        message: format!("{port} skipped: {}", lost.join(", ")),
    }
}

fn object_key(meta: &ObjectMeta, kind: ObjectKind) -> Result<ServiceKey, Diagnostic> {
    let namespace = meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => Ok(ServiceKey::new(namespace, name)),
        _ => Err(Diagnostic {
            kind,
            namespace: namespace.to_string(),
            name: String::new(),
            reason: Reason::MissingName,
            message: "metadata.name: unset; object skipped".to_string(),
        }),
    }
}
