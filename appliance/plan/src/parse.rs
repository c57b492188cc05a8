//! TOML text → validated [`Plan`]. Serde reads the text into raw structures that mirror the
//! file (unknown keys refused). The checks then run in a fixed order, so the same text always
//! gives the same error: the plan's own keys and the counts, then each machine, then each
//! group (its machines and actions), each in file order; last the problems that need every
//! group: unknown or repeated `after` entries, machines in no group, and cycles.

use std::collections::HashMap;

use serde::Deserialize;

use crate::error::ActionAt;
use crate::model::{Action, ActionList, Group, Machine, Plan};
use crate::order::topological;
use crate::{
    PlanError, ACTIONS_MAX, ACTION_TEXT_MAX, DESCRIPTION_MAX, DISKS_PER_MACHINE_MAX, GROUPS_MAX,
    MACHINES_MAX, NAME_LEN_MAX, PLAN_TEXT_MAX, TIMEOUT_SECS_DEFAULT, TIMEOUT_SECS_MAX,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, rename = "machine")]
    machines: Vec<RawMachine>,
    #[serde(default, rename = "group")]
    groups: Vec<RawGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    name: String,
    disks: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    machines: Vec<String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    pre: Vec<RawAction>,
    #[serde(default)]
    post: Vec<RawAction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    script: Option<String>,
    manual: Option<String>,
    /// Signed so that a negative value gets the range message rather than a type error.
    timeout_secs: Option<i64>,
}

/// Parses and validates a recovery plan (format in the crate docs). Never panics, whatever
/// the text.
pub fn parse(text: &str) -> Result<Plan, PlanError> {
    if text.len() > PLAN_TEXT_MAX {
        return Err(PlanError::TextTooLong { len: text.len() });
    }
    let raw: RawPlan = toml::from_str(text).map_err(|error| toml_error(text, &error))?;
    validate(raw)
}

fn validate(raw: RawPlan) -> Result<Plan, PlanError> {
    check_name(&raw.name)
        .map_err(|reason| PlanError::InvalidPlanName { name: raw.name.clone(), reason })?;
    if let Some(description) = &raw.description {
        if description.len() > DESCRIPTION_MAX {
            return Err(PlanError::DescriptionTooLong { len: description.len() });
        }
    }
    if raw.machines.is_empty() {
        return Err(PlanError::NoMachines);
    }
    if raw.machines.len() > MACHINES_MAX {
        return Err(PlanError::TooManyMachines { count: raw.machines.len() });
    }
    if raw.groups.len() > GROUPS_MAX {
        return Err(PlanError::TooManyGroups { count: raw.groups.len() });
    }

    let machine_index = check_machines(&raw.machines)?;

    let mut group_index: HashMap<&str, usize> = HashMap::new();
    // Machine index → index of the group it is in.
    let mut group_of: Vec<Option<usize>> = vec![None; raw.machines.len()];
    let mut groups = Vec::with_capacity(raw.groups.len());
    for (index, group) in raw.groups.iter().enumerate() {
        check_name(&group.name)
            .map_err(|reason| PlanError::InvalidGroupName { name: group.name.clone(), reason })?;
        if group_index.insert(&group.name, index).is_some() {
            return Err(PlanError::DuplicateGroup { name: group.name.clone() });
        }
        if group.machines.is_empty() {
            return Err(PlanError::EmptyGroup { group: group.name.clone() });
        }
        for machine in &group.machines {
            let Some(&at) = machine_index.get(machine.as_str()) else {
                return Err(PlanError::UnknownMachine {
                    group: group.name.clone(),
                    machine: machine.clone(),
                });
            };
            match group_of[at] {
                None => group_of[at] = Some(index),
                Some(other) if other == index => {
                    return Err(PlanError::MachineListedTwice {
                        group: group.name.clone(),
                        machine: machine.clone(),
                    })
                }
                Some(other) => {
                    return Err(PlanError::MachineInTwoGroups {
                        machine: machine.clone(),
                        first: raw.groups[other].name.clone(),
                        second: group.name.clone(),
                    })
                }
            }
        }
        let pre = check_actions(&group.name, ActionList::Pre, &group.pre)?;
        let post = check_actions(&group.name, ActionList::Post, &group.post)?;
        groups.push(Group {
            name: group.name.clone(),
            machines: group.machines.clone(),
            after: group.after.clone(),
            pre,
            post,
        });
    }

    let mut after_indices = Vec::with_capacity(raw.groups.len());
    for group in &raw.groups {
        let mut indices: Vec<usize> = Vec::with_capacity(group.after.len());
        for after in &group.after {
            let Some(&at) = group_index.get(after.as_str()) else {
                return Err(PlanError::UnknownAfter {
                    group: group.name.clone(),
                    after: after.clone(),
                });
            };
            if indices.contains(&at) {
                return Err(PlanError::AfterListedTwice {
                    group: group.name.clone(),
                    after: after.clone(),
                });
            }
            indices.push(at);
        }
        after_indices.push(indices);
    }

    if let Some(at) = group_of.iter().position(Option::is_none) {
        return Err(PlanError::MachineInNoGroup { machine: raw.machines[at].name.clone() });
    }

    let order = topological(&after_indices).map_err(|cycle| PlanError::Cycle {
        groups: cycle.iter().map(|&index| raw.groups[index].name.clone()).collect(),
    })?;

    let machines =
        raw.machines.into_iter().map(|m| Machine { name: m.name, disks: m.disks }).collect();
    Ok(Plan { name: raw.name, description: raw.description, machines, groups, order })
}

