//! Captures of the kernel's own IPVS answers as annotated hex: one line per
//! header and per attribute, `# name value` after the bytes. The VM test
//! writes them (`e2e/tests/vm_ipvs.rs`), the unit tests decode and re-encode
//! them byte for byte. Only the annotation is generated from the names below;
//! the bytes are the kernel's.

pub use crate::netlink::{mask_header, parse_hex};

/// Annotated hex of one netlink message of the IPVS family.
pub fn annotate(msg: &[u8]) -> String {
    let mut out = String::new();
    if msg.len() < 20 {
        line(&mut out, 0, msg, "truncated message");
        return out;
    }
    let len = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
    let flags = u16::from_le_bytes([msg[6], msg[7]]);
    line(
        &mut out,
        0,
        &msg[..16],
        &format!("nlmsghdr len={len} type=<family> flags={flags:#06x} seq=0 pid=0"),
    );
    let cmd = msg[16];
    line(
        &mut out,
        0,
        &msg[16..20],
        &format!(
            "genlmsghdr cmd={cmd} ({}) version={}",
            cmd_name(cmd),
            msg[17]
        ),
    );
    let level = if matches!(cmd, 14 | 15) {
        Level::Info
    } else {
        Level::Top
    };
    attrs(&mut out, &msg[20..], level, 0);
    out
}

#[derive(Clone, Copy)]
enum Level {
    Top,
    Info,
    Service,
    Dest,
    Stats,
}

fn cmd_name(cmd: u8) -> &'static str {
    match cmd {
        1 => "IPVS_CMD_NEW_SERVICE",
        4 => "IPVS_CMD_GET_SERVICE",
        5 => "IPVS_CMD_NEW_DEST",
        8 => "IPVS_CMD_GET_DEST",
        12 => "IPVS_CMD_SET_CONFIG",
        13 => "IPVS_CMD_GET_CONFIG",
        14 => "IPVS_CMD_SET_INFO",
        15 => "IPVS_CMD_GET_INFO",
        _ => "?",
    }
}

fn attr_name(level: Level, kind: u16) -> (&'static str, Option<Level>) {
    let names: &[&str] = match level {
        Level::Top => &[
            "",
            "IPVS_CMD_ATTR_SERVICE",
            "IPVS_CMD_ATTR_DEST",
            "IPVS_CMD_ATTR_DAEMON",
            "IPVS_CMD_ATTR_TIMEOUT_TCP",
            "IPVS_CMD_ATTR_TIMEOUT_TCP_FIN",
            "IPVS_CMD_ATTR_TIMEOUT_UDP",
        ],
        Level::Info => &["", "IPVS_INFO_ATTR_VERSION", "IPVS_INFO_ATTR_CONN_TAB_SIZE"],
        Level::Service => &[
            "",
            "IPVS_SVC_ATTR_AF",
            "IPVS_SVC_ATTR_PROTOCOL",
            "IPVS_SVC_ATTR_ADDR",
            "IPVS_SVC_ATTR_PORT",
            "IPVS_SVC_ATTR_FWMARK",
            "IPVS_SVC_ATTR_SCHED_NAME",
            "IPVS_SVC_ATTR_FLAGS",
            "IPVS_SVC_ATTR_TIMEOUT",
            "IPVS_SVC_ATTR_NETMASK",
            "IPVS_SVC_ATTR_STATS",
            "IPVS_SVC_ATTR_PE_NAME",
            "IPVS_SVC_ATTR_STATS64",
        ],
        Level::Dest => &[
            "",
            "IPVS_DEST_ATTR_ADDR",
            "IPVS_DEST_ATTR_PORT",
            "IPVS_DEST_ATTR_FWD_METHOD",
            "IPVS_DEST_ATTR_WEIGHT",
            "IPVS_DEST_ATTR_U_THRESH",
            "IPVS_DEST_ATTR_L_THRESH",
            "IPVS_DEST_ATTR_ACTIVE_CONNS",
            "IPVS_DEST_ATTR_INACT_CONNS",
            "IPVS_DEST_ATTR_PERSIST_CONNS",
            "IPVS_DEST_ATTR_STATS",
            "IPVS_DEST_ATTR_ADDR_FAMILY",
            "IPVS_DEST_ATTR_STATS64",
            "IPVS_DEST_ATTR_TUN_TYPE",
            "IPVS_DEST_ATTR_TUN_PORT",
            "IPVS_DEST_ATTR_TUN_FLAGS",
        ],
        Level::Stats => &[
            "",
            "IPVS_STATS_ATTR_CONNS",
            "IPVS_STATS_ATTR_INPKTS",
            "IPVS_STATS_ATTR_OUTPKTS",
            "IPVS_STATS_ATTR_INBYTES",
            "IPVS_STATS_ATTR_OUTBYTES",
            "IPVS_STATS_ATTR_CPS",
            "IPVS_STATS_ATTR_INPPS",
            "IPVS_STATS_ATTR_OUTPPS",
            "IPVS_STATS_ATTR_INBPS",
            "IPVS_STATS_ATTR_OUTBPS",
            "IPVS_STATS_ATTR_PAD",
        ],
    };
    let name = names.get(usize::from(kind)).copied().unwrap_or("unknown");
    let nested = match (level, kind) {
        (Level::Top, 1) => Some(Level::Service),
        (Level::Top, 2) => Some(Level::Dest),
        (Level::Service | Level::Dest, 10 | 12) => Some(Level::Stats),
        _ => None,
    };
    (name, nested)
}

