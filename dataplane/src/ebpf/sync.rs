//! From the maps' current contents to the desired ones: an ordered list of
//! single-entry map writes (pure). The order is what keeps every read of the
//! programs consistent without a reload:
//!
//! 1. backends that are new or changed;
//! 2. per changed endpoint list, slots 1..n under a new revision, then slot 0
//!    (count + revision: the flip), then the old revision's slots;
//! 3. Maglev tables and source ranges, then frontends, now that their lists exist;
//! 4. removals in reverse: frontends, source ranges, lists (slot 0 first),
//!    Maglev tables, and backends last.

use std::collections::BTreeMap;

use super::layout::*;
use super::plan::{MapState, ServiceList};

/// The revision slot 0 of each list currently points at.
pub type Revisions = BTreeMap<(u32, u8), u8>;

/// The maps as they are: contents, revisions, and slots no revision reaches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub state: std::sync::Arc<MapState>,
    pub revisions: Revisions,
    pub stale_slots: Vec<SvcKey>,
}

/// One map write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend(u32, BackendEntry),
    DeleteBackend(u32),
    PutSlot(SvcKey, SvcSlot),
    DeleteSlot(SvcKey),
    PutFrontend(FrontendKey, Frontend),
    DeleteFrontend(FrontendKey),
    PutSourceRange(SourceRange, u8),
    DeleteSourceRange(SourceRange, u8),
    PutMaglev(MaglevKey, u32),
    DeleteMaglev(MaglevKey),
}

fn slot_key(svc_id: u32, list: u8, slot: u16, rev: u8) -> SvcKey {
    SvcKey {
        svc_id,
        slot,
        list,
        rev,
    }
}

fn maglev_key((svc_id, list): (u32, u8), index: u32) -> MaglevKey {
    MaglevKey {
        svc_id,
        list,
        pad: [0; 3],
        index,
    }
}

fn slot_count(list: &ServiceList) -> u16 {
    u16::try_from(list.backends.len()).unwrap_or(u16::MAX)
}

/// One sorted merge of two maps: the entries of `new` that are new or
/// changed, and the keys of `old` that `new` no longer has.
fn changes<'a, K: Ord, V: PartialEq>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> (Vec<(&'a K, &'a V)>, Vec<&'a K>) {
    let (mut puts, mut gone) = (Vec::new(), Vec::new());
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some((ok, _)), None) => {
                gone.push(*ok);
                o.next();
            }
            (None, Some(&(nk, nv))) => {
                puts.push((nk, nv));
                n.next();
            }
            (Some(&(ok, ov)), Some(&(nk, nv))) => match ok.cmp(nk) {
                std::cmp::Ordering::Less => {
                    gone.push(ok);
                    o.next();
                }
                std::cmp::Ordering::Greater => {
                    puts.push((nk, nv));
                    n.next();
                }
                std::cmp::Ordering::Equal => {
                    if ov != nv {
                        puts.push((nk, nv));
                    }
                    o.next();
                    n.next();
                }
            },
        }
    }
    (puts, gone)
}

/// The writes for one new or changed list: its slots under a new revision,
/// slot 0 (the flip), then the previous revision's slots.
fn list_ops(ops: &mut Vec<MapOp>, (svc, list): (u32, u8), l: &ServiceList, old: &Snapshot) -> u8 {
    let old_rev = old.revisions.get(&(svc, list)).copied();
    let rev = old_rev.map_or(0, |r| r.wrapping_add(1));
    for (i, backend_id) in l.backends.iter().enumerate().take(usize::from(u16::MAX)) {
        let slot = u16::try_from(i + 1).unwrap_or(u16::MAX);
        ops.push(MapOp::PutSlot(
            slot_key(svc, list, slot, rev),
            SvcSlot {
                backend_id: *backend_id,
                ..SvcSlot::default()
            },
        ));
    }
    ops.push(MapOp::PutSlot(
        slot_key(svc, list, 0, 0),
        SvcSlot {
            backend_id: 0,
            count: slot_count(l),
            rev,
            flags: l.flags,
            affinity_timeout: l.affinity_timeout,
        },
    ));
    if let (Some(prev), Some(r)) = (old.state.lists.get(&(svc, list)), old_rev) {
        for slot in 1..=slot_count(prev) {
            ops.push(MapOp::DeleteSlot(slot_key(svc, list, slot, r)));
        }
    }
    rev
}

