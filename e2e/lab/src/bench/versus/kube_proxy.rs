//! kube-proxy in a node namespace of its own (its flags are the
//! reference's: nothing reaches the host), with the probed Services'
//! endpoints behind it and a prober inside it; its figures read from its
//! own metrics (`kubeproxy_sync_{full,partial}_proxy_rules_duration_seconds`
//! of its IPv4 proxier) and `/proc`.

use std::net::IpAddr;
use std::time::Duration;

use switchyard_api::Mode;

use super::rig::{KP_IP, Rig};
use super::{VersusError, measure_error, sync_deadline};
use crate::HarnessError;
use crate::bench::echo_pods::EchoPods;
use crate::bench::prober::Prober;
use crate::bench::states::Size;
use crate::controlplane::SERVICE_CIDR;
use crate::controlplane::forward::Forwarder;
use crate::metrics::Histogram;
use crate::netns::Netns;
use crate::procstat::{Memory, Process};
use crate::reference::kube_proxy::{Counters, KubeProxy};
use crate::reference::state::Changes;

/// kube-proxy's node. Field order is drop order.
pub struct KubeProxyNode {
    pub prober: Prober,
    _pods: EchoPods,
    kube_proxy: KubeProxy,
    _forwarder: Forwarder,
    ns: Netns,
}

impl KubeProxyNode {
    pub fn start(
        rig: &Rig,
        size: Size,
        mode: Mode,
        run: usize,
    ) -> Result<KubeProxyNode, VersusError> {
        let cp = rig.cluster.control_plane();
        let name = format!("{}kp{run}", rig.cluster.netns_prefix());
        let ns = Netns::create(&name).map_err(HarnessError::from)?;
        // Its address on loopback: kube-proxy only serves metrics on it.
        ns.ip(&["addr", "add", &format!("{KP_IP}/32"), "dev", "lo"])
            .map_err(HarnessError::from)?;
        let forwarder = cp.forward_into(&ns)?;
        let ip = IpAddr::V4(KP_IP);
        let mut kube_proxy = KubeProxy::start(
            &cp.binaries().path("kube-proxy"),
            cp.dir(),
            mode,
            &rig.kp_spec,
            ip,
            &rig.kp_kubeconfig,
            &ns,
        )?;
        kube_proxy.set_timeout(sync_deadline(size));
        // Its only link: Service addresses need a route for its rules to act on.
        let pods = EchoPods::attach(&ns, &format!("{name}p"), Some(SERVICE_CIDR))?;
        let prober = Prober::start(&ns, None)?;
        Ok(KubeProxyNode {
            prober,
            _pods: pods,
            kube_proxy,
            _forwarder: forwarder,
            ns,
        })
    }

    /// Its first syncs, of the whole state (`services` and the probed
    /// ones): the mean full sync.
    pub fn full_sync(&mut self, services: usize) -> Result<Duration, VersusError> {
        let n = u64::try_from(services).unwrap_or(u64::MAX);
        let all = Changes {
            services: n,
            endpoint_slices: n,
        };
        let ns = &self.ns;
        self.kube_proxy
            .wait_taken_in(ns, &Counters::default(), all)?;
        let seen = self.kube_proxy.wait_until(ns, "the first full sync", |c| {
            c.full.count > 0 && c.ipv4_programmed()
        })?;
        seen.full
            .mean_since(&Histogram::default())
            .ok_or_else(|| measure_error("kube-proxy's full sync", "none observed"))
    }

    pub fn counters(&self) -> Result<Counters, VersusError> {
        Ok(self.kube_proxy.counters(&self.ns)?)
    }

    /// Wait until the one endpoint change after `before` is programmed.
    pub fn wait_partial(&mut self, before: &Counters) -> Result<(), VersusError> {
        let one = Changes {
            services: 0,
            endpoint_slices: 1,
        };
        let ns = &self.ns;
        self.kube_proxy.wait_taken_in(ns, before, one)?;
        self.kube_proxy.wait_until(ns, "a partial sync", |c| {
            c.partial.count > before.partial.count && c.ipv4_programmed()
        })?;
        Ok(())
    }

    pub fn memory(&self) -> Memory {
        Process::Pid(self.kube_proxy.pid())
            .memory()
            .unwrap_or_default()
    }
}
