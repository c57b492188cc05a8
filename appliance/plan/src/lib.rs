//! Recovery plans, the pure part (design.md §4, "Recovery plans in TOML"): which machines a
//! failover brings up, in which order, and what runs or what an operator must do before and
//! after each step. [`parse`] turns the plan's text into a [`Plan`] that is valid as a whole;
//! [`Plan::order`] gives the order to run its groups in; [`Plan::check_disks`] checks the plan
//! against the disks a target knows when the plan is about to run.
//!
//! No files, clocks, processes or sockets here: the shell reads the file, passes its text in,
//! and runs what comes out. The format is described for operators in `docs/PLANS.md`.
//!
//! # Format
//!
//! ```toml
//! name = "erp"                      # required
//! description = "ERP failover"      # optional, at most 4096 bytes
//!
//! [[machine]]
//! name = "db1"                      # unique among machines
//! disks = ["db1-os", "db1-data"]    # 1 to 64 disks; a disk is in at most one machine
//!
//! [[machine]]
//! name = "app1"
//! disks = ["app1-os"]
//!
//! [[group]]
//! name = "databases"                # unique among groups
//! machines = ["db1"]                # at least one; each machine in exactly one group
//! pre = [
//!   { script = "/usr/local/bin/stop-app --now", timeout_secs = 300 },
//!   { manual = "Confirm the DBA has stopped the batch jobs" },
//! ]
//! post = [ { script = "/usr/local/bin/check-db" } ]
//!
//! [[group]]
//! name = "apps"
//! machines = ["app1"]
//! after = ["databases"]             # groups that must finish before this one starts
//! ```
//!
//! - **Names** (of the plan, machines, groups and disks): 1 to [`NAME_LEN_MAX`] characters of
//!   `A-Z a-z 0-9 . _ -`, not starting with `.` (the target's rule for disk names, applied to
//!   every name so that any of them can become a file name safely).
//! - **Machines**: at most [`MACHINES_MAX`], each with 1 to [`DISKS_PER_MACHINE_MAX`] disks.
//!   Every declared machine must be in a group: a plan that silently skips a machine would
//!   leave it down after a failover.
//! - **Groups**: at most [`GROUPS_MAX`]. `after` names other groups; together they must form
//!   no cycle. Groups whose `after` groups have all finished are ready; among ready groups the
//!   one written first runs first, so the order is deterministic.
//! - **Actions** (`pre` runs before the group's machines start, `post` after): at most
//!   [`ACTIONS_MAX`] per list, each exactly one of
//!   - `script`: a command line (non-empty, at most [`ACTION_TEXT_MAX`] bytes, no NUL), with
//!     optional `timeout_secs` from 1 to [`TIMEOUT_SECS_MAX`], default
//!     [`TIMEOUT_SECS_DEFAULT`];
//!   - `manual`: an instruction an operator must confirm (non-empty, at most
//!     [`ACTION_TEXT_MAX`] bytes; no `timeout_secs`, a person takes the time it takes).
//! - **Unknown keys** anywhere are errors, and the whole text is at most [`PLAN_TEXT_MAX`]
//!   bytes.
//!
//! # Example
//!
//! ```
//! let plan = plan::parse(
//!     r#"
//!     name = "erp"
//!     [[machine]]
//!     name = "db1"
//!     disks = ["db1-os"]
//!     [[machine]]
//!     name = "app1"
//!     disks = ["app1-os"]
//!     [[group]]
//!     name = "apps"
//!     machines = ["app1"]
//!     after = ["databases"]
//!     [[group]]
//!     name = "databases"
//!     machines = ["db1"]
//!     post = [{ script = "/usr/local/bin/check-db" }]
//!     "#,
//! )?;
//! let order: Vec<&str> = plan.order().iter().map(|group| group.name.as_str()).collect();
//! assert_eq!(order, ["databases", "apps"]);
//! plan.check_disks(|disk| disk.ends_with("-os"))?;
//! # Ok::<(), plan::PlanError>(())
//! ```

// Pure logic with nothing to gain from `unsafe`; forbidding it keeps the proof burden at zero.
#![forbid(unsafe_code)]

mod error;
mod model;
mod order;
mod parse;

pub use error::{ActionAt, PlanError};
pub use model::{Action, ActionList, Group, Machine, Plan};
pub use parse::parse;

/// Longest plan text accepted, in bytes (checked before the TOML is parsed).
pub const PLAN_TEXT_MAX: usize = 1 << 20;
/// Most machines a plan may declare.
pub const MACHINES_MAX: usize = 256;
/// Most groups a plan may declare.
pub const GROUPS_MAX: usize = 64;
/// Most actions in one `pre` or `post` list.
pub const ACTIONS_MAX: usize = 32;
/// Most disks one machine may list.
pub const DISKS_PER_MACHINE_MAX: usize = 64;
/// Longest name (plan, machine, group, disk), in characters.
pub const NAME_LEN_MAX: usize = 64;
/// Longest `script` command line or `manual` text, in bytes.
pub const ACTION_TEXT_MAX: usize = 4096;
/// Longest `description`, in bytes.
pub const DESCRIPTION_MAX: usize = 4096;
/// Timeout of a script that does not state `timeout_secs`.
pub const TIMEOUT_SECS_DEFAULT: u64 = 600;
/// Longest `timeout_secs` (one day).
pub const TIMEOUT_SECS_MAX: u64 = 86_400;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
