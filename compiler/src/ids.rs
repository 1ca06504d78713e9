//! Stable numeric ids: compact `u32`s from 1, a freed id is reused (lowest first)
//! only after the object that had it is gone, and not before the next sync.
//!
//! Why not at once: an id one service gives up and another takes in the same
//! sync lands in two shards of one publication. Agents see the shards one
//! write at a time, and one that saw the taker's shard before the giver's
//! would find the id twice (and refuse the generation). Reused a sync later,
//! the giver's shard is always written first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

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
}
