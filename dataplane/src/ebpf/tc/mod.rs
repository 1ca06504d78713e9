//! How the tc programs reach the node's interfaces: TCX links (Linux >= 6.6,
//! pinned with the other links) or, on kernels without TCX, classic tc — a
//! `clsact` qdisc and `cls_bpf` filters in direct-action mode at our own
//! priority and handle ([`SLOT`]), over rtnetlink ([`rtnl`]).
//!
//! Classic filters are no bpf links: nothing in bpffs says they exist. The
//! pinned map `sy_tc_clsact` records every interface that got them and
//! whether the agent added the clsact qdisc there, written before the filters
//! so an interrupted attach is still found. Detaching removes our filters
//! (and only ours) and then the qdisc only if the agent added it and no
//! filter of anybody else is left on it: a qdisc that was there before, or
//! that another tool has since put filters on, stays.

pub mod rtnl;

use std::fmt;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use aya::maps::{HashMap, Map, MapData};
use aya::programs::SchedClassifier;

use self::rtnl::{Filter, Hook, Rtnl, Slot};
use super::kernel::kernel_err;
use crate::BackendError;

/// Where our classic filters sit on every hook: priority and handle "SY".
pub const SLOT: Slot = Slot {
    priority: 0x5359,
    handle: 0x5359,
};

/// The pinned record of classic attachments (see `bpf/lib/maps.h`).
pub const RECORD_MAP: &str = "sy_tc_clsact";
/// `SY_TC_CREATED_CLSACT`: the agent added the clsact qdisc.
const CREATED_CLSACT: u32 = 1;

/// Which tc attach API to use (a node agent: `Auto`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcAttachMode {
    /// TCX when the kernel has it, else classic tc.
    #[default]
    Auto,
    Tcx,
    Classic,
}

impl TcAttachMode {
    pub const ALL: [TcAttachMode; 3] =
        [TcAttachMode::Auto, TcAttachMode::Tcx, TcAttachMode::Classic];

    pub fn as_str(self) -> &'static str {
        match self {
            TcAttachMode::Auto => "auto",
            TcAttachMode::Tcx => "tcx",
            TcAttachMode::Classic => "classic",
        }
    }
}

impl fmt::Display for TcAttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TcAttachMode {
    type Err = String;

    fn from_str(s: &str) -> Result<TcAttachMode, String> {
        TcAttachMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("{s:?}: expected auto, tcx or classic"))
    }
}

/// The tc attach API in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcApi {
    Tcx,
    Classic,
}

impl fmt::Display for TcApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcApi::Tcx => "tcx",
            TcApi::Classic => "classic tc (clsact + cls_bpf)",
        })
    }
}

impl TcAttachMode {
    /// The API this mode means on a kernel with or without TCX.
    pub fn resolve(self, tcx: bool) -> TcApi {
        match self {
            TcAttachMode::Tcx => TcApi::Tcx,
            TcAttachMode::Classic => TcApi::Classic,
            TcAttachMode::Auto if tcx => TcApi::Tcx,
            TcAttachMode::Auto => TcApi::Classic,
        }
    }
}

fn tc_err(operation: &'static str, ifindex: u32) -> impl FnOnce(std::io::Error) -> BackendError {
    move |e| kernel_err(operation, format!("interface {ifindex}: {e}"))
}

/// Whether an error means the interface is gone (nothing left to remove there).
fn gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT))
}

/// A filter that is not ours (an empty chain head at our priority is ours).
fn foreign(f: &Filter) -> bool {
    f.slot.priority != SLOT.priority || (f.slot.handle != 0 && f.slot.handle != SLOT.handle)
}

/// Classic tc attachments and their record.
pub struct Classic {
    rtnl: Rtnl,
    records: HashMap<MapData, u32, u32>,
}

impl Classic {
    /// The record under `maps_dir`; None when it was never created.
    pub fn open(maps_dir: &Path) -> Result<Option<Classic>, BackendError> {
        let path = maps_dir.join(RECORD_MAP);
        if !path.exists() {
            return Ok(None);
        }
        let map = MapData::from_pin(&path)
            .and_then(Map::from_map_data)
            .map_err(|e| kernel_err("open pinned map", format!("{RECORD_MAP}: {e}")))?;
        let records = HashMap::try_from(map).map_err(|e| kernel_err("pinned map layout", e))?;
        let rtnl = Rtnl::open().map_err(|e| kernel_err("open rtnetlink", e))?;
        Ok(Some(Classic { rtnl, records }))
    }

    /// Whether any interface has our classic filters.
    pub fn any(&self) -> bool {
        self.records.keys().next().is_some()
    }

    /// Add the clsact qdisc to `ifindex` unless it has one, and record it.
    pub fn prepare(&mut self, ifindex: u32) -> Result<(), BackendError> {
        let created = self
            .rtnl
            .add_clsact(ifindex)
            .map_err(tc_err("add clsact qdisc", ifindex))?;
        let before = self.records.get(&ifindex, 0).unwrap_or(0);
        let flags = before | if created { CREATED_CLSACT } else { 0 };
        self.records
            .insert(ifindex, flags, 0)
            .map_err(|e| kernel_err("record classic tc attachment", e))
    }

    /// Our filter for `prog` on one hook of a prepared interface.
    pub fn attach(
        &mut self,
        ifindex: u32,
        hook: Hook,
        prog: &SchedClassifier,
        name: &str,
    ) -> Result<(), BackendError> {
        let fd = prog.fd().map_err(|e| kernel_err("tc program fd", e))?;
        let raw =
            u32::try_from(fd.as_fd().as_raw_fd()).map_err(|e| kernel_err("tc program fd", e))?;
        self.rtnl
            .add_filter(ifindex, hook, SLOT, raw, name)
            .map_err(tc_err("add cls_bpf filter", ifindex))
    }

    /// Remove our filters from every recorded interface, and the clsact
    /// qdiscs the agent added that no other filter uses now.
    pub fn detach_all(&mut self) -> Result<(), BackendError> {
        let recorded: Vec<(u32, u32)> = self.records.iter().filter_map(Result::ok).collect();
        for (ifindex, flags) in recorded {
            self.detach(ifindex, flags)?;
            match self.records.remove(&ifindex) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(kernel_err("forget classic tc attachment", e)),
            }
        }
        Ok(())
    }

    fn detach(&mut self, ifindex: u32, flags: u32) -> Result<(), BackendError> {
        for hook in Hook::BOTH {
            match self.rtnl.delete_filter(ifindex, hook, SLOT) {
                Err(e) if gone(&e) => return Ok(()),
                other => other.map_err(tc_err("delete cls_bpf filter", ifindex))?,
            };
        }
        if flags & CREATED_CLSACT == 0 {
            return Ok(());
        }
        let mut left = Vec::new();
        for hook in Hook::BOTH {
            let filters = self
                .rtnl
                .filters(ifindex, hook)
                .map_err(tc_err("list tc filters", ifindex))?;
            left.extend(filters.into_iter().filter(foreign));
        }
        if !left.is_empty() {
            tracing::info!(ifindex, ?left, "clsact qdisc kept: other filters use it");
            return Ok(());
        }
        match self.rtnl.delete_clsact(ifindex) {
            Err(e) if gone(&e) => Ok(()),
            other => other.map_err(tc_err("delete clsact qdisc", ifindex)),
        }
    }
}
