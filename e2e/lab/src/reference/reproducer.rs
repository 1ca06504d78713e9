//! The reproducer of a flow where Switchyard and kube-proxy disagree: the
//! stage reduced to the Services the flow's destination names (by cluster,
//! external or load-balancer IP, or node port) with their EndpointSlices,
//! and the flow alone, written as a scenario file to run again with
//! `scenario --mode M --reference kube-proxy FILE`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::scenario::{Flow, NodeSpec, Scenario, ScenarioError, Stage, Step};

/// kube-proxy's label naming a slice's Service.
const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Reproducers written by this process so far (their file names' suffix).
static WRITTEN: AtomicUsize = AtomicUsize::new(0);

/// The Service's addresses a flow can be sent to (cluster, external and
/// load-balancer IPs).
fn service_ips(service: &Service) -> impl Iterator<Item = IpAddr> + '_ {
    let spec = service.spec.iter();
    let cluster = spec.clone().flat_map(|s| s.cluster_ips.iter().flatten());
    let external = spec.flat_map(|s| s.external_ips.iter().flatten());
    let ingress = service
        .status
        .iter()
        .filter_map(|s| s.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_ref());
    cluster
        .chain(external)
        .chain(ingress)
        .filter_map(|ip| ip.parse().ok())
}

/// Whether `flow` is sent to `service`: to one of its addresses, or to one
/// of its node ports on a node address.
fn is_destination(service: &Service, flow: &Flow, node_ips: &[IpAddr]) -> bool {
    let node_port = node_ips.contains(&flow.dest_ip)
        && service
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .any(|p| p.node_port == Some(i32::from(flow.dest_port)));
    node_port || service_ips(service).any(|ip| ip == flow.dest_ip)
}

/// The stage reduced to `flow` and the Services it is sent to; a flow to no
/// Service keeps every Service (any of them may be what it meets).
pub fn reduce(node: &NodeSpec, stage: &Stage<'_>, flow: &Flow) -> Scenario {
    let node_ips: Vec<IpAddr> = node
        .parsed_addresses()
        .unwrap_or_default()
        .iter()
        .map(|a| a.ip)
        .collect();
    let mut services: Vec<Service> = stage
        .services
        .iter()
        .filter(|s| is_destination(s, flow, &node_ips))
        .cloned()
        .collect();
    if services.is_empty() {
        services = stage.services.to_vec();
    }
    let owns = |slice: &EndpointSlice| {
        services.iter().any(|s| {
            s.namespace() == slice.namespace()
                && slice.labels().get(SERVICE_NAME) == Some(&s.name_any())
        })
    };
    let endpoint_slices = stage
        .endpoint_slices
        .iter()
        .filter(|s| owns(s))
        .cloned()
        .collect();
    Scenario {
        node: node.clone(),
        initial: Step {
            services,
            endpoint_slices,
            flows: vec![Flow {
                output: "reference".into(),
                masq: None,
                by_mode: Default::default(),
                ..flow.clone()
            }],
        },
        steps: Vec::new(),
    }
}

/// Write the reproducer of `flow` in `stage` to a file of its own and
/// return its path; `seen` (what each node did) heads it as a comment.
pub fn write(
    node: &NodeSpec,
    stage: &Stage<'_>,
    flow: &Flow,
    seen: &str,
) -> Result<PathBuf, ScenarioError> {
    let dir = std::env::temp_dir().join("switchyard-reproducers");
    std::fs::create_dir_all(&dir).map_err(|source| ScenarioError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let n = WRITTEN.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{}-{n}.yaml", std::process::id()));
    let header = format!(
        "Reproducer: Switchyard and kube-proxy disagree on flow {:?} of stage {:?}.\n{seen}",
        flow.name, stage.label
    );
    reduce(node, stage, flow).save(&path, &header)?;
    Ok(path)
}
