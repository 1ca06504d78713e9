//! Incremental sync: the transaction that turns what this backend last
//! applied into the new plan, computed from the two plans alone (the kernel is
//! never listed). Only the service ports whose fragments changed are visited;
//! elements several service ports share (a ClusterIP of a multi-port
//! service, an endpoint's hairpin pair) are reference-counted by an index
//! kept with the applied plan.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use foldhash::fast::RandomState;
use std::sync::Arc;

use switchyard_api::ruleset::IpFamily;

use super::ir::{
    Chain, Key, Match, Pick, Plan, ServicePlan, Set, SetName, Stmt, Table, TableId, Value,
};
use super::transaction::Transaction;

/// An element's value, and the table it goes to (the main table, or for
/// the sets of [`super::ir::SHARDED_SETS`] the table of its service port's chains).
pub type Placed = (u8, Option<Value>);

/// Which service ports put a key into a shared set or map, with their values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owners {
    One(u32, Placed),
    /// Sorted by rule id, at least two.
    Many(Vec<(u32, Placed)>),
}

impl Owners {
    /// The value the kernel holds: the lowest rule id's (as [`Plan::tables`]).
    fn value(&self) -> &Placed {
        match self {
            Owners::One(_, v) => v,
            Owners::Many(list) => &list[0].1,
        }
    }

    fn list(&self) -> Vec<(u32, Placed)> {
        match self {
            Owners::One(id, v) => vec![(*id, v.clone())],
            Owners::Many(list) => list.clone(),
        }
    }

    fn from_list(mut list: Vec<(u32, Placed)>) -> Option<Owners> {
        list.sort_by_key(|(id, _)| *id);
        match list.len() {
            0 => None,
            1 => list.pop().map(|(id, v)| Owners::One(id, v)),
            _ => Some(Owners::Many(list)),
        }
    }

    /// Add an owner whose rule id is above every one already there.
    fn push_last(&mut self, id: u32, value: Placed) {
        match self {
            Owners::One(first, v) => *self = Owners::Many(vec![(*first, v.clone()), (id, value)]),
            Owners::Many(list) => list.push((id, value)),
        }
    }
}

type ElementKey = (SetName, Key);

/// A pick chain and its map, in a table of one family.
pub type PlacedPick = (u8, Pick);

type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;

/// The shared-set elements of one family's table, with their owners, and
/// the pick chains and maps the kernel holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElementIndex {
    /// Hashed with foldhash: SipHash was a tenth of a 44k full sync's agent time.
    owners: HashMap<ElementKey, Owners>,
    /// Made when a service port first used them; an incremental sync
    /// keeps them (maybe empty), a full sync or resync keeps the plan's.
    picks: BTreeSet<PlacedPick>,
}

impl ElementIndex {
    /// The index of everything `plan` puts into `family`'s shared sets.
    pub fn of(plan: &Plan, family: IpFamily) -> ElementIndex {
        let mut owners: HashMap<ElementKey, Owners> = HashMap::default();
        let picks = plan
            .fragments(family)
            .flat_map(|f| f.picks.iter().map(|p| (f.shard, *p)))
            .collect();
        // In rule id order: each key's owners come sorted.
        for (id, service) in &plan.services {
            for (key, value) in elements(Some(service), family) {
                match owners.entry(key.clone()) {
                    Entry::Vacant(e) => {
                        e.insert(Owners::One(*id, value));
                    }
                    Entry::Occupied(mut e) => e.get_mut().push_last(*id, value),
                }
            }
        }
        ElementIndex { owners, picks }
    }

    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// The pick chains and maps the kernel holds, by table.
    #[cfg(test)]
    pub fn picks(&self) -> &BTreeSet<PlacedPick> {
        &self.picks
    }

    /// The index with only the picks `other` has too (an incremental sync
    /// keeps picks no service port uses any more).
    #[cfg(test)]
    pub fn without_picks_beyond(&self, other: &ElementIndex) -> ElementIndex {
        ElementIndex {
            owners: self.owners.clone(),
            picks: self.picks.intersection(&other.picks).copied().collect(),
        }
    }

