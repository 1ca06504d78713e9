//! `__traffic`: one stream of traffic, run inside the source's namespace
//! (and, for eBPF, the node's cgroup) until its stdin closes. TCP: long-lived
//! connections exchanging a request every period, and a new connection every
//! period. UDP: a long-lived connected socket and a long-lived unconnected
//! one, each asking every period (an answer must come from the address
//! asked), and a new connected socket every period.
//!
//! What it prints, one line each: `ready` once the long-lived sockets have
//! had their first answer, and at once the [`Counts`] (`counts {json}`);
//! the counts again every [`REPORT_PERIOD`] and, last, when stopped;
//! `failure <what>` for the first loss of each kind and every dropped
//! connection.

use std::collections::BTreeSet;
use std::io::{self, BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchyard_api::ruleset::Protocol;

use crate::probe::{self, Attempt, parse_reply};

/// How often a running stream prints its counts.
pub const REPORT_PERIOD: Duration = Duration::from_millis(250);

/// What one stream (or a sum of streams) saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// New connections (TCP connects, fresh connected UDP sockets) tried.
    pub new: u64,
    /// … that got no answer, or one from a non-endpoint.
    pub new_failed: u64,
    /// Long-lived TCP connections opened (before `ready`).
    pub established: u64,
    /// Requests answered on long-lived connections and sockets.
    pub exchanges: u64,
    /// Long-lived TCP connections that failed after being established.
    pub dropped: u64,
    /// Requests on long-lived UDP sockets.
    pub udp_sent: u64,
    /// … that got no answer in time.
    pub udp_lost: u64,
    /// Answers that came from another address than the one asked.
    pub wrong_address: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.new += other.new;
        self.new_failed += other.new_failed;
        self.established += other.established;
        self.exchanges += other.exchanges;
        self.dropped += other.dropped;
        self.udp_sent += other.udp_sent;
        self.udp_lost += other.udp_lost;
        self.wrong_address += other.wrong_address;
    }

    /// Nothing was lost.
    pub fn clean(&self) -> bool {
        self.new_failed == 0 && self.dropped == 0 && self.udp_lost == 0 && self.wrong_address == 0
    }
}

/// The line `__traffic` prints: `counts ` and the JSON of the counts.
impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        write!(f, "{COUNTS}{json}")
    }
}

impl std::str::FromStr for Counts {
    type Err = String;

    fn from_str(line: &str) -> Result<Counts, String> {
        let json = line
            .strip_prefix(COUNTS)
            .ok_or_else(|| format!("{line:?}: not a counts line"))?;
        serde_json::from_str(json).map_err(|e| format!("{line:?}: {e}"))
    }
}

/// How a counts line starts.
pub const COUNTS: &str = "counts ";
/// How a failure line starts.
pub const FAILURE: &str = "failure ";

/// The counters the stream's threads share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    new: AtomicU64,
    new_failed: AtomicU64,
    established: AtomicU64,
    exchanges: AtomicU64,
    dropped: AtomicU64,
    udp_sent: AtomicU64,
    udp_lost: AtomicU64,
    wrong_address: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Count a loss; the first of its kind says why (the count says how often).
fn lose(counter: &AtomicU64, why: impl FnOnce() -> String) {
    if counter.fetch_add(1, Ordering::Relaxed) == 0 {
        println!("{FAILURE}{}", why());
    }
}

