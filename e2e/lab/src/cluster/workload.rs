//! The cluster's traffic: server pods (a tiny keep-alive HTTP responder that
//! answers with the pod's name, and a UDP echo) and clients that keep
//! long-lived connections exchanging a request every 100 ms, open a stream of
//! new connections, and send UDP requests — counting every outcome.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{MissedTickBehavior, timeout};

use super::layout::{ECHO_PORT, HTTP_PORT, Target};

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The period of a long-lived connection's exchanges.
const KEEPALIVE_PERIOD: Duration = Duration::from_millis(100);
/// The period of new connections per client.
const NEW_CONNECTION_PERIOD: Duration = Duration::from_millis(25);
/// The period of UDP requests per client.
const UDP_PERIOD: Duration = Duration::from_millis(50);
/// Failures kept in full for the report.
const KEPT_FAILURES: usize = 20;

/// A single-threaded tokio runtime for a thread in a namespace, where the
/// workload runs.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// Serve HTTP on :8080 and UDP echo on :5353 as `pod` until `stop` turns true.
/// `ready` gets the bind result before anything is served.
pub async fn serve(
    pod: String,
    mut stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let bound = async {
        let tcp = TcpListener::bind(("0.0.0.0", HTTP_PORT)).await?;
        let udp = UdpSocket::bind(("0.0.0.0", ECHO_PORT)).await?;
        Ok::<_, std::io::Error>((tcp, udp))
    }
    .await;
    let (tcp, udp) = match bound {
        Ok(b) => {
            let _ = ready.send(Ok(()));
            b
        }
        Err(e) => {
            let _ = ready.send(Err(format!("{pod}: binding: {e}")));
            return;
        }
    };
    let mut connections = JoinSet::new();
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = tcp.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(http_connection(stream, pod.clone()));
                }
            }
            received = udp.recv_from(&mut buf) => {
                if let Ok((n, peer)) = received {
                    let mut reply = format!("{pod} ").into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        }
    }
    connections.abort_all();
}

/// Answer every request of one keep-alive connection with the pod's name.
async fn http_connection(stream: TcpStream, pod: String) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let body = format!("{pod}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut line = String::new();
    loop {
        // A request ends with an empty line; EOF ends the connection.
        loop {
            line.clear();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" || line == "\n" => break,
                Ok(_) => {}
            }
        }
        if write.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Every outcome the clients saw.
#[derive(Debug, Default)]
pub struct Counters {
    /// New TCP connections tried (long-lived ones included).
    pub attempted: AtomicU64,
    /// New connections that failed to connect or to get their answer.
    pub failed: AtomicU64,
    /// Long-lived connections established.
    pub established: AtomicU64,
    /// Long-lived connections that failed after being established.
    pub dropped: AtomicU64,
    /// Requests answered on long-lived connections.
    pub exchanges: AtomicU64,
    pub udp_sent: AtomicU64,
    pub udp_lost: AtomicU64,
    /// Answers from a pod that is not an endpoint of the service asked.
    pub misrouted: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn record(&self, what: String) {
        let mut kept = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() < KEPT_FAILURES {
            kept.push(what);
        }
    }

    /// The first failures, in full.
    pub fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn check_pod(&self, target: &Target, pod: &str) {
        if !target.pods.iter().any(|p| p == pod) {
            Counters::bump(&self.misrouted);
            self.record(format!(
                "{}: answered by {pod}, not an endpoint",
                target.label
            ));
        }
    }
}

/// What one client sends to.
#[derive(Clone, Debug)]
pub struct ClientPlan {
    /// `ext` or `node-0 client pod`, for failure messages.
    pub name: String,
    pub http: Vec<Target>,
    pub udp: Vec<Target>,
}

/// A keep-alive HTTP connection.
struct Connection {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Connection {
    async fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        Ok(Connection {
            reader: BufReader::new(read),
            writer,
        })
    }

    /// One request; the answer's body (the pod's name).
    async fn request(&mut self) -> std::io::Result<String> {
        self.writer
            .write_all(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")
            .await?;
        let mut length = None;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed mid-response",
                ));
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0u8; length.unwrap_or(0)];
        self.reader.read_exact(&mut body).await?;
        Ok(String::from_utf8_lossy(&body).trim().to_string())
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 2s")
}

