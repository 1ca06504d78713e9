//! The bounds Switchyard holds its objects to. Where Kubernetes has a bound
//! (EndpointSlice hints, `clusterIPs`, the affinity timeout) it is the same;
//! the others keep one shard well inside what the API server stores.

/// The largest serialized `ProxyRuleset` spec the operator writes. The API
/// server refuses request bodies over 3 MiB and etcd, by default, requests
/// over 1.5 MiB; 1 MiB leaves room for metadata and managed fields.
pub const MAX_SHARD_BYTES: usize = 1024 * 1024;
/// The most shards a layout has (a power of two).
pub const MAX_SHARDS: u32 = 1 << 16;
/// Service ports in one shard. Each takes at least 100 bytes, so a shard of
/// `MAX_SHARD_BYTES` holds fewer.
pub const MAX_SERVICE_PORTS_PER_SHARD: usize = 10_000;
/// Endpoints of one service port (from all of its EndpointSlices). Each takes
/// at least 50 bytes, so a shard of `MAX_SHARD_BYTES` holds fewer.
pub const MAX_ENDPOINTS_PER_PORT: usize = 20_000;
/// `spec.clusterIPs`: one per family.
pub const MAX_CLUSTER_IPS: usize = 2;
/// `spec.externalIPs` (unbounded in Kubernetes).
pub const MAX_EXTERNAL_IPS: usize = 256;
/// `status.loadBalancer.ingress` (unbounded in Kubernetes).
pub const MAX_LOAD_BALANCER_IPS: usize = 256;
/// `spec.loadBalancerSourceRanges` (unbounded in Kubernetes).
pub const MAX_SOURCE_RANGES: usize = 1024;
/// `hints.forZones` and `hints.forNodes` of an endpoint (the EndpointSlice API's).
pub const MAX_HINTS: usize = 8;
/// The API server's upper bound for `sessionAffinityConfig.clientIP.timeoutSeconds` (1 day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;
/// The values of `spec.trafficDistribution` the API server accepts.
pub const TRAFFIC_DISTRIBUTIONS: [&str; 3] = ["PreferClose", "PreferSameZone", "PreferSameNode"];
/// `metav1.Condition.message`; the agent's `lastError` too.
pub const MAX_MESSAGE_LENGTH: usize = 32_768;
/// The conditions a ProxyNode carries (the agent sets two).
pub const MAX_CONDITIONS: usize = 16;

/// `text` cut to at most `MAX_MESSAGE_LENGTH` bytes (a status message).
pub fn clip_message(text: String) -> String {
    clip(text, MAX_MESSAGE_LENGTH)
}

/// `text` cut to at most `max` bytes, at a character boundary, marked with `…`.
pub fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Endpoint, Protocol, ServicePortRule};

    #[test]
    fn count_limits_stay_inside_the_size_limit() {
        // The smallest rule and endpoint the model can write: the counts are
        // never what keeps a shard from being written.
        let rule = ServicePortRule::new(1, "a", "a", Protocol::Tcp, 1);
        let rule_bytes = serde_json::to_vec(&rule).unwrap().len() + 1;
        assert!(MAX_SERVICE_PORTS_PER_SHARD * rule_bytes > MAX_SHARD_BYTES);
        let endpoint = Endpoint::new(1, "::2".parse().unwrap(), 1);
        let endpoint_bytes = serde_json::to_vec(&endpoint).unwrap().len() + 1;
        assert!(MAX_ENDPOINTS_PER_PORT * endpoint_bytes > MAX_SHARD_BYTES);
    }

    #[test]
    fn long_messages_are_clipped_at_a_character_boundary() {
        assert_eq!(clip_message("short".into()), "short");
        let long = "é".repeat(MAX_MESSAGE_LENGTH);
        let clipped = clip_message(long);
        assert!(clipped.len() <= MAX_MESSAGE_LENGTH);
        assert!(clipped.ends_with('…'));
    }
}
