//! A change tracker in the style of kube-proxy's: the current value per object
//! plus, for every object changed since the last sync, the value it had then.
//! An update equal to the current value is dropped, and a sequence of updates
//! that returns an object to its synced value cancels out.

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug)]
pub(crate) struct ChangeTracker<K, V> {
    current: HashMap<K, V>,
    /// Value at the last sync of every object changed since.
    synced: HashMap<K, Option<V>>,
}

impl<K, V> Default for ChangeTracker<K, V> {
    fn default() -> ChangeTracker<K, V> {
        ChangeTracker {
            current: HashMap::new(),
            synced: HashMap::new(),
        }
    }
}

/// One object's change since the last sync.
#[derive(Debug)]
pub(crate) struct Change<K, V> {
    pub key: K,
    pub previous: Option<V>,
}

impl<K: Clone + Eq + Hash, V: PartialEq> ChangeTracker<K, V> {
    /// Set (`Some`) or delete (`None`) an object.
    pub(crate) fn update(&mut self, key: K, value: Option<V>) {
        if self.current.get(&key) == value.as_ref() {
            return;
        }
        let old = match value {
            Some(v) => self.current.insert(key.clone(), v),
            None => self.current.remove(&key),
        };
        let synced = self.synced.entry(key.clone()).or_insert(old);
        if synced.as_ref() == self.current.get(&key) {
            self.synced.remove(&key);
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.current.get(key)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.current.values()
    }

    /// The changes since the last sync; the current values become the synced ones.
    pub(crate) fn take_changes(&mut self) -> Vec<Change<K, V>> {
        self.synced
            .drain()
            .map(|(key, previous)| Change { key, previous })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_op_updates_and_changes_that_cancel_out_are_dropped() {
        let mut t: ChangeTracker<&str, u32> = ChangeTracker::default();
        t.update("a", Some(1));
        t.update("b", Some(1));
        assert_eq!(t.take_changes().len(), 2);
        t.update("a", Some(1));
        assert!(t.take_changes().is_empty(), "update to the same value");
        t.update("a", Some(2));
        t.update("a", Some(1));
        t.update("c", Some(1));
        t.update("c", None);
        assert!(t.take_changes().is_empty(), "changes that cancel out");
        t.update("b", Some(2));
        t.update("b", Some(3));
        let changes = t.take_changes();
        assert_eq!(changes.len(), 1);
        assert_eq!((changes[0].key, changes[0].previous), ("b", Some(1)));
        assert_eq!(t.get(&"b"), Some(&3));
    }
}
