//! The typed plan: tables, chains, sets, maps, elements and rules as Rust
//! values. Text exists only in [`super::text`], netlink bytes only in
//! [`super::netlink`].

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use switchyard_api::ruleset::{Cidr, IpFamily, Protocol};

use crate::ebpf::masq_ports::MasqueradePorts;

use crate::conntrack::{UdpPort, UdpSnapshot};

/// The main table's name, in both families.
pub const TABLE: &str = "switchyard";

/// The most tables per family: the main table and its service tables.
pub const MAX_TABLES: u8 = 16;

/// Every table name this backend may use, the main table's first (cleanup
/// removes them all, whatever a previous run chose).
const TABLE_NAMES: [&str; MAX_TABLES as usize] = [
    TABLE,
    "switchyard-1",
    "switchyard-2",
    "switchyard-3",
    "switchyard-4",
    "switchyard-5",
    "switchyard-6",
    "switchyard-7",
    "switchyard-8",
    "switchyard-9",
    "switchyard-10",
    "switchyard-11",
    "switchyard-12",
    "switchyard-13",
    "switchyard-14",
    "switchyard-15",
];

/// One table: its family and its number (0 is the main table, the others
/// hold only service chains and their dispatch, see README "Tables").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId {
    pub family: IpFamily,
    pub shard: u8,
}

impl TableId {
    pub fn main(family: IpFamily) -> TableId {
        TableId { family, shard: 0 }
    }

    /// The table's name (a shard beyond [`MAX_TABLES`] is never made).
    pub fn name(self) -> &'static str {
        TABLE_NAMES
            .get(usize::from(self.shard))
            .copied()
            .unwrap_or(TABLE)
    }

    /// Every table this backend may own, both families.
    pub fn all() -> impl Iterator<Item = TableId> {
        [IpFamily::V4, IpFamily::V6]
            .into_iter()
            .flat_map(|family| (0..MAX_TABLES).map(move |shard| TableId { family, shard }))
    }
}

/// The sets whose elements go to the table of the service port's chains;
/// every other set lives only in the main table.
pub const SHARDED_SETS: [&str; 4] = [
    "service-ips",
    "service-nodeports",
    "firewall-ips",
    "masquerade-cluster-ips",
];

/// Everything this backend programs: per family, the fixed part of the table
/// and one fragment per service port. The table the kernel holds is their
/// union ([`Plan::table`]); a sync that changes a few services touches only
/// their fragments, and unchanged fragments are shared with the previous plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The fixed part of each table: base chains, dispatch chains, shared sets
    /// and maps without service elements (kube-proxy's `setupNFTables`), per
    /// family the main table first, then the service tables in order.
    pub setup: Vec<Arc<Table>>,
    /// Per service port, by its stable rule id.
    pub services: BTreeMap<u32, Arc<ServicePlan>>,
    /// What the fragments were rendered for: a plan rendered with another
    /// context shares nothing with this one.
    pub context: Arc<RenderContext>,
}

/// The inputs besides the service port that a fragment depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderContext {
    pub settings: crate::settings::Settings,
    pub node: switchyard_api::policy::NodeInfo,
    /// Tables per family the service chains are spread over (1: only the main table).
    pub tables: u8,
}

/// One service port's part of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePlan {
    /// The linked service port it was rendered from.
    pub source: Arc<switchyard_api::policy::LinkedServicePort>,
    /// One fragment per family the service port has frontends in.
    pub fragments: Vec<Fragment>,
    /// Why (part of) the service port was left out (bad input is skipped, not fatal).
    pub skipped: Vec<String>,
    /// The UDP service port, for stale conntrack cleanup.
    pub udp: Option<(String, UdpPort)>,
}

impl ServicePlan {
    pub fn fragment(&self, family: IpFamily) -> Option<&Fragment> {
        self.fragments.iter().find(|f| f.family == family)
    }

    pub fn rule_count(&self) -> usize {
        self.fragments
            .iter()
            .flat_map(|f| f.chains.values())
            .map(|c| c.rules.len())
            .sum()
    }
}

