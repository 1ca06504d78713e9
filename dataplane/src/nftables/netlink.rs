//! Incremental transactions sent straight to `nf_tables` over netlink
//! (`NETLINK_NETFILTER`), without `nft`: nft 1.0.6 dumps every chain of the
//! ruleset before each transaction (≈300 ms at 44k services).
//!
//! The encoder is hand-written: no maintained crate covers the expressions
//! the plan uses (rustables 0.8 has no `numgen`, `dynset` or `fib` and no
//! masquerade flags; nf_tables 0.1 only meta/cmp/bitwise/payload; nftnl binds
//! the C libnftnl). Each rule is the expression list nft 1.0.6 emits for the
//! same text (`nft --debug=netlink`), sets carry the userdata nft writes, so
//! `nft list` prints our objects exactly as its own (the tests check that
//! against `nft -f`). Multi-byte values follow the kernel: attributes and
//! packet fields big-endian, register values of meta/ct/fib host-endian.
//!
//! Every command is encodable, table replacement (a full sync) included:
//! [`NftNetlink::supports`] refuses only what the plan never builds (an
//! address of the other family, an over-long comment).
//!
//! One [`NftNetlink::apply`] is one batch (`NFNL_MSG_BATCH_BEGIN` … `END`)
//! that the kernel commits or aborts as a whole. Only the last message asks
//! for an ACK: the kernel answers every failing message anyway, in batch
//! order and before that ACK, so "the ACK and no error" means committed and
//! any error means nothing changed. The kernel handles the batch inside our
//! `send`, so every answer is queued when it returns.
//!
//! The kernel reads a batch from one skb, that is one `sendmsg` (a batch
//! whose `END` comes in a later send is aborted), so a full sync of 44k
//! services is one send of ~120 MB, as nft does it: the send buffer is raised
//! to fit, and the batch is built in chunks of a few MB passed as one iovec
//! each (no contiguous buffer, no copying on growth).

use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::AsRawFd;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use switchyard_api::ruleset::{IpFamily, Protocol};

use super::ir::{
    BaseChain, ChainType, Dir, Hook, Key, Match, Priority, Rule, Set, SetKind, Stmt, TABLE, Table,
    Verdict,
};
use super::text::{Command, family_word, rule_text};

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;

/// `NFT_MSG_*`.
const NEWTABLE: u16 = 0;
const DELTABLE: u16 = 2;
const NEWCHAIN: u16 = 3;
const DELCHAIN: u16 = 5;
const NEWRULE: u16 = 6;
const DELRULE: u16 = 8;
const NEWSET: u16 = 9;
const DELSET: u16 = 11;
const NEWSETELEM: u16 = 12;
const DELSETELEM: u16 = 14;

/// Attribute numbers shared by several messages: `NFTA_{CHAIN,RULE,SET,SET_ELEM_LIST}_TABLE`,
/// `NFTA_LIST_ELEM`, `NFTA_EXPR_NAME`/`_DATA`, `NFTA_DATA_VALUE`/`_VERDICT`.
const A_TABLE: u16 = 1;
const LIST_ELEM: u16 = 1;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;

/// Registers: the verdict, the first 16-byte one, and 4-byte ones by index
/// (nft names a 16-byte aligned one `NFT_REG_n`, others `NFT_REG32_nn`).
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
fn reg32(index: usize) -> u32 {
    let i = index as u32;
    if i.is_multiple_of(4) {
        1 + i / 4
    } else {
        8 + i
    }
}

/// `NFT_PAYLOAD_*_HEADER`, `NFT_CMP_*`, `NFT_META_*`, `NFT_CT_*`.
const NETWORK: u32 = 1;
const TRANSPORT: u32 = 2;
const EQ: u32 = 0;
const NEQ: u32 = 1;
const META_MARK: u32 = 3;
const META_L4PROTO: u32 = 16;
const CT_STATE: u32 = 0;
const CT_STATUS: u32 = 2;

/// `NFT_SET_*` flags and nft's datatype numbers.
const SET_INTERVAL: u32 = 0x4;
const SET_MAP: u32 = 0x8;
const SET_TIMEOUT: u32 = 0x10;
const SET_EVAL: u32 = 0x20;
const TYPE_IPV4: u32 = 7;
const TYPE_IPV6: u32 = 8;
const TYPE_INET_PROTO: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const DATA_TYPE_VERDICT: u32 = 0xffff_ff00;

/// Elements per `NEWSETELEM` message: at most ≈ 320 bytes each (a 256-byte
/// chain name), so the element list stays under the 64 KiB attribute limit.
const ELEMENTS_PER_MESSAGE: usize = 128;

/// A batch is built in chunks of about this size, one iovec each.
const CHUNK: usize = 4 << 20;

/// NF_IP_PRI_NAT_DST and NF_IP_PRI_NAT_SRC (as `text::base_chain_text`).
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;

/// A batch the kernel refused, or a socket failure.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("nf_tables netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("cannot send over nf_tables netlink: {0}")]
    Unsupported(String),
    #[error("nf_tables rejected `{command}`: {source}")]
    Command {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("nf_tables rejected the batch: {0}")]
    Batch(#[source] io::Error),
}

/// A `NETLINK_NETFILTER` socket for `nf_tables` batches.
pub struct NftNetlink {
    socket: Socket,
    seq: u32,
    sndbuf: usize,
}

