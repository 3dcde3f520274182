//! The Policy: which heap pages belong on DRAM and which on CXL.
//!
//! Input: every heap page with its heat (the summed temperature of the
//! objects on it) and the tier it sits on now. Output: pages to promote and
//! pages to demote this round. The rules, in order:
//! - The hottest pages, up to the DRAM budget, are *wanted* on DRAM (ties go
//!   to pages already there). A page nothing was seen using is never wanted.
//! - Over budget, the coldest DRAM pages are demoted until it holds.
//! - Promotions fill the room left under the budget, and on the DRAM node
//!   itself (other memory may fill it first); beyond it they swap places
//!   with DRAM pages cold long enough.
//! - Demotion is lazy: a DRAM page that is not wanted stays while the budget
//!   has room, and makes room for a promotion only once it has been unwanted
//!   for the hysteresis time, or at once for a page `SWAP_MARGIN` times
//!   hotter. A page that moved stays put for that time too, so nothing
//!   ping-pongs.
//! - At most `max_pages` move per round (the migration rate limit); what is
//!   left is reported as pending.
//!
//! Pure logic: it moves nothing itself (that is the Mover's job).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A CXL page this many times hotter than an unwanted DRAM page swaps with
/// it without waiting for the hysteresis. Waiting alone let pages near the
/// budget's edge, wanted one round and not the next, hold DRAM while far
/// hotter pages waited (a thousand pages at a time in the placement
/// benchmark's zipf-write); twice as hot is no ping-pong of equals.
const SWAP_MARGIN: f32 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Dram,
    Cxl,
}

/// One heap page as the Policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub addr: usize,
    pub heat: f32,
    pub tier: Tier,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub budget_pages: usize,
    pub promote: bool,
    pub demote: bool,
    pub hysteresis: Duration,
    /// Moves allowed this round, both directions together.
    pub max_pages: usize,
    /// Pages the DRAM node can still take (other memory, of this process or
    /// others, may fill it before the budget does): beyond that, a promotion
    /// needs a demotion to make room.
    pub dram_room_pages: usize,
}

/// What to move this round, and what had to wait for the rate limit.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    pub promote: Vec<usize>,
    pub demote: Vec<usize>,
    pub pending_promote: usize,
    pub pending_demote: usize,
    /// Promotions left for want of room (see `waiting_promote_pages`).
    pub waiting_promote: usize,
    /// Pages wanted on DRAM (at most the budget).
    pub wanted: usize,
}

#[derive(Default)]
struct PageState {
    moved_at: Option<Instant>,
    unwanted_since: Option<Instant>,
}

#[derive(Default)]
pub struct Policy {
    pages: HashMap<usize, PageState>,
}

impl Policy {
    pub fn decide(&mut self, pages: &[Page], settings: &Settings, now: Instant) -> Decisions {
        let mut order: Vec<&Page> = pages.iter().collect();
        order.sort_by(|a, b| {
            b.heat.total_cmp(&a.heat).then_with(|| (a.tier != Tier::Dram).cmp(&(b.tier != Tier::Dram)))
        });
        // What DRAM can hold of ours: the budget, unless the node fills first.
        let on_dram = pages.iter().filter(|p| p.tier == Tier::Dram).count();
        let capacity = settings.budget_pages.min(on_dram.saturating_add(settings.dram_room_pages));
        let wanted = order.iter().take(capacity).take_while(|p| p.heat > 0.0).count();

        let present: std::collections::HashSet<usize> = pages.iter().map(|p| p.addr).collect();
        self.pages.retain(|addr, _| present.contains(addr));
        let settled = |state: Option<&PageState>| {
            state.and_then(|s| s.moved_at).is_none_or(|at| now.duration_since(at) >= settings.hysteresis)
        };
        let mut promote = Vec::new();
        // Demotion candidates, coldest first (`order` is hottest first), with
        // their heat and whether they were unwanted long enough to make room
        // for any promotion.
        let mut demotable = Vec::new();
        for (rank, page) in order.iter().enumerate() {
            let state = self.pages.entry(page.addr).or_default();
            if rank < wanted {
                state.unwanted_since = None;
            } else if state.unwanted_since.is_none() {
                state.unwanted_since = Some(now);
            }
            let state = self.pages.get(&page.addr);
            if !settled(state) {
                continue;
            }
            match page.tier {
                Tier::Cxl if rank < wanted => promote.push((page.addr, page.heat)),
                Tier::Dram if rank >= wanted => {
                    let cold_enough = state
                        .and_then(|s| s.unwanted_since)
                        .is_some_and(|since| now.duration_since(since) >= settings.hysteresis);
                    demotable.push((page.addr, page.heat, cold_enough));
                }
                _ => {}
            }
        }
        demotable.reverse();

        let over = on_dram.saturating_sub(settings.budget_pages);
        let mut room = settings.budget_pages.saturating_sub(on_dram).min(settings.dram_room_pages);
        if !settings.promote {
            promote.clear();
        }
        if !settings.demote {
            demotable.clear();
        }

        let mut decisions = Decisions { wanted, ..Default::default() };
        let mut budget = settings.max_pages;
        // Over budget: the coldest go first, whatever their age.
        let mut demotable = demotable.into_iter();
        let forced: Vec<usize> = demotable.by_ref().take(over).map(|(addr, _, _)| addr).collect();
        let forced_now = forced.len().min(budget);
        decisions.demote.extend(&forced[..forced_now]);
        decisions.pending_demote += forced.len() - forced_now;
        budget -= forced_now;
        // Promotions (hottest first) fill free room first, then swap with
        // the coldest pages that are cold long enough or far colder. One
        // passed over is no match for the cooler promotions after either.
        let waiting = promote.len();
        for (done, (addr, heat)) in promote.into_iter().enumerate() {
            let freed = if room > 0 {
                room -= 1;
                None
            } else {
                match demotable.find(|&(_, cold, cold_enough)| cold_enough || cold * SWAP_MARGIN <= heat) {
                    Some((cold, _, _)) => Some(cold),
                    None => {
                        // No room: these wait until a page cools.
                        decisions.waiting_promote = waiting - done;
                        break;
                    }
                }
            };
            let cost = 1 + freed.is_some() as usize;
            if budget < cost {
                decisions.pending_promote += 1;
                decisions.pending_demote += freed.is_some() as usize;
                continue;
            }
            budget -= cost;
            decisions.promote.push(addr);
            decisions.demote.extend(freed);
        }
        decisions
    }

