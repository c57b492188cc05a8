//! Why a plan was refused. Every message starts with `plan: ` and names the offending item;
//! names are printed quoted and escaped (`{:?}`), so a name with control characters cannot
//! garble a log line.

use std::fmt;

use crate::model::ActionList;
use crate::{
    ACTIONS_MAX, ACTION_TEXT_MAX, DESCRIPTION_MAX, DISKS_PER_MACHINE_MAX, GROUPS_MAX, MACHINES_MAX,
    PLAN_TEXT_MAX, TIMEOUT_SECS_MAX,
};

/// Where an action is: its group, its list and its 1-based position in the list. Displays as
/// `action in group "g" pre #2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionAt {
    pub group: String,
    pub list: ActionList,
    /// 1-based, as an operator counts.
    pub number: usize,
}

impl fmt::Display for ActionAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "action in group {:?} {} #{}", self.group, self.list, self.number)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("plan: text is {len} bytes, more than the limit of {PLAN_TEXT_MAX}")]
    TextTooLong { len: usize },
    /// Syntax errors, type errors, missing and unknown keys. `line` and `column` are 1-based;
    /// `column` counts characters.
    #[error("plan: malformed TOML: line {line}, column {column}: {message}")]
    Toml { line: usize, column: usize, message: String },

    #[error("plan: name {name:?} is invalid: {reason}")]
    InvalidPlanName { name: String, reason: String },
    #[error("plan: description is {len} bytes, more than the limit of {DESCRIPTION_MAX}")]
    DescriptionTooLong { len: usize },
    #[error("plan: no machines declared; a plan must recover at least one machine")]
    NoMachines,
    #[error("plan: {count} machines, more than the limit of {MACHINES_MAX}")]
    TooManyMachines { count: usize },
    #[error("plan: {count} groups, more than the limit of {GROUPS_MAX}")]
    TooManyGroups { count: usize },

    #[error("plan: machine name {name:?} is invalid: {reason}")]
    InvalidMachineName { name: String, reason: String },
    #[error("plan: duplicate machine {name:?}")]
    DuplicateMachine { name: String },
    #[error("plan: machine {machine:?} has no disks")]
    NoDisks { machine: String },
    #[error("plan: machine {machine:?} has {count} disks, more than the limit of {DISKS_PER_MACHINE_MAX}")]
    TooManyDisks { machine: String, count: usize },
    #[error("plan: machine {machine:?} has invalid disk name {disk:?}: {reason}")]
    InvalidDiskName { machine: String, disk: String, reason: String },
    #[error("plan: machine {machine:?} lists disk {disk:?} twice")]
    DiskListedTwice { machine: String, disk: String },
    #[error("plan: disk {disk:?} is in machines {first:?} and {second:?}")]
    DiskInTwoMachines { disk: String, first: String, second: String },

    #[error("plan: group name {name:?} is invalid: {reason}")]
    InvalidGroupName { name: String, reason: String },
    #[error("plan: duplicate group {name:?}")]
    DuplicateGroup { name: String },
    #[error("plan: group {group:?} has no machines")]
    EmptyGroup { group: String },
    #[error("plan: group {group:?} lists unknown machine {machine:?}")]
    UnknownMachine { group: String, machine: String },
    #[error("plan: group {group:?} lists machine {machine:?} twice")]
    MachineListedTwice { group: String, machine: String },
    #[error("plan: machine {machine:?} is in groups {first:?} and {second:?}")]
    MachineInTwoGroups { machine: String, first: String, second: String },
    #[error("plan: machine {machine:?} is declared but in no group")]
    MachineInNoGroup { machine: String },
    #[error("plan: group {group:?} is after unknown group {after:?}")]
    UnknownAfter { group: String, after: String },
    #[error("plan: group {group:?} lists group {after:?} twice in after")]
    AfterListedTwice { group: String, after: String },
    /// The groups of a cycle in `after` order: each waits for the next, and the last repeats
    /// the first (`["app", "db", "app"]`: app is after db, db is after app).
    #[error("plan: groups form a cycle: {}", .groups.join(" -> "))]
    Cycle { groups: Vec<String> },

    #[error(
        "plan: group {group:?} has {count} {list} actions, more than the limit of {ACTIONS_MAX}"
    )]
    TooManyActions { group: String, list: ActionList, count: usize },
    #[error("plan: {at} needs exactly one of script or manual")]
    ActionNeedsOneKind { at: ActionAt },
    #[error("plan: {at} has an empty {kind}")]
    EmptyAction { at: ActionAt, kind: &'static str },
    #[error("plan: {at} has a {kind} of {len} bytes, more than the limit of {ACTION_TEXT_MAX}")]
    ActionTooLong { at: ActionAt, kind: &'static str, len: usize },
    #[error("plan: {at} has a script containing a NUL byte")]
    ScriptHasNul { at: ActionAt },
    #[error("plan: {at} has timeout_secs = {value}; it must be 1 to {TIMEOUT_SECS_MAX}")]
    TimeoutOutOfRange { at: ActionAt, value: i64 },
    #[error("plan: {at} is manual; timeout_secs applies only to scripts")]
    TimeoutOnManual { at: ActionAt },

    /// From [`crate::Plan::check_disks`]: the plan names a disk the target does not have.
    #[error("plan: machine {machine:?} has disk {disk:?}, which the target does not know")]
    UnknownDisk { machine: String, disk: String },
}
