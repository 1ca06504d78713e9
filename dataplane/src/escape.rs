//! What text that came from data may hold when a backend writes it, for
//! every text format: `iptables-restore` ([`crate::iptables::escape`]),
//! `ipset restore` ([`crate::ipvs::ipset`]), `nft -f` and the nf_tables
//! attributes ([`crate::nftables::escape`]), and the listings `switchyard
//! plan` prints. Names and comments in a ruleset are validated where they
//! enter (the compiler, the agent's shard check); this is the second line,
//! for input that skipped the first (a hand-written `ProxyRuleset`, a file
//! given to `plan`).
//!
//! Free text (a comment) keeps printable ASCII except `"` and `\`, the quote
//! and escape characters of all three tools, so it can never close its
//! quotes or end its line: `"` becomes `'`, anything else `?`. Structure (a chain or
//! set name) is never repaired: a name outside its format's characters or
//! length is refused with a [`NameError`].

use std::borrow::Cow;

/// A name a format cannot carry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{format} {kind} name {name:?} refused: {reason}")]
pub struct NameError {
    /// The format (`iptables`, `ipset`, `nftables`).
    pub format: &'static str,
    /// What the name names (`chain`, `set`, …).
    pub kind: &'static str,
    pub name: String,
    pub reason: &'static str,
}

/// The characters and length one format allows in its names.
pub struct NameRule {
    pub format: &'static str,
    /// Bytes, without the terminating NUL the kernel adds.
    pub max_bytes: usize,
    /// Whether a byte may start the name.
    pub first: fn(u8) -> bool,
    /// Whether a byte may follow the first.
    pub rest: fn(u8) -> bool,
}

impl NameRule {
    /// `name`, when the format can carry it as a `kind` name.
    pub fn check<'a>(&self, kind: &'static str, name: &'a str) -> Result<&'a str, NameError> {
        let refuse = |reason| NameError {
            format: self.format,
            kind,
            name: name.to_string(),
            reason,
        };
        let bytes = name.as_bytes();
        match bytes.split_first() {
            None => Err(refuse("empty")),
            Some(_) if bytes.len() > self.max_bytes => Err(refuse("too long")),
            Some((first, _)) if !(self.first)(*first) => Err(refuse("first character not allowed")),
            Some((_, rest)) if !rest.iter().all(|b| (self.rest)(*b)) => {
                Err(refuse("character not allowed"))
            }
            Some(_) => Ok(name),
        }
    }
}

/// The ipset name rule, shared by `ipset restore` and iptables' `-m set
/// --match-set`: at most 31 bytes (`IPSET_MAXNAMELEN`), kube-proxy's characters.
pub const IPSET_NAME: NameRule = NameRule {
    format: "ipset",
    max_bytes: 31,
    first: |b| b.is_ascii_alphanumeric(),
    rest: |b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'),
};

/// Whether free text may keep this character.
fn printable_char(c: char) -> bool {
    matches!(c, ' '..='~') && c != '"' && c != '\\'
}

/// `text` with every character a format could read as structure replaced:
/// `"` by `'`, control characters, newlines, `\` and anything outside ASCII
/// by `?`. Also the form of data in a listing's `#` line.
pub fn printable(text: &str) -> Cow<'_, str> {
    if text.chars().all(printable_char) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| match c {
                c if printable_char(c) => c,
                '"' => '\'',
                _ => '?',
            })
            .collect(),
    )
}

/// A comment as a format with a limit of `max_bytes` can hold it:
/// [`printable`], then cut (ASCII, so any byte is a character boundary).
pub fn comment(text: &str, max_bytes: usize) -> Cow<'_, str> {
    let mut out = printable(text);
    if out.len() > max_bytes {
        out.to_mut().truncate(max_bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_keeps_no_quote_backslash_newline_or_non_ascii() {
        assert_eq!(
            comment("ns1/svc1:p80 cluster IP", 255),
            "ns1/svc1:p80 cluster IP"
        );
        assert_eq!(
            comment("web\"\n-A INPUT -j ACCEPT\n#\\é\0", 255),
            "web'?-A INPUT -j ACCEPT?#???"
        );
        assert_eq!(comment(&"x".repeat(300), 255).len(), 255);
        assert_eq!(comment("ü".repeat(200).as_str(), 128), "?".repeat(128));
    }

    #[test]
    fn names_outside_the_rule_are_refused_with_the_reason() {
        assert_eq!(
            IPSET_NAME.check("set", "KUBE-CLUSTER-IP"),
            Ok("KUBE-CLUSTER-IP")
        );
        let refused = |name: &str| IPSET_NAME.check("set", name).unwrap_err().reason;
        assert_eq!(refused(""), "empty");
        assert_eq!(refused(&"A".repeat(32)), "too long");
        assert_eq!(refused("-x"), "first character not allowed");
        assert_eq!(refused("A B"), "character not allowed");
        assert_eq!(refused("A\nB"), "character not allowed");
        let err = IPSET_NAME.check("set", "A\"B").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"ipset set name "A\"B" refused: character not allowed"#
        );
    }
}
