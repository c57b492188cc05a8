//! The matrix validator. [`lint`] looks at the whole matrix and reports every problem it
//! finds, each naming its rollup and component, in a fixed order (scenarios, components,
//! rollups and their cells in file order, revocations, then the whole-matrix warnings), so
//! the same file always gives the same report.
//!
//! **Errors** make the data wrong or ambiguous: malformed versions, duplicates (scenarios,
//! components, rollup ids, a component twice in one rollup, a scenario twice in a list,
//! revocations), names that refer to nothing (unknown components, scenarios, revoked
//! versions), and a version that goes down from one rollup to the next. The seed gives no
//! sign that its one downward step (OVF 5.1.3700.0 in UR29, 5.1.3650.0 in UR30) is intended:
//! in every other rollup OVF has the Provider's version, and UR29's Provider is 5.1.3650.0, so
//! it reads as a typo, and a release line that goes back in time would make "N-4" depend on
//! which rollup one reads. It is an error.
//!
//! **Warnings** are legal but suspicious: a declared component that no rollup names, a
//! `not_available` scenario where the component is not used anyway, and a component whose
//! newest version is revoked (nothing to upgrade to).

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::matrix::Matrix;
use crate::version::Version;

/// One problem. Its message (`Display`) names the rollup and component as written in the
/// file; control characters in names are escaped so a crafted name cannot garble a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    // Errors.
    #[error("scenario {}: declared twice", Shown(.scenario))]
    DuplicateScenario { scenario: String },
    #[error("component {}: declared twice", Shown(.component))]
    DuplicateComponent { component: String },
    #[error("component {}: unknown scenario {scenario:?}", Shown(.component))]
    UnknownScenario { component: String, scenario: String },
    #[error("component {}: scenario {scenario:?} listed twice", Shown(.component))]
    ScenarioListedTwice { component: String, scenario: String },
    #[error("{}: rollup declared twice", Shown(.rollup))]
    DuplicateRollup { rollup: String },
    #[error("{} {}: unknown component (not declared in [[component]])", Shown(.rollup), Shown(.component))]
    UnknownComponent { rollup: String, component: String },
    #[error("{} {}: component listed twice in the rollup", Shown(.rollup), Shown(.component))]
    DuplicateCell { rollup: String, component: String },
    #[error("{} {}: malformed version {version:?} ({expected})", Shown(.rollup), Shown(.component))]
    MalformedVersion { rollup: String, component: String, version: String, expected: &'static str },
    #[error("{} {}: not_available names unknown scenario {scenario:?}", Shown(.rollup), Shown(.component))]
    NotAvailableUnknownScenario { rollup: String, component: String, scenario: String },
    #[error("{} {}: not_available names scenario {scenario:?} twice", Shown(.rollup), Shown(.component))]
    NotAvailableListedTwice { rollup: String, component: String, scenario: String },
    /// `from_rollup` is the last earlier rollup with a well-formed version of the component.
    #[error("{}: version goes down from {from} ({}) to {to} ({})", Shown(.component), Shown(.from_rollup), Shown(.to_rollup))]
    VersionGoesDown {
        component: String,
        from: Version,
        from_rollup: String,
        to: Version,
        to_rollup: String,
    },
    #[error("revoked {} {}: unknown component", Shown(.component), Shown(.version))]
    RevokedUnknownComponent { component: String, version: String },
    #[error("revoked {}: malformed version {version:?} ({expected})", Shown(.component))]
    RevokedMalformedVersion { component: String, version: String, expected: &'static str },
    #[error("revoked {} {version}: no rollup ships this version", Shown(.component))]
    RevokedUnknownVersion { component: String, version: Version },
    #[error("revoked {} {version}: listed twice", Shown(.component))]
    DuplicateRevocation { component: String, version: Version },

    // Warnings.
    #[error("component {}: named by no rollup", Shown(.component))]
    ComponentUnused { component: String },
    #[error("{} {}: not_available names scenario {scenario:?}, where the component is not used anyway", Shown(.rollup), Shown(.component))]
    NotAvailableRedundant { rollup: String, component: String, scenario: String },
    #[error("{}: newest version {version} is revoked (nothing to upgrade to)", Shown(.component))]
    NewestRevoked { component: String, version: Version },
}

impl Finding {
    /// The rollup the finding is about, if it is about one.
    pub fn rollup(&self) -> Option<&str> {
        match self {
            Finding::DuplicateRollup { rollup }
            | Finding::UnknownComponent { rollup, .. }
            | Finding::DuplicateCell { rollup, .. }
            | Finding::MalformedVersion { rollup, .. }
            | Finding::NotAvailableUnknownScenario { rollup, .. }
            | Finding::NotAvailableListedTwice { rollup, .. }
            | Finding::NotAvailableRedundant { rollup, .. } => Some(rollup),
            Finding::VersionGoesDown { to_rollup, .. } => Some(to_rollup),
            _ => None,
        }
    }

    /// The component the finding is about, if it is about one.
    pub fn component(&self) -> Option<&str> {
        match self {
            Finding::DuplicateScenario { .. } | Finding::DuplicateRollup { .. } => None,
            Finding::DuplicateComponent { component }
            | Finding::UnknownScenario { component, .. }
            | Finding::ScenarioListedTwice { component, .. }
            | Finding::UnknownComponent { component, .. }
            | Finding::DuplicateCell { component, .. }
            | Finding::MalformedVersion { component, .. }
            | Finding::NotAvailableUnknownScenario { component, .. }
            | Finding::NotAvailableListedTwice { component, .. }
            | Finding::VersionGoesDown { component, .. }
            | Finding::RevokedUnknownComponent { component, .. }
            | Finding::RevokedMalformedVersion { component, .. }
            | Finding::RevokedUnknownVersion { component, .. }
            | Finding::DuplicateRevocation { component, .. }
            | Finding::ComponentUnused { component }
            | Finding::NotAvailableRedundant { component, .. }
            | Finding::NewestRevoked { component, .. } => Some(component),
        }
    }

    /// Whether this kind of finding is a warning (otherwise it is an error).
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Finding::ComponentUnused { .. }
                | Finding::NotAvailableRedundant { .. }
                | Finding::NewestRevoked { .. }
        )
    }
}

