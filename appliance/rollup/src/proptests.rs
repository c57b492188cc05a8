//! Property tests on generated matrices: random release lines per component (repeats,
//! versions written with and without a trailing `.0`, absent cells, revocations, cells not
//! available per scenario). A model keeps the plain numbers behind each version, and the
//! oracles below work on those numbers only, never through the crate's release line:
//! - every hop the planner emits is allowed by the N-4 rule and stops only on usable
//!   versions, the path is as short as a BFS finds, and no shortest path has older stops;
//! - every refusal is the one the model predicts;
//! - the support state of every version in the table agrees with the rule;
//! - generated matrices lint clean, and a version going down is reported alone;
//! - the documented text format round-trips, and loading never panics.

use std::collections::{BTreeSet, VecDeque};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::{
    lint, load, plan, support_state, Cell, Component, Finding, Matrix, PlanError, Revoked, Rollup,
    Scenario, SupportState, Version,
};

const SCENARIOS: [&str; 2] = ["s0", "s1"];

/// What the generator meant, in plain numbers.
#[derive(Debug, Clone)]
struct Model {
    components: Vec<ModelComponent>,
}

#[derive(Debug, Clone)]
struct ModelComponent {
    name: String,
    /// Scenario ids the component is used in.
    uses: Vec<&'static str>,
    /// Every cell: (value, scenarios it is not available in).
    cells: Vec<(u64, Vec<&'static str>)>,
    revoked: BTreeSet<u64>,
    /// The distinct values of `cells`, ascending.
    values: Vec<u64>,
}

impl ModelComponent {
    fn values(&self) -> Vec<u64> {
        self.values.clone()
    }

    /// Releases `a` is below `b`, counted by brute force over the distinct values.
    fn distance(&self, a: u64, b: u64) -> usize {
        self.values.iter().filter(|&&v| a < v && v <= b).count()
    }

    fn available(&self, value: u64, scenario: &str) -> bool {
        self.uses.contains(&scenario)
            && self.cells.iter().any(|(v, not)| *v == value && !not.contains(&scenario))
    }

    fn usable(&self, value: u64, scenario: Option<&str>) -> bool {
        !self.revoked.contains(&value) && scenario.is_none_or(|s| self.available(value, s))
    }

    /// The N-4 rule: a hop goes up by 1 to 4 releases.
    fn allowed(&self, a: u64, b: u64) -> bool {
        a < b && self.distance(a, b) <= 4
    }

    /// Fewest hops from `from` to `to` standing only on usable versions (BFS).
    fn bfs(&self, from: u64, to: u64, scenario: Option<&str>) -> Option<usize> {
        let values = self.values();
        let mut queue = VecDeque::from([(from, 0usize)]);
        let mut seen = BTreeSet::from([from]);
        while let Some((at, hops)) = queue.pop_front() {
            if at == to {
                return Some(hops);
            }
            for &next in &values {
                let stand = next == to || self.usable(next, scenario);
                if stand && self.allowed(at, next) && seen.insert(next) {
                    queue.push_back((next, hops + 1));
                }
            }
        }
        None
    }