impl NftNetlink {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<NftNetlink> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Errors carry only the header of the failing message, not all of it.
        socket.set_cap_ack(true)?;
        Ok(NftNetlink {
            socket,
            seq: 0,
            sndbuf: 0,
        })
    }

    /// Whether every command can be encoded (else send the transaction with `nft -f`).
    pub fn supports(commands: &[Command]) -> bool {
        commands.iter().all(supported)
    }

    /// Send all commands as one batch: Ok only when the kernel committed all
    /// of it; on error nothing changed, and the error names the failing
    /// command (for a table replacement, the object in it) and the errno.
    pub fn apply(&mut self, commands: &[Command]) -> Result<(), NetlinkError> {
        if let Some(c) = commands.iter().find(|c| !supported(c)) {
            return Err(NetlinkError::Unsupported(describe(c, None)));
        }
        let mut batch = Batch::new(self.seq);
        batch.control(NFNL_MSG_BATCH_BEGIN);
        for (i, c) in commands.iter().enumerate() {
            encode(&mut batch, i, c);
        }
        if batch.owners.len() == 1 {
            return Ok(()); // nothing to send (no commands, or empty element lists)
        }
        batch.ack_last();
        batch.control(NFNL_MSG_BATCH_END);
        self.seq = batch.seq;
        self.send(&batch.chunks).map_err(NetlinkError::Socket)?;
        let (first, last) = (batch.first, batch.last_seq());
        match self.read_answers(first, last)? {
            None => Ok(()),
            Some((seq, errno)) => {
                let source = io::Error::from_raw_os_error(errno);
                match batch.owners.get(seq.wrapping_sub(first) as usize).copied() {
                    Some(Some((i, part))) => Err(NetlinkError::Command {
                        command: describe(&commands[i], Some(part)),
                        source,
                    }),
                    _ => Err(NetlinkError::Batch(source)),
                }
            }
        }
    }

    /// The whole batch in one `sendmsg`, one iovec per chunk.
    fn send(&mut self, chunks: &[Vec<u8>]) -> io::Result<()> {
        let len: usize = chunks.iter().map(Vec::len).sum();
        self.reserve(len)?;
        let iov: Vec<libc::iovec> = chunks
            .iter()
            .map(|c| libc::iovec {
                iov_base: c.as_ptr() as *mut libc::c_void,
                iov_len: c.len(),
            })
            .collect();
        // SAFETY: an all-zero msghdr is valid (no address, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        // SAFETY: a valid socket fd; the iovecs point into `chunks`, alive
        // and unchanged for the call.
        let sent = unsafe { libc::sendmsg(self.socket.as_raw_fd(), &msg, 0) };
        match usize::try_from(sent) {
            Err(_) => Err(io::Error::last_os_error()),
            Ok(n) if n != len => Err(io::Error::other(format!("sent {n} of {len} bytes"))),
            Ok(_) => Ok(()),
        }
    }

    /// Read the answers to the messages `first..=last` until the ACK of the
    /// last one (or an error on the batch itself); the first error, if any.
    fn read_answers(&mut self, first: u32, last: u32) -> Result<Option<(u32, i32)>, NetlinkError> {
        let mut failed = None;
        let mut rx = Vec::with_capacity(1 << 16);
        loop {
            rx.clear();
            let n = self.socket.recv(&mut rx, libc::MSG_DONTWAIT).map_err(|e| {
                match e.raw_os_error() {
                    // Answers were dropped for want of room: only errors can
                    // be that many, so the batch was aborted.
                    Some(libc::ENOBUFS) => NetlinkError::Batch(e),
                    _ => NetlinkError::Socket(e),
                }
            })?;
            for (seq, errno) in errors(&rx[..n]) {
                if seq.wrapping_sub(first) > last.wrapping_sub(first) {
                    continue; // a late answer to an earlier batch
                }
                if errno != 0 && failed.is_none() {
                    failed = Some((seq, errno));
                }
                if seq == last || (seq == first && errno != 0) {
                    return Ok(failed);
                }
            }
        }
    }

    /// A batch is one skb: the send buffer must hold all of it (nft raises
    /// it the same way).
    fn reserve(&mut self, len: usize) -> io::Result<()> {
        if len + 4096 <= self.sndbuf {
            return Ok(());
        }
        let size = (len + 4096).next_power_of_two().max(1 << 20);
        let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: a valid socket fd and a c_int option value of the given length.
        let rc = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        self.sndbuf = size;
        Ok(())
    }
}

/// `(seq, errno)` of every `NLMSG_ERROR` (errno 0: an ACK) in a receive buffer.
fn errors(buf: &[u8]) -> impl Iterator<Item = (u32, i32)> + '_ {
    let mut off = 0;
    std::iter::from_fn(move || {
        // nlmsghdr (len, type, flags, seq, pid), then nlmsgerr's error.
        while off + 20 <= buf.len() {
            let at = |i: usize| {
                let b = &buf[off + i..];
                u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
            };
            let (len, seq, error) = (at(0) as usize, at(8), at(16) as i32);
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if len < 16 {
                return None;
            }
            off += len.next_multiple_of(4);
            if kind == NLMSG_ERROR {
                return Some((seq, -error));
            }
        }
        None
    })
}

fn supported(c: &Command) -> bool {
    match c {
        Command::ReplaceTable(t) => {
            t.sets
                .values()
                .all(|s| set_fits(s) && s.elements.keys().all(|k| key_fits(k, t.family)))
                && t.chains
                    .values()
                    .flat_map(|c| &c.rules)
                    .all(|r| rule_fits(r, t.family))
        }
        Command::AddSet { set, .. } => set_fits(set),
        Command::AddElements {
            family, elements, ..
        } => elements.iter().all(|(k, _)| key_fits(k, *family)),
        Command::DeleteElements { family, keys, .. } => keys.iter().all(|k| key_fits(k, *family)),
        Command::AddRule { family, rule, .. } => rule_fits(rule, *family),
        Command::DropTable(_)
        | Command::AddChain { .. }
        | Command::DeleteSet { .. }
        | Command::FlushSet { .. }
        | Command::FlushChain { .. }
        | Command::DeleteChain { .. } => true,
    }
}

