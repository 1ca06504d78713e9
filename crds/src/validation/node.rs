//! The facts of a Node that the agent links for and the renderers may write:
//! its name and zone, as the API server holds them.

use crate::policy::NodeInfo;
use crate::validation::names::NameFormat;
use crate::validation::rule::{FieldError, FieldProblem};

/// The label a node's zone comes from.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A node's name is a DNS-1123 subdomain, its zone a label value.
pub fn check_node(node: &NodeInfo) -> Result<(), FieldError> {
    let field = |field: String, e| FieldError {
        field,
        problem: FieldProblem::Name(e),
    };
    NameFormat::Dns1123Subdomain
        .check(&node.name)
        .map_err(|e| field("metadata.name".into(), e))?;
    if let Some(zone) = &node.zone {
        NameFormat::LabelValue
            .check(zone)
            .map_err(|e| field(format!("metadata.labels[{ZONE_LABEL}]"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_and_zone_are_checked() {
        let node = |name: &str, zone: Option<&str>| NodeInfo {
            name: name.into(),
            zone: zone.map(str::to_string),
            addresses: vec![],
        };
        assert_eq!(check_node(&node("node-a.example", Some("zone-a"))), Ok(()));
        assert_eq!(check_node(&node("node-a", None)), Ok(()));
        let e = check_node(&node("node-a\n-A INPUT", None))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(r#"metadata.name: "node-a\n-A INPUT""#), "{e}");
        let e = check_node(&node("node-a", Some("zone a")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("metadata.labels[topology.kubernetes.io/zone]: \"zone a\""),
            "{e}"
        );
    }
}
