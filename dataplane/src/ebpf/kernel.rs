//! The only code of this backend that touches the kernel: loading and
//! attaching the programs with aya, pinning, and single-entry map writes.
//! [`EbpfKernel`] is the narrow face; [`FakeKernel`] keeps the maps in memory.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData};
use aya::programs::links::{CgroupAttachMode, FdLink};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use switchyard_api::Mode;

use super::layout::*;
use super::masq_ports::MasqueradePorts;
use super::objects;
use super::plan::LoadConfig;
use super::probe::Capabilities;
use super::sync::{MapOp, RawMaps, Snapshot};
use super::tc::rtnl::Hook;
use super::tc::{self, Classic, TcApi, TcAttachMode};
use crate::BackendError;
use crate::sysctl::ProcSysctl;

/// Loads, attaches and writes the maps of the eBPF dataplane.
pub trait EbpfKernel: Send {
    /// Make the programs run with `config` (no-op when they already do, also
    /// after an agent restart).
    fn load(&mut self, config: &LoadConfig) -> Result<(), BackendError>;
    fn write(&mut self, op: &MapOp) -> Result<(), BackendError>;
    /// The maps' current contents.
    fn snapshot(&mut self) -> Result<Snapshot, BackendError>;
    /// The entries of `sy_conntrack`: (packet tuple + direction, rewrite).
    fn conntrack(&mut self) -> Result<Vec<(Tuple, Tuple)>, BackendError>;
    /// Delete the `sy_conntrack` entry of `key` (gone already: fine).
    fn forget_flow(&mut self, key: &Tuple) -> Result<(), BackendError>;
    fn present(&self) -> Result<bool, BackendError>;
    /// Detach everything and remove every pinned object.
    fn cleanup(&mut self) -> Result<(), BackendError>;
}

pub(crate) fn kernel_err(operation: &'static str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Kernel {
        mode: Mode::Ebpf,
        operation,
        message: e.to_string(),
    }
}

fn io_err(operation: &'static str) -> impl FnOnce(std::io::Error) -> BackendError {
    move |source| BackendError::Io {
        mode: Mode::Ebpf,
        operation,
        source,
    }
}

/// The socket programs and their attach points, by program name.
pub const SOCK_PROGRAMS: [&str; 8] = [
    "sy_connect4",
    "sy_connect6",
    "sy_sendmsg4",
    "sy_sendmsg6",
    "sy_recvmsg4",
    "sy_recvmsg6",
    "sy_getpeername4",
    "sy_getpeername6",
];

/// The pinned maps, by name.
pub const MAPS: [&str; 10] = [
    "sy_frontends",
    "sy_services",
    "sy_backends",
    "sy_sock_revnat",
    "sy_conntrack",
    "sy_affinity",
    "sy_source_ranges",
    "sy_maglev",
    "sy_load_config",
    tc::RECORD_MAP,
];

/// Where the programs go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// bpffs directory for pinned maps and links (default `/sys/fs/bpf/switchyard`).
    pub pin_root: PathBuf,
    /// cgroup v2 directory the socket programs attach to; None: socket LB off.
    pub cgroup: Option<PathBuf>,
    /// TCX or classic tc for the tc programs (a node: whichever the kernel has).
    pub tc_attach: TcAttachMode,
}

impl Default for KernelConfig {
    fn default() -> Self {
        KernelConfig {
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            cgroup: None,
            tc_attach: TcAttachMode::Auto,
        }
    }
}

/// Where the agent pins by default.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/switchyard";

impl KernelConfig {
    /// A node agent's: the default pin root and the cgroup v2 root (every
    /// process and pod of the node), `/sys/fs/cgroup` or, on hybrid
    /// hierarchies, `/sys/fs/cgroup/unified`.
    pub fn for_node() -> KernelConfig {
        let cgroup = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.controllers").exists());
        KernelConfig {
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            cgroup,
            tc_attach: TcAttachMode::Auto,
        }
    }
}

struct OpenMaps {
    frontends: HashMap<MapData, FrontendKey, Frontend>,
    services: HashMap<MapData, SvcKey, SvcSlot>,
    backends: HashMap<MapData, u32, BackendEntry>,
    source_ranges: LpmTrie<MapData, SourceRange, u8>,
    maglev: HashMap<MapData, MaglevKey, u32>,
    conntrack: HashMap<MapData, Tuple, Tuple>,
}

/// The real kernel, through aya.
pub struct AyaKernel {
    config: KernelConfig,
    loaded: Option<LoadConfig>,
    maps: Option<OpenMaps>,
    /// The kernel's capabilities, once probed.
    caps: Option<Capabilities>,
}