/// Userdata values are at most 255 bytes.
fn set_fits(set: &Set) -> bool {
    set.comment.as_ref().is_none_or(|c| c.len() < 255)
}

fn rule_fits(rule: &Rule, family: IpFamily) -> bool {
    let fits = |ip: &IpAddr| IpFamily::of(ip) == family;
    rule.comment.as_ref().is_none_or(|c| c.len() < 255)
        && rule.matches.iter().all(|m| match m {
            Match::Addr(_, ip) => fits(ip),
            Match::SaddrInPrefix(c) => fits(&c.addr()),
            _ => true,
        })
        && rule.stmts.iter().all(|s| match s {
            Stmt::Dnat(ip, _) => fits(ip),
            _ => true,
        })
}

fn key_fits(key: &Key, family: IpFamily) -> bool {
    let fits = |ip: &IpAddr| IpFamily::of(ip) == family;
    match key {
        Key::Prefix(c) => fits(&c.addr()),
        Key::Addr(a) | Key::AddrProtoPort(a, _, _) => fits(a),
        Key::AddrPair(a, b) => fits(a) && fits(b),
        Key::ProtoPort(_, _) => true,
    }
}

/// A command as the error names it: its nft text, or for a table
/// replacement the object `part` of it (see [`table_parts`]).
fn describe(c: &Command, part: Option<usize>) -> String {
    let Command::ReplaceTable(t) = c else {
        return c.to_string().trim_end().into();
    };
    let fam = family_word(t.family);
    let what = match part.and_then(|p| table_parts(t).nth(p)) {
        None => return format!("replace table {fam} {TABLE}"),
        Some(Part::Table(NEWTABLE)) => format!("add table {fam} {TABLE}"),
        Some(Part::Table(_)) => format!("delete table {fam} {TABLE}"),
        Some(Part::Chain(name, base)) => Command::AddChain {
            family: t.family,
            name: name.to_string(),
            base: base.copied(),
        }
        .to_string(),
        Some(Part::Set(name, set)) => {
            let mut decl = Set::new(set.kind, set.comment.as_deref());
            decl.timeout_seconds = set.timeout_seconds;
            let add = Command::AddSet {
                family: t.family,
                name: name.to_string(),
                set: decl,
            };
            format!("{} (or its elements)", add.to_string().trim_end())
        }
        Some(Part::Rule(chain, rule)) => {
            format!(
                "add rule {fam} {TABLE} {chain} {}",
                rule_text(rule, t.family)
            )
        }
    };
    format!("replace table {fam} {TABLE}: {}", what.trim_end())
}

/// The objects of a table replacement in the order they are sent, as nft
/// 1.0.6 does: the table (created if missing, deleted, created anew), the
/// chains, each set followed by its elements, and the rules (map elements
/// and rules reference chains and sets).
enum Part<'a> {
    Table(u16),
    Chain(&'a str, Option<&'a BaseChain>),
    Set(&'a str, &'a Set),
    Rule(&'a str, &'a Rule),
}

fn table_parts(t: &Table) -> impl Iterator<Item = Part<'_>> {
    let rules = t
        .chains
        .iter()
        .flat_map(|(name, c)| c.rules.iter().map(move |r| Part::Rule(name, r)));
    [NEWTABLE, DELTABLE, NEWTABLE]
        .into_iter()
        .map(Part::Table)
        .chain(
            t.chains
                .iter()
                .map(|(name, c)| Part::Chain(name, c.base.as_ref())),
        )
        .chain(t.sets.iter().map(|(name, s)| Part::Set(name, s)))
        .chain(rules)
}

/// The messages of one batch, written into chunks of about [`CHUNK`] bytes.
struct Batch {
    chunks: Vec<Vec<u8>>,
    /// Sequence number of the batch-begin message.
    first: u32,
    /// The last sequence number used.
    seq: u32,
    /// The command (and object of a table replacement, [`table_parts`]) of
    /// each message, by `seq - first` (None: batch begin/end).
    owners: Vec<Option<(usize, usize)>>,
    /// The object of the command being encoded.
    part: usize,
    /// The last `NFTA_SET_ID` given (nft numbers the sets of a batch 1, 2, …).
    set_id: u32,
    /// Where the last message starts: chunk and offset.
    last: (usize, usize),
}

impl Batch {
    fn new(seq: u32) -> Batch {
        Batch {
            chunks: Vec::new(),
            first: seq.wrapping_add(1),
            seq,
            owners: Vec::new(),
            part: 0,
            set_id: 0,
            last: (0, 0),
        }
    }

    fn last_seq(&self) -> u32 {
        self.seq.wrapping_sub(1)
    }

    fn control(&mut self, kind: u16) {
        self.message(None, kind, 0, 0, NFNL_SUBSYS_NFTABLES, |_| {});
    }

    /// One command message (`NFT_MSG_*` of the nf_tables subsystem).
    fn command(
        &mut self,
        owner: usize,
        msg: u16,
        flags: u16,
        family: IpFamily,
        body: impl FnOnce(&mut Attrs),
    ) {
        let proto = nfproto(family);
        self.message(
            Some((owner, self.part)),
            NFNL_SUBSYS_NFTABLES << 8 | msg,
            flags,
            proto,
            0,
            body,
        );
    }