/// What [`lint`] found, errors and warnings each in the lint's fixed order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

impl Report {
    /// No errors (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    fn push(&mut self, finding: Finding) {
        if finding.is_warning() {
            self.warnings.push(finding);
        } else {
            self.errors.push(finding);
        }
    }
}

/// Checks the whole matrix; see the module docs for what is an error and what a warning.
pub fn lint(matrix: &Matrix) -> Report {
    let mut report = Report::default();
    let scenarios = lint_scenarios(matrix, &mut report);
    let components = lint_components(matrix, &scenarios, &mut report);
    lint_rollups(matrix, &scenarios, &components, &mut report);
    lint_revocations(matrix, &components, &mut report);
    let mut checked = HashSet::new();
    for component in &matrix.components {
        if !checked.insert(component.name.as_str()) {
            continue; // A duplicate declaration, already reported; its first one is checked.
        }
        let releases = matrix.releases(&component.name);
        match releases.last() {
            None if matrix.cells(&component.name).next().is_none() => {
                report.push(Finding::ComponentUnused { component: component.name.clone() });
            }
            Some(newest) if matrix.revocation(&component.name, newest).is_some() => {
                report.push(Finding::NewestRevoked {
                    component: component.name.clone(),
                    version: newest.clone(),
                });
            }
            _ => {}
        }
    }
    report
}

fn lint_scenarios<'a>(matrix: &'a Matrix, report: &mut Report) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for scenario in &matrix.scenarios {
        if !seen.insert(scenario.id.as_str()) {
            report.push(Finding::DuplicateScenario { scenario: scenario.id.clone() });
        }
    }
    seen
}

fn lint_components<'a>(
    matrix: &'a Matrix,
    scenarios: &HashSet<&str>,
    report: &mut Report,
) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for component in &matrix.components {
        if !seen.insert(component.name.as_str()) {
            report.push(Finding::DuplicateComponent { component: component.name.clone() });
            continue;
        }
        let mut listed = HashSet::new();
        for scenario in &component.scenarios {
            let finding = if !scenarios.contains(scenario.as_str()) {
                Finding::UnknownScenario {
                    component: component.name.clone(),
                    scenario: scenario.clone(),
                }
            } else if !listed.insert(scenario.as_str()) {
                Finding::ScenarioListedTwice {
                    component: component.name.clone(),
                    scenario: scenario.clone(),
                }
            } else {
                continue;
            };
            report.push(finding);
        }
    }
    seen
}

