//! Addresses: which IPs the API server lets a Service or an EndpointSlice use
//! (`ValidateEndpointIP` of `pkg/apis/core/validation`), and the textual forms
//! of IP addresses and prefixes as the schemas' patterns, exactly the forms
//! the ruleset model parses (`std::net`'s: no leading zeros in IPv4, no zone).

use std::fmt;
use std::net::IpAddr;
use std::sync::LazyLock;

/// Why an address may not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("may not be unspecified ({0})")]
    Unspecified(IpAddr),
    #[error("may not be in the loopback range (127.0.0.0/8, ::1/128)")]
    Loopback,
    #[error("may not be in the link-local range (169.254.0.0/16, fe80::/10)")]
    LinkLocal,
    #[error("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)")]
    LinkLocalMulticast,
}

/// `ValidateEndpointIP`: what the API server holds endpoint addresses and
/// `spec.externalIPs` to. IPv4-mapped IPv6 addresses count as IPv4, as in Go.
pub fn check_endpoint_ip(ip: &IpAddr) -> Result<(), AddressError> {
    check_specified(ip)?;
    match ip.to_canonical() {
        ip if ip.is_loopback() => Err(AddressError::Loopback),
        IpAddr::V4(v4) if v4.is_link_local() => Err(AddressError::LinkLocal),
        IpAddr::V4(v4) if v4.octets()[..3] == [224, 0, 0] => Err(AddressError::LinkLocalMulticast),
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Err(AddressError::LinkLocal),
        // Go's IsLinkLocalMulticast: ff02::/16 with any flags (ffX2::).
        IpAddr::V6(v6) if v6.segments()[0] & 0xff0f == 0xff02 => {
            Err(AddressError::LinkLocalMulticast)
        }
        _ => Ok(()),
    }
}

/// A frontend address (cluster IP, load-balancer IP) must name some address.
pub fn check_specified(ip: &IpAddr) -> Result<(), AddressError> {
    if ip.to_canonical().is_unspecified() {
        return Err(AddressError::Unspecified(*ip));
    }
    Ok(())
}

/// An IPv4 octet without leading zeros.
const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
const HEX: &str = "[0-9a-fA-F]{1,4}";

/// Dotted-quad IPv4, unanchored.
fn ipv4() -> String {
    format!(r"{OCTET}(\.{OCTET}){{3}}")
}

/// IPv6 as `std::net::Ipv6Addr` parses it, unanchored: eight groups; or six
/// groups and an IPv4 tail; or `::` standing for at least one group, with
/// up to seven groups around it (an IPv4 tail counting two, after `::` only).
fn ipv6() -> String {
    let v4 = ipv4();
    // `n` groups joined by ':'.
    let groups = |n: usize| match n {
        1 => HEX.to_string(),
        n => format!("({HEX}:){{{}}}{HEX}", n - 1),
    };
    // Up to `n` groups joined by ':' (none included).
    let up_to = |n: usize| match n {
        1 => format!("({HEX})?"),
        n => format!("({HEX}(:{HEX}){{0,{}}})?", n - 1),
    };
    let mut forms = vec![groups(8), format!("({HEX}:){{6}}{v4}")];
    for head in 0..=7usize {
        let head_text = if head == 0 {
            String::new()
        } else {
            groups(head)
        };
        let tail = match 7 - head {
            0 => String::new(),
            1 => up_to(1),
            2 => format!("({}|{v4})", up_to(2)),
            room => format!("({}|({HEX}:){{0,{}}}{v4})", up_to(room), room - 2),
        };
        forms.push(format!("{head_text}::{tail}"));
    }
    format!("({})", forms.join("|"))
}

/// The schema pattern of an IP address (either family).
pub fn ip_pattern() -> &'static str {
    static PATTERN: LazyLock<String> = LazyLock::new(|| format!("^({}|{})$", ipv4(), ipv6()));
    &PATTERN
}

/// The schema pattern of a prefix `address/length`, as the ruleset writes it.
pub fn cidr_pattern() -> &'static str {
    static PATTERN: LazyLock<String> = LazyLock::new(|| {
        format!(
            "^({}/(3[0-2]|[12]?[0-9])|{}/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$",
            ipv4(),
            ipv6()
        )
    });
    &PATTERN
}

/// The longest text of an IPv6 address with an IPv4 tail.
pub const IP_MAX_LENGTH: usize = 45;
/// `IP_MAX_LENGTH` and `/128`.
pub const CIDR_MAX_LENGTH: usize = 49;

