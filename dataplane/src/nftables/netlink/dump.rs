//! Test-only: a batch as data, in the way of rust-netlink's tests. Any batch
//! (ours or a capture of nft's) parses into messages of attribute trees
//! (nested where `NLA_F_NESTED` is set), emits back byte for byte, and
//! prints as the annotated hex of the fixture files: one attribute per line,
//! indented by nesting, named after `nf_tables.h`.

use std::fmt::Write;

use netlink_packet_core::{NLA_F_NESTED, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};

use super::uapi::*;

/// One netlink message of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub port: u32,
    /// `nfgenmsg`: family, version, resource id.
    pub nfgen: [u8; 4],
    pub attrs: Vec<Attr>,
}

/// One attribute: a value, or nested attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub kind: u16,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Bytes(Vec<u8>),
    Nested(Vec<Attr>),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The messages of a batch; panics on bytes that are not one.
pub fn parse(mut bytes: &[u8]) -> Vec<Message> {
    let mut messages = Vec::new();
    while !bytes.is_empty() {
        let len = u32_at(bytes, 0) as usize;
        messages.push(Message {
            kind: u16_at(bytes, 4),
            flags: u16_at(bytes, 6),
            seq: u32_at(bytes, 8),
            port: u32_at(bytes, 12),
            nfgen: [bytes[16], bytes[17], bytes[18], bytes[19]],
            attrs: parse_attrs(&bytes[20..len]),
        });
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    messages
}

fn parse_attrs(mut bytes: &[u8]) -> Vec<Attr> {
    let mut attrs = Vec::new();
    while !bytes.is_empty() {
        let (len, kind) = (usize::from(u16_at(bytes, 0)), u16_at(bytes, 2));
        let value = &bytes[4..len];
        attrs.push(Attr {
            kind: kind & !NLA_F_NESTED,
            value: if kind & NLA_F_NESTED != 0 {
                Value::Nested(parse_attrs(value))
            } else {
                Value::Bytes(value.to_vec())
            },
        });
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    attrs
}

/// The bytes of the messages.
pub fn emit(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&m.kind.to_ne_bytes());
        out.extend_from_slice(&m.flags.to_ne_bytes());
        out.extend_from_slice(&m.seq.to_ne_bytes());
        out.extend_from_slice(&m.port.to_ne_bytes());
        out.extend_from_slice(&m.nfgen);
        emit_attrs(&mut out, &m.attrs);
        let len = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }
    out
}

fn emit_attrs(out: &mut Vec<u8>, attrs: &[Attr]) {
    for a in attrs {
        let start = out.len();
        out.extend_from_slice(&[0; 2]);
        match &a.value {
            Value::Bytes(b) => {
                out.extend_from_slice(&a.kind.to_ne_bytes());
                out.extend_from_slice(b);
            }
            Value::Nested(children) => {
                out.extend_from_slice(&(a.kind | NLA_F_NESTED).to_ne_bytes());
                emit_attrs(out, children);
            }
        }
        let len = (out.len() - start) as u16;
        out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        out.resize(out.len().next_multiple_of(4), 0);
    }
}