/// What one service port adds to one family's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    pub family: IpFamily,
    /// The table of its chains, its sets and its [`SHARDED_SETS`] elements.
    pub shard: u8,
    /// Elements of the shared sets and maps, by (set, key).
    pub elements: BTreeMap<(SetName, Key), Option<Value>>,
    /// The shared pick chains (and their maps) its chains and elements
    /// go to, in its table.
    pub picks: BTreeSet<Pick>,
    /// The service port's own chains.
    pub chains: BTreeMap<String, Chain>,
    /// The service port's own sets (session affinity).
    pub sets: BTreeMap<String, Set>,
}

impl Fragment {
    pub fn new(family: IpFamily) -> Fragment {
        Fragment {
            family,
            shard: 0,
            elements: BTreeMap::new(),
            picks: BTreeSet::new(),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
        }
    }

    pub fn chain(&mut self, name: &str) -> &mut Chain {
        chain_in(&mut self.chains, name)
    }

    pub fn push(&mut self, chain: &str, rule: Rule) {
        self.chain(chain).push(rule);
    }

    pub fn element(&mut self, set: impl Into<SetName>, key: Key, value: Option<Value>) {
        self.elements.insert((set.into(), key), value);
    }

    pub fn is_empty(&self) -> bool {
        self.elements.is_empty() && self.chains.is_empty() && self.sets.is_empty()
    }

    /// The table its chains and sets are in.
    pub fn table(&self) -> TableId {
        TableId {
            family: self.family,
            shard: self.shard,
        }
    }

    /// The table an element of `set` goes to.
    pub fn table_of(&self, set: SetName) -> u8 {
        match set {
            SetName::Named(name) if !SHARDED_SETS.contains(&name) => 0,
            _ => self.shard,
        }
    }
}

impl Plan {
    pub fn setup(&self, table: TableId) -> Option<&Arc<Table>> {
        self.setup.iter().find(|t| t.id() == table)
    }

    /// The fixed parts of `family`'s tables, the main table first.
    pub fn setups(&self, family: IpFamily) -> impl Iterator<Item = &Arc<Table>> {
        self.setup.iter().filter(move |t| t.family == family)
    }

    /// The main table of `family` as the kernel holds it after this plan
    /// (the whole of it when the plan has one table per family).
    pub fn table(&self, family: IpFamily) -> Option<Table> {
        self.tables(family).into_iter().next()
    }

    /// Every table of `family`, as the kernel holds them after this plan,
    /// the main table first. Where two service ports put the same key in a
    /// set or map, the lower rule id wins, in the table its element goes to.
    pub fn tables(&self, family: IpFamily) -> Vec<Table> {
        let mut tables: Vec<Table> = self.setups(family).map(|t| Table::clone(t)).collect();
        let mut taken: HashSet<_, foldhash::fast::RandomState> = HashSet::default();
        // A pick map's name, made once (not per element).
        let mut names: HashMap<SetName, Cow<'static, str>, foldhash::fast::RandomState> =
            HashMap::default();
        for f in self.fragments(family) {
            let Some(table) = tables.get_mut(usize::from(f.shard)) else {
                continue;
            };
            table
                .chains
                .extend(f.chains.iter().map(|(n, c)| (n.clone(), c.clone())));
            table
                .sets
                .extend(f.sets.iter().map(|(n, s)| (n.clone(), s.clone())));
            for pick in &f.picks {
                pick.add_to(table);
            }
            for ((set, key), value) in &f.elements {
                if !taken.insert((*set, key)) {
                    continue;
                }
                let name = names.entry(*set).or_insert_with(|| set.name());
                let to = tables.get_mut(usize::from(f.table_of(*set)));
                if let Some(s) = to.and_then(|t| t.sets.get_mut(name.as_ref())) {
                    s.elements.insert(key.clone(), value.clone());
                }
            }
        }
        tables
    }

    /// Every chain of a table by name, without copying it.
    pub fn chain_defs(&self, table: TableId) -> BTreeMap<&str, &Chain> {
        let setup = self.setup(table).into_iter().flat_map(|t| &t.chains);
        let own = self.fragments_in(table).flat_map(|f| &f.chains);
        setup.chain(own).map(|(n, c)| (n.as_str(), c)).collect()
    }

