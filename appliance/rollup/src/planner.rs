//! The support rule and the upgrade planner (the rule and its reading are in the crate docs).
//!
//! Both work on a component's release line ([`Matrix::releases`]): its distinct well-formed
//! versions, oldest first. A version's position in that line is what "N-k" counts. An upgrade
//! hop from position `i` to position `j` is supported when `1 <= j - i <=`
//! [`SUPPORTED_BEHIND_MAX`]; a longer way goes through stepping stones. Revoked versions and
//! versions not available in the scenario still count as releases (they were released), but
//! the planner never stops on one.

use crate::lint::Shown;
use crate::matrix::Matrix;
use crate::version::Version;
use crate::SUPPORTED_BEHIND_MAX;

/// Where a version stands against the release N it is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupportState {
    /// The version is N.
    Current,
    /// N-1 to N-4 (`behind` releases below N): supported, and upgrades directly to N.
    Supported { behind: usize },
    /// Below N-4: out of support; the way to N goes stepwise.
    OutOfSupport { behind: usize },
    /// Newer than N (possible only when N is given explicitly).
    Newer,
    /// Not a release of the component in the matrix: unknown or undeclared component,
    /// malformed text, a version no rollup ships, or an unknown N.
    Unknown,
}

/// Where `version` of `component` stands against N: `newest`, or the newest release of the
/// component when `newest` is `None`.
pub fn support_state(
    matrix: &Matrix,
    component: &str,
    version: &str,
    newest: Option<&str>,
) -> SupportState {
    if matrix.component(component).is_none() {
        return SupportState::Unknown;
    }
    let releases = matrix.releases(component);
    let position = |text: &str| {
        let version = Version::parse(text).ok()?;
        releases.iter().position(|release| *release == version)
    };
    let Some(at) = position(version) else {
        return SupportState::Unknown;
    };
    let newest = match newest {
        None => releases.len() - 1, // `at` exists, so the line is not empty.
        Some(text) => match position(text) {
            Some(newest) => newest,
            None => return SupportState::Unknown,
        },
    };
    match newest.checked_sub(at) {
        None => SupportState::Newer,
        Some(0) => SupportState::Current,
        Some(behind) if behind <= SUPPORTED_BEHIND_MAX => SupportState::Supported { behind },
        Some(behind) => SupportState::OutOfSupport { behind },
    }
}

/// One supported upgrade step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// Versions as the matrix writes them.
    pub from: String,
    pub to: String,
    /// How many releases `from` is below `to` (1 to [`SUPPORTED_BEHIND_MAX`]): `from` is
    /// N-`behind` of this hop's N.
    pub behind: usize,
    /// Why the hop is allowed, for people, e.g. `N-4 -> N: N-4 or newer goes directly to N`.
    pub rule: String,
}

/// Why no plan was made. Messages name the component and the versions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("unknown component {component:?} (not declared in the rollup matrix)")]
    UnknownComponent { component: String },
    #[error("{}: no rollup ships a well-formed version", Shown(.component))]
    NoReleases { component: String },
    #[error("{}: malformed version {version:?} ({expected})", Shown(.component))]
    MalformedVersion { component: String, version: String, expected: &'static str },
    #[error("{}: version {version} is not in the rollup matrix", Shown(.component))]
    UnknownVersion { component: String, version: String },
    #[error("unknown scenario {scenario:?}")]
    UnknownScenario { scenario: String },
    #[error("{}: not used in scenario {scenario:?}", Shown(.component))]
    NotInScenario { component: String, scenario: String },
    #[error("{}: target version {version} is revoked: {reason}", Shown(.component))]
    TargetRevoked { component: String, version: String, reason: String },
    #[error("{}: target version {version} is not available in scenario {scenario:?}", Shown(.component))]
    TargetNotAvailable { component: String, version: String, scenario: String },
    #[error("{}: installed version {from} is newer than target {to} (downgrades are not supported)", Shown(.component))]
    FromNewer { component: String, from: String, to: String },
    #[error("{}: already at {version}, nothing to do", Shown(.component))]
    AlreadyAt { component: String, version: String },
    /// Every way needs a stepping stone that is revoked or not available; `blocked` lists the
    /// unusable versions between `from` and `to` with why, e.g. `0.4.0 (revoked)`.
    #[error("{}: no supported path from {from} to {to}: stepping stones {} are unusable", Shown(.component), .blocked.join(", "))]
    NoPath { component: String, from: String, to: String, blocked: Vec<String> },
}

