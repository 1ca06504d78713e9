//! Schema parts the derive attributes cannot say on their own: the bounds of
//! `metav1.Condition` (as upstream's markers give them) and the patterns
//! built from lists.

use schemars::Schema;
use serde_json::json;

use crate::validation::limits::{MAX_CONDITIONS, MAX_MESSAGE_LENGTH, TRAFFIC_DISTRIBUTIONS};

/// `spec.trafficDistribution`: one of the values the API server accepts.
pub fn traffic_distribution_pattern() -> String {
    format!("^({})$", TRAFFIC_DISTRIBUTIONS.join("|"))
}

/// A list of `metav1.Condition` with the limits of its kubebuilder markers
/// (type, reason and message lengths, reason's pattern, the status values).
pub fn conditions(schema: &mut Schema) {
    schema.insert("maxItems".into(), MAX_CONDITIONS.into());
    // One condition per type, merged by type under server-side apply
    // (metav1.Condition's +listType=map, +listMapKey=type).
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), json!(["type"]));
    let Some(props) = schema
        .get_mut("items")
        .and_then(|items| items.get_mut("properties"))
        .and_then(|p| p.as_object_mut())
    else {
        return;
    };
    let mut bound = |field: &str, extra: serde_json::Value| {
        if let (Some(prop), Some(extra)) = (
            props.get_mut(field).and_then(|p| p.as_object_mut()),
            extra.as_object(),
        ) {
            prop.extend(extra.clone());
        }
    };
    bound(
        "type",
        json!({"maxLength": 316, "pattern": r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"}),
    );
    bound("status", json!({"enum": ["True", "False", "Unknown"]}));
    bound(
        "reason",
        json!({"maxLength": 1024, "minLength": 1, "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"}),
    );
    bound("message", json!({"maxLength": MAX_MESSAGE_LENGTH}));
    bound("observedGeneration", json!({"minimum": 0}));
}
