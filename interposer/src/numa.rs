//! Which NUMA nodes are DRAM and which CXL, for a process on its own (the
//! node agent, which knows better, passes `tiers` in the config): a node with
//! memory and CPUs is DRAM, a node with memory and no CPUs is CXL. Nodes the
//! config lists keep the tier it gives them.

use std::path::Path;

use pytier_contract::settings::Tiers;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    pub dram: Vec<i32>,
    pub cxl: Vec<i32>,
}

impl Topology {
    /// Reads `/sys/devices/system/node` and applies the configured tiers.
    pub fn discover(config: &Tiers) -> Topology {
        Topology::from_sysfs(Path::new("/sys/devices/system/node"), config)
    }

    pub fn from_sysfs(root: &Path, config: &Tiers) -> Topology {
        let with_memory =
            crate::fds::read_to_string(root.join("has_memory")).map(|s| parse_list(&s)).unwrap_or_default();
        let mut topology = Topology::default();
        for node in with_memory {
            let listed_dram = config.dram_nodes.as_ref().is_some_and(|l| l.contains(&(node as u32)));
            let listed_cxl = config.cxl_nodes.as_ref().is_some_and(|l| l.contains(&(node as u32)));
            let has_cpus = crate::fds::read_to_string(root.join(format!("node{node}/cpulist")))
                .is_ok_and(|s| !parse_list(&s).is_empty());
            if listed_dram || (!listed_cxl && has_cpus) {
                topology.dram.push(node);
            } else {
                topology.cxl.push(node);
            }
        }
        // Listed nodes the kernel does not show are kept: moves to them then
        // fail visibly (counted) rather than silently going elsewhere.
        for (list, tier) in [(&config.dram_nodes, &mut topology.dram), (&config.cxl_nodes, &mut topology.cxl)] {
            for &node in list.iter().flatten() {
                if !tier.contains(&(node as i32)) {
                    tier.push(node as i32);
                }
            }
        }
        topology
    }
}

/// Pages a node can still take before the kernel starts reclaiming on it:
/// each zone's free memory above its high watermark and the protection that
/// keeps user pages out of lower zones (the DMA zone's free pages are
/// counted free but mostly protected). None if unknown.
pub fn room_pages(node: i32) -> Option<u64> {
    let zoneinfo = crate::fds::read_to_string("/proc/zoneinfo").ok()?;
    room_in_zoneinfo(&zoneinfo, node)
}

/// Where a user page may come from: any zone up to ZONE_MOVABLE, the index
/// of its entry in each zone's `protection: (...)` list.
const MOVABLE_ZONE_INDEX: usize = 3;

/// `room_pages` from the text of `/proc/zoneinfo`.
fn room_in_zoneinfo(zoneinfo: &str, node: i32) -> Option<u64> {
    let mut zones = Vec::new(); // (free, high, protection) of the node's zones
    for line in zoneinfo.lines() {
        let words: Vec<&str> =
            line.split(|c: char| c.is_whitespace() || "(),".contains(c)).filter(|w| !w.is_empty()).collect();
        let number = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        match words.as_slice() {
            ["Node", n, "zone", ..] => {
                if n.parse::<i32>() == Ok(node) {
                    zones.push((0, 0, 0));
                } else if !zones.is_empty() {
                    break; // past the node's zones
                }
            }
            _ if zones.is_empty() => {}
            ["pages", "free", ..] => zones.last_mut()?.0 = number(2)?,
            ["high", ..] => zones.last_mut()?.1 = number(1)?,
            ["protection:", ..] => zones.last_mut()?.2 = number(1 + MOVABLE_ZONE_INDEX).unwrap_or(0),
            _ => {}
        }
    }
    if zones.is_empty() {
        return None;
    }
    Some(zones.iter().map(|&(free, high, protection)| free.saturating_sub(high + protection)).sum())
}

/// Parses a kernel list such as `0-3,8,10-11`.
pub fn parse_list(text: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
            out.extend(a..=b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/sys/devices/system/node` look-alike with these nodes and CPU lists.
    fn fake_sysfs(nodes: &[(i32, &str)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pytier-numa-{}-{}", std::process::id(), nodes.len()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ids: Vec<String> = nodes.iter().map(|(n, _)| n.to_string()).collect();
        std::fs::write(dir.join("has_memory"), format!("{}\n", ids.join(","))).unwrap();
        for (node, cpus) in nodes {
            let d = dir.join(format!("node{node}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("cpulist"), format!("{cpus}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn room_is_free_memory_above_each_zones_high_watermark_and_protection() {
        let zoneinfo = "Node 0, zone      DMA\n  pages free     1100\n        min      187\n        high     279\n\
                        \x20       protection: (0, 885, 885, 885, 885)\n\
                        Node 0, zone    DMA32\n  pages free     20000\n        high     16614\n\
                        \x20       protection: (0, 0, 0, 0, 0)\n\
                        Node 1, zone  Movable\n  pages free     9\n        high     20\n\
                        \x20       protection: (0, 0, 0, 0, 0)\n";
        // DMA: 1100 free, but 279 + 885 kept from user pages: no room.
        assert_eq!(room_in_zoneinfo(zoneinfo, 0), Some(20000 - 16614));
        assert_eq!(room_in_zoneinfo(zoneinfo, 1), Some(0), "below its high watermark");
        assert_eq!(room_in_zoneinfo(zoneinfo, 2), None, "no such node");
        assert!(room_pages(0).is_some(), "node 0 exists on every Linux machine");
    }

    #[test]
    fn parses_kernel_lists() {
        assert_eq!(parse_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert!(parse_list("\n").is_empty());
    }

    #[test]
    fn cpu_less_nodes_are_cxl_unless_listed() {
        let sys = fake_sysfs(&[(0, "0-1"), (1, ""), (2, "")]);
        let auto = Topology::from_sysfs(&sys, &Tiers::default());
        assert_eq!(auto, Topology { dram: vec![0], cxl: vec![1, 2] });
        let listed = Tiers { dram_nodes: Some(vec![2]), cxl_nodes: Some(vec![5]) };
        assert_eq!(Topology::from_sysfs(&sys, &listed), Topology { dram: vec![0, 2], cxl: vec![1, 5] });
        std::fs::remove_dir_all(sys).unwrap();
    }
}