    fn message(
        &mut self,
        owner: Option<(usize, usize)>,
        kind: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        body: impl FnOnce(&mut Attrs),
    ) {
        self.seq = self.seq.wrapping_add(1);
        self.owners.push(owner);
        if self.chunks.last().is_none_or(|c| c.len() >= CHUNK) {
            self.chunks.push(Vec::new());
        }
        let chunk = self.chunks.len() - 1;
        let buf = &mut self.chunks[chunk];
        let start = buf.len();
        self.last = (chunk, start);
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        buf.extend_from_slice(&self.seq.to_ne_bytes());
        buf.extend_from_slice(&[0; 4]);
        // nfgenmsg: family, version, res_id (big-endian).
        buf.extend_from_slice(&[family, 0]);
        buf.extend_from_slice(&res_id.to_be_bytes());
        body(&mut Attrs(buf));
        let len = (buf.len() - start) as u32;
        buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn ack_last(&mut self) {
        let (chunk, start) = self.last;
        let buf = &mut self.chunks[chunk];
        let at = start + 6;
        let flags = u16::from_ne_bytes([buf[at], buf[at + 1]]) | NLM_F_ACK;
        buf[at..at + 2].copy_from_slice(&flags.to_ne_bytes());
    }
}

fn nfproto(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => 2,
        IpFamily::V6 => 10,
    }
}

fn encode(b: &mut Batch, i: usize, c: &Command) {
    b.part = 0;
    match c {
        Command::ReplaceTable(t) => {
            for (part, p) in table_parts(t).enumerate() {
                b.part = part;
                match p {
                    Part::Table(msg) => table(b, i, msg, t.family),
                    Part::Chain(name, base) => add_chain(b, i, t.family, name, base),
                    Part::Set(name, set) => {
                        let id = add_set(b, i, t.family, name, set);
                        let elements = set.elements.iter().map(|(k, v)| (k, v.as_ref()));
                        let elements = set_elements(t.family, elements, true);
                        element_messages(b, i, NEWSETELEM, t.family, name, Some(id), &elements);
                    }
                    Part::Rule(chain, rule) => add_rule(b, i, t.family, chain, rule),
                }
            }
        }
        Command::DropTable(family) => {
            table(b, i, NEWTABLE, *family);
            table(b, i, DELTABLE, *family);
        }
        Command::AddChain { family, name, base } => add_chain(b, i, *family, name, base.as_ref()),
        Command::FlushChain { family, name } => b.command(i, DELRULE, 0, *family, |a| {
            a.str(A_TABLE, TABLE);
            a.str(2, name); // NFTA_RULE_CHAIN
        }),
        Command::DeleteChain { family, name } => b.command(i, DELCHAIN, 0, *family, |a| {
            a.str(A_TABLE, TABLE);
            a.str(3, name);
        }),
        Command::DeleteSet { family, name, .. } => b.command(i, DELSET, 0, *family, |a| {
            a.str(A_TABLE, TABLE);
            a.str(2, name); // NFTA_SET_NAME
        }),
        Command::AddSet { family, name, set } => {
            add_set(b, i, *family, name, set);
        }
        Command::AddElements {
            family,
            set,
            elements,
        } => {
            let elements =
                set_elements(*family, elements.iter().map(|(k, v)| (k, v.as_ref())), true);
            element_messages(b, i, NEWSETELEM, *family, set, None, &elements);
        }
        // A DELSETELEM without an element list flushes the set.
        Command::FlushSet { family, name, .. } => b.command(i, DELSETELEM, 0, *family, |a| {
            a.str(A_TABLE, TABLE);
            a.str(2, name); // NFTA_SET_ELEM_LIST_SET
        }),
        Command::DeleteElements { family, set, keys } => {
            let elements = set_elements(*family, keys.iter().map(|k| (k, None)), false);
            element_messages(b, i, DELSETELEM, *family, set, None, &elements);
        }
        Command::AddRule {
            family,
            chain,
            rule,
        } => add_rule(b, i, *family, chain, rule),
    }
}

/// `NEWTABLE` (created if missing: no `NLM_F_EXCL`) or `DELTABLE`.
fn table(b: &mut Batch, i: usize, msg: u16, family: IpFamily) {
    let flags = if msg == NEWTABLE { NLM_F_CREATE } else { 0 };
    b.command(i, msg, flags, family, |a| {
        a.str(1, TABLE); // NFTA_TABLE_NAME
        if msg == NEWTABLE {
            a.u32(2, 0); // NFTA_TABLE_FLAGS
        }
    });
}

fn add_chain(b: &mut Batch, i: usize, family: IpFamily, name: &str, base: Option<&BaseChain>) {
    b.command(i, NEWCHAIN, NLM_F_CREATE, family, |a| {
        a.str(A_TABLE, TABLE);
        a.str(3, name); // NFTA_CHAIN_NAME
        let Some(base) = base else {
            return;
        };
        let kind = match base.kind {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        };
        // NF_INET_* hook numbers.
        let hook: u32 = match base.hook {
            Hook::Prerouting => 0,
            Hook::Input => 1,
            Hook::Forward => 2,
            Hook::Output => 3,
            Hook::Postrouting => 4,
        };
        let priority = match base.priority {
            Priority::Dstnat(o) => DSTNAT + o,
            Priority::Srcnat(o) => SRCNAT + o,
        };
        a.str(7, kind); // NFTA_CHAIN_TYPE
        a.u32(5, 1); // NFTA_CHAIN_POLICY: NF_ACCEPT
        a.nest(4, |h| {
            // NFTA_CHAIN_HOOK: NFTA_HOOK_HOOKNUM, _PRIORITY.
            h.u32(1, hook);
            h.u32(2, priority as u32);
        });
    });
}

