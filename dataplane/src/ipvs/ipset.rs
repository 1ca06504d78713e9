//! The one writer of `ipset restore` input: syncing the mode's sets and
//! destroying them. ipset reads its input a line at a time and splits a line
//! at blanks, `"` opening and closing a quoted word, with no escapes
//! (`build_argv` in ipset's `ipset.c`). Members are typed addresses and
//! ports; a set name outside [`IPSET_NAME`] is refused before anything is
//! written, so no data can add a word or a line.

use super::plan::IpSet;
use crate::escape::{IPSET_NAME, NameError};

fn name(set: &str) -> Result<&str, NameError> {
    IPSET_NAME.check("set", set)
}

/// Create each set if missing, then replace its members.
pub fn restore_text(sets: &[IpSet]) -> Result<String, NameError> {
    let mut text = String::new();
    for set in sets {
        let name = name(&set.name)?;
        text.push_str(&format!("{} -exist\n", set.create_line()));
        text.push_str(&format!("flush {name}\n"));
        for e in &set.entries {
            text.push_str(&format!("add {name} {e}\n"));
        }
    }
    Ok(text)
}

/// Empty and destroy these sets.
pub fn destroy_text<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<String, NameError> {
    let mut text = String::new();
    for n in names {
        let n = name(n)?;
        text.push_str(&format!("flush {n}\ndestroy {n}\n"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use switchyard_api::ruleset::IpFamily;

    use super::*;
    use crate::ipvs::plan::{SetEntry, SetType};

    fn set(name: &str) -> IpSet {
        IpSet {
            name: name.into(),
            kind: SetType::HashIp,
            family: Some(IpFamily::V4),
            comment: "",
            entries: BTreeSet::from([SetEntry::Ip("10.0.0.1".parse().unwrap())]),
        }
    }

    #[test]
    fn restore_text_creates_flushes_and_fills_each_set() {
        assert_eq!(
            restore_text(&[set("KUBE-IPVS-IPS")]).unwrap(),
            "create KUBE-IPVS-IPS hash:ip family inet hashsize 1024 maxelem 65536 -exist\n\
             flush KUBE-IPVS-IPS\n\
             add KUBE-IPVS-IPS 10.0.0.1\n"
        );
    }

    #[test]
    fn set_name_that_would_add_a_line_is_refused() {
        let err = restore_text(&[set("KUBE-X\ndestroy")]).unwrap_err();
        assert_eq!((err.format, err.kind), ("ipset", "set"));
        assert!(destroy_text(["KUBE-X", "KUBE Y"]).is_err());
        assert_eq!(
            destroy_text(["KUBE-X"]).unwrap(),
            "flush KUBE-X\ndestroy KUBE-X\n"
        );
    }
}
