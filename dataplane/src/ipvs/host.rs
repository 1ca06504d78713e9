//! The ipsets and iptables objects of the mode, through the command-line
//! tools (`ipset`, `iptables-save`) of [`Runner`], and the sysctls the
//! [`crate::sysctl::Sysctl`] writer sets. (`kube-ipvs0` is [`super::dummy`]'s;
//! our rules are written and removed by the iptables mode's writer,
//! [`crate::iptables::restore`], the `ipset restore` input by [`super::ipset`].)

use std::collections::BTreeSet;

use switchyard_api::ruleset::IpFamily;

use super::rules::our_chains;
use crate::exec::{ExecError, Runner};
use crate::iptables::restore::tools;

/// The sysctls IPVS mode needs (kube-proxy's), plus strictARP's when set.
pub fn sysctls(strict_arp: bool) -> Vec<(&'static str, &'static str)> {
    let mut out = vec![
        ("net.ipv4.vs.conntrack", "1"),
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.vs.expire_nodest_conn", "1"),
        ("net.ipv4.vs.expire_quiescent_template", "1"),
    ];
    if strict_arp {
        out.push(("net.ipv4.conf.all.arp_ignore", "1"));
        out.push(("net.ipv4.conf.all.arp_announce", "2"));
    }
    out
}

/// The tools, in the caller's namespace.
pub struct Host<'a> {
    pub runner: &'a dyn Runner,
}

impl Host<'_> {
    /// Names of the ipsets that exist.
    pub fn ipset_names(&self) -> Result<BTreeSet<String>, ExecError> {
        let out = self.runner.run("ipset", &["list", "-n"], None)?;
        Ok(out.lines().map(|l| l.trim().to_string()).collect())
    }

    /// Members of set `name` as `ipset save` prints them.
    pub fn ipset_members(&self, name: &str) -> Result<Vec<String>, ExecError> {
        let out = self.runner.run("ipset", &["save", name], None)?;
        Ok(out
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("add {name} ")))
            .map(|e| e.trim().to_string())
            .collect())
    }

    /// Run `ipset restore` with this input ([`super::ipset`] writes it).
    pub fn ipset_restore(&self, text: &str) -> Result<(), ExecError> {
        if text.is_empty() {
            return Ok(());
        }
        self.runner
            .run("ipset", &["restore"], Some(text.as_bytes()))
            .map(|_| ())
    }

    /// Whether any of our chains exists in this family.
    pub fn has_rules(&self, family: IpFamily) -> bool {
        let (_, _, save) = tools(family);
        our_chains().iter().any(|(table, chains)| {
            self.runner
                .run(save, &["-t", table.as_str()], None)
                .is_ok_and(|out| {
                    chains
                        .iter()
                        .any(|c| out.lines().any(|l| l.starts_with(&format!(":{c} "))))
                })
        })
    }
}