/// `NEWSET`; its `NFTA_SET_ID`.
fn add_set(b: &mut Batch, i: usize, family: IpFamily, name: &str, set: &Set) -> u32 {
    let (key_type, key_len) = set_key(set.kind, family);
    let mut flags = if set.kind.is_map() { SET_MAP } else { 0 };
    if set.kind == SetKind::Prefix {
        flags |= SET_INTERVAL;
    }
    if set.timeout_seconds.is_some() {
        flags |= SET_TIMEOUT | SET_EVAL;
    }
    b.set_id += 1;
    let id = b.set_id;
    b.command(i, NEWSET, NLM_F_CREATE, family, |a| {
        a.str(A_TABLE, TABLE);
        a.str(2, name);
        a.u32(3, flags); // NFTA_SET_FLAGS
        a.u32(4, key_type); // NFTA_SET_KEY_TYPE
        a.u32(5, key_len); // NFTA_SET_KEY_LEN
        if set.kind.is_map() {
            a.u32(6, DATA_TYPE_VERDICT); // NFTA_SET_DATA_TYPE
            a.u32(7, 0); // NFTA_SET_DATA_LEN
        }
        // NFTA_SET_ID: the kernel requires one, unique in the batch.
        a.u32(10, id);
        if let Some(t) = set.timeout_seconds {
            a.bytes(11, &(u64::from(t) * 1000).to_be_bytes()); // NFTA_SET_TIMEOUT (ms)
        }
        a.bytes(13, &set_userdata(set.kind, set.comment.as_deref())); // NFTA_SET_USERDATA
    });
    id
}

fn add_rule(b: &mut Batch, i: usize, family: IpFamily, chain: &str, rule: &Rule) {
    b.command(i, NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family, |a| {
        a.str(A_TABLE, TABLE);
        a.str(2, chain); // NFTA_RULE_CHAIN
        a.nest(4, |e| rule_exprs(e, family, rule)); // NFTA_RULE_EXPRESSIONS
        if let Some(c) = &rule.comment {
            let mut u = Vec::new();
            tlv(&mut u, 0, &cstr(c)); // NFTNL_UDATA_RULE_COMMENT
            a.bytes(7, &u); // NFTA_RULE_USERDATA
        }
    });
}

/// One set element as sent.
struct Element<'a> {
    key: Vec<u8>,
    /// `NFT_SET_ELEM_INTERVAL_END`: the interval before ends here.
    end: bool,
    /// The interval reaches the last address (no end element follows).
    open: bool,
    value: Option<&'a Verdict>,
}

/// The elements nft 1.0.6 sends for these keys. A prefix is an interval:
/// its start, and an end element at the address after it (none for a
/// prefix reaching the last address: its start says so in its userdata).
/// Adds are sorted, and unless one starts at the zero address they begin
/// with an end element there (nft sends it to a set that does not hold it
/// yet; the kernel takes the same element again as a no-op).
fn set_elements<'a>(
    family: IpFamily,
    keys: impl Iterator<Item = (&'a Key, Option<&'a Verdict>)>,
    add: bool,
) -> Vec<Element<'a>> {
    let bits: u32 = match family {
        IpFamily::V4 => 32,
        IpFamily::V6 => 128,
    };
    let addr = |n: u128| match family {
        IpFamily::V4 => (n as u32).to_be_bytes().to_vec(),
        IpFamily::V6 => n.to_be_bytes().to_vec(),
    };
    let mut plain = Vec::new();
    let mut intervals = Vec::new();
    for (key, value) in keys {
        match key {
            Key::Prefix(c) => {
                let start = match c.addr() {
                    IpAddr::V4(a) => u128::from(u32::from(a)),
                    IpAddr::V6(a) => u128::from(a),
                };
                let end = 1u128
                    .checked_shl(bits - u32::from(c.prefix()))
                    .and_then(|size| start.checked_add(size))
                    .filter(|e| bits == 128 || *e < 1 << 32);
                intervals.push((start, end));
            }
            _ => plain.push(Element {
                key: key_bytes(key),
                end: false,
                open: false,
                value,
            }),
        }
    }
    if add {
        intervals.sort_unstable();
        if intervals.first().is_some_and(|(start, _)| *start != 0) {
            plain.push(Element {
                key: addr(0),
                end: true,
                open: false,
                value: None,
            });
        }
    }
    for (start, end) in intervals {
        plain.push(Element {
            key: addr(start),
            end: false,
            open: end.is_none(),
            value: None,
        });
        if let Some(end) = end {
            plain.push(Element {
                key: addr(end),
                end: true,
                open: false,
                value: None,
            });
        }
    }
    plain
}

/// `NEWSETELEM`/`DELSETELEM` messages (`NFTA_SET_ELEM_LIST_{TABLE,SET,SET_ID,ELEMENTS}`);
/// nft numbers the elements of a message 1, 2, ….
fn element_messages(
    b: &mut Batch,
    i: usize,
    msg: u16,
    family: IpFamily,
    set: &str,
    set_id: Option<u32>,
    elements: &[Element],
) {
    let flags = if msg == NEWSETELEM { NLM_F_CREATE } else { 0 };
    for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
        b.command(i, msg, flags, family, |a| {
            a.str(A_TABLE, TABLE);
            a.str(2, set);
            if let Some(id) = set_id {
                a.u32(4, id);
            }
            a.nest(3, |l| {
                for (n, e) in chunk.iter().enumerate() {
                    l.nest(n as u16 + 1, |x| {
                        if e.end {
                            x.u32(3, 1); // NFTA_SET_ELEM_FLAGS: NFT_SET_ELEM_INTERVAL_END
                        }
                        x.value(1, &e.key); // NFTA_SET_ELEM_KEY
                        if let Some(v) = e.value {
                            x.verdict(2, v); // NFTA_SET_ELEM_DATA
                        }
                        if e.open {
                            // NFTA_SET_ELEM_USERDATA: NFTNL_UDATA_SET_ELEM_FLAGS,
                            // NFTNL_SET_ELEM_F_INTERVAL_OPEN.
                            let mut u = Vec::new();
                            tlv(&mut u, 1, &1u32.to_ne_bytes());
                            x.bytes(6, &u);
                        }
                    });
                }
            });
        });
    }
}