/// The shortest supported upgrade path of `component` from the installed version `from` to
/// `to` (the newest release when `None`), optionally within `scenario`.
///
/// Every hop goes from N-`k` to N with `k` at most [`SUPPORTED_BEHIND_MAX`], counted on the
/// component's release line. Among shortest paths the one whose stepping stones are the
/// oldest is chosen, so the last hop of a stepwise path starts at N-4, as in the seed's
/// "N-6 → N-4 → N". Refused: unknown component, scenario or version; a malformed version;
/// a component not used in the scenario; a revoked target or one not available in the
/// scenario; `from` newer than `to` or equal to it; and when every way would stop on a
/// revoked or unavailable version. `from` itself may be revoked or unavailable: it is what
/// is installed.
pub fn plan(
    matrix: &Matrix,
    component: &str,
    from: &str,
    to: Option<&str>,
    scenario: Option<&str>,
) -> Result<Vec<Hop>, PlanError> {
    let name = || component.to_string();
    if matrix.component(component).is_none() {
        return Err(PlanError::UnknownComponent { component: name() });
    }
    if let Some(scenario) = scenario {
        if matrix.scenario(scenario).is_none() {
            return Err(PlanError::UnknownScenario { scenario: scenario.to_string() });
        }
        let used =
            matrix.component(component).is_some_and(|c| c.scenarios.iter().any(|s| s == scenario));
        if !used {
            return Err(PlanError::NotInScenario {
                component: name(),
                scenario: scenario.to_string(),
            });
        }
    }
    let releases = matrix.releases(component);
    if releases.is_empty() {
        return Err(PlanError::NoReleases { component: name() });
    }
    let find = |text: &str| -> Result<usize, PlanError> {
        let version = Version::parse(text).map_err(|malformed| PlanError::MalformedVersion {
            component: name(),
            version: malformed.text,
            expected: malformed.expected,
        })?;
        releases.iter().position(|release| *release == version).ok_or_else(|| {
            PlanError::UnknownVersion { component: name(), version: text.to_string() }
        })
    };
    let start = find(from)?;
    let end = match to {
        Some(to) => find(to)?,
        None => releases.len() - 1,
    };
    let target = &releases[end];
    if let Some(revoked) = matrix.revocation(component, target) {
        return Err(PlanError::TargetRevoked {
            component: name(),
            version: target.to_string(),
            reason: revoked.reason.clone(),
        });
    }
    if let Some(scenario) = scenario {
        if !matrix.available(component, target, scenario) {
            return Err(PlanError::TargetNotAvailable {
                component: name(),
                version: target.to_string(),
                scenario: scenario.to_string(),
            });
        }
    }
    if start == end {
        return Err(PlanError::AlreadyAt { component: name(), version: target.to_string() });
    }
    if start > end {
        return Err(PlanError::FromNewer {
            component: name(),
            from: releases[start].to_string(),
            to: target.to_string(),
        });
    }
    route(matrix, component, scenario, &releases, start, end)
}

/// The hops of the shortest path from `releases[start]` to `releases[end]`, once the request
/// itself has been checked.
fn route(
    matrix: &Matrix,
    component: &str,
    scenario: Option<&str>,
    releases: &[Version],
    start: usize,
    end: usize,
) -> Result<Vec<Hop>, PlanError> {
    let target = &releases[end];
    // Why each version in between cannot be stood on, if it cannot.
    let blocked: Vec<Option<String>> = releases
        .iter()
        .map(|version| {
            if matrix.revocation(component, version).is_some() {
                Some("revoked".to_string())
            } else {
                let scenario = scenario.filter(|s| !matrix.available(component, version, s))?;
                Some(format!("not available in {scenario}"))
            }
        })
        .collect();
    let usable: Vec<bool> = blocked.iter().map(Option::is_none).collect();
    let Some(path) = shortest_path(&usable, start, end) else {
        return Err(PlanError::NoPath {
            component: component.to_string(),
            from: releases[start].to_string(),
            to: target.to_string(),
            blocked: (start + 1..end)
                .filter_map(|i| Some(format!("{} ({})", releases[i], blocked[i].as_ref()?)))
                .collect(),
        });
    };
    let hops = path
        .windows(2)
        .map(|pair| {
            let (i, j) = (pair[0], pair[1]);
            let behind = j - i;
            let mut rule = format!("N-{behind} -> N: N-4 or newer goes directly to N");
            let passed: Vec<String> = (i + 1..j)
                .filter_map(|k| Some(format!("{} ({})", releases[k], blocked[k].as_ref()?)))
                .collect();
            if !passed.is_empty() {
                rule += &format!("; passes over {}", passed.join(", "));
            }
            Hop {
                from: releases[i].as_str().to_string(),
                to: releases[j].as_str().to_string(),
                behind,
                rule,
            }
        })
        .collect();
    Ok(hops)
}

/// Positions `start, …, end` of the shortest path in which each step moves up by 1 to
/// [`SUPPORTED_BEHIND_MAX`] and stops only on `usable` positions (`start` and `end` are always
/// allowed). Among shortest paths, the one whose stops are oldest, position by position.
/// `None` when there is no path. `start < end < usable.len()`.
pub(crate) fn shortest_path(usable: &[bool], start: usize, end: usize) -> Option<Vec<usize>> {
    assert!(start < end && end < usable.len());
    // hops_left[i - start]: fewest hops from position i to `end`, None when unreachable.
    let mut hops_left: Vec<Option<usize>> = vec![None; end - start + 1];
    hops_left[end - start] = Some(0);
    for i in (start..end).rev() {
        if i != start && !usable[i] {
            continue;
        }
        let reach = (i + SUPPORTED_BEHIND_MAX).min(end);
        hops_left[i - start] =
            (i + 1..=reach).filter_map(|j| hops_left[j - start]).min().map(|hops| hops + 1);
    }
    let mut left = hops_left[0]?;
    let mut path = vec![start];
    let mut at = start;
    while at != end {
        let reach = (at + SUPPORTED_BEHIND_MAX).min(end);
        // On a shortest path some next stop has exactly one hop fewer; take the oldest.
        let next = (at + 1..=reach).find(|&j| hops_left[j - start] == Some(left - 1))?;
        path.push(next);
        at = next;
        left -= 1;
    }
    assert!(path.len() >= 2 && path.windows(2).all(|w| w[0] < w[1]));
    Some(path)
}
