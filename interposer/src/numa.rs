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
/// its free memory above its zones' high watermarks. None if unknown.
pub fn room_pages(node: i32) -> Option<u64> {
    let meminfo = crate::fds::read_to_string(format!("/sys/devices/system/node/node{node}/meminfo")).ok()?;
    let zoneinfo = crate::fds::read_to_string("/proc/zoneinfo").ok()?;
    let free_kib = meminfo_value(&meminfo, "MemFree:")?;
    Some((free_kib / 4).saturating_sub(high_watermark_pages(&zoneinfo, node)))
}

/// A value (in kB) from a node's `meminfo` ("Node 0 MemFree:  123 kB").
fn meminfo_value(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let mut words = line.split_whitespace().skip_while(|w| *w != key).skip(1);
        words.next()?.parse().ok()
    })
}

/// The sum of the high watermarks of a node's zones, from `/proc/zoneinfo`.
fn high_watermark_pages(zoneinfo: &str, node: i32) -> u64 {
    let mut in_node = false;
    let mut pages = 0;
    for line in zoneinfo.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Node", n, "zone", ..] => in_node = n.trim_end_matches(',') == node.to_string(),
            ["high", value] if in_node => pages += value.parse::<u64>().unwrap_or(0),
            _ => {}
        }
    }
    pages
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
    fn room_is_free_memory_above_the_high_watermarks() {
        let meminfo = "Node 1 MemTotal:  1048576 kB\nNode 1 MemFree:   40000 kB\n";
        assert_eq!(meminfo_value(meminfo, "MemFree:"), Some(40000));
        let zoneinfo = "Node 0, zone   Normal\n  pages free     5\n        min      1\n        low      2\n        high     3\n\
                        Node 1, zone    DMA32\n  pages free     9\n        high     100\n\
                        Node 1, zone  Movable\n        high     20\n";
        assert_eq!(high_watermark_pages(zoneinfo, 1), 120);
        assert_eq!(high_watermark_pages(zoneinfo, 0), 3);
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