/// nft's key datatype (concatenations: 6 bits per field) and key length
/// (each field padded to 4 bytes).
fn set_key(kind: SetKind, family: IpFamily) -> (u32, u32) {
    let (addr, len) = match family {
        IpFamily::V4 => (TYPE_IPV4, 4),
        IpFamily::V6 => (TYPE_IPV6, 16),
    };
    let proto_port = TYPE_INET_PROTO << 6 | TYPE_INET_SERVICE;
    match kind {
        SetKind::Addr | SetKind::Prefix => (addr, len),
        SetKind::AddrPair => (addr << 6 | addr, 2 * len),
        SetKind::AddrProtoPortVerdict => (addr << 12 | proto_port, len + 8),
        SetKind::ProtoPortVerdict => (proto_port, 8),
    }
}

/// The set userdata nft 1.0.6 writes (`NFTNL_UDATA_SET_*`): key byte order
/// (big-endian for an address, none for a concatenation), for a map the data
/// byte order, for a concatenation an empty `typeof` concat, for a map "data
/// is no interval", and the comment.
fn set_userdata(kind: SetKind, comment: Option<&str>) -> Vec<u8> {
    let concat = !matches!(kind, SetKind::Addr | SetKind::Prefix);
    // BYTEORDER_BIG_ENDIAN, or BYTEORDER_INVALID for a concatenation.
    let byteorder: u32 = if concat { 0 } else { 2 };
    let mut u = Vec::new();
    tlv(&mut u, 0, &byteorder.to_ne_bytes());
    if kind.is_map() {
        tlv(&mut u, 1, &0u32.to_ne_bytes());
    }
    if concat {
        // NFTNL_UDATA_SET_TYPEOF_EXPR = EXPR_CONCAT (13), _TYPEOF_DATA = nothing.
        let mut t = Vec::new();
        tlv(&mut t, 0, &13u32.to_ne_bytes());
        tlv(&mut t, 1, &[]);
        tlv(&mut u, 3, &t);
    }
    if kind.is_map() {
        tlv(&mut u, 6, &0u32.to_ne_bytes());
    }
    if let Some(c) = comment {
        tlv(&mut u, 7, &cstr(c));
    }
    u
}