impl AyaKernel {
    pub fn new(config: KernelConfig) -> AyaKernel {
        AyaKernel {
            config,
            loaded: None,
            maps: None,
            caps: None,
        }
    }

    /// As [`AyaKernel::new`] on a kernel assumed to have `caps` (tests of the
    /// fallbacks on a kernel that has more).
    pub fn with_capabilities(config: KernelConfig, caps: Capabilities) -> AyaKernel {
        AyaKernel {
            caps: Some(caps),
            ..AyaKernel::new(config)
        }
    }

    /// The kernel's capabilities (probed at the first load).
    pub fn capabilities(&mut self) -> Capabilities {
        *self.caps.get_or_insert_with(|| {
            let caps = Capabilities::probe();
            tracing::info!(?caps, "eBPF kernel capabilities");
            caps
        })
    }

    /// The tc attach API in use.
    pub fn tc_api(&mut self) -> TcApi {
        let api = self.config.tc_attach.resolve(self.capabilities().tcx);
        tracing::debug!(%api, "eBPF tc programs attach with {api}");
        api
    }

    fn maps_dir(&self) -> PathBuf {
        self.config.pin_root.join("maps")
    }

    fn links_dir(&self) -> PathBuf {
        self.config.pin_root.join("links")
    }

    /// The digest of the settings the attached programs run with, if any.
    fn attached_digest(&self) -> Option<u64> {
        let map = MapData::from_pin(self.maps_dir().join("sy_load_config"))
            .and_then(Map::from_map_data)
            .ok()?;
        let array: Array<MapData, u64> = Array::try_from(map).ok()?;
        let digest = array.get(&0, 0).ok()?;
        let links = fs::read_dir(self.links_dir()).map_or(0, Iterator::count);
        let classic = Classic::open(&self.maps_dir())
            .ok()
            .flatten()
            .is_some_and(|c| c.any());
        (digest != 0 && (links > 0 || classic)).then_some(digest)
    }

    fn set_attached_digest(&self, digest: u64) -> Result<(), BackendError> {
        let map = MapData::from_pin(self.maps_dir().join("sy_load_config"))
            .and_then(Map::from_map_data)
            .map_err(|e| kernel_err("open pinned map", format!("sy_load_config: {e}")))?;
        let mut array: Array<MapData, u64> =
            Array::try_from(map).map_err(|e| kernel_err("pinned map layout", e))?;
        array
            .set(0, digest, 0)
            .map_err(|e| kernel_err("write load config", e))
    }

    pub(crate) fn load_object(
        config: &LoadConfig,
        caps: Capabilities,
        ports: MasqueradePorts,
        maps_dir: &Path,
        object: &[u8],
    ) -> Result<Ebpf, BackendError> {
        let ip4 = config
            .node_ip4
            .map_or(0, |ip| u32::from_ne_bytes(ip.octets()));
        let ip6 = config
            .node_ip6
            .map_or(Addr::default(), |ip| Addr::from_ip(ip.into()));
        EbpfLoader::new()
            .default_map_pin_directory(maps_dir)
            .override_global("CFG_MAGLEV_SIZE", &config.maglev_table_size, true)
            .override_global("CFG_NODE_IP4", &ip4, true)
            .override_global("CFG_NODE_IP6", &ip6.0, true)
            .override_global("CFG_MASQ_PORT_MIN", &ports.min, true)
            .override_global("CFG_MASQ_PORT_MAX", &ports.max, true)
            .override_global("CFG_LOCAL_DETECTOR", &u8::from(config.local_detector), true)
            .override_global("CFG_HAVE_SET_RETVAL", &u8::from(caps.set_retval), true)
            .load(object)
            .map_err(|e| kernel_err("load object", e))
    }

