//! How many tables per family the service chains are spread over (README,
//! "Tables"): a pure function of the service port count and the count in use.

use super::ir::MAX_TABLES;

/// How many tables per family the service chains are spread over. The
/// kernel re-validates a whole table on a commit that adds a rule or a
/// verdict-map element (README, "Tables"), so a single change costs
/// O(rules of its table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableCount {
    /// One table per this many service ports (rounded up, at most
    /// [`MAX_TABLES`]); a count a sync already uses is kept while it is at
    /// most twice what the service ports need, so a cluster near a
    /// threshold does not rewrite its tables back and forth.
    PerServicePorts(usize),
    /// Always this many (clamped to 1..=[`MAX_TABLES`]).
    Fixed(u8),
}

/// Service ports per table (measured, README "Tables").
pub const SERVICE_PORTS_PER_TABLE: usize = 5000;

impl Default for TableCount {
    fn default() -> Self {
        TableCount::PerServicePorts(SERVICE_PORTS_PER_TABLE)
    }
}

impl TableCount {
    /// The number of tables for `service_ports`, given the count in use.
    pub fn tables(self, service_ports: usize, in_use: Option<u8>) -> u8 {
        let per = match self {
            TableCount::Fixed(n) => return n.clamp(1, MAX_TABLES),
            TableCount::PerServicePorts(per) => per.max(1),
        };
        let wanted = u8::try_from(service_ports.div_ceil(per))
            .unwrap_or(MAX_TABLES)
            .clamp(1, MAX_TABLES);
        match in_use {
            Some(n) if wanted <= n && 2 * u16::from(wanted) >= u16::from(n) => n,
            _ => wanted,
        }
    }
}
