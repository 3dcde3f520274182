//! NUMA topology: which nodes exist, how much memory they hold, and which tier
//! (DRAM or CXL) each belongs to.
//!
//! Facts come from sysfs (`/sys/devices/system/node`, and the kernel's memory
//! tiers under `/sys/devices/virtual/memory_tiering`); classification is a pure
//! function of those facts so it can be tested without the hardware.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use pytier_crds::node::{NumaNode, Tier, TierSource};

/// What sysfs says about one NUMA node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    pub id: u32,
    /// CPU list in kernel format, empty for a CPU-less node.
    pub cpus: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    /// The kernel memory tier (`memory_tierN`) holding this node, if the kernel
    /// exposes memory tiers. A larger N is a slower tier.
    pub memory_tier: Option<u32>,
}

/// Explicit classification that overrides discovery (from a policy or flags).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub dram: BTreeSet<u32>,
    pub cxl: BTreeSet<u32>,
}

/// Reads the facts of every NUMA node with memory under `sys` (normally `/sys`).
pub fn read_facts(sys: &Path) -> Result<Vec<NodeFacts>> {
    let node_dir = sys.join("devices/system/node");
    let with_memory = fs::read_to_string(node_dir.join("has_memory"))
        .with_context(|| format!("cannot read {}; is this Linux with NUMA support?", node_dir.display()))?;
    let tiers = read_memory_tiers(&sys.join("devices/virtual/memory_tiering"))?;
    let mut facts = Vec::new();
    for id in parse_list(with_memory.trim())? {
        let dir = node_dir.join(format!("node{id}"));
        let cpus = fs::read_to_string(dir.join("cpulist"))
            .with_context(|| format!("cannot read {}/cpulist", dir.display()))?;
        let meminfo = fs::read_to_string(dir.join("meminfo"))
            .with_context(|| format!("cannot read {}/meminfo", dir.display()))?;
        facts.push(NodeFacts {
            id,
            cpus: cpus.trim().to_string(),
            capacity_bytes: meminfo_kib(&meminfo, "MemTotal")? * 1024,
            free_bytes: meminfo_kib(&meminfo, "MemFree")? * 1024,
            memory_tier: tiers.iter().find(|(_, nodes)| nodes.contains(&id)).map(|(tier, _)| *tier),
        });
    }
    Ok(facts)
}

/// `memory_tierN/nodelist` for every tier; empty when the kernel has no tiers.
fn read_memory_tiers(dir: &Path) -> Result<Vec<(u32, Vec<u32>)>> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut tiers = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(tier) = name.strip_prefix("memory_tier").and_then(|n| n.parse().ok()) else { continue };
        let list = fs::read_to_string(entry.path().join("nodelist"))
            .with_context(|| format!("cannot read {}/nodelist", entry.path().display()))?;
        tiers.push((tier, parse_list(list.trim())?));
    }
    Ok(tiers)
}

/// Assigns each node a tier. In order of precedence: explicit overrides; the
/// kernel's memory tiers when they separate the nodes (the fastest tier holding
/// any node is DRAM, every slower one CXL); and as a last resort CPUs (a
/// CPU-less node is CXL). Reading hwloc memory attributes is not done yet.
pub fn classify(facts: &[NodeFacts], overrides: &Overrides) -> Result<Vec<NumaNode>> {
    if let Some(id) = overrides.dram.intersection(&overrides.cxl).next() {
        bail!("NUMA node {id} is listed as both DRAM and CXL");
    }
    let distinct_tiers: BTreeSet<u32> = facts.iter().filter_map(|f| f.memory_tier).collect();
    let fastest_tier = distinct_tiers.first().copied();
    let tiers_separate = distinct_tiers.len() > 1;
    let nodes = facts
        .iter()
        .map(|f| {
            let (tier, source) = if overrides.dram.contains(&f.id) {
                (Tier::Dram, TierSource::Policy)
            } else if overrides.cxl.contains(&f.id) {
                (Tier::Cxl, TierSource::Policy)
            } else if tiers_separate && f.memory_tier.is_some() {
                let tier = if f.memory_tier == fastest_tier { Tier::Dram } else { Tier::Cxl };
                (tier, TierSource::MemoryTiering)
            } else {
                let tier = if f.cpus.is_empty() { Tier::Cxl } else { Tier::Dram };
                (tier, TierSource::Cpus)
            };
            NumaNode {
                id: f.id,
                tier,
                source,
                cpus: f.cpus.clone(),
                capacity_bytes: f.capacity_bytes,
                free_bytes: f.free_bytes,
            }
        })
        .collect();
    Ok(nodes)
}