    fn attach_tc(
        &self,
        config: &LoadConfig,
        caps: Capabilities,
        ports: MasqueradePorts,
        api: TcApi,
    ) -> Result<(), BackendError> {
        let mut obj = Self::load_object(config, caps, ports, &self.maps_dir(), objects::TC)?;
        let devices = if config.devices.is_empty() {
            interfaces()
        } else {
            config.devices.clone()
        };
        let mut classic = match api {
            TcApi::Tcx => None,
            TcApi::Classic => {
                let mut c = Classic::open(&self.maps_dir())?
                    .ok_or_else(|| kernel_err("open pinned map", tc::RECORD_MAP))?;
                for dev in &devices {
                    c.prepare(ifindex(dev)?)?;
                }
                Some(c)
            }
        };
        for (prog_name, hook) in [
            ("sy_tc_ingress", Hook::Ingress),
            ("sy_tc_egress", Hook::Egress),
        ] {
            let prog: &mut SchedClassifier = obj
                .program_mut(prog_name)
                .ok_or_else(|| kernel_err("find tc program", prog_name))?
                .try_into()
                .map_err(|e| kernel_err("tc program type", e))?;
            prog.load().map_err(|e| kernel_err("load tc program", e))?;
            for dev in &devices {
                match classic.as_mut() {
                    Some(c) => c.attach(ifindex(dev)?, hook, prog, prog_name)?,
                    None => self.attach_tcx(prog, dev, hook)?,
                }
            }
        }
        Ok(())
    }

    /// A TCX link, pinned as `tc-<dev>-<hook>`.
    fn attach_tcx(
        &self,
        prog: &mut SchedClassifier,
        dev: &str,
        hook: Hook,
    ) -> Result<(), BackendError> {
        let (attach, dir) = match hook {
            Hook::Ingress => (TcAttachType::Ingress, "ingress"),
            Hook::Egress => (TcAttachType::Egress, "egress"),
        };
        let id = prog
            .attach_with_options(dev, attach, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|e| kernel_err("attach tc program", format!("{dev} {dir}: {e}")))?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(|e| kernel_err("take tc link", e))?
            .try_into()
            .map_err(|e| kernel_err("tc link is not a bpf link", e))?;
        self.pin_link(link, &format!("tc-{dev}-{dir}"))
    }

    fn attach_sock(
        &self,
        config: &LoadConfig,
        caps: Capabilities,
        ports: MasqueradePorts,
        cgroup: &Path,
    ) -> Result<(), BackendError> {
        let mut obj = Self::load_object(config, caps, ports, &self.maps_dir(), objects::SOCK)?;
        let cgroup_fd = fs::File::open(cgroup).map_err(io_err("open cgroup"))?;
        for name in SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = obj
                .program_mut(name)
                .ok_or_else(|| kernel_err("find socket program", name))?
                .try_into()
                .map_err(|e| kernel_err("socket program type", e))?;
            prog.load()
                .map_err(|e| kernel_err("load socket program", e))?;
            // A bpf link (kernel >= 5.7) coexists with other programs whatever the
            // mode; link_create rejects the multi flag.
            let id = prog
                .attach(&cgroup_fd, CgroupAttachMode::Single)
                .map_err(|e| kernel_err("attach socket program", format!("{name}: {e:?}")))?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(|e| kernel_err("take socket link", e))?
                .try_into()
                .map_err(|e| kernel_err("socket link is not a bpf link", e))?;
            self.pin_link(link, name)?;
        }
        Ok(())
    }

    fn pin_link(&self, link: FdLink, name: &str) -> Result<(), BackendError> {
        let path = self.links_dir().join(name);
        link.pin(&path).map_err(|e| kernel_err("pin link", e))?;
        restrict(&path, 0o600)
    }

    /// Detach every pinned link now (unpinning alone frees a link only after
    /// an RCU grace period) and unpin it; remove our classic tc filters.
    fn detach_all(&self) -> Result<(), BackendError> {
        if let Some(mut classic) = Classic::open(&self.maps_dir())? {
            classic.detach_all()?;
        }
        let entries = match fs::read_dir(self.links_dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("list pinned links")(e)),
        };
        for entry in entries {
            let path = entry.map_err(io_err("list pinned links"))?.path();
            detach_pinned_link(&path)?;
            fs::remove_file(&path).map_err(io_err("unpin link"))?;
        }
        Ok(())
    }

    fn open_maps(&mut self) -> Result<&mut OpenMaps, BackendError> {
        if self.maps.is_none() {
            let dir = self.maps_dir();
            let open = |name: &str| {
                MapData::from_pin(dir.join(name))
                    .and_then(Map::from_map_data)
                    .map_err(|e| kernel_err("open pinned map", format!("{name}: {e}")))
            };
            let typed = |e: aya::maps::MapError| kernel_err("pinned map layout", e);
            self.maps = Some(OpenMaps {
                frontends: HashMap::try_from(open("sy_frontends")?).map_err(typed)?,
                services: HashMap::try_from(open("sy_services")?).map_err(typed)?,
                backends: HashMap::try_from(open("sy_backends")?).map_err(typed)?,
                source_ranges: LpmTrie::try_from(open("sy_source_ranges")?).map_err(typed)?,
                maglev: HashMap::try_from(open("sy_maglev")?).map_err(typed)?,
                conntrack: HashMap::try_from(open("sy_conntrack")?).map_err(typed)?,
            });
        }
        self.maps
            .as_mut()
            .ok_or_else(|| kernel_err("open pinned maps", "not loaded"))
    }
}

