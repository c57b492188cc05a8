//! The rollup matrix as written in `config/rollups.toml` (format in the crate docs), and the
//! questions the lint and the planner ask of it. [`load`] checks only the TOML's shape:
//! versions stay strings so that a malformed one (the seed's `"5.1.3600 .0"`) reaches
//! [`crate::lint`], which names its rollup and component, instead of failing the whole load.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::version::Version;
use crate::MATRIX_TEXT_MAX;

/// The whole file. Fields are public: the lint accepts any matrix, however inconsistent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    /// `[[scenario]]`: where a component can be used, for example `vmm-to-azure`.
    #[serde(default, rename = "scenario")]
    pub scenarios: Vec<Scenario>,
    /// `[[component]]`: every component a rollup may name.
    #[serde(default, rename = "component")]
    pub components: Vec<Component>,
    /// `[[rollup]]`, oldest first: the file order is the release order.
    #[serde(default, rename = "rollup")]
    pub rollups: Vec<Rollup>,
    /// `[[revoked]]`: versions nobody may upgrade to (or through).
    #[serde(default)]
    pub revoked: Vec<Revoked>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub name: String,
    /// Scenario ids in which this component is installed; in any other scenario every one of
    /// its versions is "not available".
    pub scenarios: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollup {
    pub id: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub link: Option<String>,
    /// One cell per component this rollup ships; a component it does not name is simply not
    /// part of it.
    pub cells: Vec<Cell>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cell {
    pub component: String,
    /// As written; [`Version::parse`] decides whether it is well formed.
    pub version: String,
    /// Scenario ids for which this rollup does not offer this version.
    #[serde(default)]
    pub not_available: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    pub component: String,
    pub version: String,
    pub reason: String,
}

/// Why the matrix text could not be read. Messages start with `rollups: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("rollups: text is {len} bytes, more than the limit of {MATRIX_TEXT_MAX}")]
    TextTooLong { len: usize },
    /// Syntax errors, type errors, missing and unknown keys. `line` and `column` are 1-based;
    /// `column` counts characters.
    #[error("rollups: malformed TOML: line {line}, column {column}: {message}")]
    Toml { line: usize, column: usize, message: String },
}

/// Reads the matrix text. Unknown keys are refused; versions are not checked here (see
/// [`crate::lint`]). Never panics, whatever the text.
pub fn load(text: &str) -> Result<Matrix, LoadError> {
    if text.len() > MATRIX_TEXT_MAX {
        return Err(LoadError::TextTooLong { len: text.len() });
    }
    toml::from_str(text).map_err(|error| {
        // An error without a span concerns the whole document; its start is the honest place.
        let offset = error.span().map_or(0, |span| span.start);
        let (line, column) = config::line_column(text, offset);
        let lines: Vec<&str> =
            error.message().lines().map(str::trim).filter(|line| !line.is_empty()).collect();
        LoadError::Toml { line, column, message: lines.join("; ") }
    })
}

impl Matrix {
    /// The first declaration of `name`.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|component| component.name == name)
    }

    /// The first declaration of scenario `id`.
    pub fn scenario(&self, id: &str) -> Option<&Scenario> {
        self.scenarios.iter().find(|scenario| scenario.id == id)
    }

    /// Every cell of `component`, with its rollup, in rollup order.
    pub fn cells<'a>(
        &'a self,
        component: &'a str,
    ) -> impl Iterator<Item = (&'a Rollup, &'a Cell)> + 'a {
        self.rollups.iter().flat_map(move |rollup| {
            rollup
                .cells
                .iter()
                .filter(move |cell| cell.component == component)
                .map(move |cell| (rollup, cell))
        })
    }

    /// The release line of `component`: its distinct well-formed versions, oldest first.
    /// "N-k" counts positions in this list. A version named by several rollups counts once,
    /// and malformed versions are skipped (the lint reports them). The order is numeric;
    /// when the lint finds no version going down, it is also the rollup order.
    pub fn releases(&self, component: &str) -> Vec<Version> {
        let distinct: BTreeSet<Version> = self
            .cells(component)
            .filter_map(|(_, cell)| Version::parse(&cell.version).ok())
            .collect();
        distinct.into_iter().collect()
    }

    /// The revocation of `version` of `component`, if the matrix has one (first one wins).
    pub fn revocation(&self, component: &str, version: &Version) -> Option<&Revoked> {
        self.revoked.iter().find(|revoked| {
            revoked.component == component
                && Version::parse(&revoked.version).is_ok_and(|parsed| parsed == *version)
        })
    }

    /// Whether `version` of `component` can be installed in `scenario`: the component is used
    /// there, and at least one rollup that ships this version does not mark it
    /// `not_available` for the scenario.
    pub fn available(&self, component: &str, version: &Version, scenario: &str) -> bool {
        let used =
            self.component(component).is_some_and(|c| c.scenarios.iter().any(|s| s == scenario));
        used && self.cells(component).any(|(_, cell)| {
            Version::parse(&cell.version).is_ok_and(|parsed| parsed == *version)
                && !cell.not_available.iter().any(|s| s == scenario)
        })
    }
}