    fn apply(&mut self, changes: Vec<(ElementKey, Option<Owners>)>, picks: Vec<PlacedPick>) {
        self.picks.extend(picks);
        for (key, owners) in changes {
            match owners {
                Some(o) => self.owners.insert(key, o),
                None => self.owners.remove(&key),
            };
        }
    }
}

/// What this backend last applied: the plan and, per family, its index.
#[derive(Clone, Debug)]
pub struct Applied {
    pub plan: Plan,
    index: Vec<(IpFamily, ElementIndex)>,
    /// Rules of the plan's service ports (kept up to date by each step).
    service_rules: usize,
}

impl Applied {
    /// The record of a plan applied in full.
    pub fn of(plan: Plan) -> Applied {
        let index = plan
            .families()
            .map(|f| (f, ElementIndex::of(&plan, f)))
            .collect();
        let service_rules = plan.service_rule_count();
        Applied {
            plan,
            index,
            service_rules,
        }
    }

    /// Rules of the service ports of `new`, counting only what changed.
    pub fn service_rules_after(
        &self,
        changed: &[(u32, Option<&ServicePlan>, Option<&ServicePlan>)],
    ) -> usize {
        let count = |s: &Option<&ServicePlan>| s.map_or(0, |s| s.rule_count());
        let added: usize = changed.iter().map(|(_, _, n)| count(n)).sum();
        let removed: usize = changed.iter().map(|(_, o, _)| count(o)).sum();
        (self.service_rules + added).saturating_sub(removed)
    }

    pub fn index(&self, family: IpFamily) -> Option<&ElementIndex> {
        self.index
            .iter()
            .find(|(f, _)| *f == family)
            .map(|(_, i)| i)
    }

    /// Rules and elements in the applied plan.
    pub fn object_count(&self) -> usize {
        let setup_elements: usize = self
            .plan
            .setup
            .iter()
            .flat_map(|t| t.sets.values())
            .map(|s| s.elements.len())
            .sum();
        let shared: usize = self.index.iter().map(|(_, i)| i.len()).sum();
        self.plan.setup_rule_count() + self.service_rules + setup_elements + shared
    }

    /// Record that `step`, computed from this record, was applied for `plan`
    /// (which has `service_rules` service rules).
    pub fn commit(
        old: Option<Applied>,
        plan: Plan,
        step: IndexStep,
        service_rules: usize,
    ) -> Applied {
        let mut index = old.map(|o| o.index).unwrap_or_default();
        index.retain(|(f, _)| plan.families().any(|p| p == *f));
        for (family, update) in step {
            let kept = index
                .iter()
                .position(|(f, _)| *f == family)
                .map(|i| index.swap_remove(i).1);
            let fresh = match update {
                IndexUpdate::Rebuilt(i) => i,
                IndexUpdate::Changes(changes, picks) => {
                    let mut i = kept.unwrap_or_default();
                    i.apply(changes, picks);
                    i
                }
            };
            index.push((family, fresh));
        }
        Applied {
            plan,
            index,
            service_rules,
        }
    }
}

/// How one family's index changes with a transaction.
#[derive(Debug)]
pub enum IndexUpdate {
    Rebuilt(ElementIndex),
    /// Element owners, and the pick chains and maps made.
    Changes(Vec<(ElementKey, Option<Owners>)>, Vec<PlacedPick>),
}

pub type IndexStep = Vec<(IpFamily, IndexUpdate)>;

/// Whether two service plans are the same (shared, or equal).
fn same(a: &Arc<ServicePlan>, b: &Arc<ServicePlan>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// The service ports whose plans differ between `old` and `new`, by rule id.
pub fn changed_services<'a>(
    old: &'a Plan,
    new: &'a Plan,
) -> Vec<(u32, Option<&'a ServicePlan>, Option<&'a ServicePlan>)> {
    side_by_side(&old.services, &new.services)
        .filter(|(_, o, n)| match (o, n) {
            (Some(o), Some(n)) => !same(o, n),
            _ => true,
        })
        .map(|(id, o, n)| (*id, o.map(|s| &**s), n.map(|s| &**s)))
        .collect()
}