/// The index of interface `dev` in the current network namespace.
fn ifindex(dev: &str) -> Result<u32, BackendError> {
    let name = std::ffi::CString::new(dev).map_err(|e| kernel_err("interface name", e))?;
    // SAFETY: a NUL-terminated name that outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io_err("find interface")(std::io::Error::last_os_error())),
        i => Ok(i),
    }
}

/// Every interface of the current network namespace but loopback.
fn interfaces() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return names;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            if name != "lo" {
                names.push(name);
            }
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}

const BPF_OBJ_GET: u32 = 7;
const BPF_LINK_DETACH: u32 = 34;

/// The raw bpf(2) calls aya does not offer (a synchronous link detach), in one place.
fn bpf_syscall(cmd: u32, attr: &mut [u8; 64]) -> std::io::Result<i32> {
    // SAFETY: `attr` is a zero-padded bpf_attr prefix of the length passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            libc::c_long::from(cmd),
            attr.as_mut_ptr(),
            attr.len() as libc::c_long,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    i32::try_from(rc).map_err(|_| std::io::Error::other("bpf(2) returned an out-of-range fd"))
}

/// BPF_LINK_DETACH of the link pinned at `path`.
fn detach_pinned_link(path: &Path) -> Result<(), BackendError> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| kernel_err("pinned link path", e))?;
    let mut attr = [0u8; 64];
    attr[..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    let fd = bpf_syscall(BPF_OBJ_GET, &mut attr).map_err(io_err("open pinned link"))?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut attr = [0u8; 64];
    attr[..4].copy_from_slice(&fd.to_ne_bytes());
    let detached = bpf_syscall(BPF_LINK_DETACH, &mut attr);
    drop(link);
    detached.map(|_| ()).map_err(io_err("detach link"))
}

/// A stable 64-bit digest of a text.
fn digest(text: &str) -> u64 {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(first) | 1
}

fn restrict(path: &Path, mode: u32) -> Result<(), BackendError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("restrict permissions"))
}

fn remove_entries(dir: &Path) -> Result<(), BackendError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list pinned objects")(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("list pinned objects"))?;
        fs::remove_file(entry.path()).map_err(io_err("unpin object"))?;
    }
    Ok(())
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        other => other,
    }
}

