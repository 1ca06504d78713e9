//! The non-IPVS kernel objects of the mode, through the command-line tools
//! (`ip`, `ipset`, `iptables-save`) of [`Runner`] and the [`Sysctl`] writer:
//! the dummy interface and its addresses, the ipsets, sysctls. (Our rules
//! are written and removed by the iptables mode's writer,
//! [`crate::iptables::restore`], the `ipset restore` input by [`super::ipset`].)
//! Every command acts in the caller's network namespace.

use std::collections::BTreeSet;
use std::net::IpAddr;

use switchyard_api::ruleset::IpFamily;

use super::plan::DUMMY_INTERFACE;
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
    pub fn dummy_exists(&self) -> bool {
        self.runner
            .run("ip", &["-o", "link", "show", "dev", DUMMY_INTERFACE], None)
            .is_ok()
    }

    pub fn ensure_dummy(&self) -> Result<(), ExecError> {
        if !self.dummy_exists() {
            self.runner.run(
                "ip",
                &["link", "add", DUMMY_INTERFACE, "type", "dummy"],
                None,
            )?;
        }
        Ok(())
    }

    pub fn delete_dummy(&self) -> Result<(), ExecError> {
        if self.dummy_exists() {
            self.runner
                .run("ip", &["link", "del", DUMMY_INTERFACE], None)?;
        }
        Ok(())
    }

    /// The addresses on `kube-ipvs0` (none when it does not exist).
    pub fn dummy_addresses(&self) -> Result<BTreeSet<IpAddr>, ExecError> {
        if !self.dummy_exists() {
            return Ok(BTreeSet::new());
        }
        let out = self
            .runner
            .run("ip", &["-o", "addr", "show", "dev", DUMMY_INTERFACE], None)?;
        Ok(parse_addresses(&out))
    }

    /// Add and remove addresses on `kube-ipvs0` in one `ip -batch`.
    pub fn change_addresses(
        &self,
        add: &BTreeSet<IpAddr>,
        remove: &BTreeSet<IpAddr>,
    ) -> Result<(), ExecError> {
        let mut batch = String::new();
        for (verb, ips) in [("add", add), ("del", remove)] {
            for ip in ips {
                let prefix = match ip {
                    IpAddr::V4(_) => 32,
                    IpAddr::V6(_) => 128,
                };
                batch.push_str(&format!(
                    "addr {verb} {ip}/{prefix} dev {DUMMY_INTERFACE}\n"
                ));
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.runner
            .run("ip", &["-batch", "-"], Some(batch.as_bytes()))
            .map(|_| ())
    }

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

/// Addresses in `ip -o addr show` output.
pub fn parse_addresses(out: &str) -> BTreeSet<IpAddr> {
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_ip_o_addr_output() {
        let out = "7: kube-ipvs0    inet 10.96.0.1/32 scope global kube-ipvs0\\       valid_lft forever preferred_lft forever\n\
                   7: kube-ipvs0    inet6 fd00::1/128 scope global \\       valid_lft forever preferred_lft forever\n";
        let got: Vec<String> = parse_addresses(out).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["10.96.0.1", "fd00::1"]);
    }
}
