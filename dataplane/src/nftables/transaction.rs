//! The transaction model: the typed commands one atomic change of the
//! tables is made of (add/delete/flush of tables, chains, sets, elements and
//! rules). Two sibling encoders write it: [`super::text`] for `nft -f` and
//! [`super::netlink`] as one `nf_tables` batch.

use std::sync::Arc;

use switchyard_api::ruleset::IpFamily;

use super::ir::{BaseChain, Chain, Key, Rule, Set, Table, TableId, Value};

/// One command of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Create the table if missing, delete it, and write it anew (full sync).
    ReplaceTable(Arc<Table>),
    /// Remove the table if it exists.
    DropTable(TableId),
    /// A set or map's definition; its elements are left out.
    AddSet {
        table: TableId,
        name: String,
        set: Set,
    },
    DeleteSet {
        table: TableId,
        name: String,
        map: bool,
    },
    /// Remove every element of a set or map.
    FlushSet {
        table: TableId,
        name: String,
        map: bool,
    },
    AddElements {
        table: TableId,
        set: String,
        elements: Vec<(Key, Option<Value>)>,
    },
    DeleteElements {
        table: TableId,
        set: String,
        keys: Vec<Key>,
    },
    AddChain {
        table: TableId,
        name: String,
        base: Option<BaseChain>,
    },
    FlushChain {
        table: TableId,
        name: String,
    },
    DeleteChain {
        table: TableId,
        name: String,
    },
    AddRule {
        table: TableId,
        chain: String,
        rule: Rule,
    },
}

impl Command {
    /// The table the command acts on.
    pub fn table(&self) -> TableId {
        match self {
            Command::ReplaceTable(t) => t.id(),
            Command::DropTable(table)
            | Command::AddSet { table, .. }
            | Command::DeleteSet { table, .. }
            | Command::FlushSet { table, .. }
            | Command::AddElements { table, .. }
            | Command::DeleteElements { table, .. }
            | Command::AddChain { table, .. }
            | Command::FlushChain { table, .. }
            | Command::DeleteChain { table, .. }
            | Command::AddRule { table, .. } => *table,
        }
    }

    /// The family of the table the command acts on.
    pub fn family(&self) -> IpFamily {
        self.table().family
    }
}

/// One transaction: commands the kernel applies all or none of.
#[derive(Debug, Default)]
pub struct Transaction {
    pub commands: Vec<Command>,
    /// Objects written (rules, elements, chain and set operations).
    pub objects: u32,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Whether some command rewrites a whole table (only `nft -f` does that).
    pub fn replaces_tables(&self) -> bool {
        self.commands
            .iter()
            .any(|c| matches!(c, Command::ReplaceTable(_) | Command::DropTable(_)))
    }

    fn push(&mut self, command: Command, objects: usize) {
        self.commands.push(command);
        self.objects = self
            .objects
            .saturating_add(u32::try_from(objects).unwrap_or(u32::MAX));
    }

    /// Replace a table atomically: create it if missing, delete it, write it anew.
    pub fn replace_table(&mut self, table: &Arc<Table>) {
        let objects = table.chains.values().map(|c| c.rules.len()).sum::<usize>()
            + table.sets.values().map(|s| s.elements.len()).sum::<usize>();
        self.push(Command::ReplaceTable(Arc::clone(table)), objects + 2);
    }

    /// Remove a table if it exists.
    pub fn drop_table(&mut self, table: TableId) {
        self.push(Command::DropTable(table), 2);
    }

    pub fn add_set(&mut self, table: TableId, name: &str, set: &Set) {
        let set = Set {
            elements: Default::default(),
            ..set.clone()
        };
        self.push(
            Command::AddSet {
                table,
                name: name.to_string(),
                set,
            },
            1,
        );
    }

    pub fn delete_set(&mut self, table: TableId, name: &str, set: &Set) {
        self.push(
            Command::DeleteSet {
                table,
                name: name.to_string(),
                map: set.kind.is_map(),
            },
            1,
        );
    }

    pub fn flush_set(&mut self, table: TableId, name: &str, set: &Set) {
        self.push(
            Command::FlushSet {
                table,
                name: name.to_string(),
                map: set.kind.is_map(),
            },
            1,
        );
    }

    pub fn add_elements<'a>(
        &mut self,
        table: TableId,
        set: &str,
        elems: impl IntoIterator<Item = (&'a Key, &'a Option<Value>)>,
    ) {
        let elements: Vec<(Key, Option<Value>)> = elems
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if elements.is_empty() {
            return;
        }
        let n = elements.len();
        self.push(
            Command::AddElements {
                table,
                set: set.to_string(),
                elements,
            },
            n,
        );
    }

    pub fn delete_elements<'a>(
        &mut self,
        table: TableId,
        set: &str,
        keys: impl IntoIterator<Item = &'a Key>,
    ) {
        let keys: Vec<Key> = keys.into_iter().cloned().collect();
        if keys.is_empty() {
            return;
        }
        let n = keys.len();
        self.push(
            Command::DeleteElements {
                table,
                set: set.to_string(),
                keys,
            },
            n,
        );
    }

    pub fn add_chain(&mut self, table: TableId, name: &str, chain: &Chain) {
        self.push(
            Command::AddChain {
                table,
                name: name.to_string(),
                base: chain.base,
            },
            1,
        );
    }

    pub fn flush_chain(&mut self, table: TableId, name: &str) {
        self.push(
            Command::FlushChain {
                table,
                name: name.to_string(),
            },
            1,
        );
    }

    pub fn delete_chain(&mut self, table: TableId, name: &str) {
        self.push(
            Command::DeleteChain {
                table,
                name: name.to_string(),
            },
            1,
        );
    }

    pub fn add_rules(&mut self, table: TableId, name: &str, chain: &Chain) {
        for rule in chain.rules.iter() {
            self.push(
                Command::AddRule {
                    table,
                    chain: name.to_string(),
                    rule: rule.clone(),
                },
                1,
            );
        }
    }
}
