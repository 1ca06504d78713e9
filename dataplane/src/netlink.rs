//! One netlink request at a time over a blocking socket in the calling
//! thread's network namespace, for any family netlink-packet-core encodes
//! (generic netlink for IPVS, rtnetlink for the eBPF mode's classic tc
//! attach): send, then collect the answers to that request until its ack or
//! the end of its dump. Plus the hex helpers of the byte-exact tests.

use std::fmt;
use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};

/// A netlink socket of one protocol (`NETLINK_ROUTE`, `NETLINK_GENERIC`, …).
pub struct Connection {
    socket: Socket,
    seq: u32,
    /// Raw answers, when recording (for capturing fixtures).
    recorded: Option<Vec<Vec<u8>>>,
}

fn invalid(detail: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail.to_string())
}

impl Connection {
    pub fn open(protocol: isize) -> io::Result<Connection> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Connection {
            socket,
            seq: 0,
            recorded: None,
        })
    }

    /// Keep the raw bytes of every answer from now on.
    pub fn record(&mut self) {
        self.recorded = Some(Vec::new());
    }

    /// The raw answers recorded since [`Connection::record`].
    pub fn take_recorded(&mut self) -> Vec<Vec<u8>> {
        self.recorded.replace(Vec::new()).unwrap_or_default()
    }

    /// Send `payload` with `flags` (`NLM_F_REQUEST` and `NLM_F_ACK` or
    /// `NLM_F_DUMP`, …) and return the messages answering it. An error answer
    /// is returned as its errno; an answer that does not decode is
    /// `InvalidData`.
    pub fn request<M>(&mut self, payload: M, flags: u16) -> io::Result<Vec<M>>
    where
        M: NetlinkSerializable + NetlinkDeserializable + fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        self.socket.send(&encode(payload, flags, self.seq), 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        let mut rx = Vec::with_capacity(1 << 16);
        loop {
            rx.clear();
            let n = self.socket.recv(&mut rx, 0)?;
            let mut offset = 0;
            while offset < n {
                let bytes = &rx[offset..n];
                let answer = NetlinkMessage::<M>::deserialize(bytes).map_err(invalid)?;
                let len = answer.header.length as usize;
                if len == 0 {
                    return Err(invalid("netlink message of length 0"));
                }
                if let Some(rec) = self.recorded.as_mut() {
                    rec.push(bytes[..len.min(bytes.len())].to_vec());
                }
                offset += (len + 3) & !3;
                if answer.header.sequence_number != self.seq {
                    continue;
                }
                match answer.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    _ => {}
                }
            }
        }
    }
}

/// One request as it goes on the wire (port id 0: the kernel fills it in).
pub fn encode<M: NetlinkSerializable + fmt::Debug>(payload: M, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

/// `nlmsghdr` fields that vary between runs (the type when it is a family id
/// the kernel assigned, sequence number, port id) zeroed, for storing and
/// comparing captures.
pub fn mask_header(msg: &[u8]) -> Vec<u8> {
    let mut out = msg.to_vec();
    for range in [4..6, 8..12, 12..16] {
        if out.len() >= range.end {
            out[range].fill(0);
        }
    }
    out
}

/// The bytes of an annotated hex capture (everything after `#` is a comment).
pub fn parse_hex(text: &str) -> Vec<u8> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect()
}