fn attrs(out: &mut String, mut buf: &[u8], level: Level, depth: usize) {
    while buf.len() >= 4 {
        let len = usize::from(u16::from_le_bytes([buf[0], buf[1]]));
        let kind = u16::from_le_bytes([buf[2], buf[3]]) & 0x3fff;
        let padded = (len + 3) & !3;
        if len < 4 || padded > buf.len() {
            line(out, depth, buf, "malformed attribute");
            return;
        }
        let (name, nested) = attr_name(level, kind);
        let value = &buf[4..len];
        match nested {
            Some(inner) => {
                line(
                    out,
                    depth,
                    &buf[..4],
                    &format!("{name} (nested, len={len})"),
                );
                attrs(out, &buf[4..padded], inner, depth + 1);
            }
            None => line(
                out,
                depth,
                &buf[..padded],
                &format!("{name} {}", describe(name, value)),
            ),
        }
        buf = &buf[padded..];
    }
}

fn describe(name: &str, v: &[u8]) -> String {
    if name.ends_with("_NAME") {
        return format!(
            "{:?}",
            String::from_utf8_lossy(v.strip_suffix(&[0]).unwrap_or(v))
        );
    }
    if name.ends_with("_ADDR") && v.len() == 16 {
        return format!(
            "{}.{}.{}.{} (+12 bytes of the union)",
            v[0], v[1], v[2], v[3]
        );
    }
    if name.ends_with("_PORT") && v.len() == 2 {
        return format!("{} (network order)", u16::from_be_bytes([v[0], v[1]]));
    }
    if name.ends_with("_FLAGS") && v.len() == 8 {
        let f = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        let m = u32::from_le_bytes([v[4], v[5], v[6], v[7]]);
        return format!("flags={f:#x} mask={m:#x}");
    }
    match v.len() {
        1 => format!("{}", v[0]),
        2 => format!("{}", u16::from_le_bytes([v[0], v[1]])),
        4 => format!("{}", u32::from_le_bytes([v[0], v[1], v[2], v[3]])),
        8 => format!(
            "{}",
            u64::from_le_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]])
        ),
        n => format!("({n} bytes)"),
    }
}

fn line(out: &mut String, depth: usize, bytes: &[u8], note: &str) {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    out.push_str(&"  ".repeat(depth));
    out.push_str(&hex.join(" "));
    out.push_str("  # ");
    out.push_str(note);
    out.push('\n');
}