/// A chain or set of one family: its table and its name.
type Named<'a> = (u8, &'a str);

/// The chains and sets of the changed fragments of one family, on one side.
#[derive(Default)]
struct Part<'a> {
    chains: BTreeMap<Named<'a>, &'a Chain>,
    sets: BTreeMap<Named<'a>, &'a Set>,
}

impl<'a> Part<'a> {
    fn add(&mut self, service: Option<&'a ServicePlan>, family: IpFamily) {
        if let Some(f) = service.and_then(|s| s.fragment(family)) {
            self.chains
                .extend(f.chains.iter().map(|(n, c)| ((f.shard, n.as_str()), c)));
            self.sets
                .extend(f.sets.iter().map(|(n, s)| ((f.shard, n.as_str()), s)));
        }
    }
}

fn table(family: IpFamily, shard: u8) -> TableId {
    TableId { family, shard }
}

/// The chains of `family`'s fixed parts whose rules differ between the
/// plans (a setting such as the masquerade ports changed), each to be
/// flushed and written again; `None` when more than rules differs (the
/// table count, a set or its elements, a chain or its hook), and the tables
/// are rewritten.
fn changed_setup_chains<'a>(
    old: &Plan,
    new: &'a Plan,
    family: IpFamily,
) -> Option<Vec<(TableId, &'a str, &'a Chain)>> {
    let before: Vec<_> = old.setups(family).collect();
    let after: Vec<_> = new.setups(family).collect();
    if before.is_empty() || before.len() != after.len() {
        return None;
    }
    let mut changed = Vec::new();
    for (b, a) in before.iter().zip(&after) {
        if Arc::ptr_eq(b, a) || b == a {
            continue;
        }
        if b.shard != a.shard || b.sets != a.sets || !b.chains.keys().eq(a.chains.keys()) {
            return None;
        }
        for ((name, is), was) in a.chains.iter().zip(b.chains.values()) {
            if was.base != is.base {
                return None;
            }
            if was.rules != is.rules {
                changed.push((table(family, a.shard), name.as_str(), is));
            }
        }
    }
    Some(changed)
}

/// Append to `tx` the commands turning the applied table of `family` into
/// the new one, given the service ports that changed. `None` when that
/// needs the table rewritten: the fixed part changed beyond the rules of
/// its chains (node addresses, the table count); fixed chains whose rules
/// changed are written again.
///
/// Order matters inside one transaction: new sets and chains first (so rules
/// and elements can reference them), then rewritten chains, element deletes,
/// element adds, and last the chains and sets nothing references any more.
/// Removed chains are only flushed; their names are returned so they can be
/// deleted by a later transaction (kernels before 6.2 see a chain as still
/// referenced for a moment after the map element pointing to it is deleted).
pub fn diff_family(
    old: &Applied,
    new: &Plan,
    family: IpFamily,
    changed: &[(u32, Option<&ServicePlan>, Option<&ServicePlan>)],
    tx: &mut Transaction,
) -> Option<(Vec<(TableId, String)>, IndexUpdate)> {
    let setup = changed_setup_chains(&old.plan, new, family)?;
    let index = old.index(family)?;
    for (t, name, chain) in setup {
        tx.flush_chain(t, name);
        tx.add_rules(t, name, chain);
    }
    let (mut was, mut is) = (Part::default(), Part::default());
    for (_, o, n) in changed {
        was.add(*o, family);
        is.add(*n, family);
    }
    let picks = write_new_picks(index, family, changed, tx);
    write_changed_objects(&was, &is, family, tx);
    let changes = element_changes(index, family, changed);
    write_element_changes(index, &changes, family, tx);
    let removed = remove_gone_objects(&was, &is, family, tx);
    Some((removed, IndexUpdate::Changes(changes, picks)))
}

