//! The Rust mirrors match the C structs: sizes and member offsets read from
//! the `.BTF` section of the built objects.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};

use object::{Object, ObjectSection};

use crate::ebpf::layout::*;
use crate::ebpf::objects;

/// struct name → (size, member name → byte offset).
type Structs = BTreeMap<String, (usize, BTreeMap<String, usize>)>;

/// A minimal reader of BTF type records: enough to list STRUCT members.
fn btf_structs(object_bytes: &[u8]) -> Structs {
    let file = object::File::parse(object_bytes).unwrap();
    let btf = file.section_by_name(".BTF").unwrap().data().unwrap();
    let u32_at = |off: usize| u32::from_le_bytes(btf[off..off + 4].try_into().unwrap());
    assert_eq!(u16::from_le_bytes([btf[0], btf[1]]), 0xeb9f, "BTF magic");
    let hdr_len = u32_at(4) as usize;
    let (type_off, type_len) = (u32_at(8) as usize, u32_at(12) as usize);
    let str_off = u32_at(16) as usize;
    let strings = &btf[hdr_len + str_off..];
    let name = |off: u32| {
        let s = &strings[off as usize..];
        String::from_utf8_lossy(&s[..s.iter().position(|b| *b == 0).unwrap()]).into_owned()
    };
    let mut structs = Structs::new();
    let (mut pos, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
    while pos < end {
        let (name_off, info, size) = (u32_at(pos), u32_at(pos + 4), u32_at(pos + 8));
        let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31);
        pos += 12;
        let extra = match kind {
            1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
            3 => 12,                      // ARRAY
            4 | 5 | 15 | 19 => vlen * 12, // STRUCT, UNION, DATASEC, ENUM64
            6 | 13 => vlen * 8,           // ENUM, FUNC_PROTO
            _ => 0,
        };
        if kind == 4 && name_off != 0 {
            let members = (0..vlen)
                .map(|i| {
                    let m = pos + i * 12;
                    let bits = u32_at(m + 8);
                    let bits = if kind_flag == 1 {
                        bits & 0xff_ffff
                    } else {
                        bits
                    };
                    (name(u32_at(m)), (bits / 8) as usize)
                })
                .collect();
            structs.insert(name(name_off), (size as usize, members));
        }
        pos += extra;
    }
    structs
}

macro_rules! expect {
    ($c:literal, $rust:ty, $base:expr, [$(($cfield:literal, $rfield:ident)),* $(,)?]) => {
        (
            $c,
            size_of::<$rust>() + $base,
            vec![$(($cfield, offset_of!($rust, $rfield) + $base)),*],
        )
    };
}

#[test]
fn rust_layouts_match_the_objects_btf() {
    let expected = vec![
        expect!(
            "sy_frontend_key",
            FrontendKey,
            0,
            [
                ("addr", addr),
                ("port", port),
                ("proto", proto),
                ("family", family)
            ]
        ),
        expect!(
            "sy_frontend",
            Frontend,
            0,
            [("svc_id", svc_id), ("kind", kind), ("flags", flags)]
        ),
        expect!(
            "sy_svc_key",
            SvcKey,
            0,
            [
                ("svc_id", svc_id),
                ("slot", slot),
                ("list", list),
                ("rev", rev)
            ]
        ),
        expect!(
            "sy_svc_slot",
            SvcSlot,
            0,
            [
                ("backend_id", backend_id),
                ("count", count),
                ("rev", rev),
                ("flags", flags),
                ("affinity_timeout", affinity_timeout)
            ]
        ),
        expect!(
            "sy_backend",
            BackendEntry,
            0,
            [("addr", addr), ("port", port), ("family", family)]
        ),
        expect!(
            "sy_sock_key",
            SockKey,
            0,
            [
                ("cookie", cookie),
                ("addr", addr),
                ("port", port),
                ("family", family)
            ]
        ),
        expect!(
            "sy_addr_port",
            AddrPort,
            0,
            [("addr", addr), ("port", port)]
        ),
        expect!(
            "sy_tuple",
            Tuple,
            0,
            [
                ("src", src),
                ("dst", dst),
                ("sport", sport),
                ("dport", dport),
                ("proto", proto),
                ("family", family)
            ]
        ),
        expect!(
            "sy_affinity_key",
            AffinityKey,
            0,
            [
                ("client_cookie", client_cookie),
                ("client", client),
                ("svc_id", svc_id),
                ("list", list)
            ]
        ),
        expect!(
            "sy_affinity",
            Affinity,
            0,
            [("last_used_ns", last_used_ns), ("backend_id", backend_id)]
        ),
        // aya's lpm_trie::Key carries the leading prefixlen (4 bytes).
        expect!(
            "sy_source_range_key",
            SourceRange,
            4,
            [("svc_id", svc_id), ("family", family), ("addr", addr)]
        ),
        expect!(
            "sy_maglev_key",
            MaglevKey,
            0,
            [("svc_id", svc_id), ("index", index)]
        ),
    ];
    for object in [objects::SOCK, objects::TC] {
        let structs = btf_structs(object);
        for (name, size, fields) in &expected {
            let (c_size, members) = structs
                .get(*name)
                .unwrap_or_else(|| panic!("{name} not in BTF"));
            assert_eq!(c_size, size, "size of {name}");
            for (field, offset) in fields {
                assert_eq!(
                    members.get(*field),
                    Some(offset),
                    "offset of {name}.{field}"
                );
            }
        }
    }
}
