//! The traffic generator's counts are what the migration matrix's and the
//! demo's verdicts rest on: a server that goes away mid-traffic must show up
//! as dropped connections, failed new connections and lost UDP answers, each
//! named in a failure line. Real processes (this package's `migration-matrix`
//! in its `__serve` and `__traffic` roles) in a network namespace the test
//! creates. Needs root; skipped loudly otherwise.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard_api::ruleset::Protocol;
use switchyard_lab::cluster::processes::Program;
use switchyard_lab::netns::{Netns, is_root};
use switchyard_lab::probe::Listen;
use switchyard_lab::traffic::{self, Client, Counts, Stream, Streams};

/// Deadlock guard of every wait.
const DEADLINE: Duration = Duration::from_secs(30);

fn stream(protocol: Protocol, server: SocketAddr) -> Stream {
    Stream {
        protocol,
        source: server.ip(),
        dest: server,
        endpoints: [server].into(),
        period: Duration::from_millis(20),
        timeout: Duration::from_millis(500),
        long_lived: 2,
    }
}

fn wait_for(streams: &Streams, what: &str, done: impl Fn(&Counts) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done(&streams.tally().total()) {
        assert!(
            Instant::now() < deadline,
            "{what}: {:?}",
            streams.tally().total()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_server_going_away_is_counted_as_drops_failures_and_lost_answers() {
    if !is_root() {
        eprintln!("SKIP: needs root for its network namespace");
        return;
    }
    let program = Program::new(env!("CARGO_BIN_EXE_migration-matrix"));
    let ns = Netns::create(&format!("sylabtr-{}-0", std::process::id())).unwrap();
    let tcp: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let udp: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    let listens = [
        Listen {
            protocol: Protocol::Tcp,
            addr: tcp,
        },
        Listen {
            protocol: Protocol::Udp,
            addr: udp,
        },
    ];
    let server = traffic::serve(&program, &ns, &listens).unwrap();
    let clients = [(Protocol::Tcp, tcp), (Protocol::Udp, udp)]
        .map(|(protocol, addr)| Client {
            name: format!("{} client", protocol.as_lower()),
            netns: &ns,
            cgroup: None,
            stream: stream(protocol, addr),
        })
        .into();
    let streams = Streams::start(&program, clients).unwrap();
    assert_eq!(streams.tally().total().established, 2);
    wait_for(&streams, "answers before the server goes", |c| {
        c.exchanges > 20 && c.new > 10 && c.clean()
    });

    drop(server);
    wait_for(&streams, "every kind of loss counted", |c| {
        c.dropped == 2 && c.new_failed > 0 && c.udp_lost > 0
    });
    let stopped = streams.stop();
    assert_eq!(stopped.errors, Vec::<String>::new());
    assert_eq!(stopped.total.dropped, 2, "{:?}", stopped.total);
    assert_eq!(stopped.streams.len(), 2);
    let said = |what: &str| stopped.failures.iter().any(|f| f.contains(what));
    assert!(
        said("tcp client: established connection to 127.0.0.1:8080 dropped"),
        "{:#?}",
        stopped.failures
    );
    assert!(
        said("tcp client: new connection"),
        "{:#?}",
        stopped.failures
    );
    assert!(
        said("udp client: long-lived UDP socket"),
        "{:#?}",
        stopped.failures
    );
}
