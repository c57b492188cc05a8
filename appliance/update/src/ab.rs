//! A/B installation (design.md §6): two slots, one active. An update is written to the
//! inactive slot, verified there, and marked to be *tried* on the next start; only a passed
//! health check makes it active. A start that finds a trial already started and never
//! confirmed (the new version crashed or hung) goes back to the old slot by itself. The
//! boot state is one small file replaced atomically: that replace is the only commit point,
//! so a crash anywhere else leaves the old slot active and the update re-appliable.
//!
//! Pure transitions here; `DirSlots` keeps slots as directories (tests, development), and
//! the appliance image keeps them as partitions behind the same trait.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotId {
    A,
    B,
}

impl SlotId {
    pub fn other(self) -> SlotId {
        match self {
            SlotId::A => SlotId::B,
            SlotId::B => SlotId::A,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SlotId::A => "a",
            SlotId::B => "b",
        }
    }

    /// The slot `as_str` names.
    pub fn parse(text: &str) -> Option<SlotId> {
        match text {
            "a" => Some(SlotId::A),
            "b" => Some(SlotId::B),
            _ => None,
        }
    }
}

/// An update written to the inactive slot and waiting for its first start and health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub slot: SlotId,
    /// The version the slot holds.
    pub version: String,
    pub bundle_version: u64,
    /// Starts left before the trial counts as failed: 1 means "boot once".
    pub starts_left: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    pub active: SlotId,
    pub active_version: String,
    /// The highest bundle version ever installed: older bundles are refused (rollback).
    pub installed_bundle_version: u64,
    pub trial: Option<Trial>,
    /// What happened to the last trial, for `update status`.
    #[serde(default)]
    pub last_outcome: Option<String>,
}

