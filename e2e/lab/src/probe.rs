//! The two child-process roles, run by re-executing the scenario binary (or
//! the migration matrix) inside a namespace: `__serve` answers every request
//! (a datagram, or each read of a connection, until the peer closes it) with
//! its own `ip:port`, the peer address it saw and the request (TCP, UDP,
//! SCTP); `__connect` makes fresh connections and prints one [`Attempt`] per line.

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};
use switchyard_api::ruleset::Protocol;

/// One listening socket of a server child: `tcp/10.0.0.1:80`, `udp/[2001:db8::1]:53`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Listen {
    pub protocol: Protocol,
    pub addr: SocketAddr,
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.protocol.as_lower(), self.addr)
    }
}

/// Parse a protocol name as the scenario and the child arguments write it.
pub fn parse_protocol(text: &str) -> Option<Protocol> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Listen, String> {
        let (proto, addr) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: expected proto/ip:port"))?;
        Ok(Listen {
            protocol: parse_protocol(proto).ok_or_else(|| format!("{text:?}: bad protocol"))?,
            addr: addr.parse().map_err(|_| format!("{text:?}: bad address"))?,
        })
    }
}

fn socket(protocol: Protocol, addr: &SocketAddr) -> io::Result<Socket> {
    let domain = Domain::for_address(*addr);
    let sock = match protocol {
        Protocol::Tcp => Socket::new(domain, Type::STREAM, Some(socket2::Protocol::TCP))?,
        Protocol::Udp => Socket::new(domain, Type::DGRAM, Some(socket2::Protocol::UDP))?,
        Protocol::Sctp => Socket::new(domain, Type::STREAM, Some(socket2::Protocol::from(132)))?,
    };
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    Ok(sock)
}

/// Whether this kernel can make SCTP sockets.
pub fn sctp_supported() -> bool {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    socket(Protocol::Sctp, &any).is_ok()
}

fn reply_text(local: Option<SocketAddr>, peer: Option<SocketAddr>, request: &[u8]) -> String {
    let show = |a: Option<SocketAddr>| a.map_or_else(|| "?".to_string(), |a| a.to_string());
    let request = String::from_utf8_lossy(request);
    format!("{} {} {}\n", show(local), show(peer), request.trim())
}

/// Answer every request of one connection until the peer closes it: a
/// scenario client asks once, a long-lived migration client every few ms.
fn answer_stream(conn: Socket) {
    let local = conn.local_addr().ok().and_then(|a| a.as_socket());
    let peer = conn.peer_addr().ok().and_then(|a| a.as_socket());
    let mut stream: std::net::TcpStream = conn.into();
    let mut buf = [0u8; 64];
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        if stream
            .write_all(reply_text(local, peer, &buf[..n]).as_bytes())
            .is_err()
        {
            return;
        }
    }
}

fn serve_stream(listener: Socket) {
    loop {
        if let Ok((conn, _)) = listener.accept() {
            std::thread::spawn(move || answer_stream(conn));
        }
    }
}

fn serve_datagram(sock: UdpSocket) {
    let local = sock.local_addr().ok();
    let mut buf = [0u8; 512];
    loop {
        if let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(reply_text(local, Some(peer), &buf[..n]).as_bytes(), peer);
        }
    }
}

/// `__serve`: bind every socket, print `ready`, answer forever.
pub fn serve(listens: &[Listen]) -> io::Result<()> {
    let mut socks = Vec::new();
    for l in listens {
        let sock = socket(l.protocol, &l.addr)?;
        sock.set_reuse_address(true)?;
        sock.bind(&SockAddr::from(l.addr))
            .map_err(|e| io::Error::new(e.kind(), format!("bind {l}: {e}")))?;
        if l.protocol != Protocol::Udp {
            sock.listen(128)?;
        }
        socks.push((l.protocol, sock));
    }
    println!("ready");
    io::stdout().flush()?;
    let threads: Vec<_> = socks
        .into_iter()
        .map(|(proto, sock)| {
            std::thread::spawn(move || match proto {
                Protocol::Udp => serve_datagram(sock.into()),
                Protocol::Tcp | Protocol::Sctp => serve_stream(sock),
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// What one connection attempt saw.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attempt {
    /// A server answered: its own address and the source address it saw;
    /// `local` is the client's own address (masquerade changes address or port).
    Reply {
        server: SocketAddr,
        peer: SocketAddr,
        local: SocketAddr,
    },
    /// Connection refused / ICMP port unreachable.
    Refused,
    /// Nothing came back in time.
    Timeout,
    Error(String),
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attempt::Reply {
                server,
                peer,
                local,
            } => write!(f, "reply {server} {peer} {local}"),
            Attempt::Refused => f.write_str("refused"),
            Attempt::Timeout => f.write_str("timeout"),
            Attempt::Error(e) => write!(f, "error {e}"),
        }
    }
}

impl Attempt {
    /// Parse one line of `__connect` output.
    pub fn parse(line: &str) -> Attempt {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("reply") => parse_reply(&words.collect::<Vec<_>>().join(" "), None),
            Some("refused") => Attempt::Refused,
            Some("timeout") => Attempt::Timeout,
            _ => Attempt::Error(line.trim_start_matches("error ").to_string()),
        }
    }
}

/// TCP's initial retransmission timeout plus slack.
const IPV6_FIRST_RETRANSMIT: Duration = Duration::from_millis(1100);

fn classify(e: &io::Error) -> Attempt {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Attempt::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Attempt::Timeout,
        _ => Attempt::Error(e.to_string()),
    }
}