    /// Every set and map of a table by name, without its service elements
    /// (the definitions, and the fixed part's own elements).
    pub fn set_defs(&self, table: TableId) -> BTreeMap<&str, &Set> {
        let setup = self.setup(table).into_iter().flat_map(|t| &t.sets);
        let own = self.fragments_in(table).flat_map(|f| &f.sets);
        setup.chain(own).map(|(n, s)| (n.as_str(), s)).collect()
    }

    /// The fragments whose chains are in `table`.
    fn fragments_in(&self, table: TableId) -> impl Iterator<Item = &Fragment> {
        self.fragments(table.family)
            .filter(move |f| f.shard == table.shard)
    }

    /// The fragments of `family`, in rule id order.
    pub fn fragments(&self, family: IpFamily) -> impl Iterator<Item = &Fragment> {
        self.services
            .values()
            .filter_map(move |s| s.fragment(family))
    }

    pub fn families(&self) -> impl Iterator<Item = IpFamily> + '_ {
        self.setup.iter().filter(|t| t.shard == 0).map(|t| t.family)
    }

    /// Service ports left out of the plan, with the reason.
    pub fn skipped(&self) -> impl Iterator<Item = &String> {
        self.services.values().flat_map(|s| &s.skipped)
    }

    /// What the plan programs for UDP, for stale conntrack cleanup.
    pub fn udp(&self) -> UdpSnapshot {
        UdpSnapshot {
            ports: self
                .services
                .values()
                .filter_map(|s| s.udp.clone())
                .collect(),
        }
    }

    /// Rules of the fixed part.
    pub fn setup_rule_count(&self) -> usize {
        self.setup
            .iter()
            .flat_map(|t| t.chains.values())
            .map(|c| c.rules.len())
            .sum()
    }

    /// Rules of every service port.
    pub fn service_rule_count(&self) -> usize {
        self.services.values().map(|s| s.rule_count()).sum()
    }
}

/// `table ip switchyard` or `table ip6 switchyard`, or a service table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub family: IpFamily,
    pub shard: u8,
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Chain>,
}

impl Table {
    /// An empty main table.
    pub fn new(family: IpFamily) -> Table {
        Table::empty(TableId::main(family))
    }

    pub fn empty(id: TableId) -> Table {
        Table {
            family: id.family,
            shard: id.shard,
            sets: BTreeMap::new(),
            chains: BTreeMap::new(),
        }
    }

    pub fn id(&self) -> TableId {
        TableId {
            family: self.family,
            shard: self.shard,
        }
    }

    pub fn chain(&mut self, name: &str) -> &mut Chain {
        chain_in(&mut self.chains, name)
    }

    pub fn push(&mut self, chain: &str, rule: Rule) {
        self.chain(chain).push(rule);
    }

    pub fn set(&mut self, name: &str, kind: SetKind, comment: &str) {
        self.sets
            .insert(name.to_string(), Set::new(kind, Some(comment)));
    }

    /// Add an element to a set of the table (none if the set is not there).
    pub fn element(&mut self, set: &str, key: Key, value: Option<Value>) {
        if let Some(s) = self.sets.get_mut(set) {
            s.elements.insert(key, value);
        }
    }
}

/// The chain `name`, created empty if missing.
fn chain_in<'a>(chains: &'a mut BTreeMap<String, Chain>, name: &str) -> &'a mut Chain {
    chains
        .entry(name.to_string())
        .or_insert_with(|| Chain::regular(Vec::new()))
}

/// The netfilter hook of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
}

impl ChainType {
    /// The kernel's name of the chain type (`nft` writes the same word).
    pub fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

/// Priority of a base chain relative to the nat priorities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// `dstnat + offset`
    Dstnat(i32),
    /// `srcnat + offset`
    Srcnat(i32),
}

