//! Incremental sync: the transaction that turns the table this backend last
//! applied into the new one, computed from the two plans alone (the kernel is
//! never listed).

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

    for (name, set) in &new.sets {
        // Changed definitions are found by `needs_full_sync`.
        if !old.sets.contains_key(name) {
            tx.add_set(fam, name, set);
        }
    }
    for (name, chain) in &new.chains {
        if !old.chains.contains_key(name) {
            tx.add_chain(fam, name, chain);
        }
    }
    for (name, chain) in &new.chains {
        match old.chains.get(name) {
            None => tx.add_rules(fam, name, chain),
            Some(before) if before.rules != chain.rules => {
                tx.flush_chain(fam, name);
                tx.add_rules(fam, name, chain);
            }
            Some(_) => {}
        }
    }

    for (name, set) in &new.sets {
        let Some(before) = old.sets.get(name) else {
            tx.add_elements(fam, name, &set.elements);
            continue;
        };
        // A changed value is a delete and an add.
        tx.delete_elements(
            fam,
            name,
            before
                .elements
                .iter()
                .filter(|(k, v)| set.elements.get(*k) != Some(*v))
                .map(|(k, _)| k),
        );
        tx.add_elements(
            fam,
            name,
            set.elements
                .iter()
                .filter(|(k, v)| before.elements.get(*k) != Some(*v)),
        );
    }
    // Removed chains: flushed, so nothing they reference stays referenced.
    let removed: Vec<String> = old
        .chains
        .keys()
        .filter(|name| !new.chains.contains_key(*name))
        .cloned()
        .collect();
    for name in &removed {
        tx.flush_chain(fam, name);
    }
    // Affinity sets are referenced only by rules flushed above.
    for (name, set) in &old.sets {
        if !new.sets.contains_key(name) {
            tx.delete_set(fam, name, set);
        }
    }
    removed
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