/// The pick chains and maps the changed service ports use that the
/// kernel does not hold yet, made first (rules and elements go to them).
fn write_new_picks(
    index: &ElementIndex,
    family: IpFamily,
    changed: &[(u32, Option<&ServicePlan>, Option<&ServicePlan>)],
    tx: &mut Transaction,
) -> Vec<PlacedPick> {
    let new: BTreeSet<PlacedPick> = changed
        .iter()
        .filter_map(|(_, _, n)| n.and_then(|s| s.fragment(family)))
        .flat_map(|f| f.picks.iter().map(|p| (f.shard, *p)))
        .filter(|p| !index.picks.contains(p))
        .collect();
    for (shard, pick) in &new {
        let t = table(family, *shard);
        tx.add_set(t, &pick.map(), &pick.set());
        let chain = pick.rules();
        tx.add_chain(t, &pick.chain(), &chain);
        tx.add_rules(t, &pick.chain(), &chain);
    }
    new.into_iter().collect()
}

/// New sets and chains, changed chains flushed and written again, and sets
/// whose definition changed (an affinity timeout) made anew: the chains
/// that use one are flushed first, and written again after.
fn write_changed_objects(was: &Part<'_>, is: &Part<'_>, family: IpFamily, tx: &mut Transaction) {
    let redefined: BTreeSet<Named<'_>> = side_by_side(&was.sets, &is.sets)
        .filter(|(_, o, n)| matches!((o, n), (Some(o), Some(n)) if !o.same_definition(n)))
        .map(|(name, _, _)| *name)
        .collect();
    let uses_redefined = |shard: u8, c: &Chain| uses_any_set(c, shard, &redefined);

    for (&(shard, name), o, n) in side_by_side(&was.sets, &is.sets) {
        if let (None, Some(set)) = (o, n) {
            tx.add_set(table(family, shard), name, set);
        }
    }
    for (&(shard, name), o, n) in side_by_side(&was.chains, &is.chains) {
        if let (None, Some(chain)) = (o, n) {
            tx.add_chain(table(family, shard), name, chain);
        }
    }
    let mut rewritten = Vec::new();
    for (&(shard, name), o, n) in side_by_side(&was.chains, &is.chains) {
        match (o, n) {
            (Some(o), Some(chain)) if o.rules != chain.rules || uses_redefined(shard, o) => {
                tx.flush_chain(table(family, shard), name);
                rewritten.push((shard, name, *chain));
            }
            (Some(o), None) if uses_redefined(shard, o) => {
                tx.flush_chain(table(family, shard), name)
            }
            _ => {}
        }
    }
    for key @ &(shard, name) in &redefined {
        tx.delete_set(table(family, shard), name, was.sets[key]);
        tx.add_set(table(family, shard), name, is.sets[key]);
    }
    for (&(shard, name), o, n) in side_by_side(&was.chains, &is.chains) {
        if let (None, Some(chain)) = (o, n) {
            tx.add_rules(table(family, shard), name, chain);
        }
    }
    for (shard, name, chain) in rewritten {
        tx.add_rules(table(family, shard), name, chain);
    }
}

/// The element deletes and adds of the shared sets whose value changes.
fn write_element_changes(
    index: &ElementIndex,
    changes: &[(ElementKey, Option<Owners>)],
    family: IpFamily,
    tx: &mut Transaction,
) {
    type Elements<'a> = Vec<(&'a Key, &'a Option<Value>)>;
    let mut deletes: BTreeMap<(u8, SetName), Vec<&Key>> = BTreeMap::new();
    let mut adds: BTreeMap<(u8, SetName), Elements<'_>> = BTreeMap::new();
    for ((set, key), owners) in changes {
        let was = index.owners.get(&(*set, key.clone())).map(Owners::value);
        let is = owners.as_ref().map(Owners::value);
        if was == is {
            continue;
        }
        if let Some((shard, _)) = was {
            deletes.entry((*shard, *set)).or_default().push(key);
        }
        if let Some((shard, v)) = is {
            adds.entry((*shard, *set)).or_default().push((key, v));
        }
    }
    for ((shard, set), keys) in deletes {
        tx.delete_elements(table(family, shard), &set.name(), keys);
    }
    for ((shard, set), elems) in adds {
        tx.add_elements(table(family, shard), &set.name(), elems);
    }
}

