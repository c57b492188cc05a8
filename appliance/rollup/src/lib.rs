//! The update rollup matrix, the pure part (design.md §6, "Rollup matrix" and "Support
//! rule"): which version of each component every rollup ships, in which scenarios, which
//! versions are revoked; whether an installed version is still supported; and the shortest
//! supported way from an installed version to a newer one.
//!
//! [`load`] reads `config/rollups.toml`; [`lint`] validates it ([`render_report`] prints the
//! result); [`support_state`] applies the support rule; [`plan`] computes an upgrade path
//! ([`render_plan`] prints it). No files, clocks or processes here: the shell reads the file
//! and prints what comes back.
//!
//! # Format
//!
//! ```toml
//! [[scenario]]                       # where components are used; ids are referred to below
//! id = "vmm-to-azure"
//! title = "Hyper-V VMs in VMM clouds to Azure"
//!
//! [[component]]                      # every component a rollup may name
//! name = "Provider"
//! scenarios = ["vmm-to-azure"]       # where it is installed; elsewhere it is not available
//!
//! [[rollup]]                         # oldest first: the file order is the release order
//! id = "UR27"
//! title = "Update Rollup 27"         # optional
//! link = "https://support.microsoft.com/help/4055712"   # optional
//! cells = [
//!   { component = "Provider", version = "5.1.3550.0" },
//!   # not_available: scenarios for which this rollup does not offer this version
//!   { component = "MARS", version = "2.0.9125.0", not_available = ["vmm-to-azure"] },
//! ]
//!
//! [[revoked]]                        # nobody upgrades to (or through) a revoked version
//! component = "Provider"
//! version = "5.1.3550.0"
//! reason = "why, for the operator"
//! ```
//!
//! Unknown keys are errors. Versions are strings so that a malformed one is reported by
//! [`lint`] with its rollup and component rather than failing the load; a version is
//! numbers separated by dots ([`Version`]), compared number by number. A version of a
//! component is available in a scenario when the component lists the scenario and at least
//! one rollup shipping that version does not mark it `not_available` there.
//!
//! # The support rule, and how this crate reads it
//!
//! The seed (Azure Site Recovery, "Service updates in Azure Site Recovery", January 2019)
//! says:
//!
//! > With every new version 'N' of an Azure Site Recovery component that is released, all
//! > versions below 'N-4' is considered out of support.
//!
//! > The official support for upgrades is from > N-4 to N version, If you are on N-6, you
//! > need to first upgrade to N-4, and then upgrade to N.
//!
//! - **N-k** counts releases of one component: the distinct well-formed versions the matrix
//!   ships for it, oldest first ([`Matrix::releases`]). A version shipped by several rollups
//!   (MARS 2.0.9144.0 in UR31 and UR32) counts once; malformed versions are skipped (the lint
//!   reports them); revoked and scenario-unavailable versions count (they were released).
//!   The order is numeric, which is the rollup order whenever the lint finds no version
//!   going down.
//! - **Support**: N itself is current; N-1 to N-4 are supported; below N-4 is out of
//!   support ([`support_state`]).
//! - **Upgrades**: "from > N-4" read literally would exclude N-4, but the seed's own example
//!   upgrades N-6 to N-4 and then *N-4 directly to N*, and N-4 is still in support by the
//!   first sentence. So a hop from N-k to N is supported for `1 <= k <= 4`
//!   ([`SUPPORTED_BEHIND_MAX`]); N is the hop's own target, so N-6 → N-4 is a 2-release hop.
//!   Older versions go stepwise. Among the shortest paths [`plan`] takes the one with the
//!   oldest stepping stones, which makes the last hop start at N-4 exactly as the seed's
//!   N-6 → N-4 → N does (N-6 → N-2 → N is as short; the seed does not take it).
//!
//! # Example
//!
//! ```
//! let matrix = rollup::load(
//!     r#"
//!     [[scenario]]
//!     id = "secondary"
//!     title = "To a secondary site"
//!     [[component]]
//!     name = "relay"
//!     scenarios = ["secondary"]
//!     [[rollup]]
//!     id = "R1"
//!     cells = [{ component = "relay", version = "1.0" }]
//!     [[rollup]]
//!     id = "R2"
//!     cells = [{ component = "relay", version = "1.0.1" }]
//!     "#,
//! )?;
//! assert!(rollup::lint(&matrix).is_ok());
//! let hops = rollup::plan(&matrix, "relay", "1.0", None, Some("secondary"))?;
//! assert_eq!(hops.len(), 1);
//! assert_eq!(hops[0].to, "1.0.1");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// Pure logic with nothing to gain from `unsafe`; forbidding it keeps the proof burden at zero.
#![forbid(unsafe_code)]

mod lint;
mod matrix;
mod planner;
mod render;
mod version;

pub use lint::{lint, Finding, Report};
pub use matrix::{load, Cell, Component, LoadError, Matrix, Revoked, Rollup, Scenario};
pub use planner::{plan, support_state, Hop, PlanError, SupportState};
pub use render::{render_plan, render_report};
pub use version::{MalformedVersion, Version};

/// Longest matrix text accepted, in bytes (checked before the TOML is parsed).
pub const MATRIX_TEXT_MAX: usize = 1 << 20;
/// Longest version text, in bytes.
pub const VERSION_TEXT_MAX: usize = 64;
/// Most numbers in a version.
pub const VERSION_PARTS_MAX: usize = 8;
/// The "4" of N-4: the most releases an upgrade hop may skip forward (N-4 → N).
pub const SUPPORTED_BEHIND_MAX: usize = 4;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