/// What a start runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The active slot, as usual.
    Active(SlotId),
    /// The trial slot, whose health check then decides.
    Trial(SlotId),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbError {
    #[error("an update to {version} is already waiting for its first start (slot {slot}); start it or cancel it first")]
    TrialPending { version: String, slot: &'static str },
    #[error("bundle version {offered} is not newer than the installed bundle version {installed}")]
    NotNewer { offered: u64, installed: u64 },
    #[error("no update is being tried")]
    NoTrial,
}

impl BootState {
    pub fn new(version: &str) -> BootState {
        BootState {
            active: SlotId::A,
            active_version: version.to_string(),
            installed_bundle_version: 0,
            trial: None,
            last_outcome: None,
        }
    }

    /// The slot an update is written to.
    pub fn inactive(&self) -> SlotId {
        self.active.other()
    }

    /// Checks an update may be written now (before touching the inactive slot).
    pub fn may_install(&self, bundle_version: u64) -> Result<SlotId, AbError> {
        if let Some(trial) = &self.trial {
            return Err(AbError::TrialPending {
                version: trial.version.clone(),
                slot: trial.slot.as_str(),
            });
        }
        if bundle_version <= self.installed_bundle_version {
            return Err(AbError::NotNewer {
                offered: bundle_version,
                installed: self.installed_bundle_version,
            });
        }
        Ok(self.inactive())
    }

    /// After the inactive slot was written and verified: try it on the next start.
    pub fn schedule_trial(&self, version: &str, bundle_version: u64) -> Result<BootState, AbError> {
        let slot = self.may_install(bundle_version)?;
        let mut next = self.clone();
        next.trial =
            Some(Trial { slot, version: version.to_string(), bundle_version, starts_left: 1 });
        next.last_outcome = None;
        Ok(next)
    }

    /// A start: the trial slot if it still has a start left (using it up), else the active
    /// slot (a trial that used its start without being confirmed failed: it is dropped).
    pub fn start(&self) -> (Start, BootState) {
        let mut next = self.clone();
        match &mut next.trial {
            Some(trial) if trial.starts_left > 0 => {
                trial.starts_left -= 1;
                let slot = trial.slot;
                (Start::Trial(slot), next)
            }
            Some(trial) => {
                next.last_outcome = Some(format!(
                    "update to {} rolled back: it started but never passed its health check",
                    trial.version
                ));
                next.trial = None;
                (Start::Active(next.active), next)
            }
            None => (Start::Active(next.active), next),
        }
    }

    /// A start where the boot loader, not this state, chose the slot (the appliance image:
    /// systemd-boot counts the trial's boots). Booted into the trial slot: the health check
    /// decides. Booted elsewhere while a trial waits: the loader gave up on it (it crashed,
    /// hung or was rejected), so it is dropped.
    pub fn booted(&self, slot: SlotId) -> (Start, BootState) {
        let mut next = self.clone();
        match &self.trial {
            Some(trial) if trial.slot == slot => (Start::Trial(slot), next),
            Some(trial) => {
                next.last_outcome = Some(format!(
                    "update to {} rolled back: slot {} did not pass its health check within its \
                     boot attempts",
                    trial.version,
                    trial.slot.as_str()
                ));
                next.trial = None;
                (Start::Active(slot), next)
            }
            None => (Start::Active(slot), next),
        }
    }

    /// The trial passed its health check: it becomes the active slot.
    pub fn confirm(&self) -> Result<BootState, AbError> {
        let trial = self.trial.clone().ok_or(AbError::NoTrial)?;
        let mut next = self.clone();
        next.active = trial.slot;
        next.active_version = trial.version.clone();
        next.installed_bundle_version = trial.bundle_version;
        next.trial = None;
        next.last_outcome = Some(format!("updated to {}", trial.version));
        Ok(next)
    }

    /// The trial failed its health check: back to the active slot.
    pub fn reject(&self, reason: &str) -> Result<BootState, AbError> {
        let trial = self.trial.clone().ok_or(AbError::NoTrial)?;
        let mut next = self.clone();
        next.trial = None;
        next.last_outcome = Some(format!("update to {} rolled back: {reason}", trial.version));
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmed_trial_becomes_active() {
        let state = BootState::new("0.1.0");
        let state = state.schedule_trial("0.2.0", 7).unwrap();
        let (start, state) = state.start();
        assert_eq!(start, Start::Trial(SlotId::B));
        let state = state.confirm().unwrap();
        assert_eq!((state.active, state.active_version.as_str()), (SlotId::B, "0.2.0"));
        assert_eq!(state.installed_bundle_version, 7);
        assert_eq!(state.start().0, Start::Active(SlotId::B));
        assert_eq!(state.inactive(), SlotId::A);
    }

    #[test]
    fn a_trial_that_never_confirms_rolls_back_on_the_next_start() {
        let state = BootState::new("0.1.0").schedule_trial("0.2.0", 7).unwrap();
        let (_, state) = state.start();
        // The new version crashed before its health check: the next start is the old slot.
        let (start, state) = state.start();
        assert_eq!(start, Start::Active(SlotId::A));
        assert_eq!(state.trial, None);
        assert_eq!(state.active_version, "0.1.0");
        assert!(state.last_outcome.unwrap().contains("rolled back"));
    }

    #[test]
    fn a_failed_health_check_rolls_back_and_the_bundle_may_be_tried_again() {
        let state = BootState::new("0.1.0").schedule_trial("0.2.0", 7).unwrap();
        let (_, state) = state.start();
        let state = state.reject("self check failed").unwrap();
        assert_eq!(state.start().0, Start::Active(SlotId::A));
        assert_eq!(
            state.last_outcome.as_deref(),
            Some("update to 0.2.0 rolled back: self check failed")
        );
        assert!(state.schedule_trial("0.2.0", 7).is_ok(), "a rolled-back bundle is re-appliable");
    }

    #[test]
    fn a_loader_fallback_drops_the_trial() {
        let state = BootState::new("0.1.0").schedule_trial("0.2.0", 7).unwrap();
        assert_eq!(state.booted(SlotId::B), (Start::Trial(SlotId::B), state.clone()));
        let (start, next) = state.booted(SlotId::A);
        assert_eq!(start, Start::Active(SlotId::A));
        assert_eq!(next.trial, None);
        assert_eq!(
            next.last_outcome.as_deref(),
            Some(
                "update to 0.2.0 rolled back: slot b did not pass its health check within its \
                 boot attempts"
            )
        );
        assert!(next.schedule_trial("0.2.0", 7).is_ok());
    }

    #[test]
    fn refusals_name_the_reason() {
        let state = BootState::new("0.1.0").schedule_trial("0.2.0", 7).unwrap();
        assert_eq!(
            state.schedule_trial("0.3.0", 8).unwrap_err().to_string(),
            "an update to 0.2.0 is already waiting for its first start (slot b); start it or \
             cancel it first"
        );
        let (_, state) = state.start();
        let state = state.confirm().unwrap();
        assert_eq!(
            state.schedule_trial("0.1.9", 7).unwrap_err().to_string(),
            "bundle version 7 is not newer than the installed bundle version 7"
        );
        assert_eq!(state.confirm().unwrap_err(), AbError::NoTrial);
    }
}