impl Priority {
    /// The number the kernel gets (`NF_IP_PRI_NAT_DST`/`_SRC` plus the offset).
    pub fn value(self) -> i32 {
        match self {
            Priority::Dstnat(offset) => libc::NF_IP_PRI_NAT_DST + offset,
            Priority::Srcnat(offset) => libc::NF_IP_PRI_NAT_SRC + offset,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: Priority,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Set for chains attached to a netfilter hook.
    pub base: Option<BaseChain>,
    /// Shared, not copied, when a full sync puts the chain into its table
    /// ([`Plan::tables`]): a copy of every rule was a tenth of the agent's
    /// part of a 44k full sync.
    pub rules: Arc<Vec<Rule>>,
}

impl Chain {
    pub fn regular(rules: Vec<Rule>) -> Chain {
        Chain {
            base: None,
            rules: Arc::new(rules),
        }
    }

    /// Append a rule (copying the rules first if another chain shares them).
    pub fn push(&mut self, rule: Rule) {
        Arc::make_mut(&mut self.rules).push(rule);
    }
}

/// What a set holds and what its elements map to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetKind {
    /// `ipv4_addr` / `ipv6_addr`.
    Addr,
    /// Address prefixes (`flags interval`).
    Prefix,
    /// `addr . addr` (source and destination).
    AddrPair,
    /// `addr . inet_proto . inet_service`.
    AddrProtoPort,
    /// `addr . inet_proto . inet_service : verdict`.
    AddrProtoPortVerdict,
    /// `inet_proto . inet_service : verdict`.
    ProtoPortVerdict,
    /// A pick map (`typeof <key> . numgen random mod n : ip daddr . tcp
    /// dport`): endpoint k of a pool by its frontend and k.
    Pick(Pick),
}

impl SetKind {
    pub fn is_map(self) -> bool {
        matches!(
            self,
            SetKind::AddrProtoPortVerdict | SetKind::ProtoPortVerdict | SetKind::Pick(..)
        )
    }
}

/// What a pick map's key is made of, besides the endpoint's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PickKey {
    /// `ip daddr . tcp dport`: traffic to a ClusterIP, external IP or
    /// load-balancer IP.
    Vip,
    /// `tcp dport`: NodePort traffic (its destination is any node address).
    NodePort,
}

/// The endpoints a pick chain chooses from: the service port's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pool {
    Cluster,
    Local,
}

/// A shared pick chain and its map: one per (key, pool, protocol, endpoint
/// count) in each table that needs it. The chain is the only binding of
/// the map (a data map bound by many chains costs the kernel quadratic
/// time, README "No shared endpoint map").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pick {
    pub key: PickKey,
    pub pool: Pool,
    pub protocol: Protocol,
    /// Endpoints of each pool the map holds (the `numgen` modulus).
    pub n: u32,
}

impl Pick {
    fn suffix(&self) -> String {
        let key = match self.key {
            PickKey::Vip => "vip",
            PickKey::NodePort => "nodeport",
        };
        let pool = match self.pool {
            Pool::Cluster => "cluster",
            Pool::Local => "local",
        };
        format!("{key}-{pool}-{}-{}", self.protocol.as_lower(), self.n)
    }

    /// The map's name: `endpoints-vip-cluster-tcp-5`.
    pub fn map(&self) -> String {
        format!("endpoints-{}", self.suffix())
    }

    /// The chain's name: `pick-vip-cluster-tcp-5`.
    pub fn chain(&self) -> String {
        format!("pick-{}", self.suffix())
    }

    pub fn set(&self) -> Set {
        Set::new(SetKind::Pick(*self), None)
    }

    /// The chain: one rule DNATing to the map's endpoint for the packet.
    pub fn rules(&self) -> Chain {
        Chain::regular(vec![Rule::new(
            vec![Match::L4Proto(self.protocol)],
            vec![Stmt::DnatPick(*self)],
        )])
    }

    /// Put the map and the chain into `table` (once).
    fn add_to(&self, table: &mut Table) {
        if let std::collections::btree_map::Entry::Vacant(e) = table.sets.entry(self.map()) {
            e.insert(self.set());
            table.chains.insert(self.chain(), self.rules());
        }
    }
}

/// The set an element goes to: a named one of the layout, or a pick map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetName {
    Named(&'static str),
    Pick(Pick),
}

impl SetName {
    pub fn name(&self) -> Cow<'static, str> {
        match self {
            SetName::Named(n) => Cow::Borrowed(n),
            SetName::Pick(p) => Cow::Owned(p.map()),
        }
    }
}

impl From<&'static str> for SetName {
    fn from(name: &'static str) -> SetName {
        SetName::Named(name)
    }
}

/// An element's value in a map.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Verdict(Verdict),
    /// `addr . port` of an endpoint (a pick map's data).
    Endpoint(IpAddr, u16),
}