    /// Every path from `from` to `to` of exactly `hops` hops, oldest stops first (by
    /// enumeration; `None` if there are more than a cap, to keep the test bounded).
    fn shortest_paths(
        &self,
        from: u64,
        to: u64,
        hops: usize,
        scenario: Option<&str>,
    ) -> Option<Vec<Vec<u64>>> {
        let values = self.values();
        let mut found = Vec::new();
        let mut stack = vec![vec![from]];
        while let Some(path) = stack.pop() {
            let at = *path.last().expect("paths are never empty");
            if path.len() == hops + 1 {
                if at == to {
                    found.push(path);
                }
                continue;
            }
            // Prune what cannot arrive in the hops left.
            if self.distance(at, to) > 4 * (hops + 1 - path.len()) {
                continue;
            }
            for &next in values.iter().rev() {
                let stand = next == to || self.usable(next, scenario);
                if stand && self.allowed(at, next) && next <= to {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push(longer);
                }
            }
            if found.len() > 10_000 || stack.len() > 100_000 {
                return None;
            }
        }
        found.sort();
        Some(found)
    }
}

/// The version text for a value; `trailing` adds a `.0` that does not change the version.
fn text(value: u64, trailing: bool) -> String {
    let (major, minor) = (value / 7, value % 7);
    if trailing {
        format!("{major}.{minor}.0")
    } else {
        format!("{major}.{minor}")
    }
}

fn value_of(text: &str) -> u64 {
    let numbers =
        Version::parse(text).expect("generated versions are well formed").numbers().to_vec();
    numbers[0] * 7 + numbers[1]
}

/// Per component and rollup: absent, or (step up from the previous value, write a trailing
/// zero, not-available mask over the scenarios). Plus revocation choices and scenario use.
type Raw = (Vec<Vec<Option<(u64, bool, u8)>>>, Vec<Vec<bool>>, Vec<u8>);

fn build((lines, revoke, uses): Raw) -> (Matrix, Model) {
    let scenarios =
        SCENARIOS.iter().map(|id| Scenario { id: id.to_string(), title: id.to_uppercase() });
    let rollup_count = lines.first().map_or(0, Vec::len);
    let mut rollups: Vec<Rollup> = (0..rollup_count)
        .map(|r| Rollup { id: format!("R{r}"), title: None, link: None, cells: Vec::new() })
        .collect();
    let mut model = Model { components: Vec::new() };
    for (c, line) in lines.iter().enumerate() {
        let name = format!("c{c}");
        let used: Vec<&'static str> =
            (0..2).filter(|bit| uses[c] & (1 << bit) != 0).map(|bit| SCENARIOS[bit]).collect();
        let mut value = 1;
        let mut cells = Vec::new();
        for (r, cell) in line.iter().enumerate() {
            let Some((step, trailing, mask)) = cell else { continue };
            value += step;
            // Only scenarios the component uses, so that the lint has nothing to warn about.
            let not: Vec<&'static str> = (0..2)
                .filter(|bit| mask & uses[c] & (1 << bit) != 0)
                .map(|bit| SCENARIOS[bit])
                .collect();
            rollups[r].cells.push(Cell {
                component: name.clone(),
                version: text(value, *trailing),
                not_available: not.iter().map(|s| s.to_string()).collect(),
            });
            cells.push((value, not));
        }
        let values: BTreeSet<u64> = cells.iter().map(|(value, _)| *value).collect();
        let values: Vec<u64> = values.into_iter().collect();
        let mut component =
            ModelComponent { name, uses: used, cells, revoked: BTreeSet::new(), values };
        for (index, value) in component.values().into_iter().enumerate() {
            if revoke[c][index] {
                component.revoked.insert(value);
            }
        }
        model.components.push(component);
    }
    let matrix = Matrix {
        scenarios: scenarios.collect(),
        components: model
            .components
            .iter()
            .map(|c| Component {
                name: c.name.clone(),
                scenarios: c.uses.iter().map(|s| s.to_string()).collect(),
            })
            .collect(),
        rollups,
        revoked: model
            .components
            .iter()
            .flat_map(|c| {
                c.revoked.iter().map(|&value| Revoked {
                    component: c.name.clone(),
                    version: text(value, false),
                    reason: format!("revoked {value}"),
                })
            })
            .collect(),
    };
    (matrix, model)
}

/// Matrices of 1 to 3 components over 1 to 40 rollups. `revoke_weight`: the chance that a
/// version is revoked; `available_odds`: how many times likelier a cell is available in every
/// scenario than marked at random.
fn generated(revoke_weight: f64, available_odds: u32) -> impl Strategy<Value = (Matrix, Model)> {
    (1usize..=3, 1usize..=40)
        .prop_flat_map(move |(components, rollups)| {
            let mask = prop_oneof![available_odds => Just(0u8), 1 => 0u8..4];
            let cell = proptest::option::weighted(0.8, (0u64..=2, any::<bool>(), mask));
            let lines = vec(vec(cell, rollups), components);
            let revoke = vec(vec(proptest::bool::weighted(revoke_weight), 48), components);
            let uses = vec(prop_oneof![3 => Just(3u8), 1 => 1u8..3], components);
            (lines, revoke, uses)
        })
        .prop_map(build)
}

/// The documented file format, written out (test only), for the round trip.
fn to_toml(matrix: &Matrix) -> String {
    let list = |items: &[String]| {
        items.iter().map(|item| format!("{item:?}")).collect::<Vec<_>>().join(", ")
    };
    let mut out = String::new();
    for scenario in &matrix.scenarios {
        out += &format!("[[scenario]]\nid = {:?}\ntitle = {:?}\n\n", scenario.id, scenario.title);
    }
    for component in &matrix.components {
        out += &format!(
            "[[component]]\nname = {:?}\nscenarios = [{}]\n\n",
            component.name,
            list(&component.scenarios)
        );
    }
    for rollup in &matrix.rollups {
        out += &format!("[[rollup]]\nid = {:?}\ncells = [\n", rollup.id);
        for cell in &rollup.cells {
            out += &format!(
                "  {{ component = {:?}, version = {:?}, not_available = [{}] }},\n",
                cell.component,
                cell.version,
                list(&cell.not_available)
            );
        }
        out += "]\n\n";
    }
    for revoked in &matrix.revoked {
        out += &format!(
            "[[revoked]]\ncomponent = {:?}\nversion = {:?}\nreason = {:?}\n\n",
            revoked.component, revoked.version, revoked.reason
        );
    }
    out
}

/// One planner query on a generated matrix.
#[derive(Debug, Clone)]
struct Query {
    component: Index,
    from: Index,
    to: Index,
    /// Leave `to` to the planner (the newest release).
    to_implied: bool,
    /// Swap `from` and `to` when `from` is newer, so that most queries can succeed.
    upward: bool,
    scenario: Option<&'static str>,
}

fn query() -> impl Strategy<Value = Query> {
    (
        any::<Index>(),
        any::<Index>(),
        any::<Index>(),
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.85),
        prop_oneof![2 => Just(None), 1 => Just(Some("s0")), 1 => Just(Some("s1"))],
    )
        .prop_map(|(component, from, to, to_implied, upward, scenario)| Query {
            component,
            from,
            to,
            to_implied,
            upward,
            scenario,
        })
}

