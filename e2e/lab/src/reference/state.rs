//! A scenario's cluster state written through the real API server, as a
//! kube-proxy on a cluster would find it: namespaces, ServiceCIDRs holding
//! the scenario's cluster IPs, the node's Node object (addresses, zone),
//! Services (spec, then status for load-balancer IPs) and EndpointSlices
//! created directly with a `managed-by` label of the lab's own, so the
//! endpointslice controller leaves them alone. A later stage is written as
//! the difference to the previous one (server-side apply; delete and create
//! where a field is immutable), and every write that reached storage is
//! counted, so the harness knows how many changes kube-proxy must have seen.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Namespace, Node, NodeAddress as K8sNodeAddress, NodeStatus, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchyard_api::ruleset::Cidr;

use crate::controlplane::ControlPlaneError;
use crate::scenario::{NodeAddress, NodeSpec, Stage};

/// The field manager of every write, and the EndpointSlices' `managed-by`.
pub const LAB_MANAGER: &str = "switchyard-lab";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Marks the Services the lab wrote (the `kubernetes` Service has none).
const STATE_LABEL: &str = "switchyard.dev/lab-state";
/// kube-proxy ignores Services with this label: the API server's own
/// `kubernetes` Service gets it, so both nodes see the scenario's Services only.
const SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
const ZONE: &str = "topology.kubernetes.io/zone";
/// The Service name and `managed-by` of the nudge's EndpointSlices.
const NUDGE: &str = "switchyard-lab-nudge";

/// Watch events a stage's writes caused, per informer kube-proxy runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub services: u64,
    pub endpoint_slices: u64,
}

/// The state as the API server stored it (defaults and allocations filled in).
pub struct Stored {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub service_cidrs: Vec<Cidr>,
    pub changes: Changes,
}

/// What the lab has written so far.
pub struct ClusterState {
    client: kube::Client,
    namespaces: BTreeSet<String>,
    /// The ServiceCIDRs the lab made (CIDR text).
    cidrs: BTreeSet<String>,
    /// Key (namespace/name) → the scenario object last written.
    services: BTreeMap<(String, String), Service>,
    slices: BTreeMap<(String, String), EndpointSlice>,
    node: Option<String>,
    /// How many nudges were written.
    nudges: u16,
}

