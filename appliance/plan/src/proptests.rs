//! Property tests: the parser survives any text, and the run order honours `after` on random
//! DAGs and refuses every cycle.

use proptest::prelude::*;
use proptest::sample::Index;

use crate::{parse, Plan, PlanError};

/// A valid plan with every feature, for mutation.
const VALID: &str = r#"name = "erp"
description = "ERP failover"

[[machine]]
name = "db1"
disks = ["db1-os", "db1-data"]

[[machine]]
name = "app1"
disks = ["app1-os"]

[[group]]
name = "databases"
machines = ["db1"]
pre = [ { script = "/usr/local/bin/stop-app --now", timeout_secs = 300 }, { manual = "Confirm" } ]
post = [ { script = "/usr/local/bin/check-db" } ]

[[group]]
name = "apps"
machines = ["app1"]
after = ["databases"]
"#;

/// Pieces of plan syntax, so mutations reach deep into validation, not only the tokenizer.
const SNIPPETS: &[&str] = &[
    "\n",
    "\"",
    "[",
    "]",
    "[[group]]\n",
    "[[machine]]\n",
    "name = \"x\"\n",
    "machines = [\"db1\"]\n",
    "after = [\"apps\"]\n",
    "disks = [\"db1-os\"]\n",
    "{ manual = \"m\" }",
    "timeout_secs = -1",
    "\u{0}",
    "é",
    "=",
    ",",
    "#",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: Index, len: usize },
    Insert { at: Index, snippet: Index },
    InsertText { at: Index, text: String },
    Replace { at: Index, with: char },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1usize..20).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<Index>(), any::<Index>()).prop_map(|(at, snippet)| Mutation::Insert { at, snippet }),
        (any::<Index>(), "\\PC{0,8}").prop_map(|(at, text)| Mutation::InsertText { at, text }),
        (any::<Index>(), any::<char>()).prop_map(|(at, with)| Mutation::Replace { at, with }),
    ]
}

/// Applies a mutation on characters, so the result stays a `str`.
fn mutate(text: &str, mutation: &Mutation) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let position = |at: &Index, len: usize| if len == 0 { 0 } else { at.index(len + 1) };
    match mutation {
        Mutation::Delete { at, len } => {
            let start = position(at, chars.len()).min(chars.len());
            let end = (start + len).min(chars.len());
            chars.drain(start..end);
        }
        Mutation::Insert { at, snippet } => {
            let start = position(at, chars.len());
            let snippet = SNIPPETS[snippet.index(SNIPPETS.len())];
            chars.splice(start..start, snippet.chars());
        }
        Mutation::InsertText { at, text } => {
            let start = position(at, chars.len());
            chars.splice(start..start, text.chars());
        }
        Mutation::Replace { at, with } => {
            if !chars.is_empty() {
                let index = at.index(chars.len());
                chars[index] = *with;
            }
        }
    }
    chars.into_iter().collect()
}

/// What every accepted plan satisfies, checked from its public view.
fn check_invariants(plan: &Plan) {
    let order = plan.order();
    assert_eq!(order.len(), plan.groups().len());
    let position = |name: &str| order.iter().position(|group| group.name == name);
    for group in plan.groups() {
        let at = position(&group.name).expect("every group is in the order");
        for after in &group.after {
            assert!(position(after).expect("after names a group") < at);
        }
    }
    for machine in plan.machines() {
        let groups = plan.groups().iter().filter(|g| g.machines.contains(&machine.name)).count();
        assert_eq!(groups, 1, "machine {} in exactly one group", machine.name);
    }
    assert_eq!(plan.check_disks(|_| true), Ok(()));
}

/// Reference order: repeatedly take the first group, in file order, that has not run and
/// whose `after` groups all have.
fn model_order(after: &[Vec<usize>]) -> Vec<usize> {
    let mut done = vec![false; after.len()];
    let mut order = Vec::new();
    while let Some(next) =
        (0..after.len()).find(|&g| !done[g] && after[g].iter().all(|&before| done[before]))
    {
        done[next] = true;
        order.push(next);
    }
    order
}