/// The bytes of an annotated hex text: everything outside `#` comments.
pub fn unhex(text: &str) -> Vec<u8> {
    let digits: String = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where an attribute is: what its number means there.
#[derive(Clone, Copy)]
enum Ctx<'a> {
    Message(u16),
    Hook,
    Exprs,
    Expr,
    ExprData(&'a str),
    Elements,
    Element,
    Data,
    Verdict,
}

/// `match kind { NAME => "NAME", … }` for the named constants.
macro_rules! names {
    ($kind:expr, $($name:ident),+ $(,)?) => {
        match $kind {
            $($name => stringify!($name),)+
            _ => "?",
        }
    };
}

/// The attribute's name, and the context of its children.
fn field<'a>(ctx: Ctx<'a>, kind: u16) -> (&'static str, Ctx<'a>) {
    let msg = |m: libc::c_int| (m as u16) | (libc::NFNL_SUBSYS_NFTABLES as u16) << 8;
    match ctx {
        Ctx::Message(t) if t == msg(libc::NFT_MSG_NEWTABLE) || t == msg(libc::NFT_MSG_DELTABLE) => {
            (names!(kind, NFTA_TABLE_NAME, NFTA_TABLE_FLAGS), ctx)
        }
        Ctx::Message(t) if t == msg(libc::NFT_MSG_NEWCHAIN) || t == msg(libc::NFT_MSG_DELCHAIN) => {
            let name = names!(
                kind,
                NFTA_CHAIN_TABLE,
                NFTA_CHAIN_NAME,
                NFTA_CHAIN_HOOK,
                NFTA_CHAIN_POLICY,
                NFTA_CHAIN_TYPE
            );
            (name, Ctx::Hook)
        }
        Ctx::Message(t) if t == msg(libc::NFT_MSG_NEWRULE) || t == msg(libc::NFT_MSG_DELRULE) => {
            let name = names!(
                kind,
                NFTA_RULE_TABLE,
                NFTA_RULE_CHAIN,
                NFTA_RULE_EXPRESSIONS,
                NFTA_RULE_USERDATA
            );
            (name, Ctx::Exprs)
        }
        Ctx::Message(t) if t == msg(libc::NFT_MSG_NEWSET) || t == msg(libc::NFT_MSG_DELSET) => {
            let name = names!(
                kind,
                NFTA_SET_TABLE,
                NFTA_SET_NAME,
                NFTA_SET_FLAGS,
                NFTA_SET_KEY_TYPE,
                NFTA_SET_KEY_LEN,
                NFTA_SET_DATA_TYPE,
                NFTA_SET_DATA_LEN,
                NFTA_SET_ID,
                NFTA_SET_TIMEOUT,
                NFTA_SET_USERDATA,
            );
            (name, ctx)
        }
        Ctx::Message(_) => {
            let name = names!(
                kind,
                NFTA_SET_ELEM_LIST_TABLE,
                NFTA_SET_ELEM_LIST_SET,
                NFTA_SET_ELEM_LIST_ELEMENTS,
                NFTA_SET_ELEM_LIST_SET_ID
            );
            (name, Ctx::Elements)
        }
        Ctx::Hook => (names!(kind, NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY), ctx),
        Ctx::Exprs => ("NFTA_LIST_ELEM", Ctx::Expr),
        Ctx::Expr => (names!(kind, NFTA_EXPR_NAME, NFTA_EXPR_DATA), ctx),
        Ctx::ExprData(expr) => (expr_field(expr, kind), Ctx::Data),
        Ctx::Elements => ("element", Ctx::Element),
        Ctx::Element => {
            let name = names!(
                kind,
                NFTA_SET_ELEM_KEY,
                NFTA_SET_ELEM_DATA,
                NFTA_SET_ELEM_FLAGS,
                NFTA_SET_ELEM_USERDATA
            );
            (name, Ctx::Data)
        }
        Ctx::Data => (
            names!(kind, NFTA_DATA_VALUE, NFTA_DATA_VERDICT),
            Ctx::Verdict,
        ),
        Ctx::Verdict => (names!(kind, NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN), ctx),
    }
}

/// An attribute of the data of expression `expr`.
fn expr_field(expr: &str, kind: u16) -> &'static str {
    match expr {
        "payload" => names!(
            kind,
            NFTA_PAYLOAD_DREG,
            NFTA_PAYLOAD_BASE,
            NFTA_PAYLOAD_OFFSET,
            NFTA_PAYLOAD_LEN
        ),
        "meta" => names!(kind, NFTA_META_DREG, NFTA_META_KEY, NFTA_META_SREG),
        "cmp" => names!(kind, NFTA_CMP_SREG, NFTA_CMP_OP, NFTA_CMP_DATA),
        "bitwise" => names!(
            kind,
            NFTA_BITWISE_SREG,
            NFTA_BITWISE_DREG,
            NFTA_BITWISE_LEN,
            NFTA_BITWISE_MASK,
            NFTA_BITWISE_XOR,
            NFTA_BITWISE_OP
        ),
        "lookup" => names!(
            kind,
            NFTA_LOOKUP_SET,
            NFTA_LOOKUP_SREG,
            NFTA_LOOKUP_DREG,
            NFTA_LOOKUP_SET_ID,
            NFTA_LOOKUP_FLAGS
        ),
        "immediate" => names!(kind, NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA),
        "ct" => names!(kind, NFTA_CT_DREG, NFTA_CT_KEY),
        "fib" => names!(kind, NFTA_FIB_DREG, NFTA_FIB_RESULT, NFTA_FIB_FLAGS),
        "numgen" => names!(
            kind,
            NFTA_NG_DREG,
            NFTA_NG_MODULUS,
            NFTA_NG_TYPE,
            NFTA_NG_OFFSET
        ),
        "dynset" => names!(
            kind,
            NFTA_DYNSET_SET_NAME,
            NFTA_DYNSET_SET_ID,
            NFTA_DYNSET_OP,
            NFTA_DYNSET_SREG_KEY
        ),
        "masq" => names!(
            kind,
            NFTA_MASQ_FLAGS,
            NFTA_MASQ_REG_PROTO_MIN,
            NFTA_MASQ_REG_PROTO_MAX
        ),
        "nat" => names!(
            kind,
            NFTA_NAT_TYPE,
            NFTA_NAT_FAMILY,
            NFTA_NAT_REG_ADDR_MIN,
            NFTA_NAT_REG_PROTO_MIN,
            NFTA_NAT_FLAGS
        ),
        "reject" => names!(kind, NFTA_REJECT_TYPE, NFTA_REJECT_ICMP_CODE),
        _ => "?",
    }
}

