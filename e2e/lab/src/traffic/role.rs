//! The hidden roles a traffic program runs in (the `migration-matrix`
//! binary, the `switchyard` CLI): `__serve`, the endpoint servers
//! ([`crate::probe::serve`]), and `__traffic`, one stream of clients
//! ([`super::stream`]). A binary flattens [`ChildRole`] into its commands and
//! hands a parsed one to [`run`]; [`traffic_args`] writes what `__traffic`
//! parses, so the two sides are one definition.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::stream::{self, Stream};
use crate::cleanup;
use crate::probe::{self, Listen};

/// The subcommand names.
pub const SERVE: &str = "__serve";
pub const TRAFFIC: &str = "__traffic";

#[derive(Clone, Debug, clap::Subcommand)]
pub enum ChildRole {
    /// Answer on every `--listen` socket (prints `ready` once bound).
    #[command(name = SERVE, hide = true)]
    Serve {
        #[arg(long)]
        listen: Vec<Listen>,
    },
    /// One stream of traffic until stdin closes (see `traffic::stream`).
    #[command(name = TRAFFIC, hide = true)]
    Traffic {
        #[arg(long)]
        proto: String,
        #[arg(long)]
        src: IpAddr,
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long)]
        endpoint: Vec<SocketAddr>,
        #[arg(long)]
        period_ms: u64,
        #[arg(long)]
        timeout_ms: u64,
        #[arg(long)]
        long_lived: usize,
        /// Join this cgroup (v2 directory) first: eBPF's socket programs act
        /// on the sockets of the cgroup they are attached to.
        #[arg(long)]
        cgroup: Option<PathBuf>,
    },
}

/// `__serve`'s arguments.
pub fn serve_args(listens: &[Listen]) -> Vec<String> {
    let mut args = vec![SERVE.to_string()];
    args.extend(listens.iter().map(|l| format!("--listen={l}")));
    args
}

/// `__traffic`'s arguments for `stream`, run in `cgroup` if given.
pub fn traffic_args(stream: &Stream, cgroup: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        TRAFFIC.to_string(),
        format!("--proto={}", stream.protocol.as_lower()),
        format!("--src={}", stream.source),
        format!("--dst={}", stream.dest),
        format!("--period-ms={}", stream.period.as_millis()),
        format!("--timeout-ms={}", stream.timeout.as_millis()),
        format!("--long-lived={}", stream.long_lived),
    ];
    args.extend(stream.endpoints.iter().map(|e| format!("--endpoint={e}")));
    args.extend(cgroup.map(|c| format!("--cgroup={}", c.display())));
    args
}

/// Run `role` in this (child) process; its exit code.
pub fn run(role: ChildRole) -> ExitCode {
    cleanup::child_setup();
    let result = match role {
        ChildRole::Serve { listen } => probe::serve(&listen).map_err(|e| e.to_string()),
        ChildRole::Traffic {
            proto,
            src,
            dst,
            endpoint,
            period_ms,
            timeout_ms,
            long_lived,
            cgroup,
        } => probe::parse_protocol(&proto)
            .ok_or_else(|| format!("protocol {proto}"))
            .and_then(|protocol| {
                let stream = Stream {
                    protocol,
                    source: src,
                    dest: dst,
                    endpoints: endpoint.into_iter().collect::<BTreeSet<_>>(),
                    period: Duration::from_millis(period_ms),
                    timeout: Duration::from_millis(timeout_ms),
                    long_lived,
                };
                traffic(&stream, cgroup.as_deref())
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The parent reads this instead of `ready` or the counts.
            println!("error {e}");
            ExitCode::FAILURE
        }
    }
}

fn traffic(stream: &Stream, cgroup: Option<&Path>) -> Result<(), String> {
    if let Some(cg) = cgroup {
        probe::join_cgroup(cg).map_err(|e| format!("joining cgroup {}: {e}", cg.display()))?;
    }
    let counts = stream::run(stream).map_err(|e| e.to_string())?;
    println!("{counts}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{Parser, Subcommand};
    use switchyard_api::ruleset::Protocol;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        role: ChildRole,
    }

    /// What the parent writes is what the child reads.
    #[test]
    fn traffic_args_parse_back_into_the_same_stream() {
        let stream = Stream {
            protocol: Protocol::Udp,
            source: "10.244.0.100".parse().unwrap(),
            dest: "10.96.0.10:53".parse().unwrap(),
            endpoints: ["10.244.0.10:5353".parse().unwrap()].into(),
            period: Duration::from_millis(100),
            timeout: Duration::from_millis(2000),
            long_lived: 1,
        };
        let args = traffic_args(&stream, Some(Path::new("/sys/fs/cgroup/x")));
        let cli = Cli::try_parse_from(std::iter::once("traffic".to_string()).chain(args)).unwrap();
        let ChildRole::Traffic {
            src,
            dst,
            endpoint,
            long_lived,
            cgroup,
            ..
        } = cli.role
        else {
            panic!("not __traffic");
        };
        assert_eq!((src, dst, long_lived), (stream.source, stream.dest, 1));
        assert_eq!(endpoint, Vec::from_iter(stream.endpoints));
        assert_eq!(cgroup, Some(PathBuf::from("/sys/fs/cgroup/x")));
        assert!(ChildRole::has_subcommand(SERVE));
    }
}
