//! One `nf_tables` batch: `NFNL_MSG_BATCH_BEGIN`, the command messages,
//! `NFNL_MSG_BATCH_END`, with consecutive sequence numbers, written into
//! chunks of a few MB (one iovec each: no contiguous buffer, no copying on
//! growth). The batch remembers which command (and which object of a table
//! replacement) each message belongs to, so an error the kernel answers for
//! one message names the command that failed.

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
use switchyard_api::ruleset::IpFamily;

use super::NetlinkError;
use super::attrs::Attrs;
use super::commands::{Part, table_parts};
use super::nfproto;
use crate::nftables::ir::Set;
use crate::nftables::text::{family_word, rule_text};
use crate::nftables::transaction::Command;

/// A batch is built in chunks of about this size.
const CHUNK: usize = 4 << 20;

/// `NFNL_SUBSYS_NFTABLES`, the high byte of every command's message type
/// and the resource id of the batch messages.
const SUBSYS: u16 = libc::NFNL_SUBSYS_NFTABLES as u16;

/// The messages of one batch.
pub struct Batch {
    pub chunks: Vec<Vec<u8>>,
    /// Sequence number of the batch-begin message.
    first: u32,
    /// The last sequence number used.
    seq: u32,
    /// The command (and object of a table replacement, [`table_parts`]) of
    /// each message, by `seq - first` (None: batch begin/end).
    owners: Vec<Option<(usize, usize)>>,
    /// The object of the command being encoded.
    pub part: usize,
    /// The last `NFTA_SET_ID` given (nft numbers the sets of a batch 1, 2, …).
    set_id: u32,
    /// Where the last message starts: chunk and offset.
    last: (usize, usize),
}

impl Batch {
    /// A batch whose first message (the begin) has sequence number `after + 1`.
    pub fn begin(after: u32) -> Batch {
        let mut batch = Batch {
            chunks: Vec::new(),
            first: after.wrapping_add(1),
            seq: after,
            owners: Vec::new(),
            part: 0,
            set_id: 0,
            last: (0, 0),
        };
        batch.control(libc::NFNL_MSG_BATCH_BEGIN);
        batch
    }

    /// Whether no command added a message.
    pub fn is_empty(&self) -> bool {
        self.owners.len() == 1
    }

    /// Ask for an ACK of the last command and close the batch; the first
    /// and last sequence numbers whose answers tell how it went.
    pub fn end(&mut self) -> (u32, u32) {
        self.ack_last();
        let last = self.seq;
        self.control(libc::NFNL_MSG_BATCH_END);
        (self.first, last)
    }

    /// The last sequence number used (the next batch starts after it).
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// A new `NFTA_SET_ID`, unique in the batch.
    pub fn next_set_id(&mut self) -> u32 {
        self.set_id += 1;
        self.set_id
    }

    fn control(&mut self, kind: libc::c_int) {
        self.message(None, kind as u16, 0, 0, SUBSYS, |_| {});
    }

    /// One message of command `owner`: `msg` (`NFT_MSG_*`) with `flags`
    /// besides `NLM_F_REQUEST`.
    pub fn command(
        &mut self,
        owner: usize,
        msg: libc::c_int,
        flags: u16,
        family: IpFamily,
        body: impl FnOnce(&mut Attrs),
    ) {
        let kind = SUBSYS << 8 | msg as u16;
        let part = Some((owner, self.part));
        self.message(part, kind, flags, nfproto(family), 0, body);
    }

    /// `nlmsghdr` (length, type, flags, seq, port 0), `nfgenmsg` (family,
    /// version 0, resource id big-endian), then the attributes.
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
        buf.extend_from_slice(&[family, libc::NFNETLINK_V0 as u8]);
        buf.extend_from_slice(&res_id.to_be_bytes());
        body(&mut Attrs(buf));
        let len = u32::try_from(buf.len() - start).unwrap_or(u32::MAX);
        buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Only the last message asks for an ACK: the kernel answers every
    /// failing message anyway, in batch order and before that ACK.
    fn ack_last(&mut self) {
        let (chunk, start) = self.last;
        let buf = &mut self.chunks[chunk];
        let at = start + 6;
        let flags = u16::from_ne_bytes([buf[at], buf[at + 1]]) | NLM_F_ACK;
        buf[at..at + 2].copy_from_slice(&flags.to_ne_bytes());
    }

    /// The error the kernel answered for message `seq`, naming the command
    /// of `commands` (and for a table replacement, the object) it belongs to.
    pub fn failure(&self, commands: &[Command], seq: u32, errno: i32) -> NetlinkError {
        let source = io::Error::from_raw_os_error(errno);
        let owner = self.owners.get(seq.wrapping_sub(self.first) as usize);
        match owner.copied().flatten() {
            Some((i, part)) => NetlinkError::Command {
                command: describe(&commands[i], Some(part)),
                source,
            },
            None => NetlinkError::Batch(source),
        }
    }
}

/// A command as an error names it: its nft text, or for a table
/// replacement the object `part` of it (see [`table_parts`]).
pub fn describe(c: &Command, part: Option<usize>) -> String {
    let Command::ReplaceTable(t) = c else {
        return c.to_string().trim_end().into();
    };
    let (fam, table) = (family_word(t.family), t.id().name());
    let what = match part.and_then(|p| table_parts(t).nth(p)) {
        None => return format!("replace table {fam} {table}"),
        Some(Part::Table(libc::NFT_MSG_NEWTABLE)) => format!("add table {fam} {table}"),
        Some(Part::Table(_)) => format!("delete table {fam} {table}"),
        Some(Part::Chain(name, base)) => Command::AddChain {
            table: t.id(),
            name: name.to_string(),
            base: base.copied(),
        }
        .to_string(),
        Some(Part::Set(name, set)) => {
            let mut decl = Set::new(set.kind, set.comment.as_deref());
            decl.timeout_seconds = set.timeout_seconds;
            let add = Command::AddSet {
                table: t.id(),
                name: name.to_string(),
                set: decl,
            };
            format!("{} (or its elements)", add.to_string().trim_end())
        }
        Some(Part::Rule(chain, rule)) => {
            format!(
                "add rule {fam} {table} {chain} {}",
                rule_text(rule, t.family)
            )
        }
    };
    format!("replace table {fam} {table}: {}", what.trim_end())
}
