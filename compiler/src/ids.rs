//! Stable numeric ids: compact `u32`s from 1, a freed id is reused (lowest first)
//! only after the object that had it is gone.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Clone, Debug)]
pub(crate) struct IdAllocator {
    next: u32,
    free: BinaryHeap<Reverse<u32>>,
}

impl Default for IdAllocator {
    fn default() -> IdAllocator {
        IdAllocator {
            next: 1,
            free: BinaryHeap::new(),
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

    pub(crate) fn release(&mut self, id: u32) {
        self.free.push(Reverse(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_compact_and_reused_only_after_release() {
        let mut ids = IdAllocator::default();
        assert_eq!([ids.allocate(), ids.allocate(), ids.allocate()], [1, 2, 3]);
        ids.release(2);
        ids.release(1);
        assert_eq!(ids.allocate(), 1);
        assert_eq!(ids.allocate(), 2);
        assert_eq!(ids.allocate(), 4);
    }
}