/// A message type's name.
fn message_name(kind: u16) -> String {
    if kind == libc::NFNL_MSG_BATCH_BEGIN as u16 {
        return "NFNL_MSG_BATCH_BEGIN".into();
    }
    if kind == libc::NFNL_MSG_BATCH_END as u16 {
        return "NFNL_MSG_BATCH_END".into();
    }
    use libc::{
        NFT_MSG_DELCHAIN, NFT_MSG_DELRULE, NFT_MSG_DELSET, NFT_MSG_DELSETELEM, NFT_MSG_DELTABLE,
        NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFT_MSG_NEWTABLE,
    };
    let msg = libc::c_int::from(kind & 0xff);
    let name = names!(
        msg,
        NFT_MSG_NEWTABLE,
        NFT_MSG_DELTABLE,
        NFT_MSG_NEWCHAIN,
        NFT_MSG_DELCHAIN,
        NFT_MSG_NEWRULE,
        NFT_MSG_DELRULE,
        NFT_MSG_NEWSET,
        NFT_MSG_DELSET,
        NFT_MSG_NEWSETELEM,
        NFT_MSG_DELSETELEM,
    );
    name.to_string()
}

fn flag_names(flags: u16) -> String {
    let all = [
        (NLM_F_REQUEST, "NLM_F_REQUEST"),
        (NLM_F_ACK, "NLM_F_ACK"),
        (NLM_F_CREATE, "NLM_F_CREATE"),
        (NLM_F_APPEND, "NLM_F_APPEND"),
    ];
    let set: Vec<&str> = all
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    set.join("|")
}

/// A value as a reader wants it: a string, or a 32-bit number.
fn shown(bytes: &[u8]) -> String {
    let text = bytes.strip_suffix(&[0]).unwrap_or_default();
    if !text.is_empty() && text.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return format!(" \"{}\"", String::from_utf8_lossy(text));
    }
    match <[u8; 4]>::try_from(bytes) {
        Ok(b) => format!(" {}", i32::from_be_bytes(b)),
        Err(_) => String::new(),
    }
}

/// The messages as annotated hex, one attribute per line.
pub fn annotate(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        let len = emit(std::slice::from_ref(m)).len() as u32;
        let header = [
            hex(&len.to_ne_bytes()),
            hex(&m.kind.to_ne_bytes()),
            hex(&m.flags.to_ne_bytes()),
            hex(&m.seq.to_ne_bytes()),
            hex(&m.port.to_ne_bytes()),
        ];
        line(
            &mut out,
            0,
            &header.join(" "),
            &format!(
                "{}, {}, seq {}",
                message_name(m.kind),
                flag_names(m.flags),
                m.seq
            ),
        );
        let nfgen = format!("{} {}", hex(&m.nfgen[..2]), hex(&m.nfgen[2..]));
        line(&mut out, 0, &nfgen, "nfgenmsg: family, version, res_id");
        annotate_attrs(&mut out, 1, Ctx::Message(m.kind), &m.attrs);
    }
    out
}

fn annotate_attrs(out: &mut String, depth: usize, ctx: Ctx<'_>, attrs: &[Attr]) {
    // An expression's data is named after the expression, its sibling.
    let expr = attrs.iter().find_map(|a| match (&a.value, ctx) {
        (Value::Bytes(b), Ctx::Expr) if a.kind == NFTA_EXPR_NAME => {
            std::str::from_utf8(b.strip_suffix(&[0])?).ok()
        }
        _ => None,
    });
    for a in attrs {
        let (name, inner) = match (ctx, expr) {
            (Ctx::Expr, Some(e)) if a.kind == NFTA_EXPR_DATA => {
                ("NFTA_EXPR_DATA", Ctx::ExprData(e))
            }
            _ => field(ctx, a.kind),
        };
        let emitted = emit_attr(a);
        match &a.value {
            Value::Bytes(b) => {
                let text = format!("{} {}", hex(&emitted[..4]), hex(&emitted[4..]));
                // Data values are the packet's bytes, not numbers.
                let value = match ctx {
                    Ctx::Data => String::new(),
                    _ => shown(b),
                };
                line(out, depth, text.trim_end(), &format!("{name}{value}"));
            }
            Value::Nested(children) => {
                line(out, depth, &hex(&emitted[..4]), name);
                annotate_attrs(out, depth + 1, inner, children);
            }
        }
    }
}

fn emit_attr(a: &Attr) -> Vec<u8> {
    let mut out = Vec::new();
    emit_attrs(&mut out, std::slice::from_ref(a));
    out
}

fn line(out: &mut String, depth: usize, hex: &str, note: &str) {
    let code = format!("{}{hex}", "  ".repeat(depth));
    let _ = writeln!(out, "{code:<48} # {note}");
}