    /// Notes that these pages moved now (their hysteresis starts).
    pub fn moved(&mut self, addrs: &[usize], now: Instant) {
        for addr in addrs {
            self.pages.entry(*addr).or_default().moved_at = Some(now);
        }
    }
}

/// The share of the heap's page heat on its hottest `budget_pages` pages:
/// the share of the program's heap accesses (as far as pytier sees them)
/// that DRAM serves once the Policy has placed every page, CXL the rest.
/// None when no page has any heat yet. Placing or not, so it also tells a
/// machine without CXL what CXL would do.
pub fn dram_heat_share(mut heats: Vec<f32>, budget_pages: usize) -> Option<f64> {
    let total: f64 = heats.iter().map(|&h| h as f64).sum();
    if total <= 0.0 {
        return None;
    }
    if budget_pages < heats.len() {
        heats.select_nth_unstable_by(budget_pages, |a, b| b.total_cmp(a));
        heats.truncate(budget_pages);
    }
    Some(heats.iter().map(|&h| h as f64).sum::<f64>() / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(budget_pages: usize) -> Settings {
        Settings {
            budget_pages,
            promote: true,
            demote: true,
            hysteresis: Duration::from_secs(10),
            max_pages: 1000,
            dram_room_pages: usize::MAX,
        }
    }

    fn page(addr: usize, heat: f32, tier: Tier) -> Page {
        Page { addr, heat, tier }
    }

    #[test]
    fn dram_serves_the_heat_of_the_hottest_pages_up_to_the_budget() {
        let heats = vec![1.0, 6.0, 0.0, 2.0, 1.0];
        assert_eq!(dram_heat_share(heats.clone(), 1), Some(0.6));
        assert_eq!(dram_heat_share(heats.clone(), 2), Some(0.8));
        assert_eq!(dram_heat_share(heats.clone(), 0), Some(0.0));
        assert_eq!(dram_heat_share(heats, 9), Some(1.0));
        assert_eq!(dram_heat_share(vec![0.0; 3], 1), None, "nothing used yet");
    }

    #[test]
    fn the_hottest_pages_are_promoted_into_free_room() {
        let pages =
            [page(1, 5.0, Tier::Cxl), page(2, 0.5, Tier::Cxl), page(3, 9.0, Tier::Cxl), page(4, 0.0, Tier::Cxl)];
        let d = Policy::default().decide(&pages, &settings(2), Instant::now());
        assert_eq!(d.promote, vec![3, 1]);
        assert!(d.demote.is_empty());
        assert_eq!(d.wanted, 2);
    }

    #[test]
    fn an_unused_page_is_never_promoted() {
        let pages = [page(1, 0.0, Tier::Cxl), page(2, 0.0, Tier::Cxl)];
        let d = Policy::default().decide(&pages, &settings(10), Instant::now());
        assert!(d.promote.is_empty());
    }

    #[test]
    fn over_budget_the_coldest_dram_pages_are_demoted_at_once() {
        let pages = [page(1, 3.0, Tier::Dram), page(2, 0.0, Tier::Dram), page(3, 1.0, Tier::Dram)];
        let d = Policy::default().decide(&pages, &settings(1), Instant::now());
        assert_eq!(d.demote, vec![2, 3]);
        assert!(d.promote.is_empty());
    }

    #[test]
    fn demotion_is_lazy_and_waits_for_the_hysteresis_to_make_room() {
        let t0 = Instant::now();
        let mut policy = Policy::default();
        // Budget full of a page that just cooled; a CXL page heats up.
        let pages = [page(1, 3.0, Tier::Dram), page(2, 4.0, Tier::Cxl)];
        let d = policy.decide(&pages, &settings(1), t0);
        assert!(d.promote.is_empty() && d.demote.is_empty(), "page 1 was unwanted only now: {d:?}");
        let d = policy.decide(&pages, &settings(1), t0 + Duration::from_secs(11));
        assert_eq!((d.promote, d.demote), (vec![2], vec![1]));
    }

    #[test]
    fn a_full_dram_node_makes_promotions_swap_with_cold_pages() {
        let t0 = Instant::now();
        let mut policy = Policy::default();
        // Under budget, but the node itself has room for one page only.
        let pages = [page(1, 2.0, Tier::Dram), page(2, 4.0, Tier::Cxl), page(3, 3.0, Tier::Cxl)];
        let mut s = settings(3);
        s.dram_room_pages = 1;
        let d = policy.decide(&pages, &s, t0);
        assert_eq!((d.promote, d.demote), (vec![2], vec![]), "one page of room; page 1 only just unwanted");
        assert_eq!(d.waiting_promote, 1, "page 3 waits for room");
        let pages = [page(1, 2.0, Tier::Dram), page(2, 4.0, Tier::Dram), page(3, 3.0, Tier::Cxl)];
        s.dram_room_pages = 0;
        let d = policy.decide(&pages, &s, t0 + Duration::from_secs(11));
        assert_eq!((d.promote, d.demote), (vec![3], vec![1]), "no room: page 3 swaps with the cold page 1");
        assert_eq!(d.waiting_promote, 0);
    }

    #[test]
    fn a_page_twice_as_hot_swaps_with_an_unwanted_dram_page_at_once() {
        let t0 = Instant::now();
        let swap = |hot: f32| {
            let pages = [page(1, 1.0, Tier::Dram), page(2, hot, Tier::Cxl)];
            Policy::default().decide(&pages, &settings(1), t0)
        };
        let d = swap(2.5);
        assert_eq!((d.promote, d.demote, d.waiting_promote), (vec![2], vec![1], 0));
        let d = swap(1.8);
        assert_eq!((d.promote, d.demote, d.waiting_promote), (vec![], vec![], 1), "not twice as hot: it waits");
    }

    #[test]
    fn a_page_that_moved_stays_for_the_hysteresis() {
        let t0 = Instant::now();
        let mut policy = Policy::default();
        policy.moved(&[1], t0);
        let pages = [page(1, 5.0, Tier::Cxl)];
        assert!(policy.decide(&pages, &settings(4), t0 + Duration::from_secs(1)).promote.is_empty());
        assert_eq!(policy.decide(&pages, &settings(4), t0 + Duration::from_secs(10)).promote, vec![1]);
    }

    #[test]
    fn hot_dram_pages_stay_when_equally_hot_cxl_pages_compete() {
        let pages = [page(1, 2.0, Tier::Cxl), page(2, 2.0, Tier::Dram)];
        let d = Policy::default().decide(&pages, &settings(1), Instant::now());
        assert!(d.promote.is_empty() && d.demote.is_empty(), "{d:?}");
    }

    #[test]
    fn the_rate_limit_leaves_the_rest_pending() {
        let pages: Vec<Page> = (1..=10).map(|a| page(a, a as f32, Tier::Cxl)).collect();
        let mut s = settings(10);
        s.max_pages = 3;
        let d = Policy::default().decide(&pages, &s, Instant::now());
        assert_eq!(d.promote, vec![10, 9, 8]);
        assert_eq!(d.pending_promote, 7);
    }

    #[test]
    fn promotion_and_demotion_can_each_be_turned_off() {
        let pages = [page(1, 0.0, Tier::Dram), page(2, 0.0, Tier::Dram), page(3, 5.0, Tier::Cxl)];
        let mut s = settings(1);
        s.demote = false;
        let d = Policy::default().decide(&pages, &s, Instant::now());
        assert!(d.demote.is_empty() && d.promote.is_empty(), "no room and no demotion: {d:?}");
        s.demote = true;
        s.promote = false;
        let d = Policy::default().decide(&pages, &s, Instant::now());
        assert_eq!(d.demote.len(), 1, "over budget by one: {d:?}");
        assert!(d.promote.is_empty());
    }
}