impl From<Verdict> for Value {
    fn from(v: Verdict) -> Value {
        Value::Verdict(v)
    }
}

/// A named set or verdict map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub kind: SetKind,
    /// `flags dynamic,timeout; timeout Ns` (session affinity).
    pub timeout_seconds: Option<u32>,
    pub comment: Option<String>,
    pub elements: BTreeMap<Key, Option<Value>>,
}

impl Set {
    pub fn new(kind: SetKind, comment: Option<&str>) -> Set {
        Set {
            kind,
            timeout_seconds: None,
            comment: comment.map(str::to_string),
            elements: BTreeMap::new(),
        }
    }

    /// The definition without the elements (what a change of definition compares).
    pub fn same_definition(&self, other: &Set) -> bool {
        self.kind == other.kind
            && self.timeout_seconds == other.timeout_seconds
            && self.comment == other.comment
    }
}

/// A set element's key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Addr(IpAddr),
    Prefix(Cidr),
    AddrPair(IpAddr, IpAddr),
    AddrProtoPort(IpAddr, Protocol, u16),
    ProtoPort(Protocol, u16),
    /// `addr . port . k`: endpoint k of the pool behind a frontend (a pick map's key).
    AddrPortIndex(IpAddr, u16, u32),
    /// `port . k`: endpoint k of the pool behind a NodePort.
    PortIndex(u16, u32),
}

/// A verdict, in a rule or as a map value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

/// Which address of the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Saddr,
    Daddr,
}

/// A match; all matches of a rule must hold for its statements to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// `ip saddr 10.0.0.1` / `ip daddr 10.0.0.1`.
    Addr(Dir, IpAddr),
    /// `ip saddr @set` (or `!= @set` when `negate`).
    AddrInSet { dir: Dir, set: String, negate: bool },
    /// `ip saddr 10.0.0.0/8` (loadBalancerSourceRanges: one rule per range,
    /// not an inline set, whose anonymous sets cost the kernel quadratic time).
    SaddrInPrefix(Cidr),
    /// `ip saddr . ip daddr @set`.
    AddrPairInSet(String),
    /// `ip daddr . meta l4proto . th dport @set`.
    DaddrProtoPortInSet(String),
    /// `ip daddr != 127.0.0.0/8` / `ip6 daddr != ::1`.
    DaddrNotLoopback,
    /// `<proto> dport <port>`.
    Dport(Protocol, u16),
    /// `meta l4proto <proto>`.
    L4Proto(Protocol),
    /// `ct state new`.
    CtStateNew,
    /// `ct status dnat`.
    CtStatusDnat,
    /// `fib saddr type local`.
    FibSaddrLocal,
    /// `fib daddr type local`.
    FibDaddrLocal,
    /// `mark and <mask> == 0`.
    MarkClear(u32),
    /// `numgen random mod <n> 0`: true with probability 1/n.
    NumgenZero(u32),
}

/// A statement; the last one of a rule may be a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stmt {
    /// `<addr> . meta l4proto . th dport vmap @map`.
    VmapAddrProtoPort(Dir, String),
    /// `meta l4proto . th dport vmap @map`.
    VmapProtoPort(String),
    /// `update @set { ip saddr }`.
    UpdateSaddr(String),
    /// `meta mark set mark or <bits>`.
    MarkOr(u32),
    /// `meta mark set mark xor <bits>`.
    MarkXor(u32),
    /// `masquerade [to :<min>-<max>] fully-random`; the port range only
    /// after a TCP or UDP match.
    Masquerade(Option<MasqueradePorts>),
    /// `dnat to <ip>:<port>`.
    Dnat(IpAddr, u16),
    /// `dnat ip to <key> . numgen random mod <n> map @<map>`: the endpoint
    /// the pick's map holds for the packet's key and a uniform index.
    DnatPick(Pick),
    Reject,
    Verdict(Verdict),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub stmts: Vec<Stmt>,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(matches: Vec<Match>, stmts: Vec<Stmt>) -> Rule {
        Rule {
            matches,
            stmts,
            comment: None,
        }
    }

    pub fn with_comment(mut self, comment: &str) -> Rule {
        self.comment = Some(comment.to_string());
        self
    }
}
