//! Incremental sync: the transaction that turns the table this backend last
//! applied into the new one, computed from the two plans alone (the kernel is
//! never listed).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::ir::Table;
use super::text::Transaction;

/// Append to `tx` the commands turning `old` into `new` (same family).
///
/// Order matters inside one transaction: new sets and chains first (so rules
/// and elements can reference them), then rewritten chains, element deletes,
/// element adds, and last the chains and sets nothing references any more.
/// Removed chains are only flushed; their names are returned so they can be
/// deleted by a later transaction (kernels before 6.2 see a chain as still
/// referenced for a moment after the map element pointing to it is deleted).
pub fn diff_table(old: &Table, new: &Table, tx: &mut Transaction) -> Vec<String> {
    let fam = new.family;

    for (name, before, set) in side_by_side(&old.sets, &new.sets) {
        // Changed definitions are found by `needs_full_sync`.
        if let (None, Some(set)) = (before, set) {
            tx.add_set(fam, name, set);
        }
    }
    for (name, before, chain) in side_by_side(&old.chains, &new.chains) {
        if let (None, Some(chain)) = (before, chain) {
            tx.add_chain(fam, name, chain);
        }
    }
    for (name, before, chain) in side_by_side(&old.chains, &new.chains) {
        match (before, chain) {
            (None, Some(chain)) => tx.add_rules(fam, name, chain),
            (Some(before), Some(chain)) if before.rules != chain.rules => {
                tx.flush_chain(fam, name);
                tx.add_rules(fam, name, chain);
            }
            _ => {}
        }
    }

    for (name, before, set) in side_by_side(&old.sets, &new.sets) {
        let Some(set) = set else { continue };
        let Some(before) = before else {
            tx.add_elements(fam, name, &set.elements);
            continue;
        };
        // A changed value is a delete and an add.
        let mut deletes = Vec::new();
        let mut adds = Vec::new();
        for (key, was, is) in side_by_side(&before.elements, &set.elements) {
            if was == is {
                continue;
            }
            if was.is_some() {
                deletes.push(key);
            }
            if let Some(is) = is {
                adds.push((key, is));
            }
        }
        tx.delete_elements(fam, name, deletes);
        tx.add_elements(fam, name, adds);
    }
    // Removed chains: flushed, so nothing they reference stays referenced.
    let removed: Vec<String> = side_by_side(&old.chains, &new.chains)
        .filter(|(_, _, chain)| chain.is_none())
        .map(|(name, _, _)| name.clone())
        .collect();
    for name in &removed {
        tx.flush_chain(fam, name);
    }
    // Affinity sets are referenced only by rules flushed above.
    for (name, before, set) in side_by_side(&old.sets, &new.sets) {
        if let (Some(before), None) = (before, set) {
            tx.delete_set(fam, name, before);
        }
    }
    removed
}

/// Two sorted maps walked side by side in key order, one merge pass (no
/// lookups): every key of either, with its value in `old` and in `new`.
fn side_by_side<'a, K: Ord, V>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (&'a K, Option<&'a V>, Option<&'a V>)> {
    let mut old = old.iter().peekable();
    let mut new = new.iter().peekable();
    std::iter::from_fn(move || match (old.peek(), new.peek()) {
        (None, None) => None,
        (Some(_), None) => old.next().map(|(k, v)| (k, Some(v), None)),
        (None, Some(_)) => new.next().map(|(k, v)| (k, None, Some(v))),
        (Some((ko, _)), Some((kn, _))) => match ko.cmp(kn) {
            Ordering::Less => old.next().map(|(k, v)| (k, Some(v), None)),
            Ordering::Greater => new.next().map(|(k, v)| (k, None, Some(v))),
            Ordering::Equal => {
                let (k, v) = old.next()?;
                new.next().map(|(_, n)| (k, Some(v), Some(n)))
            }
        },
    })
}

/// Whether `old` → `new` needs the table rewritten: a base chain or a set
/// definition changed, which nft cannot alter in place.
pub fn needs_full_sync(old: &Table, new: &Table) -> bool {
    let base_changed =
        new.chains.iter().any(|(name, c)| {
            c.base.is_some() && old.chains.get(name).map(|o| o.base) != Some(c.base)
        }) || old
            .chains
            .iter()
            .any(|(name, c)| c.base.is_some() && !new.chains.contains_key(name));
    let set_changed = new
        .sets
        .iter()
        .any(|(name, s)| old.sets.get(name).is_some_and(|o| !o.same_definition(s)));
    base_changed || set_changed
}