/// Plan text for groups `g0..gN` with the given `after` indices, one machine each.
fn dag_text(after: &[Vec<usize>]) -> String {
    let mut text = String::from("name = \"dag\"\n");
    for index in 0..after.len() {
        text += &format!("[[machine]]\nname = \"m{index}\"\ndisks = [\"d{index}\"]\n");
    }
    for (index, list) in after.iter().enumerate() {
        let list: Vec<String> = list.iter().map(|before| format!("\"g{before}\"")).collect();
        text += &format!(
            "[[group]]\nname = \"g{index}\"\nmachines = [\"m{index}\"]\nafter = [{}]\n",
            list.join(", ")
        );
    }
    text
}

/// A random DAG in file order: a hidden rank per group (a random permutation) and edges only
/// from a higher rank to a lower one, so the file order is unrelated to the run order.
fn dag() -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1usize..=20)
        .prop_flat_map(|count| {
            let ranks = Just((0..count).collect::<Vec<usize>>()).prop_shuffle();
            let edges = proptest::collection::vec(proptest::bool::weighted(0.3), count * count);
            (ranks, edges)
        })
        .prop_map(|(rank, edges)| {
            let count = rank.len();
            (0..count)
                .map(|group| {
                    (0..count)
                        .filter(|&before| {
                            rank[before] < rank[group] && edges[group * count + before]
                        })
                        .collect()
                })
                .collect()
        })
}

/// `reach[a][b]`: `a` waits, directly or not, for `b` (or `a == b`).
fn reachability(after: &[Vec<usize>]) -> Vec<Vec<bool>> {
    let count = after.len();
    let mut reach = vec![vec![false; count]; count];
    for (group, row) in reach.iter_mut().enumerate() {
        let mut stack = vec![group];
        while let Some(at) = stack.pop() {
            if !row[at] {
                row[at] = true;
                stack.extend(&after[at]);
            }
        }
    }
    reach
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_text(text in "\\PC*") {
        if let Ok(plan) = parse(&text) {
            check_invariants(&plan);
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes_as_text(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(plan) = parse(&text) {
            check_invariants(&plan);
        }
    }

    #[test]
    fn parse_never_panics_on_mutated_plans(mutations in proptest::collection::vec(mutation(), 1..6)) {
        let mut text = VALID.to_string();
        for mutation in &mutations {
            text = mutate(&text, mutation);
        }
        match parse(&text) {
            Ok(plan) => check_invariants(&plan),
            Err(error) => {
                let message = error.to_string();
                prop_assert!(message.starts_with("plan: "));
                prop_assert!(!message.contains('\n'), "one-line message: {message}");
            }
        }
    }

    #[test]
    fn order_honours_after_on_random_dags(after in dag()) {
        let plan = parse(&dag_text(&after)).unwrap();
        check_invariants(&plan);
        let order: Vec<String> = plan.order().iter().map(|group| group.name.clone()).collect();
        let expected: Vec<String> =
            model_order(&after).iter().map(|index| format!("g{index}")).collect();
        prop_assert_eq!(order, expected);
    }

    #[test]
    fn a_back_edge_always_gives_the_cycle_error(after in dag(), pick in any::<Index>()) {
        // Any pair (from, to) where `from` waits for `to`, possibly through others or being
        // the same group; making `to` wait for `from` closes a cycle.
        let reach = reachability(&after);
        let pairs: Vec<(usize, usize)> = (0..after.len())
            .flat_map(|from| (0..after.len()).map(move |to| (from, to)))
            .filter(|&(from, to)| reach[from][to])
            .collect();
        let (from, to) = pairs[pick.index(pairs.len())];
        let mut cyclic = after.clone();
        cyclic[to].push(from);
        match parse(&dag_text(&cyclic)) {
            Err(PlanError::Cycle { groups }) => {
                let index = |name: &str| -> usize { name[1..].parse().unwrap() };
                prop_assert!(groups.len() >= 2);
                prop_assert_eq!(groups.first(), groups.last());
                let members = &groups[..groups.len() - 1];
                for (k, name) in members.iter().enumerate() {
                    prop_assert!(!members[k + 1..].contains(name), "{name} repeats in {groups:?}");
                }
                for pair in groups.windows(2) {
                    prop_assert!(cyclic[index(&pair[0])].contains(&index(&pair[1])),
                        "{} is not after {} in {:?}", pair[0], pair[1], groups);
                }
                // Starts at its first-written group.
                let first = members.iter().map(|name| index(name)).min().unwrap();
                prop_assert_eq!(index(&groups[0]), first);
            }
            other => prop_assert!(false, "expected a cycle error, got {other:?}"),
        }
    }
}