/// The writes that turn `old` into `new`, and the revisions afterwards.
pub fn sync_ops(old: &Snapshot, new: &MapState) -> (Vec<MapOp>, Revisions) {
    let mut ops = Vec::new();
    let was = &old.state;
    let (backend_puts, backends_gone) = changes(&was.backends, &new.backends);
    let (list_puts, lists_gone) = changes(&was.lists, &new.lists);
    let (frontend_puts, frontends_gone) = changes(&was.frontends, &new.frontends);

    ops.extend(
        backend_puts
            .iter()
            .map(|(id, b)| MapOp::PutBackend(**id, **b)),
    );

    let mut revisions: Revisions = new
        .lists
        .keys()
        .filter_map(|k| old.revisions.get(k).map(|r| (*k, *r)))
        .collect();
    for (key, l) in &list_puts {
        let rev = list_ops(&mut ops, **key, l, old);
        revisions.insert(**key, rev);
    }
    // A list the maps hold without a revision (never the case after a
    // snapshot) is written afresh.
    let unrevised: Vec<(&(u32, u8), &ServiceList)> = new
        .lists
        .iter()
        .filter(|(k, _)| !revisions.contains_key(k))
        .collect();
    for (key, l) in unrevised {
        let rev = list_ops(&mut ops, *key, l, old);
        revisions.insert(*key, rev);
    }
    for (svc, table) in &new.maglev {
        let before = was.maglev.get(svc);
        for (index, id) in table.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            if before.and_then(|t| t.get(index as usize)) != Some(id) {
                ops.push(MapOp::PutMaglev(maglev_key(*svc, index), *id));
            }
        }
        if let Some(before) = before {
            for index in table.len()..before.len() {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                ops.push(MapOp::DeleteMaglev(maglev_key(*svc, index)));
            }
        }
    }
    for (range, prefix) in new.source_ranges.difference(&was.source_ranges) {
        ops.push(MapOp::PutSourceRange(*range, *prefix));
    }
    ops.extend(
        frontend_puts
            .iter()
            .map(|(k, fe)| MapOp::PutFrontend(**k, **fe)),
    );

    ops.extend(frontends_gone.iter().map(|k| MapOp::DeleteFrontend(**k)));
    for (range, prefix) in was.source_ranges.difference(&new.source_ranges) {
        ops.push(MapOp::DeleteSourceRange(*range, *prefix));
    }
    for &&(svc, list) in &lists_gone {
        ops.push(MapOp::DeleteSlot(slot_key(svc, list, 0, 0)));
        if let (Some(rev), Some(l)) = (old.revisions.get(&(svc, list)), was.lists.get(&(svc, list)))
        {
            for slot in 1..=slot_count(l) {
                ops.push(MapOp::DeleteSlot(slot_key(svc, list, slot, *rev)));
            }
        }
    }
    ops.extend(old.stale_slots.iter().map(|k| MapOp::DeleteSlot(*k)));
    for (svc, table) in was
        .maglev
        .iter()
        .filter(|(s, _)| !new.maglev.contains_key(s))
    {
        for index in 0..table.len() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            ops.push(MapOp::DeleteMaglev(maglev_key(*svc, index)));
        }
    }
    ops.extend(backends_gone.iter().map(|id| MapOp::DeleteBackend(**id)));
    (ops, revisions)
}

/// The raw map contents, as the programs see them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawMaps {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub slots: BTreeMap<SvcKey, SvcSlot>,
    pub backends: BTreeMap<u32, BackendEntry>,
    pub source_ranges: std::collections::BTreeSet<(SourceRange, u8)>,
    pub maglev: BTreeMap<MaglevKey, u32>,
}

impl RawMaps {
    /// Apply one write.
    pub fn apply(&mut self, op: &MapOp) {
        match *op {
            MapOp::PutBackend(id, b) => {
                self.backends.insert(id, b);
            }
            MapOp::DeleteBackend(id) => {
                self.backends.remove(&id);
            }
            MapOp::PutSlot(k, v) => {
                self.slots.insert(k, v);
            }
            MapOp::DeleteSlot(k) => {
                self.slots.remove(&k);
            }
            MapOp::PutFrontend(k, v) => {
                self.frontends.insert(k, v);
            }
            MapOp::DeleteFrontend(k) => {
                self.frontends.remove(&k);
            }
            MapOp::PutSourceRange(r, p) => {
                self.source_ranges.insert((r, p));
            }
            MapOp::DeleteSourceRange(r, p) => {
                self.source_ranges.remove(&(r, p));
            }
            MapOp::PutMaglev(k, v) => {
                self.maglev.insert(k, v);
            }
            MapOp::DeleteMaglev(k) => {
                self.maglev.remove(&k);
            }
        }
    }

    /// Read the contents back into a [`Snapshot`] (restart recovery).
    pub fn snapshot(&self) -> Snapshot {
        let mut state = MapState::default();
        let mut revisions = Revisions::new();
        let heads: BTreeMap<(u32, u8), &SvcSlot> = self
            .slots
            .iter()
            .filter(|(k, _)| k.slot == 0)
            .map(|(k, v)| ((k.svc_id, k.list), v))
            .collect();
        for ((svc, list), head) in &heads {
            let backends = (1..=head.count)
                .filter_map(|slot| self.slots.get(&slot_key(*svc, *list, slot, head.rev)))
                .map(|s| s.backend_id)
                .collect();
            state.lists.insert(
                (*svc, *list),
                ServiceList {
                    flags: head.flags,
                    affinity_timeout: head.affinity_timeout,
                    backends,
                },
            );
            revisions.insert((*svc, *list), head.rev);
        }
        let stale_slots = self
            .slots
            .keys()
            .filter(|k| {
                k.slot != 0
                    && heads
                        .get(&(k.svc_id, k.list))
                        .is_none_or(|h| h.rev != k.rev || k.slot > h.count)
            })
            .copied()
            .collect();
        state.frontends = self.frontends.clone();
        state.backends = self.backends.clone();
        state.source_ranges = self.source_ranges.clone();
        for (k, v) in &self.maglev {
            let table = state.maglev.entry((k.svc_id, k.list)).or_default();
            if table.len() == k.index as usize {
                table.push(*v);
            }
        }
        Snapshot {
            state: std::sync::Arc::new(state),
            revisions,
            stale_slots,
        }
    }

    /// What a program reading list `list` of `svc_id` sees right now: the
    /// backends, or None when slot 0 is missing or a slot or backend is.
    pub fn resolve(&self, svc_id: u32, list: u8) -> Option<Vec<BackendEntry>> {
        let head = self.slots.get(&slot_key(svc_id, list, 0, 0))?;
        (1..=head.count)
            .map(|slot| {
                let s = self.slots.get(&slot_key(svc_id, list, slot, head.rev))?;
                self.backends.get(&s.backend_id).copied()
            })
            .collect()
    }
}
