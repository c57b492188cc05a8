//! A validated plan. Its fields are private so that a `Plan` only comes from [`crate::parse`]:
//! holding one means every rule in the crate docs holds, including "the groups form no cycle".

use std::fmt;

use crate::PlanError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) machines: Vec<Machine>,
    pub(crate) groups: Vec<Group>,
    /// Indices into `groups` in run order, computed once by `parse`.
    pub(crate) order: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub name: String,
    /// Disk names as the target knows them, in file order.
    pub disks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    /// Names of declared machines, in file order.
    pub machines: Vec<String>,
    /// Names of the groups that must finish before this one starts.
    pub after: Vec<String>,
    /// Run, in order, before the group's machines start.
    pub pre: Vec<Action>,
    /// Run, in order, after the group's machines have started.
    pub post: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A command line the shell runs, killed after `timeout_secs`.
    Script { command: String, timeout_secs: u64 },
    /// An instruction an operator carries out and confirms.
    Manual { text: String },
}

/// Which action list of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionList {
    Pre,
    Post,
}

impl fmt::Display for ActionList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ActionList::Pre => "pre",
            ActionList::Post => "post",
        })
    }
}

impl Plan {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Machines in file order.
    pub fn machines(&self) -> &[Machine] {
        &self.machines
    }

    /// Groups in file order.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Groups in the order to run them: each after every group in its `after`; among groups
    /// that are ready at the same time, the one written first comes first.
    pub fn order(&self) -> Vec<&Group> {
        self.order.iter().filter_map(|&index| self.groups.get(index)).collect()
    }

    /// Checks that the target knows every disk of the plan (`known` answers for one disk
    /// name). Fails naming the first unknown disk, in file order, and its machine.
    pub fn check_disks(&self, known: impl Fn(&str) -> bool) -> Result<(), PlanError> {
        for machine in &self.machines {
            if let Some(disk) = machine.disks.iter().find(|disk| !known(disk)) {
                return Err(PlanError::UnknownDisk {
                    machine: machine.name.clone(),
                    disk: disk.clone(),
                });
            }
        }
        Ok(())
    }
}