impl EbpfKernel for AyaKernel {
    fn load(&mut self, config: &LoadConfig) -> Result<(), BackendError> {
        if self.loaded.as_ref() == Some(config) {
            return Ok(());
        }
        let caps = self.capabilities();
        let api = self.tc_api();
        // The node's ephemeral ports as they are now (a change is picked up
        // when the programs load again: a restart or new load settings).
        let ports = MasqueradePorts::read(&ProcSysctl)?;
        let wanted = digest(&format!(
            "{config:?}\ncgroup={:?}\ntc={api:?}\n{caps:?}\n{ports:?}\n",
            self.config.cgroup
        ));
        if self.attached_digest() == Some(wanted) {
            // An earlier run left these programs attached: keep them.
            self.loaded = Some(config.clone());
            return Ok(());
        }
        for dir in [
            self.config.pin_root.clone(),
            self.maps_dir(),
            self.links_dir(),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err("create pin directory"))?;
            restrict(&dir, 0o700)?;
        }
        self.detach_all()?;
        self.maps = None;
        self.attach_tc(config, caps, ports, api)?;
        if let (true, Some(cgroup)) = (config.socket_lb, self.config.cgroup.clone()) {
            self.attach_sock(config, caps, ports, &cgroup)?;
        }
        for name in MAPS {
            let path = self.maps_dir().join(name);
            if path.exists() {
                restrict(&path, 0o600)?;
            }
        }
        self.set_attached_digest(wanted)?;
        self.loaded = Some(config.clone());
        Ok(())
    }

    fn write(&mut self, op: &MapOp) -> Result<(), BackendError> {
        let maps = self.open_maps()?;
        let r = match *op {
            MapOp::PutBackend(id, b) => maps.backends.insert(id, b, 0),
            MapOp::DeleteBackend(id) => ignore_missing(maps.backends.remove(&id)),
            MapOp::PutSlot(k, v) => maps.services.insert(k, v, 0),
            MapOp::DeleteSlot(k) => ignore_missing(maps.services.remove(&k)),
            MapOp::PutFrontend(k, v) => maps.frontends.insert(k, v, 0),
            MapOp::DeleteFrontend(k) => ignore_missing(maps.frontends.remove(&k)),
            MapOp::PutSourceRange(r, p) => maps.source_ranges.insert(
                &Key::new(SOURCE_RANGE_PREFIX_BASE + u32::from(p), r),
                1,
                0,
            ),
            MapOp::DeleteSourceRange(r, p) => ignore_missing(
                maps.source_ranges
                    .remove(&Key::new(SOURCE_RANGE_PREFIX_BASE + u32::from(p), r)),
            ),
            MapOp::PutMaglev(k, v) => maps.maglev.insert(k, v, 0),
            MapOp::DeleteMaglev(k) => ignore_missing(maps.maglev.remove(&k)),
        };
        r.map_err(|e| kernel_err("write map entry", format!("{op:?}: {e}")))
    }

    fn snapshot(&mut self) -> Result<Snapshot, BackendError> {
        let maps = self.open_maps()?;
        let read = |e: aya::maps::MapError| kernel_err("read map", e);
        let mut raw = RawMaps::default();
        for kv in maps.frontends.iter() {
            let (k, v) = kv.map_err(read)?;
            raw.frontends.insert(k, v);
        }
        for kv in maps.services.iter() {
            let (k, v) = kv.map_err(read)?;
            raw.slots.insert(k, v);
        }
        for kv in maps.backends.iter() {
            let (k, v) = kv.map_err(read)?;
            raw.backends.insert(k, v);
        }
        for k in maps.source_ranges.keys() {
            let k = k.map_err(read)?;
            let prefix = k.prefix_len().saturating_sub(SOURCE_RANGE_PREFIX_BASE);
            raw.source_ranges
                .insert((k.data(), u8::try_from(prefix).unwrap_or(u8::MAX)));
        }
        for kv in maps.maglev.iter() {
            let (k, v) = kv.map_err(read)?;
            raw.maglev.insert(k, v);
        }
        Ok(raw.snapshot())
    }

    fn conntrack(&mut self) -> Result<Vec<(Tuple, Tuple)>, BackendError> {
        let maps = self.open_maps()?;
        maps.conntrack
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| kernel_err("read sy_conntrack", e))
    }

    fn forget_flow(&mut self, key: &Tuple) -> Result<(), BackendError> {
        let maps = self.open_maps()?;
        ignore_missing(maps.conntrack.remove(key))
            .map_err(|e| kernel_err("delete sy_conntrack entry", format!("{key:?}: {e}")))
    }

    fn present(&self) -> Result<bool, BackendError> {
        Ok(self.maps_dir().exists() || self.links_dir().exists())
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        self.maps = None;
        self.loaded = None;
        self.detach_all()?;
        remove_entries(&self.maps_dir())?;
        for dir in [self.links_dir(), self.maps_dir()] {
            match fs::remove_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err("remove pin directory")(e));
                }
                _ => {}
            }
        }
        match fs::remove_dir(&self.config.pin_root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove pin root")(e)),
            _ => Ok(()),
        }
    }
}

/// In-memory maps for unit tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct FakeKernel {
    pub raw: RawMaps,
    pub loaded: Option<LoadConfig>,
    pub loads: u32,
    pub ops: Vec<MapOp>,
    /// `sy_conntrack`, in insertion order.
    pub conntrack: Vec<(Tuple, Tuple)>,
}

#[cfg(test)]
impl EbpfKernel for FakeKernel {
    fn load(&mut self, config: &LoadConfig) -> Result<(), BackendError> {
        if self.loaded.as_ref() != Some(config) {
            self.loaded = Some(config.clone());
            self.loads += 1;
        }
        Ok(())
    }

    fn write(&mut self, op: &MapOp) -> Result<(), BackendError> {
        self.raw.apply(op);
        self.ops.push(*op);
        Ok(())
    }

    fn snapshot(&mut self) -> Result<Snapshot, BackendError> {
        Ok(self.raw.snapshot())
    }

    fn conntrack(&mut self) -> Result<Vec<(Tuple, Tuple)>, BackendError> {
        Ok(self.conntrack.clone())
    }

    fn forget_flow(&mut self, key: &Tuple) -> Result<(), BackendError> {
        self.conntrack.retain(|(k, _)| k != key);
        Ok(())
    }

    fn present(&self) -> Result<bool, BackendError> {
        Ok(self.loaded.is_some())
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        *self = FakeKernel::default();
        Ok(())
    }
}