impl Shared {
    fn counts(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            new: get(&self.new),
            new_failed: get(&self.new_failed),
            established: get(&self.established),
            exchanges: get(&self.exchanges),
            dropped: get(&self.dropped),
            udp_sent: get(&self.udp_sent),
            udp_lost: get(&self.udp_lost),
            wrong_address: get(&self.wrong_address),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One stream: where from, where to, which endpoints may answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    pub protocol: Protocol,
    pub source: IpAddr,
    pub dest: SocketAddr,
    pub endpoints: BTreeSet<SocketAddr>,
    /// Between two requests of one socket.
    pub period: Duration,
    /// How long an answer may take.
    pub timeout: Duration,
    /// Long-lived TCP connections (UDP always has its two sockets).
    pub long_lived: usize,
}

/// Run `stream` until stdin closes, printing as the module header says; the final counts.
pub fn run(stream: &Stream) -> io::Result<Counts> {
    let shared = Arc::new(Shared::default());
    let long_lived = match stream.protocol {
        Protocol::Udp => open_udp(stream)?,
        Protocol::Tcp | Protocol::Sctp => open_tcp(stream)?,
    };
    let tcp = long_lived.iter().filter(|s| matches!(s, LongLived::Tcp(_)));
    shared
        .established
        .store(tcp.count() as u64, Ordering::Relaxed);
    println!("ready");
    // At once, so that the parent knows the connections it waited for.
    println!("{}", shared.counts());
    io::stdout().flush()?;
    let mut threads: Vec<_> = long_lived
        .into_iter()
        .map(|socket| {
            let (shared, stream) = (shared.clone(), stream.clone());
            std::thread::spawn(move || socket.exchange_until_stopped(&stream, &shared))
        })
        .collect();
    let (fresh, s) = (shared.clone(), stream.clone());
    threads.push(std::thread::spawn(move || new_until_stopped(&s, &fresh)));
    // The parent stops the stream by closing stdin.
    let (watch, main) = (shared.clone(), std::thread::current());
    let stdin = std::thread::spawn(move || {
        let _ = io::stdin().lock().read_to_end(&mut Vec::new());
        watch.stop.store(true, Ordering::Relaxed);
        main.unpark();
    });
    loop {
        std::thread::park_timeout(REPORT_PERIOD);
        if shared.stopped() {
            break;
        }
        println!("{}", shared.counts());
    }
    for t in threads {
        let _ = t.join();
    }
    let _ = stdin.join();
    Ok(shared.counts())
}

/// A long-lived socket of a stream.
enum LongLived {
    Tcp(TcpStream),
    /// A connected UDP socket (the kernel filters answers from other addresses).
    Connected(UdpSocket),
    Unconnected(UdpSocket),
}

fn bound(protocol: Protocol, stream: &Stream) -> io::Result<socket2::Socket> {
    let (kind, proto) = match protocol {
        Protocol::Udp => (socket2::Type::DGRAM, socket2::Protocol::UDP),
        Protocol::Tcp | Protocol::Sctp => (socket2::Type::STREAM, socket2::Protocol::TCP),
    };
    let domain = socket2::Domain::for_address(stream.dest);
    let sock = socket2::Socket::new(domain, kind, Some(proto))?;
    sock.bind(&SocketAddr::new(stream.source, 0).into())?;
    sock.set_read_timeout(Some(stream.timeout))?;
    sock.set_write_timeout(Some(stream.timeout))?;
    Ok(sock)
}

fn open_tcp(stream: &Stream) -> io::Result<Vec<LongLived>> {
    (0..stream.long_lived)
        .map(|_| {
            let sock = bound(Protocol::Tcp, stream)?;
            sock.connect_timeout(&stream.dest.into(), stream.timeout)?;
            let mut conn = LongLived::Tcp(sock.into());
            conn.ask(stream, 0)?;
            Ok(conn)
        })
        .collect()
}

fn open_udp(stream: &Stream) -> io::Result<Vec<LongLived>> {
    let connected = bound(Protocol::Udp, stream)?;
    connected.connect(&stream.dest.into())?;
    let mut sockets = vec![
        LongLived::Connected(connected.into()),
        LongLived::Unconnected(bound(Protocol::Udp, stream)?.into()),
    ];
    for s in &mut sockets {
        s.ask(stream, 0)?;
    }
    Ok(sockets)
}

fn other(message: String) -> io::Error {
    io::Error::other(message)
}

impl LongLived {
    /// One request `s<seq>`; the answering endpoint.
    fn ask(&mut self, stream: &Stream, seq: u64) -> io::Result<SocketAddr> {
        let request = format!("s{seq}\n");
        let token = format!("s{seq}");
        let text = match self {
            LongLived::Tcp(conn) => {
                conn.write_all(request.as_bytes())?;
                let mut line = String::new();
                io::BufReader::new(&*conn).read_line(&mut line)?;
                line
            }
            LongLived::Connected(sock) => {
                sock.send(request.as_bytes())?;
                receive(stream, &token, |buf| {
                    sock.recv(buf).map(|n| (n, stream.dest))
                })?
            }
            LongLived::Unconnected(sock) => {
                sock.send_to(request.as_bytes(), stream.dest)?;
                receive(stream, &token, |buf| sock.recv_from(buf))?
            }
        };
        answer(&text, &token, stream)
    }

    fn exchange_until_stopped(mut self, stream: &Stream, shared: &Shared) {
        let mut seq = 1;
        while !shared.stopped() {
            let udp = !matches!(self, LongLived::Tcp(_));
            if udp {
                bump(&shared.udp_sent);
            }
            match self.ask(stream, seq) {
                Ok(_) => bump(&shared.exchanges),
                Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
                    lose(&shared.wrong_address, || format!("{e}"));
                }
                Err(e) if udp => lose(&shared.udp_lost, || {
                    format!("long-lived UDP socket to {}: {e}", stream.dest)
                }),
                Err(e) => {
                    println!(
                        "{FAILURE}established connection to {} dropped: {e}",
                        stream.dest
                    );
                    bump(&shared.dropped);
                    return;
                }
            }
            seq += 1;
            std::thread::sleep(stream.period);
        }
    }
}

