//! Maglev lookup tables (Eisenbud et al., NSDI 2016): every node builds the
//! same table from the same backends, so a flow picks the same backend on any
//! node, and a backend change moves few flows.

use super::layout::BackendEntry;

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The table of size `m` (a prime) over `backends` (id, address).
pub fn table(backends: &[(u32, BackendEntry)], m: u32) -> Vec<u32> {
    let m64 = u64::from(m);
    let prefs: Vec<(u64, u64)> = backends
        .iter()
        .map(|(_, b)| {
            let name = b.to_string();
            let offset = fnv1a(0, name.as_bytes()) % m64;
            let skip = fnv1a(0x9e37_79b9_7f4a_7c15, name.as_bytes()) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut entry: Vec<Option<u32>> = vec![None; m as usize];
    let mut filled = 0usize;
    while filled < entry.len() && !backends.is_empty() {
        for (i, (offset, skip)) in prefs.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m64;
            while entry[c as usize].is_some() {
                next[i] += 1;
                c = (offset + next[i] * skip) % m64;
            }
            entry[c as usize] = Some(backends[i].0);
            next[i] += 1;
            filled += 1;
            if filled == entry.len() {
                break;
            }
        }
    }
    entry.into_iter().map(|e| e.unwrap_or(0)).collect()
}
