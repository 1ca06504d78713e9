//! Transactions sent straight to `nf_tables` over netlink
//! (`NETLINK_NETFILTER`), without `nft`: nft 1.0.6 dumps every chain of the
//! ruleset before each transaction (≈300 ms at 44k services). This is the
//! sibling of [`super::text`]: both encode one [`Command`] list.
//!
//! The encoder is hand-written: no maintained crate covers the expressions
//! the plan uses (rustables 0.8 has no `numgen`, `dynset` or `fib` and no
//! masquerade flags; netlink-packet-netfilter 0.4 and nf_tables 0.1 stop at
//! meta/cmp/bitwise/payload/lookup/immediate and keep the `NFTA_*` numbers
//! private; nftnl binds the C libnftnl). Each rule is the expression list
//! nft 1.0.6 emits for the same text, sets carry the userdata nft writes, so
//! `nft list` prints our objects exactly as its own: the tests compare the
//! bytes with nft's (`testdata/`) and the kernel's tables with what `nft -f`
//! leaves.
//!
//! | file | job |
//! | --- | --- |
//! | `socket.rs` | the socket: one `sendmsg` per batch, the answers, one socket per thread namespace |
//! | `batch.rs` | begin/end, sequence numbers, chunks, the failing command of an error |
//! | `commands.rs` | each command as its messages: tables, chains, sets, rules, a table replacement |
//! | `elements.rs` | set elements: keys, intervals, element messages |
//! | `expr.rs` | a rule's matches and statements as `nf_tables` expressions |
//! | `attrs.rs`, `userdata.rs` | attribute and userdata layout |
//! | `uapi.rs` | the kernel's and nft's numbers that `libc` does not define |
//! | `support.rs` | what is refused before sending (names: [`super::escape`]) |
//!
//! One [`NftNetlink::apply`] is one batch (`NFNL_MSG_BATCH_BEGIN` … `END`)
//! that the kernel commits or aborts as a whole. Only the last message asks
//! for an ACK: the kernel answers every failing message anyway, in batch
//! order and before that ACK, so "the ACK and no error" means committed and
//! any error means nothing changed. A full sync of 44k services is one send
//! of ~120 MB, as nft does it.

mod attrs;
mod batch;
mod commands;
mod elements;
mod expr;
mod socket;
mod support;
mod uapi;
mod userdata;

#[cfg(test)]
mod bytes_tests;
#[cfg(test)]
mod dump;
#[cfg(test)]
mod kernel_tests;

use std::io;
use std::net::IpAddr;

use switchyard_api::ruleset::IpFamily;

use self::batch::describe;
use self::commands::batch;
pub use self::socket::{NftNetlink, ThreadSocket};
use self::support::supported;
use super::escape;
use super::transaction::Command;
use crate::escape::NameError;

/// A batch the kernel refused, or a socket failure.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("nf_tables netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("this thread's namespace: {0}")]
    Namespace(#[source] io::Error),
    #[error("cannot send over nf_tables netlink: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("nf_tables rejected `{command}`: {source}")]
    Command {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("nf_tables rejected the batch: {0}")]
    Batch(#[source] io::Error),
}

impl NftNetlink {
    /// Whether every command can be encoded ([`NftNetlink::apply`] refuses
    /// the others before sending anything).
    #[cfg(test)]
    pub fn supports(commands: &[Command]) -> bool {
        commands
            .iter()
            .all(|c| supported(c) && escape::check(c).is_ok())
    }

    /// Send all commands as one batch: Ok only when the kernel committed all
    /// of it; on error nothing changed, and the error names the failing
    /// command (for a table replacement, the object in it) and the errno.
    pub fn apply(&mut self, commands: &[Command]) -> Result<(), NetlinkError> {
        commands.iter().try_for_each(escape::check)?;
        if let Some(c) = commands.iter().find(|c| !supported(c)) {
            return Err(NetlinkError::Unsupported(describe(c, None)));
        }
        let mut batch = batch(commands, self.seq);
        if batch.is_empty() {
            return Ok(()); // nothing to send (no commands, or empty element lists)
        }
        let answered = batch.end();
        self.seq = batch.seq();
        match self.exchange(&batch.chunks, answered)? {
            None => Ok(()),
            Some((seq, errno)) => Err(batch.failure(commands, seq, errno)),
        }
    }
}

/// `NFPROTO_IPV4` / `NFPROTO_IPV6`: the family of a table, and of a NAT address.
fn nfproto(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => libc::NFPROTO_IPV4 as u8,
        IpFamily::V6 => libc::NFPROTO_IPV6 as u8,
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}
