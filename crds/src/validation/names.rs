//! Kubernetes' name formats, as the API server checks them
//! (`k8s.io/apimachinery/pkg/util/validation` and `pkg/api/validate/content`):
//! the same regular expressions and length limits, which the CRD schemas carry
//! as `pattern` and `maxLength`.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

/// `dns1123LabelFmt`.
pub const DNS1123_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// `dns1123SubdomainFmt`.
pub const DNS1123_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// `dns1035LabelFmt`.
pub const DNS1035_LABEL_PATTERN: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// `labelValueFmt` (the empty value included).
pub const LABEL_VALUE_PATTERN: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/// A DNS-1123 label or nothing: a service port name, empty for the single unnamed port.
pub const OPTIONAL_DNS1123_LABEL_PATTERN: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$";

/// `DNS1123LabelMaxLength`, `DNS1035LabelMaxLength`, `LabelValueMaxLength`.
pub const LABEL_MAX_LENGTH: usize = 63;
/// `DNS1123SubdomainMaxLength`.
pub const SUBDOMAIN_MAX_LENGTH: usize = 253;

/// Which Kubernetes rule a name follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameFormat {
    /// Namespaces, Service and EndpointSlice port names, endpoint hostnames.
    Dns1123Label,
    /// Node names, EndpointSlice names, custom resource names.
    Dns1123Subdomain,
    /// Service names.
    Dns1035Label,
    /// Label values: topology zones, `kubernetes.io/service-name`.
    LabelValue,
}

impl NameFormat {
    /// The anchored regular expression, as in the schemas.
    pub const fn pattern(self) -> &'static str {
        match self {
            NameFormat::Dns1123Label => DNS1123_LABEL_PATTERN,
            NameFormat::Dns1123Subdomain => DNS1123_SUBDOMAIN_PATTERN,
            NameFormat::Dns1035Label => DNS1035_LABEL_PATTERN,
            NameFormat::LabelValue => LABEL_VALUE_PATTERN,
        }
    }

    /// The longest valid value, in bytes (all valid values are ASCII).
    pub const fn max_len(self) -> usize {
        match self {
            NameFormat::Dns1123Subdomain => SUBDOMAIN_MAX_LENGTH,
            _ => LABEL_MAX_LENGTH,
        }
    }

    /// The API server's explanation of the format.
    fn rule(self) -> &'static str {
        match self {
            NameFormat::Dns1123Label => {
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
            }
            NameFormat::Dns1123Subdomain => {
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            }
            NameFormat::Dns1035Label => {
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character"
            }
            NameFormat::LabelValue => {
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
            }
        }
    }

    fn regex(self) -> &'static Regex {
        static COMPILED: LazyLock<[Regex; 4]> = LazyLock::new(|| {
            [
                NameFormat::Dns1123Label,
                NameFormat::Dns1123Subdomain,
                NameFormat::Dns1035Label,
                NameFormat::LabelValue,
            ]
            .map(|f| Regex::new(f.pattern()).unwrap_or_else(|e| unreachable!("{e}")))
        });
        &COMPILED[self as usize]
    }

    /// `Ok` when `value` is valid; the first problem otherwise, as the API server words it.
    pub fn check(self, value: &str) -> Result<(), NameError> {
        let problem = if value.len() > self.max_len() {
            Problem::TooLong(self.max_len())
        } else if self.regex().is_match(value) {
            return Ok(());
        } else if self == NameFormat::Dns1123Label
            && NameFormat::Dns1123Subdomain.regex().is_match(value)
        {
            Problem::Dots
        } else {
            Problem::Format(self)
        };
        Err(NameError {
            value: quoted(value),
            problem,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Problem {
    TooLong(usize),
    /// A subdomain where a label is required.
    Dots,
    Format(NameFormat),
}

/// A value that is not a valid name of its format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value}: {problem}")]
pub struct NameError {
    /// The value, quoted and escaped, shortened when long.
    value: String,
    problem: Problem,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::TooLong(max) => write!(f, "must be no more than {max} characters"),
            Problem::Dots => f.write_str("must not contain dots"),
            Problem::Format(format) => write!(
                f,
                "{} (regex used for validation is '{}')",
                format.rule(),
                format.pattern()
            ),
        }
    }
}

/// The longest part of a value an error message shows.
const SHOWN_CHARS: usize = 64;

/// `value` quoted with every control and non-printable character escaped (so
/// it cannot break a line of a log, an Event or a terminal), and shortened
/// to its first 64 characters.
pub fn quoted(value: &str) -> String {
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(SHOWN_CHARS).collect();
    let more = chars.next().is_some();
    format!("{head:?}{}", if more { "…" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use NameFormat::*;

    #[test]
    fn length_limits_are_inclusive() {
        let label = "a".repeat(63);
        assert!(Dns1123Label.check(&label).is_ok());
        assert!(Dns1035Label.check(&label).is_ok());
        assert!(LabelValue.check(&label).is_ok());
        let long = "a".repeat(64);
        for format in [Dns1123Label, Dns1035Label, LabelValue] {
            let e = format.check(&long).unwrap_err().to_string();
            assert!(e.ends_with("must be no more than 63 characters"), "{e}");
        }
        let subdomain = [label.as_str(); 4].join(".")[..253].to_string();
        assert!(!subdomain.ends_with('.'));
        assert!(Dns1123Subdomain.check(&subdomain).is_ok());
        assert!(Dns1123Subdomain.check(&format!("{subdomain}a")).is_err());
    }

    #[test]
    fn errors_quote_escape_and_shorten_the_value() {
        let e = Dns1035Label
            .check("web\"\n-A INPUT")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(r#""web\"\n-A INPUT": a DNS-1035 label"#),
            "{e}"
        );
        assert!(!e.contains('\n'));
        assert_eq!(
            Dns1123Label.check("a.b").unwrap_err().to_string(),
            "\"a.b\": must not contain dots"
        );
        let e = LabelValue
            .check(&"x".repeat(100_000))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 120, "{e}");
        assert!(e.contains('…'));
    }
}
