//! IP parsing as kube-proxy does it (`netutils.ParseIPSloppy`): IPv4 octets
//! with leading zeros, which the API server accepted before 1.20, are read as
//! decimal.

use std::net::{IpAddr, Ipv4Addr};

use switchyard_api::ruleset::{Cidr, CidrError};

pub(crate) fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse()
        .ok()
        .or_else(|| parse_v4_leading_zeros(text).map(IpAddr::V4))
}

fn parse_v4_leading_zeros(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// `netutils.ParseCIDRSloppy`; a bare address is a host prefix.
pub(crate) fn parse_cidr(text: &str) -> Result<Cidr, CidrError> {
    match text.split_once('/') {
        Some((addr, prefix)) => match (parse_ip(addr), prefix.parse::<u8>()) {
            (Some(addr), Ok(prefix)) => Cidr::new(addr, prefix).map_err(|e| CidrError {
                text: text.to_string(),
                reason: e.reason,
            }),
            _ => text.parse(),
        },
        None => text.parse(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_zeros_are_decimal_as_in_parse_ip_sloppy() {
        assert_eq!(
            parse_ip("010.001.0.9"),
            Some(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 9)))
        );
        assert_eq!(parse_ip("fd00::1"), "fd00::1".parse().ok());
        assert_eq!(parse_ip("10.0.0.256"), None);
        assert_eq!(parse_ip("10.0.0"), None);
        assert_eq!(parse_ip("10.0.0.1.2"), None);
        assert_eq!(parse_ip("1.2.3.+4"), None);
        assert_eq!(
            parse_cidr("010.0.0.0/8").map(|c| c.to_string()),
            Ok("10.0.0.0/8".to_string())
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0.0/x").is_err());
    }
}