/// `<server> <peer> [request]` from a server, `<server> <peer> <local>` from `__connect`.
pub fn parse_reply(text: &str, local: Option<SocketAddr>) -> Attempt {
    let mut words = text.split_whitespace();
    let mut next = || words.next().and_then(|w| w.parse::<SocketAddr>().ok());
    let (server, peer) = (next(), next());
    match (server, peer, local.or_else(next)) {
        (Some(server), Some(peer), Some(local)) => Attempt::Reply {
            server,
            peer,
            local,
        },
        _ => Attempt::Error(format!("unexpected answer {text:?}")),
    }
}

/// Make one fresh connection from `source` (port 0: chosen by the kernel) to `dest`.
pub fn attempt(
    protocol: Protocol,
    source: SocketAddr,
    dest: SocketAddr,
    timeout: Duration,
) -> Attempt {
    let run = || -> io::Result<Attempt> {
        let sock = socket(protocol, &dest)?;
        sock.set_reuse_address(true)?;
        sock.bind(&SockAddr::from(source))?;
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        let dest_addr = SockAddr::from(dest);
        match protocol {
            Protocol::Udp => {
                // A reject can surface at connect(2) (eBPF socket-level LB).
                if let Err(e) = sock.connect(&dest_addr) {
                    return Ok(classify(&e));
                }
                let udp: UdpSocket = sock.into();
                let local = udp.local_addr().ok();
                // A node's own datagram dropped or rejected in OUTPUT fails the
                // send with EPERM; a REJECT's ICMP error still reaches recv.
                if let Err(e) = udp.send(b"hello\n")
                    && e.kind() != io::ErrorKind::PermissionDenied
                {
                    return Err(e);
                }
                let mut buf = [0u8; 512];
                match udp.recv(&mut buf) {
                    Ok(n) => Ok(parse_reply(&String::from_utf8_lossy(&buf[..n]), local)),
                    Err(e) => Ok(classify(&e)),
                }
            }
            Protocol::Tcp | Protocol::Sctp => {
                // Over IPv6 the ICMPv6 error answering the first SYN can arrive
                // while connect() still holds the socket and only counts as a
                // soft error; the retransmitted SYN (1 s later) gets the hard one.
                let timeout = if dest.is_ipv6() {
                    timeout + IPV6_FIRST_RETRANSMIT
                } else {
                    timeout
                };
                if let Err(e) = sock.connect_timeout(&dest_addr, timeout) {
                    return Ok(classify(&e));
                }
                let mut stream: std::net::TcpStream = sock.into();
                let local = stream.local_addr().ok();
                stream.write_all(b"hello\n")?;
                let mut text = String::new();
                match io::BufReader::new(&stream).read_line(&mut text) {
                    Ok(_) => Ok(parse_reply(&text, local)),
                    Err(e) => Ok(classify(&e)),
                }
            }
        }
    };
    run().unwrap_or_else(|e| Attempt::Error(e.to_string()))
}

/// Where `__connect`'s attempts come from.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    pub ip: std::net::IpAddr,
    /// Attempt `i` uses port `port + i` (`step` 1), or always `port` (`step` 0).
    /// Distinct ports per attempt keep parallel flows from one client from
    /// clashing in conntrack (the kernel would remap the port, which would look
    /// like masquerade).
    pub port: u16,
    pub step: u16,
}

impl Source {
    fn nth(&self, i: usize) -> SocketAddr {
        let offset = u16::try_from(i)
            .unwrap_or(u16::MAX)
            .saturating_mul(self.step);
        SocketAddr::new(self.ip, self.port.saturating_add(offset))
    }
}

/// `__connect`: `count` fresh connections, in parallel unless `sequential`
/// (session affinity needs the first to finish before the next starts, a fixed
/// source port needs the previous socket closed).
pub fn connect(
    protocol: Protocol,
    source: Source,
    dest: SocketAddr,
    count: usize,
    timeout: Duration,
    sequential: bool,
) -> Vec<Attempt> {
    if sequential {
        return (0..count)
            .map(|i| attempt(protocol, source.nth(i), dest, timeout))
            .collect();
    }
    let threads: Vec<_> = (0..count)
        .map(|i| std::thread::spawn(move || attempt(protocol, source.nth(i), dest, timeout)))
        .collect();
    threads
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap_or_else(|_| Attempt::Error("connect thread panicked".into()))
        })
        .collect()
}

/// Join the cgroup (v2 directory) `path` with this process.
pub fn join_cgroup(path: &std::path::Path) -> io::Result<()> {
    move_to_cgroup(path, std::process::id())
}

/// Move process `pid` (all its threads) into the cgroup (v2 directory) `path`.
pub fn move_to_cgroup(path: &std::path::Path, pid: u32) -> io::Result<()> {
    std::fs::write(path.join("cgroup.procs"), pid.to_string())
}