/// Parses a kernel list such as `0-3,8,10-11`.
pub fn parse_list(text: &str) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let bad = || format!("malformed kernel list {text:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().with_context(bad)?, b.parse().with_context(bad)?);
                if a > b {
                    bail!(bad());
                }
                ids.extend(a..=b);
            }
            None => ids.push(part.parse().with_context(bad)?),
        }
    }
    Ok(ids)
}

/// The value in KiB of `key` in a per-node meminfo file
/// (lines like `Node 0 MemTotal:  5728032 kB`).
fn meminfo_kib(meminfo: &str, key: &str) -> Result<u64> {
    let field = format!("{key}:");
    meminfo
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace().skip_while(|w| *w != field);
            words.next()?;
            words.next()?.parse().ok()
        })
        .with_context(|| format!("no {key} in node meminfo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32, cpus: &str, memory_tier: Option<u32>) -> NodeFacts {
        NodeFacts { id, cpus: cpus.into(), capacity_bytes: 1 << 30, free_bytes: 1 << 29, memory_tier }
    }

    fn tiers(nodes: &[NumaNode]) -> Vec<(u32, Tier, TierSource)> {
        nodes.iter().map(|n| (n.id, n.tier, n.source)).collect()
    }

    #[test]
    fn kernel_list_parses_ranges_and_singles() {
        assert_eq!(parse_list("0-3,8,10-11").unwrap(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_list("").unwrap(), Vec::<u32>::new());
        assert!(parse_list("3-1").is_err());
        assert!(parse_list("a").is_err());
    }

    #[test]
    fn slower_kernel_memory_tier_is_cxl() {
        let facts = [node(0, "0-1", Some(4)), node(1, "", Some(22))];
        let got = classify(&facts, &Overrides::default()).unwrap();
        assert_eq!(
            tiers(&got),
            vec![(0, Tier::Dram, TierSource::MemoryTiering), (1, Tier::Cxl, TierSource::MemoryTiering)]
        );
    }

    #[test]
    fn cpu_less_node_is_cxl_when_kernel_tiers_do_not_separate() {
        // Both nodes in one kernel tier, as with a plain `-numa node` in QEMU.
        let facts = [node(0, "0-1", Some(4)), node(1, "", Some(4))];
        let got = classify(&facts, &Overrides::default()).unwrap();
        assert_eq!(tiers(&got), vec![(0, Tier::Dram, TierSource::Cpus), (1, Tier::Cxl, TierSource::Cpus)]);
    }

    #[test]
    fn overrides_win_and_must_not_overlap() {
        let facts = [node(0, "0-1", Some(4)), node(1, "", Some(22))];
        let overrides = Overrides { dram: [1].into(), cxl: [0].into() };
        let got = classify(&facts, &overrides).unwrap();
        assert_eq!(tiers(&got), vec![(0, Tier::Cxl, TierSource::Policy), (1, Tier::Dram, TierSource::Policy)]);
        let overlap = Overrides { dram: [1].into(), cxl: [1].into() };
        assert!(classify(&facts, &overlap).unwrap_err().to_string().contains("both DRAM and CXL"));
    }

    #[test]
    fn reads_sysfs_layout() {
        let sys = tempfile::tempdir().unwrap();
        let nodes = sys.path().join("devices/system/node");
        for (id, cpus) in [(0, "0-1"), (1, "")] {
            let dir = nodes.join(format!("node{id}"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("cpulist"), format!("{cpus}\n")).unwrap();
            fs::write(dir.join("meminfo"), format!("Node {id} MemTotal:  2048 kB\nNode {id} MemFree:   1024 kB\n"))
                .unwrap();
        }
        fs::write(nodes.join("has_memory"), "0-1\n").unwrap();
        let tier = sys.path().join("devices/virtual/memory_tiering/memory_tier22");
        fs::create_dir_all(&tier).unwrap();
        fs::write(tier.join("nodelist"), "1\n").unwrap();

        let facts = read_facts(sys.path()).unwrap();
        assert_eq!(
            facts[0],
            NodeFacts { id: 0, cpus: "0-1".into(), capacity_bytes: 2 << 20, free_bytes: 1 << 20, memory_tier: None }
        );
        assert_eq!(facts[1].memory_tier, Some(22));
        assert_eq!(facts[1].cpus, "");
    }
}