fn api_err(operation: String) -> impl FnOnce(kube::Error) -> ControlPlaneError {
    move |source| ControlPlaneError::Api { operation, source }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

fn key<K: Resource>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

impl ClusterState {
    /// Hide the API server's `kubernetes` Service from kube-proxy.
    pub async fn new(client: kube::Client) -> Result<ClusterState, ControlPlaneError> {
        let services = Api::<Service>::namespaced(client.clone(), "default");
        let label = serde_json::json!({"metadata": {"labels": {SERVICE_PROXY_NAME: "none"}}});
        services
            .patch("kubernetes", &PatchParams::default(), &Patch::Merge(&label))
            .await
            .map_err(api_err("label the kubernetes Service".into()))?;
        Ok(ClusterState {
            client,
            namespaces: BTreeSet::new(),
            cidrs: BTreeSet::new(),
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            node: None,
            nudges: 0,
        })
    }

    /// Replace the Node object with the scenario's node: its addresses as
    /// InternalIPs (what kube-proxy takes its node IPs from) and its zone.
    pub async fn set_node(
        &mut self,
        spec: &NodeSpec,
        addresses: &[NodeAddress],
    ) -> Result<(), ControlPlaneError> {
        let nodes = Api::<Node>::all(self.client.clone());
        if let Some(old) = self.node.take() {
            delete(&nodes, &old).await?;
        }
        let labels = spec
            .zone
            .as_ref()
            .map(|z| [(ZONE.to_string(), z.clone())].into_iter().collect());
        let node = Node {
            metadata: ObjectMeta {
                name: Some(spec.name.clone()),
                labels,
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        // Left by a run that failed half-way, or another file's.
        delete(&nodes, &spec.name).await?;
        let op = || format!("create Node {}", spec.name);
        nodes
            .create(&PostParams::default(), &node)
            .await
            .map_err(api_err(op()))?;
        self.node = Some(spec.name.clone());
        let status = Node {
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|a| K8sNodeAddress {
                            type_: "InternalIP".into(),
                            address: a.ip.to_string(),
                        })
                        .collect(),
                ),
                ..NodeStatus::default()
            }),
            ..node
        };
        // A merge patch: server-side apply keys addresses by type alone,
        // so it refuses two InternalIPs (a dual-stack node has one per family).
        nodes
            .patch_status(&spec.name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(api_err(format!(
                "write the addresses of Node {}",
                spec.name
            )))?;
        Ok(())
    }

    /// Make `stage` the cluster's state and read it back.
    pub async fn apply(&mut self, stage: &Stage<'_>) -> Result<Stored, ControlPlaneError> {
        self.ensure_namespaces(stage).await?;
        let cidrs = stage_cidrs(stage)?;
        self.ensure_service_cidrs(&cidrs).await?;
        let mut changes = Changes::default();
        let want_slices: BTreeMap<_, _> = stage
            .endpoint_slices
            .iter()
            .map(|s| (key(s), lab_slice(s)))
            .collect();
        let want_services: BTreeMap<_, _> =
            stage.services.iter().map(|s| (key(s), s.clone())).collect();
        // Services first, as on a cluster (the EndpointSlice controller
        // writes slices for Services it has seen): kube-proxy deletes stale
        // UDP conntrack entries of a new Service when its endpoints arrive,
        // not when the Service does.
        changes.services += self.sync_services(want_services).await?;
        changes.endpoint_slices += sync_kind(&self.client, &mut self.slices, want_slices).await?;
        self.prune_service_cidrs(&cidrs).await?;
        self.read_back(changes).await
    }

    /// Make every family's proxier of kube-proxy sync once more: change the
    /// port of an EndpointSlice per family of a Service that does not exist
    /// (kube-proxy syncs on it, programs nothing for it; Switchyard's node
    /// never reads it: another `managed-by`). Returns the watch events.
    pub async fn nudge(&mut self) -> Result<Changes, ControlPlaneError> {
        self.nudges = self.nudges % 60000 + 1;
        for (family, address) in [("IPv4", "192.0.2.1"), ("IPv6", "2001:db8::1")] {
            let name = format!("{NUDGE}-{}", family.to_lowercase());
            let slice = serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": name,
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": NUDGE, MANAGED_BY: NUDGE},
                },
                "addressType": family,
                "endpoints": [{"addresses": [address]}],
                "ports": [{"name": "p", "port": self.nudges, "protocol": "TCP"}],
            });
            Api::<EndpointSlice>::namespaced(self.client.clone(), "default")
                .patch(&name, &apply_params(), &Patch::Apply(&slice))
                .await
                .map_err(api_err(format!("write EndpointSlice default/{name}")))?;
        }
        Ok(Changes {
            services: 0,
            endpoint_slices: 2,
        })
    }

    /// Delete everything the scenario wrote (its namespaces and
    /// ServiceCIDRs stay: later files may use them).
    pub async fn clear(&mut self) -> Result<(), ControlPlaneError> {
        self.sync_services(BTreeMap::new()).await?;
        sync_kind(&self.client, &mut self.slices, BTreeMap::new()).await?;
        self.prune_service_cidrs(&BTreeSet::new()).await?;
        if let Some(old) = self.node.take() {
            delete(&Api::<Node>::all(self.client.clone()), &old).await?;
        }
        Ok(())
    }

    async fn sync_services(
        &mut self,
        want: BTreeMap<(String, String), Service>,
    ) -> Result<u64, ControlPlaneError> {
        let specs = want
            .iter()
            .map(|(k, s)| (k.clone(), lab_service(s)))
            .collect();
        let mut events = sync_kind(&self.client, &mut self.services, specs).await?;
        for ((ns, name), svc) in &want {
            let api = Api::<Service>::namespaced(self.client.clone(), ns);
            let before = api
                .get(name)
                .await
                .map_err(api_err(format!("get Service {ns}/{name}")))?;
            let status = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "status": svc.status.clone().unwrap_or_default(),
            });
            let after = api
                .patch_status(name, &apply_params(), &Patch::Apply(&status))
                .await
                .map_err(api_err(format!("write the status of Service {ns}/{name}")))?;
            events += u64::from(after.resource_version() != before.resource_version());
        }
        Ok(events)
    }

    async fn ensure_namespaces(&mut self, stage: &Stage<'_>) -> Result<(), ControlPlaneError> {
        let names: BTreeSet<String> = stage
            .services
            .iter()
            .map(|s| s.namespace().unwrap_or_default())
            .chain(
                stage
                    .endpoint_slices
                    .iter()
                    .map(|s| s.namespace().unwrap_or_default()),
            )
            .filter(|n| !n.is_empty() && !self.namespaces.contains(n))
            .collect();
        let api = Api::<Namespace>::all(self.client.clone());
        for name in names {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            };
            match api.create(&PostParams::default(), &ns).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 409) => {}
                Err(e) => return Err(api_err(format!("create Namespace {name}"))(e)),
            }
            self.namespaces.insert(name);
        }
        Ok(())
    }

    /// Create the ServiceCIDRs of `cidrs` the lab has not made yet.
    async fn ensure_service_cidrs(
        &mut self,
        cidrs: &BTreeSet<String>,
    ) -> Result<(), ControlPlaneError> {
        let api = Api::<ServiceCIDR>::all(self.client.clone());
        for cidr in cidrs.difference(&self.cidrs.clone()) {
            let object = ServiceCIDR {
                metadata: ObjectMeta {
                    name: Some(cidr_name(cidr)),
                    ..ObjectMeta::default()
                },
                spec: Some(ServiceCIDRSpec {
                    cidrs: Some(vec![cidr.clone()]),
                }),
                ..ServiceCIDR::default()
            };
            api.create(&PostParams::default(), &object)
                .await
                .map_err(api_err(format!("create ServiceCIDR {cidr}")))?;
            self.cidrs.insert(cidr.clone());
        }
        Ok(())
    }

    /// Delete the lab's ServiceCIDRs outside `keep` (once their Services are
    /// gone) and wait until they are: a deleted Service's address must not
    /// stay in a ServiceCIDR, where kube-proxy's nftables mode drops it.
    async fn prune_service_cidrs(
        &mut self,
        keep: &BTreeSet<String>,
    ) -> Result<(), ControlPlaneError> {
        let api = Api::<ServiceCIDR>::all(self.client.clone());
        let gone: Vec<String> = self.cidrs.difference(keep).cloned().collect();
        for cidr in &gone {
            delete(&api, &cidr_name(cidr)).await?;
        }
        let began = std::time::Instant::now();
        for cidr in gone {
            let name = cidr_name(&cidr);
            while api
                .get_opt(&name)
                .await
                .map_err(api_err(format!("get ServiceCIDR {name}")))?
                .is_some()
            {
                if began.elapsed() > ALLOCATOR_TIMEOUT {
                    return Err(ControlPlaneError::NotReady {
                        what: format!("the deletion of ServiceCIDR {name}"),
                        waited: began.elapsed(),
                        last: "still there".into(),
                        log: Default::default(),
                        tail: String::new(),
                    });
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            self.cidrs.remove(&cidr);
        }
        Ok(())
    }

    async fn read_back(&self, changes: Changes) -> Result<Stored, ControlPlaneError> {
        let services = Api::<Service>::all(self.client.clone())
            .list(&ListParams::default().labels(STATE_LABEL))
            .await
            .map_err(api_err("list the lab's Services".into()))?
            .items;
        let endpoint_slices = Api::<EndpointSlice>::all(self.client.clone())
            .list(&ListParams::default().labels(&format!("{MANAGED_BY}={LAB_MANAGER}")))
            .await
            .map_err(api_err("list the lab's EndpointSlices".into()))?
            .items;
        let service_cidrs = Api::<ServiceCIDR>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(api_err("list ServiceCIDRs".into()))?
            .items
            .iter()
            .filter_map(|c| c.spec.as_ref()?.cidrs.clone())
            .flatten()
            .filter_map(|c| c.parse().ok())
            .collect();
        Ok(Stored {
            services,
            endpoint_slices,
            service_cidrs,
            changes,
        })
    }
}

/// The smallest network the API server can allocate `ip` from (IPv4: not its
/// network or broadcast address; IPv6: not its network address) that holds
/// none of `avoid`: kube-proxy's nftables mode drops traffic to the
/// unallocated addresses of every ServiceCIDR, so they must not cover a
/// flow's destination that is meant to pass untranslated.
fn service_cidr_for(ip: IpAddr, avoid: &BTreeSet<IpAddr>) -> Option<String> {
    let (bits, max): (u128, u32) = match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    };
    let as_bits = |a: &IpAddr| match a {
        IpAddr::V4(v4) if max == 32 => Some(u128::from(u32::from(*v4))),
        IpAddr::V6(v6) if max == 128 => Some(u128::from(*v6)),
        _ => None,
    };
    for prefix in (max.saturating_sub(16)..max).rev() {
        let host_bits = max - prefix;
        let mask = !((1u128 << host_bits) - 1);
        let network = bits & mask;
        let last = network | !mask;
        let usable = bits != network && (max == 128 || bits != last);
        let clash = avoid
            .iter()
            .filter_map(as_bits)
            .any(|a| a & mask == network);
        if usable && !clash {
            let base = match ip {
                IpAddr::V4(_) => {
                    IpAddr::from(std::net::Ipv4Addr::from(u32::try_from(network).ok()?))
                }
                IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(network)),
            };
            return Some(format!("{base}/{prefix}"));
        }
    }
    None
}

