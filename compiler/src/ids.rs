//! Stable numeric ids: compact `u32`s from 1, a freed id is reused (lowest first)
//! only after the object that had it is gone, and not before the next sync.
//!
//! Why not at once: an id one service gives up and another takes in the same
//! sync lands in two shards of one publication. Agents see the shards one
//! write at a time, and one that saw the taker's shard before the giver's
//! would find the id twice (and refuse the generation). Reused a sync later,
//! the giver's shard is always written first.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

/// The most free ids below the largest held one that an adopted ruleset may
/// leave ([`IdAllocator::holding`]): far more than deletions leave in a
/// cluster at the object limits, few enough to keep in memory.
pub(crate) const MAX_ADOPTED_GAPS: usize = 1 << 20;

#[derive(Clone, Debug)]
pub(crate) struct IdAllocator {
    next: u32,
    free: BinaryHeap<Reverse<u32>>,
    /// Released in this sync: free from the next one.
    released: Vec<u32>,
}

impl Default for IdAllocator {
    fn default() -> IdAllocator {
        IdAllocator {
            next: 1,
            free: BinaryHeap::new(),
            released: Vec::new(),
        }
    }
}

impl IdAllocator {
    /// An allocator whose `held` ids are taken (the ids of a published
    /// ruleset being adopted): new ids come from the gaps between them, then
    /// above the largest. `None` when the gaps would be more than
    /// [`MAX_ADOPTED_GAPS`] (ids are compact, so only a ruleset not written by
    /// an allocator has that many).
    pub(crate) fn holding(held: &BTreeSet<u32>) -> Option<IdAllocator> {
        let last = held.last().copied().unwrap_or(0);
        let gaps = (last as usize).saturating_sub(held.len());
        if gaps > MAX_ADOPTED_GAPS || held.contains(&0) {
            return None;
        }
        Some(IdAllocator {
            next: last.checked_add(1)?,
            free: (1..last)
                .filter(|id| !held.contains(id))
                .map(Reverse)
                .collect(),
            released: Vec::new(),
        })
    }

    pub(crate) fn allocate(&mut self) -> u32 {
        if let Some(Reverse(id)) = self.free.pop() {
            return id;
        }
        let id = self.next;
        // Ids are compact, so 2^32 - 1 ids are never live at once.
        self.next = self.next.saturating_add(1);
        id
    }

    /// Give `id` back; it is reused after the next [`IdAllocator::recycle`].
    pub(crate) fn release(&mut self, id: u32) {
        self.released.push(id);
    }

    /// The end of a sync: the ids released during it become free.
    pub(crate) fn recycle(&mut self) {
        self.free.extend(self.released.drain(..).map(Reverse));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_compact_and_reused_only_after_release_and_recycle() {
        let mut ids = IdAllocator::default();
        assert_eq!([ids.allocate(), ids.allocate(), ids.allocate()], [1, 2, 3]);
        ids.release(2);
        ids.release(1);
        assert_eq!(ids.allocate(), 4, "not in the sync that released them");
        ids.recycle();
        assert_eq!(ids.allocate(), 1);
        assert_eq!(ids.allocate(), 2);
        assert_eq!(ids.allocate(), 5);
    }

    #[test]
    fn an_adopted_id_is_never_handed_out_again_while_held() {
        let held: BTreeSet<u32> = [2, 3, 5].into_iter().collect();
        let mut ids = IdAllocator::holding(&held).unwrap();
        assert_eq!([ids.allocate(), ids.allocate(), ids.allocate()], [1, 4, 6]);
        assert!(IdAllocator::holding(&[0].into_iter().collect()).is_none());
        assert!(IdAllocator::holding(&[u32::MAX].into_iter().collect()).is_none());
        assert!(IdAllocator::holding(&BTreeSet::new()).is_some());
    }
}