/// Read datagrams until the one answering `token` (older answers came late
/// and were counted lost); `AddrNotAvailable` when it came from another
/// address than the one asked.
fn receive(
    stream: &Stream,
    token: &str,
    mut recv: impl FnMut(&mut [u8]) -> io::Result<(usize, SocketAddr)>,
) -> io::Result<String> {
    let deadline = Instant::now() + stream.timeout;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        let (n, from) = recv(&mut buf)?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.split_whitespace().nth(2) != Some(token) {
            continue;
        }
        if from != stream.dest {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("answer from {from}, asked {}", stream.dest),
            ));
        }
        return Ok(text);
    }
    Err(io::ErrorKind::TimedOut.into())
}

/// The endpoint that answered `token`, which must be one of the stream's.
fn answer(text: &str, token: &str, stream: &Stream) -> io::Result<SocketAddr> {
    if text.split_whitespace().nth(2) != Some(token) {
        return Err(other(format!("answer {text:?} is not to {token}")));
    }
    let local = SocketAddr::new(stream.source, 0);
    match parse_reply(text, Some(local)) {
        Attempt::Reply { server, .. } if stream.endpoints.contains(&server) => Ok(server),
        Attempt::Reply { server, .. } => Err(other(format!("answered by {server}"))),
        other_attempt => Err(other(format!("{other_attempt}"))),
    }
}

/// A new connection (a fresh connected UDP socket) every period; each one
/// that fails is told on stderr ([`failed_new`]).
fn new_until_stopped(stream: &Stream, shared: &Shared) {
    while !shared.stopped() {
        bump(&shared.new);
        let source = SocketAddr::new(stream.source, 0);
        let started = unix_millis();
        match probe::attempt_from(stream.protocol, source, stream.dest, stream.timeout) {
            (Attempt::Reply { server, .. }, _) if stream.endpoints.contains(&server) => {}
            (failed, bound) => {
                // Every one on stderr (when, from which port); the first as the stream's failure.
                eprintln!("{}", failed_new(stream, started, bound, &failed));
                lose(&shared.new_failed, || {
                    format!("new connection to {}: {failed}", stream.dest)
                });
            }
        }
        std::thread::sleep(stream.period);
    }
}

/// Milliseconds since the Unix epoch: the clock the traffic children and the
/// matrix share, so a failure's time can be set against the switch's
/// (`switch finished at`).
pub fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The line of one failed new connection: when it started (Unix ms), how
/// long it took, the client's own address (its source port) and what it got
/// (timeout, refused, an error, or the reply of a wrong server).
fn failed_new(stream: &Stream, started: u128, bound: Option<SocketAddr>, got: &Attempt) -> String {
    let took = unix_millis().saturating_sub(started);
    let from = bound.map_or_else(|| "?".to_string(), |a| a.to_string());
    format!(
        "__traffic: new {} connection {from} -> {} started at {started} ms, failed after {took} ms: {got}",
        stream.protocol.as_lower(),
        stream.dest
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_through_their_line() {
        let c = Counts {
            new: 7,
            new_failed: 1,
            established: 2,
            exchanges: 40,
            dropped: 2,
            udp_sent: 30,
            udp_lost: 3,
            wrong_address: 4,
        };
        assert_eq!(c.to_string().parse::<Counts>(), Ok(c));
        assert!(!c.clean());
        assert!("counts 1 2".parse::<Counts>().is_err());
    }

    #[test]
    fn a_failed_new_connection_names_its_source_port_and_what_it_got() {
        let stream = Stream {
            protocol: Protocol::Tcp,
            source: "10.180.0.9".parse().unwrap(),
            dest: "172.30.0.10:80".parse().unwrap(),
            endpoints: BTreeSet::new(),
            period: Duration::from_millis(10),
            timeout: Duration::from_millis(1000),
            long_lived: 1,
        };
        let bound = Some("10.180.0.9:40001".parse().unwrap());
        let line = failed_new(&stream, 1234, bound, &Attempt::Timeout);
        assert!(
            line.starts_with(
                "__traffic: new tcp connection 10.180.0.9:40001 -> 172.30.0.10:80 started at 1234 ms, failed after "
            ),
            "{line}"
        );
        assert!(line.ends_with(" ms: timeout"), "{line}");
        assert!(failed_new(&stream, 0, None, &Attempt::Refused).contains(" ? -> "));
    }
}
