//! Kernel capabilities the loader and the programs adapt to, probed at run
//! time, never by version number (distribution kernels backport: RHEL 9's
//! 5.14 carries much newer BPF). See the README's table of kernels.

use aya::programs::{ProgramType, SchedClassifier, TcAttachType};
use aya::sys::{BpfHelper, is_helper_supported};

/// What this kernel has that not every supported kernel has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// TCX links for tc programs (6.6); without them, classic tc.
    pub tcx: bool,
    /// `bpf_set_retval` in cgroup programs (5.18); without it a socket call
    /// the programs refuse or drop fails with EPERM instead of
    /// ECONNREFUSED / ETIMEDOUT (`CFG_HAVE_SET_RETVAL`).
    pub set_retval: bool,
}

impl Capabilities {
    pub fn probe() -> Capabilities {
        Capabilities {
            // A query of loopback's TCX ingress programs: no side effect, EINVAL before 6.6.
            tcx: SchedClassifier::query_tcx("lo", TcAttachType::Ingress).is_ok(),
            set_retval: is_helper_supported(
                ProgramType::CgroupSockAddr,
                BpfHelper::BPF_FUNC_set_retval,
            )
            .unwrap_or(false),
        }
    }
}