fn lint_rollups(
    matrix: &Matrix,
    scenarios: &HashSet<&str>,
    components: &HashSet<&str>,
    report: &mut Report,
) {
    let mut ids = HashSet::new();
    // Per component: the last well-formed version and the rollup that shipped it.
    let mut last: HashMap<&str, (Version, &str)> = HashMap::new();
    for rollup in &matrix.rollups {
        if !ids.insert(rollup.id.as_str()) {
            report.push(Finding::DuplicateRollup { rollup: rollup.id.clone() });
        }
        let mut named = HashSet::new();
        for cell in &rollup.cells {
            let at = |component: &str| (rollup.id.clone(), component.to_string());
            if !components.contains(cell.component.as_str()) {
                let (rollup, component) = at(&cell.component);
                report.push(Finding::UnknownComponent { rollup, component });
                continue;
            }
            if !named.insert(cell.component.as_str()) {
                let (rollup, component) = at(&cell.component);
                report.push(Finding::DuplicateCell { rollup, component });
                continue;
            }
            lint_not_available(matrix, &rollup.id, cell, scenarios, report);
            let version = match Version::parse(&cell.version) {
                Ok(version) => version,
                Err(malformed) => {
                    let (rollup, component) = at(&cell.component);
                    report.push(Finding::MalformedVersion {
                        rollup,
                        component,
                        version: malformed.text,
                        expected: malformed.expected,
                    });
                    continue;
                }
            };
            if let Some((previous, previous_rollup)) = last.get(cell.component.as_str()) {
                if version < *previous {
                    report.push(Finding::VersionGoesDown {
                        component: cell.component.clone(),
                        from: previous.clone(),
                        from_rollup: (*previous_rollup).to_string(),
                        to: version.clone(),
                        to_rollup: rollup.id.clone(),
                    });
                }
            }
            last.insert(cell.component.as_str(), (version, rollup.id.as_str()));
        }
    }
}

fn lint_not_available(
    matrix: &Matrix,
    rollup: &str,
    cell: &crate::matrix::Cell,
    scenarios: &HashSet<&str>,
    report: &mut Report,
) {
    let used = matrix.component(&cell.component).map_or(&[][..], |c| &c.scenarios[..]);
    let mut listed = HashSet::new();
    for scenario in &cell.not_available {
        let (rollup, component, scenario_id) =
            (rollup.to_string(), cell.component.clone(), scenario.clone());
        if !scenarios.contains(scenario.as_str()) {
            report.push(Finding::NotAvailableUnknownScenario {
                rollup,
                component,
                scenario: scenario_id,
            });
        } else if !listed.insert(scenario.as_str()) {
            report.push(Finding::NotAvailableListedTwice {
                rollup,
                component,
                scenario: scenario_id,
            });
        } else if !used.contains(scenario) {
            report.push(Finding::NotAvailableRedundant {
                rollup,
                component,
                scenario: scenario_id,
            });
        }
    }
}

fn lint_revocations(matrix: &Matrix, components: &HashSet<&str>, report: &mut Report) {
    let mut seen: HashSet<(&str, Version)> = HashSet::new();
    for revoked in &matrix.revoked {
        let component = revoked.component.clone();
        if !components.contains(revoked.component.as_str()) {
            report.push(Finding::RevokedUnknownComponent {
                component,
                version: revoked.version.clone(),
            });
            continue;
        }
        let version = match Version::parse(&revoked.version) {
            Ok(version) => version,
            Err(malformed) => {
                report.push(Finding::RevokedMalformedVersion {
                    component,
                    version: malformed.text,
                    expected: malformed.expected,
                });
                continue;
            }
        };
        if !seen.insert((revoked.component.as_str(), version.clone())) {
            report.push(Finding::DuplicateRevocation { component, version });
        } else if !matrix.releases(&revoked.component).contains(&version) {
            report.push(Finding::RevokedUnknownVersion { component, version });
        }
    }
}

/// Displays a name as written, with control characters escaped (`\n`, `\u{1b}`), so that
/// names stay unquoted in messages (`UR28 Provider: …`) yet cannot break a log line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shown<'a>(pub(crate) &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}