/// A userdata TLV: type and length bytes, then the value.
fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// A comment as nft stores it: quoted by [`super::text`] (`"` becomes `'`), NUL-terminated.
fn cstr(comment: &str) -> Vec<u8> {
    let mut v = comment.replace('"', "'").into_bytes();
    v.push(0);
    v
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A concatenation field padded to 4 bytes.
fn padded(field: &[u8]) -> [u8; 4] {
    let mut out = [0; 4];
    out[..field.len()].copy_from_slice(field);
    out
}

fn key_bytes(key: &Key) -> Vec<u8> {
    let proto_port =
        |p: &Protocol, port: &u16| [padded(&[p.number()]), padded(&port.to_be_bytes())].concat();
    match key {
        Key::Addr(a) => ip_bytes(a),
        Key::AddrPair(a, b) => [ip_bytes(a), ip_bytes(b)].concat(),
        Key::AddrProtoPort(a, p, port) => [ip_bytes(a), proto_port(p, port)].concat(),
        Key::ProtoPort(p, port) => proto_port(p, port),
        // Intervals: see `set_elements`.
        Key::Prefix(c) => ip_bytes(&c.addr()),
    }
}

/// Offset of the address in the network header, and its length.
fn addr_at(family: IpFamily, dir: Dir) -> (u32, usize) {
    match (family, dir) {
        (IpFamily::V4, Dir::Saddr) => (12, 4),
        (IpFamily::V4, Dir::Daddr) => (16, 4),
        (IpFamily::V6, Dir::Saddr) => (8, 16),
        (IpFamily::V6, Dir::Daddr) => (24, 16),
    }
}

/// A rule's expressions, as nft generates them for [`super::text::rule_text`].
fn rule_exprs(e: &mut Attrs, family: IpFamily, rule: &Rule) {
    // Load an address of the packet into the register.
    let addr = |e: &mut Attrs, dir: Dir, reg: u32| {
        let (offset, len) = addr_at(family, dir);
        e.payload(NETWORK, offset, len, reg);
        len
    };
    // `meta l4proto <p>`; nft's dependency for `<p> dport` too.
    let l4proto = |e: &mut Attrs, p: &Protocol| {
        e.meta(META_L4PROTO, REG_1);
        e.cmp(EQ, &[p.number()]);
    };
    // `ct <key> <bit>`: the bit is set.
    let ct_bit = |e: &mut Attrs, key: u32, bit: u32| {
        e.u32_expr("ct", &[(1, REG_1), (2, key)]); // NFTA_CT_DREG, _KEY
        e.bitwise(&bit.to_ne_bytes(), &[0; 4]);
        e.cmp(NEQ, &[0; 4]);
    };
    // `fib <flag> type local`: NFTA_FIB_DREG, _RESULT (NFT_FIB_RESULT_ADDRTYPE), _FLAGS.
    let fib_local = |e: &mut Attrs, flag: u32| {
        e.u32_expr("fib", &[(1, REG_1), (2, 3), (3, flag)]);
        e.cmp(EQ, &2u32.to_ne_bytes()); // RTN_LOCAL
    };
    for m in &rule.matches {
        match m {
            Match::Addr(dir, ip) => {
                addr(e, *dir, REG_1);
                e.cmp(EQ, &ip_bytes(ip));
            }
            Match::AddrInSet { dir, set, negate } => {
                addr(e, *dir, REG_1);
                e.lookup(set, None, *negate);
            }
            Match::SaddrInPrefix(c) => {
                let ip = ip_bytes(&c.addr());
                let bits = usize::from(c.prefix());
                let (offset, len) = addr_at(family, Dir::Saddr);
                if bits > 0 && bits.is_multiple_of(8) {
                    // Whole bytes: nft loads and compares only those.
                    e.payload(NETWORK, offset, bits / 8, REG_1);
                    e.cmp(EQ, &ip[..bits / 8]);
                } else {
                    let mask: Vec<u8> = (0..len)
                        .map(|i| (0xff00u16 >> bits.saturating_sub(8 * i).min(8)) as u8)
                        .collect();
                    e.payload(NETWORK, offset, len, REG_1);
                    e.bitwise(&mask, &vec![0; len]);
                    e.cmp(EQ, &ip);
                }
            }
            Match::AddrPairInSet(set) => {
                let len = addr(e, Dir::Saddr, REG_1);
                addr(e, Dir::Daddr, reg32(len / 4));
                e.lookup(set, None, false);
            }
            Match::DaddrNotLoopback => match family {
                IpFamily::V4 => {
                    e.payload(NETWORK, 16, 1, REG_1);
                    e.cmp(NEQ, &[127]);
                }
                IpFamily::V6 => {
                    addr(e, Dir::Daddr, REG_1);
                    e.cmp(NEQ, &Ipv6Addr::LOCALHOST.octets());
                }
            },
            Match::Dport(p, port) => {
                l4proto(e, p);
                e.payload(TRANSPORT, 2, 2, REG_1);
                e.cmp(EQ, &port.to_be_bytes());
            }
            Match::L4Proto(p) => l4proto(e, p),
            // Bit IP_CT_NEW of the state, IPS_DST_NAT of the status.
            Match::CtStateNew => ct_bit(e, CT_STATE, 0x08),
            Match::CtStatusDnat => ct_bit(e, CT_STATUS, 0x20),
            // NFTA_FIB_F_SADDR, NFTA_FIB_F_DADDR.
            Match::FibSaddrLocal => fib_local(e, 1),
            Match::FibDaddrLocal => fib_local(e, 2),
            Match::MarkClear(mask) => {
                e.meta(META_MARK, REG_1);
                e.bitwise(&mask.to_ne_bytes(), &[0; 4]);
                e.cmp(EQ, &[0; 4]);
            }
            Match::NumgenZero(n) => {
                // NFTA_NG_DREG, _MODULUS, _TYPE (NFT_NG_RANDOM), _OFFSET.
                e.u32_expr("numgen", &[(1, REG_1), (2, *n), (3, 1), (4, 0)]);
                e.cmp(EQ, &[0; 4]);
            }
        }
    }
    for s in &rule.stmts {
        match s {
            Stmt::VmapAddrProtoPort(dir, map) => {
                let words = addr(e, *dir, REG_1) / 4;
                e.meta(META_L4PROTO, reg32(words));
                e.payload(TRANSPORT, 2, 2, reg32(words + 1));
                e.lookup(map, Some(REG_VERDICT), false);
            }
            Stmt::VmapProtoPort(map) => {
                e.meta(META_L4PROTO, REG_1);
                e.payload(TRANSPORT, 2, 2, reg32(1));
                e.lookup(map, Some(REG_VERDICT), false);
            }
            Stmt::UpdateSaddr(set) => {
                addr(e, Dir::Saddr, REG_1);
                e.expr("dynset", |d| {
                    d.str(1, set); // NFTA_DYNSET_SET_NAME
                    d.u32(3, 1); // NFTA_DYNSET_OP: NFT_DYNSET_OP_UPDATE
                    d.u32(4, REG_1); // NFTA_DYNSET_SREG_KEY
                });
            }
            Stmt::MarkOr(bits) | Stmt::MarkXor(bits) => {
                // mark = (mark & m) ^ bits: m = !bits for or, all ones for xor.
                let keep = if matches!(s, Stmt::MarkOr(_)) {
                    !bits
                } else {
                    u32::MAX
                };
                e.meta(META_MARK, REG_1);
                e.bitwise(&keep.to_ne_bytes(), &bits.to_ne_bytes());
                e.u32_expr("meta", &[(2, META_MARK), (3, REG_1)]); // NFTA_META_KEY, _SREG
            }
            // NFTA_MASQ_FLAGS: NF_NAT_RANGE_PROTO_RANDOM_FULLY.
            Stmt::Masquerade => e.u32_expr("masq", &[(1, 0x10)]),
            Stmt::Dnat(ip, port) => {
                e.immediate(REG_1, &ip_bytes(ip));
                e.immediate(2, &port.to_be_bytes());
                // NFTA_NAT_TYPE (NFT_NAT_DNAT), _FAMILY, _REG_ADDR_MIN,
                // _REG_PROTO_MIN, _FLAGS (NF_NAT_RANGE_PROTO_SPECIFIED).
                let fam = u32::from(nfproto(IpFamily::of(ip)));
                e.u32_expr("nat", &[(1, 1), (2, fam), (3, REG_1), (5, 2), (7, 2)]);
            }
            Stmt::Reject => e.expr("reject", |r| {
                r.u32(1, 0); // NFTA_REJECT_TYPE: NFT_REJECT_ICMP_UNREACH
                // NFTA_REJECT_ICMP_CODE: port unreachable.
                r.bytes(2, &[if family == IpFamily::V4 { 3 } else { 4 }]);
            }),
            Stmt::Verdict(v) => e.expr("immediate", |i| {
                i.u32(1, REG_VERDICT); // NFTA_IMMEDIATE_DREG
                i.verdict(2, v); // NFTA_IMMEDIATE_DATA
            }),
        }
    }
}

/// Attributes appended to a message under construction.
struct Attrs<'a>(&'a mut Vec<u8>);