/// Removed chains flushed, so nothing they reference stays referenced (the
/// names, for a later transaction to delete them), and removed affinity
/// sets deleted (only rules flushed here referenced them).
fn remove_gone_objects(
    was: &Part<'_>,
    is: &Part<'_>,
    family: IpFamily,
    tx: &mut Transaction,
) -> Vec<(TableId, String)> {
    let removed: Vec<(TableId, String)> = side_by_side(&was.chains, &is.chains)
        .filter(|(_, _, n)| n.is_none())
        .map(|((shard, name), _, _)| (table(family, *shard), name.to_string()))
        .collect();
    for (t, name) in &removed {
        tx.flush_chain(*t, name);
    }
    for (&(shard, name), o, n) in side_by_side(&was.sets, &is.sets) {
        if let (Some(set), None) = (o, n) {
            tx.delete_set(table(family, shard), name, set);
        }
    }
    removed
}

/// The new owners of every shared-set key the changed service ports touch.
fn element_changes(
    index: &ElementIndex,
    family: IpFamily,
    changed: &[(u32, Option<&ServicePlan>, Option<&ServicePlan>)],
) -> Vec<(ElementKey, Option<Owners>)> {
    let ids: BTreeSet<u32> = changed.iter().map(|(id, _, _)| *id).collect();
    // A touched key starts with its owners other than the changed service ports.
    let others = |key: &ElementKey| {
        let mut list = index.owners.get(key).map(Owners::list).unwrap_or_default();
        list.retain(|(id, _)| !ids.contains(id));
        list
    };
    let mut touched: BTreeMap<ElementKey, Vec<(u32, Placed)>> = BTreeMap::new();
    for (_, o, _) in changed {
        for (key, _) in elements(*o, family) {
            touched.entry(key.clone()).or_insert_with(|| others(key));
        }
    }
    for (id, _, n) in changed {
        for (key, value) in elements(*n, family) {
            touched
                .entry(key.clone())
                .or_insert_with(|| others(key))
                .push((*id, value));
        }
    }
    touched
        .into_iter()
        .map(|(k, list)| (k, Owners::from_list(list)))
        .collect()
}

/// Whether a rule of `chain` (in table `shard`) looks up or updates one of `sets`.
fn uses_any_set(chain: &Chain, shard: u8, sets: &BTreeSet<Named<'_>>) -> bool {
    let named = |set: &String| sets.contains(&(shard, set.as_str()));
    chain.rules.iter().any(|r| {
        r.matches
            .iter()
            .any(|m| matches!(m, Match::AddrInSet { set, .. } if named(set)))
            || r.stmts
                .iter()
                .any(|s| matches!(s, Stmt::UpdateSaddr(set) if named(set)))
    })
}

/// A service port's shared-set elements in `family`, with the table each goes to.
fn elements(
    service: Option<&ServicePlan>,
    family: IpFamily,
) -> impl Iterator<Item = (&ElementKey, Placed)> {
    service
        .and_then(|s| s.fragment(family))
        .into_iter()
        .flat_map(|f| {
            f.elements
                .iter()
                .map(move |(key, value)| (key, (f.table_of(key.0), value.clone())))
        })
}