/// An address that a field may not hold, named for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadAddress {
    pub ip: IpAddr,
    pub error: AddressError,
}

impl fmt::Display for BadAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.ip, self.error)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use proptest::prelude::*;
    use regex::Regex;

    use super::*;

    fn is_ip(text: &str) -> bool {
        static RE: LazyLock<Regex> = LazyLock::new(|| Regex::new(ip_pattern()).unwrap());
        RE.is_match(text)
    }

    #[test]
    fn endpoint_ips_follow_validate_endpoint_ip() {
        for (text, ok) in [
            ("10.0.0.1", true),
            ("2001:db8::1", true),
            ("224.0.1.1", true),
            ("ff05::1", true),
            ("0.0.0.0", false),
            ("::", false),
            ("127.0.0.1", false),
            ("127.255.0.9", false),
            ("::1", false),
            ("::ffff:127.0.0.1", false),
            ("169.254.169.254", false),
            ("fe80::1", false),
            ("febf::1", false),
            ("fec0::1", true),
            ("224.0.0.251", false),
            ("ff02::1", false),
            ("ff12::1", false),
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(check_endpoint_ip(&ip).is_ok(), ok, "{text}");
        }
        assert!(check_specified(&"::ffff:0.0.0.0".parse().unwrap()).is_err());
        assert!(check_specified(&"127.0.0.1".parse().unwrap()).is_ok());
    }

    #[test]
    fn ip_pattern_accepts_exactly_what_the_model_parses() {
        for text in [
            "1.2.3.4",
            "255.255.255.255",
            "::",
            "::1",
            "1::",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            "1:2:3:4:5:6:1.2.3.4",
            "::1.2.3.4",
            "::ffff:10.0.0.1",
            "1::2:3:4:5:1.2.3.4",
            "0000:0:0:0:0:0:0:0001",
            "FE80::A",
            "2001:db8::",
            "01.2.3.4",
            "1.2.3",
            "256.1.1.1",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7::8",
            "1::2::3",
            ":1::",
            "1:::2",
            "12345::",
            "1.2.3.4::",
            "::1.2.3.4:5",
            "1:2:3:4:5:6:7:1.2.3.4",
            "::01.2.3.4",
            "fe80::1%eth0",
            " 1.2.3.4",
            "1.2.3.4\n",
            "",
        ] {
            assert_eq!(
                is_ip(text),
                text.parse::<IpAddr>().is_ok(),
                "{text:?}: pattern and parser disagree"
            );
        }
    }

    proptest! {
        #[test]
        fn every_address_written_matches_the_pattern(bits: u128, v4: u32) {
            let v6 = Ipv6Addr::from(bits);
            prop_assert!(is_ip(&v6.to_string()), "{v6}");
            prop_assert!(is_ip(&std::net::Ipv4Addr::from(v4).to_string()));
            // Mapped and compressed forms.
            let mapped = Ipv6Addr::from(u128::from(v4) | 0xffff << 32);
            prop_assert!(is_ip(&mapped.to_string()), "{mapped}");
        }

        #[test]
        fn pattern_and_parser_agree_on_address_like_text(text in "[0-9a-f:.]{0,24}") {
            prop_assert_eq!(is_ip(&text), text.parse::<IpAddr>().is_ok(), "{:?}", text);
        }

        #[test]
        fn cidr_pattern_accepts_every_prefix_written(bits: u128, len in 0u8..=128) {
            let cidr = crate::ruleset::Cidr::new(Ipv6Addr::from(bits).into(), len).unwrap();
            let re = Regex::new(cidr_pattern()).unwrap();
            prop_assert!(re.is_match(&cidr.to_string()), "{cidr}");
        }
    }

    #[test]
    fn cidr_pattern_accepts_only_what_the_model_parses() {
        let re = Regex::new(cidr_pattern()).unwrap();
        for (text, ok) in [
            ("10.0.0.0/8", true),
            ("0.0.0.0/0", true),
            ("10.0.0.1/32", true),
            ("2001:db8::/64", true),
            ("::/0", true),
            ("::1/128", true),
            ("10.0.0.0/33", false),
            ("10.0.0.0/08", false),
            ("::/129", false),
            ("10.0.0.0", false),
            ("10.0.0.0/8\n", false),
        ] {
            assert_eq!(re.is_match(text), ok, "{text:?}");
            if ok {
                assert!(text.parse::<crate::ruleset::Cidr>().is_ok(), "{text}");
            }
        }
    }
}