/// One small ServiceCIDR per cluster IP of `stage` (see [`service_cidr_for`]):
/// the API server only takes cluster IPs inside a ServiceCIDR.
fn stage_cidrs(stage: &Stage<'_>) -> Result<BTreeSet<String>, ControlPlaneError> {
    let ips: BTreeSet<IpAddr> = stage
        .services
        .iter()
        .filter_map(|s| s.spec.as_ref())
        .flat_map(|s| s.cluster_ips.iter().flatten().chain(&s.cluster_ip))
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let avoid: BTreeSet<IpAddr> = stage
        .flows
        .iter()
        .map(|f| f.dest_ip)
        .filter(|ip| !ips.contains(ip))
        .collect();
    ips.iter()
        .map(|ip| service_cidr_for(*ip, &avoid).ok_or(ControlPlaneError::NoServiceCidr { ip: *ip }))
        .collect()
}

fn cidr_name(cidr: &str) -> String {
    format!("lab-{}", cidr.replace(['.', ':', '/'], "-"))
}

fn apply_params() -> PatchParams {
    PatchParams::apply(LAB_MANAGER).force()
}

/// The Service as the lab writes its spec: marked, without status.
fn lab_service(s: &Service) -> Service {
    let mut s = s.clone();
    s.labels_mut().insert(STATE_LABEL.into(), "true".into());
    s.status = None;
    s
}

