//! Each node's place for eBPF: a scratch bpffs for its agent's pins and a
//! cgroup of its own (a child of the cgroup v2 root, never the root itself),
//! where its agent and its client pod run. The socket programs a node's agent
//! attaches there act on exactly that node's sockets, as they act on every
//! socket of a real node under its cgroup root; the nodes' maps and links
//! never meet. Removed on drop, and on SIGINT/SIGTERM through the cleanup
//! registry (after the processes in the cgroup, registered later and so
//! undone first).

use std::sync::{Arc, Mutex};

use switchyard_dataplane::ebpf::scratch::{ScratchBpffs, ScratchCgroup};

use super::processes::EbpfPlace;
use crate::HarnessError;
use crate::cleanup::{self, Registration};

/// The bpffs and the cgroup, dropped together: first the pins (the links
/// into the cgroup go with them), then the cgroup.
struct Scratch {
    _bpffs: ScratchBpffs,
    _cgroup: ScratchCgroup,
}

type Shared = Arc<Mutex<Option<Scratch>>>;

fn take(scratch: &Shared) -> Option<Scratch> {
    scratch
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// One node's scratch bpffs and cgroup.
pub struct NodeBpf {
    place: EbpfPlace,
    scratch: Shared,
    _registered: Registration,
}

impl NodeBpf {
    /// The bpffs at `<tmp>/<name>-bpffs`, the cgroup `<cgroup root>/<name>`.
    pub fn create(name: &str) -> Result<NodeBpf, HarnessError> {
        let err = |e: switchyard_dataplane::BackendError| HarnessError::Setup {
            what: format!("the eBPF place {name}"),
            message: e.to_string(),
        };
        let ((place, scratch), registered) = cleanup::guarded(
            || {
                let bpffs = ScratchBpffs::mount(&format!("{name}-bpffs")).map_err(err)?;
                let cgroup = ScratchCgroup::create(name).map_err(err)?;
                let place = EbpfPlace {
                    pin_root: bpffs.dir().join("switchyard"),
                    cgroup: cgroup.dir().to_path_buf(),
                };
                let scratch = Scratch {
                    _bpffs: bpffs,
                    _cgroup: cgroup,
                };
                Ok::<_, HarnessError>((place, Arc::new(Mutex::new(Some(scratch)))))
            },
            |(_, scratch)| {
                let scratch = scratch.clone();
                move || drop(take(&scratch))
            },
        )?;
        Ok(NodeBpf {
            place,
            scratch,
            _registered: registered,
        })
    }

    pub fn place(&self) -> &EbpfPlace {
        &self.place
    }
}

impl Drop for NodeBpf {
    fn drop(&mut self) {
        drop(take(&self.scratch));
    }
}