async fn within<T>(f: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    timeout(REQUEST_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// One HTTP request on a new connection to `addr`: the name of the pod that
/// answered (an error after the request timeout).
pub async fn ask(addr: SocketAddr) -> std::io::Result<String> {
    within(async {
        let mut c = Connection::open(addr).await?;
        c.request().await
    })
    .await
}

/// Open the long-lived connections of `plan`; returns once they are all open
/// (or failed), with the tasks that keep them exchanging until `stop`.
pub async fn open_long_lived(
    plan: &ClientPlan,
    counters: &Arc<Counters>,
    stop: &watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for target in &plan.http {
        Counters::bump(&counters.attempted);
        let opened = within(async {
            let mut c = Connection::open(target.addr).await?;
            let pod = c.request().await?;
            Ok((c, pod))
        })
        .await;
        let (connection, pod) = match opened {
            Ok(ok) => ok,
            Err(e) => {
                Counters::bump(&counters.failed);
                counters.record(format!(
                    "{}: long-lived connection to {}: {e}",
                    plan.name, target.label
                ));
                continue;
            }
        };
        counters.check_pod(target, &pod);
        Counters::bump(&counters.established);
        tasks.spawn(keep_alive(
            connection,
            target.clone(),
            plan.name.clone(),
            counters.clone(),
            stop.clone(),
        ));
    }
    tasks
}

async fn keep_alive(
    mut connection: Connection,
    target: Target,
    client: String,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(KEEPALIVE_PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        match within(connection.request()).await {
            Ok(pod) => {
                Counters::bump(&counters.exchanges);
                counters.check_pod(&target, &pod);
            }
            Err(e) => {
                Counters::bump(&counters.dropped);
                counters.record(format!(
                    "{client}: established connection to {} dropped: {e}",
                    target.label
                ));
                return;
            }
        }
    }
}

/// New connections and UDP requests, round robin over the targets, until `stop`.
pub async fn run_streams(
    plan: ClientPlan,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut in_flight = JoinSet::new();
    let mut tcp_tick = tokio::time::interval(NEW_CONNECTION_PERIOD);
    tcp_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut udp_tick = tokio::time::interval(UDP_PERIOD);
    udp_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut next_tcp, mut next_udp) = (0usize, 0usize);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tcp_tick.tick(), if !plan.http.is_empty() => {
                let target = plan.http[next_tcp % plan.http.len()].clone();
                next_tcp += 1;
                in_flight.spawn(new_connection(target, plan.name.clone(), counters.clone()));
            }
            _ = udp_tick.tick(), if !plan.udp.is_empty() => {
                let target = plan.udp[next_udp % plan.udp.len()].clone();
                next_udp += 1;
                in_flight.spawn(udp_request(target, plan.name.clone(), counters.clone()));
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    }
    // Requests in flight finish (each is bounded by its timeout) so the counts are final.
    while in_flight.join_next().await.is_some() {}
}

async fn new_connection(target: Target, client: String, counters: Arc<Counters>) {
    Counters::bump(&counters.attempted);
    let answered = ask(target.addr).await;
    match answered {
        Ok(pod) => counters.check_pod(&target, &pod),
        Err(e) => {
            Counters::bump(&counters.failed);
            counters.record(format!("{client}: new connection to {}: {e}", target.label));
        }
    }
}

async fn udp_request(target: Target, client: String, counters: Arc<Counters>) {
    Counters::bump(&counters.udp_sent);
    let answered = within(async {
        let socket = UdpSocket::bind(("0.0.0.0", 0)).await?;
        socket.send_to(b"ping", target.addr).await?;
        let mut buf = [0u8; 256];
        let (n, _) = socket.recv_from(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf[..n]).to_string())
    })
    .await;
    match answered {
        Ok(reply) => {
            let pod = reply.split_whitespace().next().unwrap_or_default();
            counters.check_pod(&target, pod);
        }
        Err(e) => {
            Counters::bump(&counters.udp_lost);
            counters.record(format!("{client}: UDP request to {}: {e}", target.label));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;
    use crate::netns::{Netns, is_root};

    fn target(pods: &[&str], port: u16) -> Target {
        Target {
            addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
            pods: pods.iter().map(|p| p.to_string()).collect(),
            label: format!("loopback:{port}"),
        }
    }

    /// The counters are what the demo's verdict rests on: a server that goes
    /// away mid-traffic must show up as dropped connections, failed new
    /// connections and lost UDP requests, and answers from another pod as misrouted.
    #[test]
    fn a_server_going_away_is_counted_as_drops_and_failures() {
        if !is_root() {
            eprintln!("SKIP: needs root for its network namespace");
            return;
        }
        let ns = Netns::create(&format!("sycli{}-wl-", std::process::id())).unwrap();
        let (server_stop, server_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = ns
            .spawn("server", move || {
                runtime()?.block_on(serve("web-0-0".to_string(), server_rx, ready_tx));
                Ok::<(), String>(())
            })
            .unwrap();
        ready_rx.recv().unwrap().unwrap();

        let counters = Arc::new(Counters::default());
        let (client_stop, client_rx) = watch::channel(false);
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let (server_gone_tx, server_gone_rx) = tokio::sync::oneshot::channel::<()>();
        let plan = ClientPlan {
            name: "test client".to_string(),
            http: vec![
                target(&["web-0-0"], HTTP_PORT),
                target(&["web-9-9"], HTTP_PORT),
            ],
            udp: vec![target(&["web-0-0"], ECHO_PORT)],
        };
        let shared = counters.clone();
        let client = ns
            .spawn("client", move || {
                runtime()?.block_on(async move {
                    let mut long_lived = open_long_lived(&plan, &shared, &client_rx).await;
                    let _ = opened_tx.send(());
                    // Run the streams until the server has gone, then a little
                    // longer so that requests after it fail.
                    let streams = tokio::spawn(run_streams(plan, shared.clone(), client_rx));
                    let _ = server_gone_rx.await;
                    while long_lived.join_next().await.is_some() {}
                    let _ = streams.await;
                });
                Ok::<(), String>(())
            })
            .unwrap();
        opened_rx.recv().unwrap();
        assert_eq!(Counters::get(&counters.established), 2);
        assert!(
            Counters::get(&counters.misrouted) >= 1,
            "web-9-9 is not the pod that answers"
        );

        server_stop.send(true).unwrap();
        server.join().unwrap().unwrap().unwrap();
        // Both long-lived connections notice within one request period plus the timeout.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while Counters::get(&counters.dropped) < 2 && std::time::Instant::now() < deadline {
            std::thread::park_timeout(Duration::from_millis(50));
        }
        while Counters::get(&counters.failed) == 0 && std::time::Instant::now() < deadline {
            std::thread::park_timeout(Duration::from_millis(50));
        }
        while Counters::get(&counters.udp_lost) == 0 && std::time::Instant::now() < deadline {
            std::thread::park_timeout(Duration::from_millis(50));
        }
        client_stop.send(true).unwrap();
        let _ = server_gone_tx.send(());
        client.join().unwrap().unwrap().unwrap();

        assert_eq!(Counters::get(&counters.dropped), 2);
        assert!(Counters::get(&counters.failed) > 0);
        assert!(Counters::get(&counters.udp_lost) > 0);
        assert!(counters.failures().iter().any(|f| f.contains("dropped")));
    }
}
