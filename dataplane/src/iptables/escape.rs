//! The words of an `iptables-restore` line that can come from data, written
//! in one place. iptables-restore reads a line with `fgets` and splits it in
//! `add_param_to_argv` (iptables' `xshared.c`): blanks separate words, `"`
//! opens and closes a quoted word, and inside quotes `\` takes the next
//! character literally. A comment is [`crate::escape::comment`] text (no
//! `"`, `\` or newline, at most 255 bytes: `XT_MAX_COMMENT_LEN` with its
//! NUL), quoted when it holds a blank, so it is always exactly one word.
//! Chain, ipset and `recent` names are refused outside kube-proxy's
//! characters and the kernel's lengths.

use super::rule::{Match, Rule, Target};
use crate::escape::{self, IPSET_NAME, NameError, NameRule};

/// The longest comment the `comment` match holds.
pub const COMMENT_MAX: usize = 255;

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// Chain names: at most 28 bytes (`XT_EXTENSION_MAXNAMELEN` with its NUL),
/// never starting like an option (`-`, `!`).
pub const CHAIN: NameRule = NameRule {
    format: "iptables",
    max_bytes: 28,
    first: |b| b.is_ascii_alphanumeric(),
    rest: name_byte,
};

/// `-m recent --name`: at most 199 bytes (`XT_RECENT_NAME_LEN` with its NUL).
const RECENT: NameRule = NameRule {
    format: "iptables",
    max_bytes: 199,
    first: |b| b.is_ascii_alphanumeric(),
    rest: name_byte,
};

/// The comment as one iptables-restore word.
pub fn comment(text: &str) -> String {
    let text = escape::comment(text, COMMENT_MAX);
    if text.contains(' ') || text.is_empty() {
        format!("\"{text}\"")
    } else {
        text.into_owned()
    }
}

/// `name`, when iptables can carry it as a chain name.
pub fn chain(name: &str) -> Result<&str, NameError> {
    CHAIN.check("chain", name)
}

/// Refuse a rule that names a chain, ipset or `recent` list iptables cannot carry.
pub fn check_rule(rule: &Rule) -> Result<(), NameError> {
    if let Target::Jump(target) = &rule.target {
        chain(target)?;
    }
    for m in &rule.matches {
        match m {
            Match::Set { name, .. } => {
                IPSET_NAME.check("set", name)?;
            }
            Match::RecentCheck { name, .. } | Match::RecentSet { name } => {
                RECENT.check("recent list", name)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A rule's text split into its arguments as iptables-restore splits it
/// (for `iptables -C/-I/-D`, and to read iptables-save): blanks separate
/// words, `"` opens and closes a quoted word, inside which `\` takes the
/// next character literally (iptables-save writes `'` as `\'`).
pub fn argv(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for ch in text.chars() {
        match ch {
            _ if escaped => {
                word.push(ch);
                escaped = false;
            }
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(ch),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The issue's example: a Service name that closes the comment's quotes
    /// and starts a line of its own.
    #[test]
    fn hostile_comment_cannot_end_its_word_or_its_line() {
        let name = "default/web\"\n-A INPUT -j ACCEPT\n#:http cluster IP";
        let word = comment(name);
        assert_eq!(
            word,
            "\"default/web'?-A INPUT -j ACCEPT?#:http cluster IP\""
        );
        let rule = Rule::new(Target::Accept).comment(name);
        let line = rule.to_string();
        assert!(!line.contains('\n'));
        assert_eq!(
            argv(&line),
            [
                "-m",
                "comment",
                "--comment",
                "default/web'?-A INPUT -j ACCEPT?#:http cluster IP",
                "-j",
                "ACCEPT"
            ]
        );
    }

    #[test]
    fn argv_reads_iptables_save_escapes() {
        assert_eq!(
            argv(r#"-m comment --comment "it\'s \"x\"" -j ACCEPT"#),
            ["-m", "comment", "--comment", r#"it's "x""#, "-j", "ACCEPT"]
        );
    }

    #[test]
    fn comments_are_cut_to_what_the_match_holds() {
        assert_eq!(comment(&"x".repeat(400)).len(), COMMENT_MAX);
        assert_eq!(comment(""), "\"\"");
        assert_eq!(comment("no-blank"), "no-blank");
    }

    #[test]
    fn rule_naming_a_chain_iptables_cannot_carry_is_refused() {
        let ok = Rule::new(Target::Jump("KUBE-SVC-XPGD46QRK7WJZT7O".into()));
        assert_eq!(check_rule(&ok), Ok(()));
        let err = check_rule(&Rule::new(Target::Jump("KUBE-SVC-X\n-A INPUT".into()))).unwrap_err();
        assert_eq!((err.kind, err.reason), ("chain", "character not allowed"));
        let long = Rule::new(Target::Jump("KUBE-SVC-ABCDEFGHIJKLMNOPQRST".into()));
        assert_eq!(check_rule(&long).unwrap_err().reason, "too long");
        let set = Rule::new(Target::Accept).with(Match::Set {
            name: "KUBE CLUSTER".into(),
            dimensions: &[],
        });
        assert_eq!(check_rule(&set).unwrap_err().format, "ipset");
        let recent = Rule::new(Target::Accept).with(Match::RecentSet { name: "-x".into() });
        assert_eq!(
            check_rule(&recent).unwrap_err().reason,
            "first character not allowed"
        );
    }
}
