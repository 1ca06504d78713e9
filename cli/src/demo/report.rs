//! What the demo saw: traffic counters, the rollout's outcome and every node
//! switch with its steps' times (as observed through the API), and the final
//! report as printed.

use std::time::Duration;

use switchyard_api::Mode;
use switchyard_api::proxyconfig::RolloutPhase;
use switchyard_lab::traffic::Counts;

/// How one node switch went, as its ProxyNode status told it step by step.
#[derive(Clone, Debug)]
pub struct SwitchReport {
    pub node: String,
    pub from: Option<Mode>,
    pub to: Mode,
    pub total: Duration,
    /// From `Building` to `Verifying`: building (and syncing) the new dataplane.
    pub build: Duration,
    /// From `Verifying` to `RemovingOld`: the verification probe.
    pub verify: Duration,
    /// From `RemovingOld` to done: removing the old dataplane.
    pub remove_old: Duration,
    /// Objects in the new dataplane.
    pub objects: u32,
    /// Set when the switch failed (the old dataplane still runs).
    pub error: Option<String>,
    /// The switch completed with a caveat (the old dataplane not fully removed).
    pub cleanup_error: Option<String>,
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    pub from: Option<Mode>,
    pub to: Option<Mode>,
    pub attempted: u64,
    pub failed: u64,
    pub established: u64,
    pub dropped: u64,
    pub exchanges: u64,
    pub udp_sent: u64,
    pub udp_lost: u64,
    /// Answers from another address than the one asked (the matrix's column).
    pub wrong_address: u64,
    /// The phase the rollout ended in (`Complete` when it went through).
    pub rollout: Option<RolloutPhase>,
    /// Every node switch of the rollout, in order.
    pub switches: Vec<SwitchReport>,
    /// The first failures, in full.
    pub failures: Vec<String>,
    /// Cleanup problems (the namespaces are removed regardless).
    pub cleanup_errors: Vec<String>,
}

impl DemoReport {
    /// No connection failed, none dropped, no answer lost or from a wrong
    /// address, every switch succeeded.
    pub fn clean(&self) -> bool {
        self.rollout == Some(RolloutPhase::Complete)
            && self.failed == 0
            && self.dropped == 0
            && self.udp_lost == 0
            && self.wrong_address == 0
            && self
                .switches
                .iter()
                .all(|s| s.error.is_none() && s.cleanup_error.is_none())
            && self.cleanup_errors.is_empty()
    }

    /// The traffic's counts: the long-lived connections are connections
    /// attempted too, and a new connection that got no answer from an
    /// endpoint failed.
    pub fn snapshot(counts: &Counts) -> DemoReport {
        DemoReport {
            attempted: counts.new + counts.established,
            failed: counts.new_failed,
            established: counts.established,
            dropped: counts.dropped,
            exchanges: counts.exchanges,
            udp_sent: counts.udp_sent,
            udp_lost: counts.udp_lost,
            wrong_address: counts.wrong_address,
            ..DemoReport::default()
        }
    }

    pub fn traffic_line(&self) -> String {
        format!(
            "traffic: {} connections ({} failed), {} established ({} dropped, {} requests), {} UDP ({} lost)",
            self.attempted,
            self.failed,
            self.established,
            self.dropped,
            self.exchanges,
            self.udp_sent,
            self.udp_lost
        )
    }

    /// The final report, as printed.
    pub fn to_text(&self) -> String {
        let mode = |m: Option<Mode>| m.map_or("-", Mode::as_str);
        let mut out = format!(
            "\n== switchyard demo report: {} -> {} ==\n",
            mode(self.from),
            mode(self.to)
        );
        let rollout = self
            .rollout
            .map_or_else(|| "not started".to_string(), |p| format!("{p:?}"));
        let rows = [
            ("rollout", rollout),
            ("connections attempted", self.attempted.to_string()),
            ("connections failed", self.failed.to_string()),
            ("established (long-lived)", self.established.to_string()),
            ("established connections dropped", self.dropped.to_string()),
            ("requests on long-lived conns", self.exchanges.to_string()),
            (
                "UDP requests",
                format!("{} ({} unanswered)", self.udp_sent, self.udp_lost),
            ),
            (
                "answers from a wrong address",
                self.wrong_address.to_string(),
            ),
        ];
        for (name, value) in rows {
            out.push_str(&format!("{:<33}{value}\n", format!("{name}:")));
        }
        out.push_str("node switches (build / verify / remove old = total):\n");
        for s in &self.switches {
            out.push_str(&format!(
                "  {:<8} {} -> {}: {:>6.1} / {:>6.1} / {:>6.1} = {:>6.1} ms, {} objects{}\n",
                s.node,
                mode(s.from),
                s.to,
                ms(s.build),
                ms(s.verify),
                ms(s.remove_old),
                ms(s.total),
                s.objects,
                match (&s.error, &s.cleanup_error) {
                    (Some(e), _) => format!(", FAILED: {e}"),
                    (None, Some(e)) => format!(", old mode not fully removed: {e}"),
                    (None, None) => String::new(),
                }
            ));
        }
        for f in &self.failures {
            out.push_str(&format!("failure: {f}\n"));
        }
        for e in &self.cleanup_errors {
            out.push_str(&format!("cleanup: {e}\n"));
        }
        out.push_str(if self.clean() {
            "result: PASS (no failed connection, no dropped established connection)\n"
        } else {
            "result: FAIL\n"
        });
        out
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