/// Append to `tx` a rewrite of every chain and set of `family` in place, for
/// the periodic resync: chains and sets are flushed and filled anew, except
/// the session-affinity sets, whose entries (the clients' sessions) are kept.
/// Objects of the applied plan that the new one lacks are flushed (chains,
/// returned for deletion later) or deleted (sets). A set or base chain whose
/// definition differs in the kernel makes the transaction fail; the caller
/// then replaces the tables. A set the new plan redefines (an affinity
/// timeout) is made anew; `None` when it redefines a base chain or the
/// tables are not the same ones (the tables must be replaced).
pub fn rewrite_family(
    old: &Applied,
    new: &Plan,
    family: IpFamily,
    tx: &mut Transaction,
) -> Option<(Vec<(TableId, String)>, IndexUpdate)> {
    let ids = |p: &Plan| p.setups(family).map(|t| t.id()).collect::<Vec<_>>();
    if ids(&old.plan).is_empty() || ids(&old.plan) != ids(new) {
        return None;
    }
    let tables = new.tables(family);
    let base_changed = tables.iter().any(|t| {
        let before = old.plan.chain_defs(t.id());
        t.chains
            .iter()
            .any(|(n, c)| before.get(n.as_str()).is_some_and(|b| b.base != c.base))
    });
    if base_changed {
        return None;
    }
    let old_picks = old.index(family).map(|i| &i.picks);
    let mut removed = Vec::new();
    for table in &tables {
        let picks = old_picks.into_iter().flatten();
        let picks = picks.filter(|(shard, _)| *shard == table.shard);
        removed.extend(rewrite_table(old, table, picks.map(|(_, p)| p), tx));
    }
    Some((removed, IndexUpdate::Rebuilt(ElementIndex::of(new, family))))
}

/// [`rewrite_family`] for one table, which holds `old_picks`; the chains
/// it flushed for deletion.
fn rewrite_table<'a>(
    old: &Applied,
    table: &Table,
    old_picks: impl Iterator<Item = &'a Pick>,
    tx: &mut Transaction,
) -> Vec<(TableId, String)> {
    let id = table.id();
    // What the applied table holds, by name (not copied: only names and
    // definitions matter here).
    let (chains_before, sets_before) = (old.plan.chain_defs(id), old.plan.set_defs(id));
    let redefined = |name: &str, set: &Set| {
        sets_before
            .get(name)
            .is_some_and(|b| !b.same_definition(set))
    };
    for (name, set) in &table.sets {
        if redefined(name, set) {
            continue;
        }
        tx.add_set(id, name, set);
        if set.timeout_seconds.is_none() {
            tx.flush_set(id, name, set);
        }
    }
    for (name, chain) in &table.chains {
        tx.add_chain(id, name, chain);
        tx.flush_chain(id, name);
    }
    let gone_picks: Vec<&Pick> = old_picks
        .filter(|p| !table.sets.contains_key(&p.map()))
        .collect();
    let removed: Vec<(TableId, String)> = chains_before
        .keys()
        .map(|name| name.to_string())
        .chain(gone_picks.iter().map(|p| p.chain()))
        .filter(|name| !table.chains.contains_key(name))
        .map(|name| (id, name))
        .collect();
    for (_, name) in &removed {
        tx.flush_chain(id, name);
    }
    for pick in gone_picks {
        tx.delete_set(id, &pick.map(), &pick.set());
    }
    // Every rule is flushed by now: sets can be deleted or made anew.
    for (&name, &set) in &sets_before {
        match table.sets.get(name) {
            None => tx.delete_set(id, name, set),
            Some(new_set) if redefined(name, new_set) => {
                tx.delete_set(id, name, set);
                tx.add_set(id, name, new_set);
            }
            Some(_) => {}
        }
    }
    for (name, set) in &table.sets {
        tx.add_elements(id, name, &set.elements);
    }
    for (name, chain) in &table.chains {
        tx.add_rules(id, name, chain);
    }
    removed
}

/// Every table of `family` for a full sync, and the fresh index.
pub fn full_tables(new: &Plan, family: IpFamily) -> Option<(Vec<Arc<Table>>, IndexUpdate)> {
    let tables: Vec<Arc<Table>> = new.tables(family).into_iter().map(Arc::new).collect();
    if tables.is_empty() {
        return None;
    }
    Some((tables, IndexUpdate::Rebuilt(ElementIndex::of(new, family))))
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
