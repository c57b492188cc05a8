//! Topological order of groups by index, or a cycle that prevents one.

use std::collections::BTreeSet;

/// `after[g]` lists the groups that must finish before group `g` starts (indices below
/// `after.len()`). Returns every group once, each after all groups in its `after`, taking the
/// lowest-numbered ready group first (Kahn's algorithm with an ordered ready set).
///
/// If the groups form a cycle, returns one: `[a, b, …, a]` where each group is after the next,
/// starting at the cycle's lowest-numbered group.
pub(crate) fn topological(after: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let count = after.len();
    let mut waiting: Vec<usize> = after.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (group, list) in after.iter().enumerate() {
        for &before in list {
            dependents[before].push(group);
        }
    }
    let mut ready: BTreeSet<usize> = (0..count).filter(|&group| waiting[group] == 0).collect();
    let mut order = Vec::with_capacity(count);
    while let Some(group) = ready.pop_first() {
        order.push(group);
        for &dependent in &dependents[group] {
            waiting[dependent] -= 1;
            if waiting[dependent] == 0 {
                ready.insert(dependent);
            }
        }
    }
    if order.len() == count {
        return Ok(order);
    }
    Err(find_cycle(after, &waiting))
}

/// Every group still waiting waits for at least one other group still waiting, so walking
/// from one along waiting `after` entries must revisit a group; the revisit closes a cycle.
fn find_cycle(after: &[Vec<usize>], waiting: &[usize]) -> Vec<usize> {
    let is_waiting = |group: usize| waiting[group] > 0;
    let mut position: Vec<Option<usize>> = vec![None; after.len()];
    let mut path = Vec::new();
    let mut group = (0..after.len()).find(|&group| is_waiting(group)).unwrap_or(0);
    let cycle = loop {
        if let Some(start) = position[group] {
            break &path[start..];
        }
        position[group] = Some(path.len());
        path.push(group);
        match after[group].iter().copied().find(|&before| is_waiting(before)) {
            Some(next) => group = next,
            // Unreachable by the argument above; report the walk rather than panic.
            None => break &path[..],
        }
    };
    let lowest = cycle.iter().enumerate().min_by_key(|&(_, &group)| group).map_or(0, |(at, _)| at);
    let mut rotated: Vec<usize> = cycle[lowest..].iter().chain(&cycle[..lowest]).copied().collect();
    if let Some(&first) = rotated.first() {
        rotated.push(first);
    }
    rotated
}