impl Attrs<'_> {
    fn bytes(&mut self, kind: u16, value: &[u8]) {
        self.header(4 + value.len(), kind);
        self.0.extend_from_slice(value);
        self.pad();
    }

    fn u32(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    fn str(&mut self, kind: u16, value: &str) {
        self.bytes(kind, &[value.as_bytes(), &[0]].concat());
    }

    fn nest(&mut self, kind: u16, body: impl FnOnce(&mut Attrs)) {
        let start = self.0.len();
        self.header(0, kind | NLA_F_NESTED);
        body(&mut Attrs(self.0));
        // Oversized nests are left to the kernel to refuse.
        let len = u16::try_from(self.0.len() - start).unwrap_or(0);
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn header(&mut self, len: usize, kind: u16) {
        let len = u16::try_from(len).unwrap_or(0);
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
    }

    fn pad(&mut self) {
        self.0.resize(self.0.len().next_multiple_of(4), 0);
    }

    /// `NFTA_DATA_VALUE` nested in `kind`.
    fn value(&mut self, kind: u16, value: &[u8]) {
        self.nest(kind, |d| d.bytes(DATA_VALUE, value));
    }

    /// `NFTA_DATA_VERDICT` { `NFTA_VERDICT_CODE`, `NFTA_VERDICT_CHAIN` } nested in `kind`.
    fn verdict(&mut self, kind: u16, v: &Verdict) {
        let (code, chain): (i32, Option<&str>) = match v {
            Verdict::Drop => (0, None),
            Verdict::Accept => (1, None),
            Verdict::Jump(c) => (-3, Some(c)),
            Verdict::Goto(c) => (-4, Some(c)),
            Verdict::Return => (-5, None),
        };
        self.nest(kind, |d| {
            d.nest(DATA_VERDICT, |v| {
                v.u32(1, code as u32);
                if let Some(c) = chain {
                    v.str(2, c);
                }
            });
        });
    }

    /// One expression of a rule: `NFTA_LIST_ELEM` { `NFTA_EXPR_NAME`, `NFTA_EXPR_DATA` }.
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Attrs)) {
        self.nest(LIST_ELEM, |e| {
            e.str(1, name);
            e.nest(2, data);
        });
    }

    /// An expression whose attributes are all 32-bit numbers.
    fn u32_expr(&mut self, name: &str, attrs: &[(u16, u32)]) {
        self.expr(name, |e| {
            for (kind, value) in attrs {
                e.u32(*kind, *value);
            }
        });
    }

    /// NFTA_PAYLOAD_DREG, _BASE, _OFFSET, _LEN.
    fn payload(&mut self, base: u32, offset: u32, len: usize, dreg: u32) {
        self.u32_expr(
            "payload",
            &[(1, dreg), (2, base), (3, offset), (4, len as u32)],
        );
    }

    /// NFTA_META_DREG, _KEY.
    fn meta(&mut self, key: u32, dreg: u32) {
        self.u32_expr("meta", &[(1, dreg), (2, key)]);
    }

    /// Compare register 1: NFTA_CMP_SREG, _OP, _DATA.
    fn cmp(&mut self, op: u32, data: &[u8]) {
        self.expr("cmp", |e| {
            e.u32(1, REG_1);
            e.u32(2, op);
            e.value(3, data);
        });
    }

    /// Register 1 = (register 1 & mask) ^ xor: NFTA_BITWISE_SREG, _DREG, _LEN, _MASK, _XOR.
    fn bitwise(&mut self, mask: &[u8], xor: &[u8]) {
        self.expr("bitwise", |e| {
            e.u32(1, REG_1);
            e.u32(2, REG_1);
            e.u32(3, mask.len() as u32);
            e.value(4, mask);
            e.value(5, xor);
        });
    }

    /// Look register 1 up in a set (a map with `dreg`): NFTA_LOOKUP_SET,
    /// _SREG, _DREG, _FLAGS (NFT_LOOKUP_F_INV).
    fn lookup(&mut self, set: &str, dreg: Option<u32>, invert: bool) {
        self.expr("lookup", |e| {
            e.str(1, set);
            e.u32(2, REG_1);
            if let Some(d) = dreg {
                e.u32(3, d);
            }
            if invert {
                e.u32(5, 1);
            }
        });
    }

    /// NFTA_IMMEDIATE_DREG, _DATA.
    fn immediate(&mut self, dreg: u32, value: &[u8]) {
        self.expr("immediate", |e| {
            e.u32(1, dreg);
            e.value(2, value);
        });
    }
}

#[cfg(test)]
#[path = "netlink_tests.rs"]
mod tests;
