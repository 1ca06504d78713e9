//! A pool's rollout settings resolved to plain numbers, with the defaults applied.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use switchyard_api::Mode;
use switchyard_api::duration::parse_duration;
use switchyard_api::proxyconfig::RolloutSpec;

/// The verification probe's timeout when the spec sets none (as documented on the CRD).
pub const DEFAULT_VERIFICATION_TIMEOUT: Duration = Duration::from_secs(10);

/// What building a mode's full ruleset may take on a node, per service port
/// and endpoint of the ruleset: measured with `versus` on a 2-core machine
/// under load (a switch to iptables at 5000 Services × 5 endpoints took up
/// to 102 s, ≈ 3.4 ms for each of its 30,000; nftables 9.3 s, ≈ 0.3 ms), with
/// headroom. IPVS writes a virtual server per address and a real server per
/// endpoint over netlink plus its iptables rules: costed as iptables.
fn build_cost(mode: Mode) -> Duration {
    match mode {
        Mode::Iptables | Mode::Ipvs => Duration::from_micros(5_000),
        Mode::Nftables | Mode::Ebpf => Duration::from_micros(500),
    }
}

/// How a pool's rollout proceeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutPolicy {
    /// Nodes allowed to be switching (not settled on their target) at once, ≥ 1.
    pub max_unavailable: u32,
    pub auto_rollback: bool,
    pub failure_budget: u32,
    pub paused: bool,
    /// How long a batch's nodes may take before they count as failed.
    pub switch_timeout: Duration,
    /// Settings that could not be used (the safe default was taken instead).
    pub problems: Vec<String>,
}

impl RolloutPolicy {
    /// Resolve `spec` for a pool of `pool_size` nodes. `margin` is added to the
    /// verification timeout to cover building the new dataplane and reporting.
    pub fn resolve(spec: &RolloutSpec, pool_size: u32, margin: Duration) -> RolloutPolicy {
        let mut problems = Vec::new();
        let max_unavailable = match max_unavailable(spec.max_unavailable.as_ref(), pool_size) {
            Ok(n) => n,
            Err(problem) => {
                problems.push(problem);
                1
            }
        };
        let timeout_text = spec
            .verification
            .as_ref()
            .and_then(|v| v.timeout.as_deref());
        let verification_timeout = match timeout_text.map(parse_duration) {
            None => DEFAULT_VERIFICATION_TIMEOUT,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                problems.push(format!("rollout.verification.timeout: {e}; using 10s"));
                DEFAULT_VERIFICATION_TIMEOUT
            }
        };
        RolloutPolicy {
            max_unavailable,
            auto_rollback: spec.auto_rollback.unwrap_or(true),
            failure_budget: spec.failure_budget.unwrap_or(0),
            paused: spec.paused,
            switch_timeout: verification_timeout + margin,
            problems,
        }
    }
}

impl RolloutPolicy {
    /// Give each switch between `modes` time to build a ruleset of `objects`
    /// service ports and endpoints (the most any node of the pool reports
    /// applied), beyond the verification timeout and the margin: a fixed
    /// deadline rolled back every node of a large cluster switching to
    /// iptables while its `iptables-restore` still ran.
    pub fn allow_build(&mut self, modes: &[Mode], objects: u32) {
        let cost = modes
            .iter()
            .map(|&m| build_cost(m))
            .max()
            .unwrap_or_default();
        self.switch_timeout += cost * objects;
    }
}

/// `maxUnavailable` as a node count: a count as is, a percentage of `total`
/// rounded down, and never less than 1 (so a rollout always moves).
pub fn max_unavailable(value: Option<&IntOrString>, total: u32) -> Result<u32, String> {
    let count = match value {
        None => 1,
        Some(IntOrString::Int(n)) => u32::try_from(*n)
            .map_err(|_| format!("rollout.maxUnavailable {n} is negative; using 1"))?,
        Some(IntOrString::String(text)) => {
            let percent: u64 = text
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .filter(|p| *p <= 100)
                .ok_or_else(|| {
                    format!("rollout.maxUnavailable {text:?} is not a count or a percentage from 1% to 100%; using 1")
                })?;
            u32::try_from(u64::from(total) * percent / 100).unwrap_or(u32::MAX)
        }
    };
    Ok(count.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.to_string())
    }

    #[test]
    fn percent_rounds_down_but_never_below_one() {
        assert_eq!(max_unavailable(Some(&pct("10%")), 1000), Ok(100));
        assert_eq!(max_unavailable(Some(&pct("25%")), 10), Ok(2));
        assert_eq!(max_unavailable(Some(&pct("1%")), 50), Ok(1));
        assert_eq!(max_unavailable(Some(&pct("100%")), 7), Ok(7));
        assert_eq!(max_unavailable(Some(&pct("50%")), 0), Ok(1));
    }

    #[test]
    fn counts_and_default() {
        assert_eq!(max_unavailable(None, 100), Ok(1));
        assert_eq!(max_unavailable(Some(&IntOrString::Int(5)), 3), Ok(5));
        assert_eq!(max_unavailable(Some(&IntOrString::Int(0)), 3), Ok(1));
    }

    #[test]
    fn bad_values_are_reported_not_panicked_on() {
        assert!(max_unavailable(Some(&IntOrString::Int(-2)), 3).is_err());
        assert!(max_unavailable(Some(&pct("abc")), 3).is_err());
        assert!(max_unavailable(Some(&pct("150%")), 3).is_err());
        let spec = RolloutSpec {
            max_unavailable: Some(pct("x")),
            ..RolloutSpec::default()
        };
        let policy = RolloutPolicy::resolve(&spec, 10, Duration::from_secs(30));
        assert_eq!(policy.max_unavailable, 1);
        assert_eq!(policy.problems.len(), 1);
        assert_eq!(policy.switch_timeout, Duration::from_secs(40));
        assert!(policy.auto_rollback);
        assert_eq!(policy.failure_budget, 0);
    }

    /// A switch to iptables at 5000×5 outlived the fixed deadline and every
    /// node was rolled back while its `iptables-restore` still ran.
    #[test]
    fn a_large_ruleset_gets_time_to_build_in_the_slower_mode() {
        let mut policy =
            RolloutPolicy::resolve(&RolloutSpec::default(), 3, Duration::from_secs(60));
        assert_eq!(policy.switch_timeout, Duration::from_secs(70));
        policy.allow_build(&[Mode::Nftables, Mode::Iptables], 30_000);
        assert_eq!(policy.switch_timeout, Duration::from_secs(70 + 150));
        let mut small = RolloutPolicy::resolve(&RolloutSpec::default(), 3, Duration::from_secs(60));
        small.allow_build(&[Mode::Nftables, Mode::Ebpf], 200);
        assert_eq!(small.switch_timeout, Duration::from_millis(70_100));
    }
}
