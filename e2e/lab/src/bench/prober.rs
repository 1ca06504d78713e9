//! A client inside a node, for what the benches measure with real traffic:
//! a child process of the bench binary (subcommand [`ROLE`], parsed by the
//! binary as [`ProbeArgs`]) in the node's
//! network namespace and, for the eBPF mode, in the cgroup its socket
//! programs are attached to (as the node's own processes are). It takes one
//! command per line on stdin and answers one line:
//!
//! - `until VIP IP MS`: connect to `VIP` again and again (each answer is the
//!   endpoint's own address, [`super::echo_pods`]) until `IP` answers:
//!   `seen NS`, the CLOCK_MONOTONIC time of that answer (so the bench times
//!   it from its own write, however late the child was scheduled), or
//!   `timeout LAST` after `MS` milliseconds;
//! - `connect N ADDR...`: [`super::connect::connects`]: `latency P50 P99 …`
//!   in nanoseconds, a pair per address.
//!
//! Closing its stdin ends it; the handle kills it on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, ExitCode};
use std::time::{Duration, Instant};

use switchyard_testkit::echo::ask_greeting_within;

use super::connect::{Latency, connects, reset_on_close};
use crate::HarnessError;
use crate::cleanup;
use crate::netns::Netns;
use crate::probe::join_cgroup;
use crate::runner::spawn_in_with_stdin;

/// The bench binary's subcommand that runs this child.
pub const ROLE: &str = "__probe";

/// The child's arguments: a binary adds them to its hidden subcommands as
/// `#[command(name = ROLE, hide = true)] Probe(ProbeArgs)`.
#[derive(Clone, Debug, clap::Args)]
pub struct ProbeArgs {
    /// Join this cgroup (v2 directory) first: eBPF's socket programs act on
    /// the sockets of the cgroup they are attached to.
    #[arg(long)]
    cgroup: Option<PathBuf>,
}
/// How long one attempt of `until` may take: an endpoint that answers does
/// within a millisecond here.
const ATTEMPT: Duration = Duration::from_millis(200);
/// Between attempts of `until`: the resolution of what it measures, and what
/// keeps it from taking a whole core from the programs it measures.
const PACE: Duration = Duration::from_millis(1);

/// CLOCK_MONOTONIC now: one clock for the bench and its children.
pub fn monotonic() -> Duration {
    // SAFETY: clock_gettime only writes the zeroed struct passed to it.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `until`: the first moment `expected` answers at `vip`, or the last answer.
fn until(vip: SocketAddr, expected: IpAddr, timeout: Duration) -> Result<Duration, String> {
    let began = Instant::now();
    loop {
        let last = match ask_greeting_within(vip, ATTEMPT) {
            Ok((answer, conn)) => {
                let now = monotonic();
                reset_on_close(&conn);
                if answer.parse::<IpAddr>() == Ok(expected) {
                    return Ok(now);
                }
                answer
            }
            Err(e) => e.to_string(),
        };
        if began.elapsed() > timeout {
            return Err(last);
        }
        std::thread::sleep(PACE);
    }
}

/// One command's answer line.
fn answer(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["until", vip, ip, ms] => {
            let (Ok(vip), Ok(ip), Ok(ms)) = (vip.parse(), ip.parse(), ms.parse()) else {
                return format!("error bad command {line:?}");
            };
            match until(vip, ip, Duration::from_millis(ms)) {
                Ok(seen) => format!("seen {}", nanos(seen)),
                Err(last) => format!("timeout {last}"),
            }
        }
        ["connect", count, addrs @ ..] => {
            let targets: Result<Vec<SocketAddr>, _> = addrs.iter().map(|a| a.parse()).collect();
            let (Ok(count), Ok(targets)) = (count.parse(), targets) else {
                return format!("error bad command {line:?}");
            };
            match connects(&targets, count) {
                Ok(latencies) => latencies.iter().fold("latency".to_string(), |s, l| {
                    format!("{s} {} {}", nanos(l.p50), nanos(l.p99))
                }),
                Err(e) => format!("error {e}"),
            }
        }
        _ => format!("error bad command {line:?}"),
    }
}

/// The command line that runs the child (parsed back as [`ProbeArgs`]).
fn probe_args(cgroup: Option<&Path>) -> Vec<String> {
    let mut args = vec![ROLE.to_string()];
    args.extend(cgroup.map(|c| format!("--cgroup={}", c.display())));
    args
}