/// Checks machine names and disks; returns machine name → index.
fn check_machines(machines: &[RawMachine]) -> Result<HashMap<&str, usize>, PlanError> {
    let mut machine_index: HashMap<&str, usize> = HashMap::new();
    // Disk name → index of the machine that lists it.
    let mut disk_owner: HashMap<&str, usize> = HashMap::new();
    for (index, machine) in machines.iter().enumerate() {
        check_name(&machine.name).map_err(|reason| PlanError::InvalidMachineName {
            name: machine.name.clone(),
            reason,
        })?;
        if machine_index.insert(&machine.name, index).is_some() {
            return Err(PlanError::DuplicateMachine { name: machine.name.clone() });
        }
        if machine.disks.is_empty() {
            return Err(PlanError::NoDisks { machine: machine.name.clone() });
        }
        if machine.disks.len() > DISKS_PER_MACHINE_MAX {
            return Err(PlanError::TooManyDisks {
                machine: machine.name.clone(),
                count: machine.disks.len(),
            });
        }
        for disk in &machine.disks {
            check_name(disk).map_err(|reason| PlanError::InvalidDiskName {
                machine: machine.name.clone(),
                disk: disk.clone(),
                reason,
            })?;
            match disk_owner.insert(disk, index) {
                None => {}
                Some(owner) if owner == index => {
                    return Err(PlanError::DiskListedTwice {
                        machine: machine.name.clone(),
                        disk: disk.clone(),
                    })
                }
                Some(owner) => {
                    return Err(PlanError::DiskInTwoMachines {
                        disk: disk.clone(),
                        first: machines[owner].name.clone(),
                        second: machine.name.clone(),
                    })
                }
            }
        }
    }
    Ok(machine_index)
}

fn check_actions(
    group: &str,
    list: ActionList,
    actions: &[RawAction],
) -> Result<Vec<Action>, PlanError> {
    if actions.len() > ACTIONS_MAX {
        return Err(PlanError::TooManyActions {
            group: group.to_string(),
            list,
            count: actions.len(),
        });
    }
    actions
        .iter()
        .enumerate()
        .map(|(index, action)| {
            check_action(action, ActionAt { group: group.to_string(), list, number: index + 1 })
        })
        .collect()
}

fn check_action(action: &RawAction, at: ActionAt) -> Result<Action, PlanError> {
    match (&action.script, &action.manual) {
        (Some(command), None) => {
            check_action_text(command, "script", &at)?;
            if command.contains('\0') {
                return Err(PlanError::ScriptHasNul { at });
            }
            let timeout_secs = match action.timeout_secs {
                None => TIMEOUT_SECS_DEFAULT,
                Some(value) => match u64::try_from(value) {
                    Ok(secs @ 1..=TIMEOUT_SECS_MAX) => secs,
                    _ => return Err(PlanError::TimeoutOutOfRange { at, value }),
                },
            };
            Ok(Action::Script { command: command.clone(), timeout_secs })
        }
        (None, Some(text)) => {
            check_action_text(text, "manual text", &at)?;
            if action.timeout_secs.is_some() {
                return Err(PlanError::TimeoutOnManual { at });
            }
            Ok(Action::Manual { text: text.clone() })
        }
        _ => Err(PlanError::ActionNeedsOneKind { at }),
    }
}

/// Non-empty (whitespace alone counts as empty: it runs or asks nothing) and bounded.
fn check_action_text(text: &str, kind: &'static str, at: &ActionAt) -> Result<(), PlanError> {
    if text.trim().is_empty() {
        return Err(PlanError::EmptyAction { at: at.clone(), kind });
    }
    if text.len() > ACTION_TEXT_MAX {
        return Err(PlanError::ActionTooLong { at: at.clone(), kind, len: text.len() });
    }
    Ok(())
}

/// The name rule for plans, machines, groups and disks: 1 to `NAME_LEN_MAX` characters of
/// `[A-Za-z0-9._-]`, not starting with `.`. It is the target's disk-name rule
/// (`config::validate::validate_disk_name`): disk names become file names there, and holding
/// every name to it keeps out path separators, hidden files and `.`/`..` wherever a plan,
/// machine or group name ends up (job logs, reports).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    debug_assert_eq!(NAME_LEN_MAX, 64, "the target's disk-name rule allows 64 characters");
    config::validate_disk_name(name)
}

/// Keeps toml's message and position but not its multi-line source snippet, which would
/// repeat the position and break the one-line error.
fn toml_error(text: &str, error: &toml::de::Error) -> PlanError {
    // Errors without a span are rare (whole-document problems, such as a missing top-level
    // key); the start of the text is the honest position for them.
    let offset = error.span().map_or(0, |span| span.start);
    let (line, column) = line_column(text, offset);
    let lines: Vec<&str> =
        error.message().lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    PlanError::Toml { line, column, message: lines.join("; ") }
}

pub(crate) use config::line_column;