/// Runs `query` and checks the answer against the model: the refusal it predicts, or a path
/// that is allowed hop by hop, as short as a BFS finds, and with the oldest stops.
fn check_plan(matrix: &Matrix, model: &Model, query: &Query) -> Result<(), TestCaseError> {
    let Query {
        component: component_index,
        from: from_index,
        to: to_index,
        to_implied,
        upward,
        scenario,
    } = query.clone();
    let component = component_index.get(&model.components);
    let values = component.values();
    if values.is_empty() {
        return Ok(());
    }
    let mut from = *from_index.get(&values);
    let mut to =
        if to_implied { *values.last().expect("not empty") } else { *to_index.get(&values) };
    if upward && from > to {
        std::mem::swap(&mut from, &mut to);
    }
    // Write `from` as the table does not necessarily: trailing zero or not.
    let from_text = text(from, from % 2 == 0);
    let to_text = text(to, false);
    let result = plan(
        matrix,
        &component.name,
        &from_text,
        (!to_implied).then_some(to_text.as_str()),
        scenario,
    );

    let not_in_scenario = scenario.is_some_and(|s| !component.uses.contains(&s));
    if not_in_scenario {
        prop_assert!(matches!(result, Err(PlanError::NotInScenario { .. })), "{result:?}");
    } else if component.revoked.contains(&to) {
        prop_assert!(matches!(result, Err(PlanError::TargetRevoked { .. })), "{result:?}");
    } else if scenario.is_some_and(|s| !component.available(to, s)) {
        prop_assert!(matches!(result, Err(PlanError::TargetNotAvailable { .. })), "{result:?}");
    } else if from == to {
        prop_assert!(matches!(result, Err(PlanError::AlreadyAt { .. })), "{result:?}");
    } else if from > to {
        prop_assert!(matches!(result, Err(PlanError::FromNewer { .. })), "{result:?}");
    } else {
        match component.bfs(from, to, scenario) {
            None => prop_assert!(matches!(result, Err(PlanError::NoPath { .. })), "{result:?}"),
            Some(shortest) => {
                let hops = result.expect("the model finds a path");
                prop_assert_eq!(hops.len(), shortest);
                let stops: Vec<u64> = std::iter::once(value_of(&hops[0].from))
                    .chain(hops.iter().map(|hop| value_of(&hop.to)))
                    .collect();
                prop_assert_eq!(stops[0], from);
                prop_assert_eq!(*stops.last().expect("not empty"), to);
                for (hop, pair) in hops.iter().zip(stops.windows(2)) {
                    prop_assert!(component.allowed(pair[0], pair[1]), "{hop:?}");
                    prop_assert_eq!(hop.behind, component.distance(pair[0], pair[1]));
                    let prefix = format!("N-{} -> N: ", hop.behind);
                    prop_assert!(hop.rule.starts_with(&prefix), "{}", hop.rule);
                }
                for &stop in &stops[1..stops.len() - 1] {
                    prop_assert!(component.usable(stop, scenario), "stops on {stop}");
                }
                // The oldest stops among all shortest paths.
                if let Some(paths) = component.shortest_paths(from, to, shortest, scenario) {
                    prop_assert_eq!(paths.first(), Some(&stops));
                }
                // Without holes in between, a stepwise path ends N-4 -> N, as the seed's
                // N-6 -> N-4 -> N does, and takes ceil(distance / 4) hops.
                let holes =
                    values.iter().any(|&v| from < v && v < to && !component.usable(v, scenario));
                if !holes {
                    prop_assert_eq!(shortest, component.distance(from, to).div_ceil(4));
                    if shortest >= 2 {
                        prop_assert_eq!(hops.last().expect("not empty").behind, 4);
                    }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn planner_is_shortest_allowed_and_refuses_as_the_model_says(
        (matrix, model) in generated(0.1, 6),
        query in query(),
    ) {
        check_plan(&matrix, &model, &query)?;
    }

    /// Many revocations and unavailable cells: detours and "no path" are common.
    #[test]
    fn planner_routes_around_holes((matrix, model) in generated(0.4, 1), query in query()) {
        check_plan(&matrix, &model, &query)?;
    }

    #[test]
    fn support_state_agrees_with_the_rule_for_every_version_in_the_table(
        (matrix, model) in generated(0.1, 6),
        newest_index in any::<Index>(),
        newest_implied in any::<bool>(),
    ) {
        for component in &model.components {
            let values = component.values();
            let Some(&last) = values.last() else { continue };
            let newest = if newest_implied { last } else { *newest_index.get(&values) };
            let newest_text = text(newest, true);
            let given = (!newest_implied).then_some(newest_text.as_str());
            for rollup in &matrix.rollups {
                for cell in rollup.cells.iter().filter(|cell| cell.component == component.name) {
                    let value = value_of(&cell.version);
                    let expected = if value > newest {
                        SupportState::Newer
                    } else {
                        match component.distance(value, newest) {
                            0 => SupportState::Current,
                            behind @ 1..=4 => SupportState::Supported { behind },
                            behind => SupportState::OutOfSupport { behind },
                        }
                    };
                    prop_assert_eq!(
                        support_state(&matrix, &component.name, &cell.version, given),
                        expected,
                        "{} {} against {}", component.name, cell.version, newest
                    );
                }
            }
            prop_assert_eq!(
                support_state(&matrix, &component.name, &text(last + 1, false), given),
                SupportState::Unknown
            );
        }
    }

    #[test]
    fn generated_matrices_lint_without_errors((matrix, model) in generated(0.1, 6)) {
        let report = lint(&matrix);
        prop_assert_eq!(&report.errors, &Vec::<Finding>::new());
        for warning in &report.warnings {
            let component = model.components.iter().find(|c| Some(c.name.as_str()) == warning.component());
            let newest_revoked = component.is_some_and(|c| c.values().last().is_some_and(|v| c.revoked.contains(v)));
            let unused = component.is_some_and(|c| c.cells.is_empty());
            prop_assert!(newest_revoked || unused, "{warning}");
        }
    }

    #[test]
    fn a_version_going_down_is_reported_alone(
        (mut matrix, model) in generated(0.1, 6),
        component_index in any::<Index>(),
    ) {
        let component = component_index.get(&model.components);
        let values = component.values();
        prop_assume!(values.len() >= 2);
        let last = component.cells.last().expect("two values, so cells").0;
        let last_rollup = matrix
            .rollups
            .iter()
            .rev()
            .find(|r| r.cells.iter().any(|c| c.component == component.name))
            .expect("a rollup ships the component")
            .id
            .clone();
        matrix.rollups.push(Rollup {
            id: "late".into(),
            title: None,
            link: None,
            cells: vec![Cell {
                component: component.name.clone(),
                version: text(values[0], false),
                not_available: Vec::new(),
            }],
        });
        prop_assert_eq!(
            lint(&matrix).errors,
            vec![Finding::VersionGoesDown {
                component: component.name.clone(),
                from: Version::parse(&text(last, false)).expect("well formed"),
                from_rollup: last_rollup,
                to: Version::parse(&text(values[0], false)).expect("well formed"),
                to_rollup: "late".into(),
            }]
        );
    }

    #[test]
    fn the_text_format_round_trips((matrix, _) in generated(0.1, 6)) {
        prop_assert_eq!(load(&to_toml(&matrix)), Ok(matrix));
    }

    #[test]
    fn load_never_panics(text in "\\PC*") {
        if let Ok(matrix) = load(&text) {
            let _ = lint(&matrix);
        }
    }

    #[test]
    fn version_order_is_numeric(a in vec(0u64..1000, 1..5), b in vec(0u64..1000, 1..5)) {
        let join = |numbers: &[u64]| numbers.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
        let (va, vb) = (Version::parse(&join(&a)).expect("a"), Version::parse(&join(&b)).expect("b"));
        let pad = |numbers: &[u64]| { let mut n = numbers.to_vec(); n.resize(5, 0); n };
        prop_assert_eq!(va.cmp(&vb), pad(&a).cmp(&pad(&b)));
        prop_assert_eq!(va == vb, pad(&a) == pad(&b));
    }
}