/// The child: join the cgroup of `args` (if any), say `ready`, answer
/// commands until stdin closes.
pub fn child(args: ProbeArgs) -> ExitCode {
    cleanup::child_setup();
    if let Some(cgroup) = args.cgroup
        && let Err(e) = join_cgroup(&cgroup)
    {
        println!("error joining cgroup {}: {e}", cgroup.display());
        return ExitCode::FAILURE;
    }
    println!("ready");
    let mut out = std::io::stdout();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        if writeln!(out, "{}", answer(&line))
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// The bench's handle on a prober child.
pub struct Prober {
    place: String,
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Prober {
    /// A prober in `ns` (and in `cgroup`, when given).
    pub fn start(ns: &Netns, cgroup: Option<&Path>) -> Result<Prober, HarnessError> {
        let mut child = spawn_in_with_stdin(ns, &probe_args(cgroup))?;
        let place = format!("the prober in {}", ns.name());
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HarnessError::Setup {
                what: place,
                message: "no pipes".into(),
            });
        };
        let mut prober = Prober {
            place,
            child,
            input,
            output: BufReader::new(output),
        };
        let ready = prober.read()?;
        if ready != "ready" {
            return Err(prober.error(&ready));
        }
        Ok(prober)
    }

    fn error(&self, message: &str) -> HarnessError {
        HarnessError::Setup {
            what: self.place.clone(),
            message: message.to_string(),
        }
    }

    fn read(&mut self) -> Result<String, HarnessError> {
        let mut line = String::new();
        match self.output.read_line(&mut line) {
            Ok(0) => Err(self.error("exited")),
            Ok(_) => Ok(line.trim().to_string()),
            Err(e) => Err(self.error(&e.to_string())),
        }
    }

    fn send(&mut self, command: &str) -> Result<(), HarnessError> {
        writeln!(self.input, "{command}")
            .and_then(|()| self.input.flush())
            .map_err(|e| self.error(&e.to_string()))
    }

    /// Start connecting to `vip` until `expected` answers (read the answer
    /// with [`Prober::seen_since`]).
    pub fn arm(
        &mut self,
        vip: SocketAddr,
        expected: IpAddr,
        timeout: Duration,
    ) -> Result<(), HarnessError> {
        let ms = timeout.as_millis();
        self.send(&format!("until {vip} {expected} {ms}"))
    }

    /// How long after `t0` (a [`monotonic`] time) the armed wait saw its endpoint.
    pub fn seen_since(&mut self, t0: Duration) -> Result<Duration, HarnessError> {
        let line = self.read()?;
        let seen = line
            .strip_prefix("seen ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| self.error(&line))?;
        Ok(Duration::from_nanos(seen).saturating_sub(t0))
    }

    /// First-packet connect latency to each of `targets`, `count` connects each.
    pub fn connects(
        &mut self,
        targets: &[SocketAddr],
        count: usize,
    ) -> Result<Vec<Latency>, HarnessError> {
        let addrs: Vec<String> = targets.iter().map(ToString::to_string).collect();
        self.send(&format!("connect {count} {}", addrs.join(" ")))?;
        let line = self.read()?;
        let figures: Option<Vec<u64>> = line.strip_prefix("latency").map(|rest| {
            rest.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        });
        let figures = figures
            .filter(|f| f.len() == 2 * targets.len())
            .ok_or_else(|| self.error(&line))?;
        Ok(figures
            .chunks(2)
            .map(|pair| Latency {
                p50: Duration::from_nanos(pair[0]),
                p99: Duration::from_nanos(pair[1]),
            })
            .collect())
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::{Parser, Subcommand};

    use super::{ProbeArgs, ROLE, answer, probe_args};

    #[derive(Parser)]
    struct Binary {
        #[command(subcommand)]
        child: Child,
    }

    #[derive(Subcommand)]
    enum Child {
        #[command(name = ROLE)]
        Probe(ProbeArgs),
    }

    #[test]
    fn the_child_parses_the_arguments_its_parent_writes() {
        let cgroup = Path::new("/sys/fs/cgroup/unified/node-0");
        for given in [None, Some(cgroup)] {
            let mut line = vec!["bench".to_string()];
            line.extend(probe_args(given));
            let Child::Probe(args) = Binary::try_parse_from(line).unwrap().child;
            assert_eq!(args.cgroup.as_deref(), given);
        }
    }

    #[test]
    fn a_bad_command_is_answered_with_an_error_line() {
        assert!(answer("until nowhere").starts_with("error bad command"));
        assert!(answer("connect x 127.0.0.1:1").starts_with("error bad command"));
        assert_eq!(answer("connect 0 127.0.0.1:1"), "latency 0 0");
    }
}