fn lab_slice(s: &EndpointSlice) -> EndpointSlice {
    let mut s = s.clone();
    s.labels_mut().insert(MANAGED_BY.into(), LAB_MANAGER.into());
    s
}

async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), ControlPlaneError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(api_err(format!("delete {} {name}", K::kind(&())))(e)),
    }
}

/// How long a write waits for the API server's allocator to take in a new
/// ServiceCIDR (it learns of them from a watch).
const ALLOCATOR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Server-side apply, retried while the cluster IP's new ServiceCIDR has not
/// reached the API server's allocator yet.
async fn apply_allocating<K>(api: &Api<K>, name: &str, object: &K) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let began = std::time::Instant::now();
    loop {
        match api
            .patch(name, &apply_params(), &Patch::Apply(object))
            .await
        {
            Err(kube::Error::Api(s))
                if s.message.contains("does not match the current range")
                    && began.elapsed() < ALLOCATOR_TIMEOUT =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Make the objects of one kind what `want` says (namespace/name → object),
/// given what was written before (`have`, updated); the number of watch
/// events caused (writes that changed the stored object).
async fn sync_kind<K>(
    client: &kube::Client,
    have: &mut BTreeMap<(String, String), K>,
    want: BTreeMap<(String, String), K>,
) -> Result<u64, ControlPlaneError>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug
        + PartialEq,
{
    let mut events = 0;
    let gone: Vec<_> = have
        .keys()
        .filter(|k| !want.contains_key(*k))
        .cloned()
        .collect();
    for (ns, name) in gone {
        delete(&Api::<K>::namespaced(client.clone(), &ns), &name).await?;
        have.remove(&(ns, name));
        events += 1;
    }
    for ((ns, name), object) in want {
        if have.get(&(ns.clone(), name.clone())) == Some(&object) {
            continue;
        }
        let api = Api::<K>::namespaced(client.clone(), &ns);
        let op = || format!("write {} {ns}/{name}", K::kind(&()));
        let before = match api.get_opt(&name).await.map_err(api_err(op()))? {
            Some(o) => o.resource_version(),
            None => None,
        };
        let after = match apply_allocating(&api, &name, &object).await {
            Ok(o) => o,
            // An immutable field changed: a new object, as a user would make it.
            Err(e) if is_status(&e, 422) && before.is_some() => {
                delete(&api, &name).await?;
                events += 1;
                let mut fresh = object.clone();
                fresh.meta_mut().resource_version = None;
                api.create(&PostParams::default(), &fresh)
                    .await
                    .map_err(api_err(op()))?
            }
            Err(e) => return Err(api_err(op())(e)),
        };
        events += u64::from(after.resource_version() != before);
        have.insert((ns, name), object);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(ip: &str, avoid: &[&str]) -> Option<String> {
        let avoid = avoid.iter().map(|a| a.parse().unwrap()).collect();
        service_cidr_for(ip.parse().unwrap(), &avoid)
    }

    #[test]
    fn a_service_cidr_can_allocate_its_ip_and_holds_no_flow_destination() {
        assert_eq!(cidr("172.30.0.41", &[]).as_deref(), Some("172.30.0.40/30"));
        // The network address of /31, /30 and /29; the broadcast of /31 and /30.
        assert_eq!(cidr("172.30.0.40", &[]).as_deref(), Some("172.30.0.32/28"));
        assert_eq!(cidr("172.30.0.43", &[]).as_deref(), Some("172.30.0.40/29"));
        assert_eq!(cidr("172.30.0.41", &["172.30.0.42"]), None);
        assert_eq!(
            cidr("172.30.0.41", &["172.30.0.45"]).as_deref(),
            Some("172.30.0.40/30")
        );
        // IPv6 reserves no broadcast address.
        assert_eq!(cidr("fd00::41", &[]).as_deref(), Some("fd00::40/127"));
    }
}
