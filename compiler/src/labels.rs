//! The labels that opt an object out of (or into) this proxy, and the
//! annotation of the change an EndpointSlice reflects.

use std::collections::BTreeMap;

use crate::CompileSettings;

/// Set on objects handled by an alternative service proxy.
pub const SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Set by the EndpointSlice controller on the slices of headless services.
pub const HEADLESS: &str = "service.kubernetes.io/headless";
/// Names the Service an EndpointSlice belongs to.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// An annotation the EndpointSlice controller sets: when the change the
/// slice reflects was made (RFC 3339).
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// kube-proxy's informer selector (`service-proxy-name` and `headless` absent),
/// except that a `service-proxy-name` equal to ours is accepted.
pub(crate) fn proxied_by_us(
    labels: Option<&BTreeMap<String, String>>,
    settings: &CompileSettings,
) -> bool {
    let Some(labels) = labels else {
        return true;
    };
    if labels.contains_key(HEADLESS) {
        return false;
    }
    match labels.get(SERVICE_PROXY_NAME) {
        None => true,
        Some(name) => settings.proxy_name.as_deref() == Some(name.as_str()),
    }
}
