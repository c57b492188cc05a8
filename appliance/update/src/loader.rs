//! Boot loader entries for the appliance image's A/B slots (systemd-boot, Boot Loader
//! Specification type #1 with automatic boot assessment).
//!
//! One entry file per bootable slot in `loader/entries/` on the ESP, named
//! `siterelay-<bundle version>-<slot>[+LEFT[-DONE]].conf`. systemd-boot sorts entries without
//! a sort key by their name in *descending* version order and moves entries with no tries
//! left to the end, then boots the first: so the newest bundle boots first, and a trial entry
//! (`+LEFT`) whose tries ran out falls behind the previous slot's entry by itself. The loader
//! counts (it renames `+2` to `+1-1` before starting the entry); siterelay only creates,
//! blesses (drops the counter after the health check) and removes entries. This module
//! decides those steps from the boot state; pure, so every transition is unit-tested.

use crate::ab::{BootState, SlotId};

const PREFIX: &str = "siterelay-";
const SUFFIX: &str = ".conf";

/// A parsed entry file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    pub bundle_version: u64,
    pub slot: SlotId,
    /// `Some((left, done))` while the entry is being assessed; `None` once blessed.
    pub tries: Option<(u32, u32)>,
}

impl EntryName {
    pub fn blessed(bundle_version: u64, slot: SlotId) -> EntryName {
        EntryName { bundle_version, slot, tries: None }
    }

    /// `None` for names that are not siterelay entries (left alone).
    pub fn parse(file_name: &str) -> Option<EntryName> {
        let stem = file_name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
        let (base, tries) = match stem.split_once('+') {
            Some((base, counter)) => {
                let (left, done) = match counter.split_once('-') {
                    Some((left, done)) => (left.parse().ok()?, done.parse().ok()?),
                    None => (counter.parse().ok()?, 0),
                };
                (base, Some((left, done)))
            }
            None => (stem, None),
        };
        let (version, slot) = base.rsplit_once('-')?;
        let slot = SlotId::parse(slot)?;
        let bundle_version: u64 = version.parse().ok()?;
        if version != bundle_version.to_string() {
            return None; // "007": not a name this module writes
        }
        Some(EntryName { bundle_version, slot, tries })
    }

    pub fn file_name(&self) -> String {
        let counter = match self.tries {
            None => String::new(),
            Some((left, 0)) => format!("+{left}"),
            Some((left, done)) => format!("+{left}-{done}"),
        };
        format!("{PREFIX}{}-{}{counter}{SUFFIX}", self.bundle_version, self.slot.as_str())
    }

    /// The loader gave up on it: no tries left.
    pub fn exhausted(&self) -> bool {
        matches!(self.tries, Some((0, _)))
    }
}

/// The text of an entry: the slot's kernel and initrd on the ESP, and the command line that
/// tells the initramfs which root partition to mount.
pub fn entry_text(slot: SlotId, version: &str, cmdline: &str) -> String {
    let s = slot.as_str();
    format!(
        "title siterelay {version} (slot {s})\nversion {version}\nlinux /EFI/siterelay/{s}/vmlinuz\n\
         initrd /EFI/siterelay/{s}/initrd.img\noptions {cmdline} siterelay.slot={s}\n"
    )
}

/// One change to the entries directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryChange {
    /// Write a new entry for `slot` running `version`.
    Create {
        name: String,
        slot: SlotId,
        version: String,
    },
    /// Passed its health check: drop the counter.
    Bless {
        from: String,
        to: String,
    },
    Remove {
        name: String,
    },
}

/// The changes that make `existing` entry files match `state`:
/// - the active slot has a blessed entry with the installed bundle version;
/// - a pending trial has an entry with `tries` boots (an existing one keeps its count: the
///   loader owns it);
/// - an entry of the inactive slot newer than the installed bundle is a trial that failed or
///   was rejected, and goes; an older one is the previous good installation, kept as a
///   fallback until the slot is overwritten (`remove_slot_entries` first).
pub fn plan(state: &BootState, existing: &[String], tries: u32) -> Vec<EntryChange> {
    let entries: Vec<(String, EntryName)> = existing
        .iter()
        .filter_map(|name| EntryName::parse(name).map(|entry| (name.clone(), entry)))
        .collect();
    let mut changes = Vec::new();
    let active = EntryName::blessed(state.installed_bundle_version, state.active);
    let mut active_present = false;
    for (name, entry) in &entries {
        let is_trial = state.trial.as_ref().is_some_and(|trial| {
            trial.slot == entry.slot && trial.bundle_version == entry.bundle_version
        });
        if entry.slot == state.active {
            if entry.bundle_version == active.bundle_version && !active_present {
                active_present = true;
                if entry.tries.is_some() {
                    changes.push(EntryChange::Bless { from: name.clone(), to: active.file_name() });
                }
            } else {
                changes.push(EntryChange::Remove { name: name.clone() });
            }
        } else if is_trial {
            continue;
        } else if entry.bundle_version > state.installed_bundle_version || entry.tries.is_some() {
            changes.push(EntryChange::Remove { name: name.clone() });
        }
    }
    if !active_present {
        changes.push(EntryChange::Create {
            name: active.file_name(),
            slot: state.active,
            version: state.active_version.clone(),
        });
    }
    if let Some(trial) = &state.trial {
        let present = entries.iter().any(|(_, entry)| {
            entry.slot == trial.slot && entry.bundle_version == trial.bundle_version
        });
        if !present {
            let entry = EntryName {
                bundle_version: trial.bundle_version,
                slot: trial.slot,
                tries: Some((tries.max(1), 0)),
            };
            changes.push(EntryChange::Create {
                name: entry.file_name(),
                slot: trial.slot,
                version: trial.version.clone(),
            });
        }
    }
    changes
}

/// Entries that boot `slot`: removed before the slot is overwritten, so that no boot can
/// start a half-written slot.
pub fn slot_entries(existing: &[String], slot: SlotId) -> Vec<String> {
    existing
        .iter()
        .filter(|name| EntryName::parse(name).is_some_and(|entry| entry.slot == slot))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn names_round_trip_and_foreign_names_are_ignored() {
        for name in ["siterelay-0-a.conf", "siterelay-7-b+2.conf", "siterelay-12-a+0-3.conf"] {
            let entry = EntryName::parse(name).unwrap();
            assert_eq!(entry.file_name(), name);
        }
        assert!(EntryName::parse("siterelay-12-a+0-3.conf").unwrap().exhausted());
        for foreign in
            ["debian.conf", "siterelay-x-a.conf", "siterelay-1-c.conf", "siterelay-01-a.conf"]
        {
            assert_eq!(EntryName::parse(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn a_fresh_installation_gets_its_active_entry() {
        let state = BootState::new("0.1.0");
        assert_eq!(
            plan(&state, &[], 2),
            vec![EntryChange::Create {
                name: "siterelay-0-a.conf".into(),
                slot: SlotId::A,
                version: "0.1.0".into()
            }]
        );
        assert_eq!(plan(&state, &names(&["siterelay-0-a.conf", "other.conf"]), 2), vec![]);
    }

    #[test]
    fn a_trial_gets_a_counted_entry_that_sorts_first_and_is_blessed_when_confirmed() {
        let state = BootState::new("0.1.0").schedule_trial("0.2.0", 7).unwrap();
        let existing = names(&["siterelay-0-a.conf"]);
        assert_eq!(
            plan(&state, &existing, 2),
            vec![EntryChange::Create {
                name: "siterelay-7-b+2.conf".into(),
                slot: SlotId::B,
                version: "0.2.0".into()
            }]
        );
        // The loader counted one boot; the count is its own.
        let booted = names(&["siterelay-0-a.conf", "siterelay-7-b+1-1.conf"]);
        assert_eq!(plan(&state, &booted, 2), vec![]);
        let confirmed = state.booted(SlotId::B).1.confirm().unwrap();
        assert_eq!(
            plan(&confirmed, &booted, 2),
            vec![EntryChange::Bless {
                from: "siterelay-7-b+1-1.conf".into(),
                to: "siterelay-7-b.conf".into()
            }]
        );
    }

    #[test]
    fn a_failed_trial_entry_goes_and_the_previous_slot_stays_as_a_fallback() {
        let state = BootState::new("0.1.0").schedule_trial("0.2.0", 7).unwrap();
        let rejected = state.reject("health check failed").unwrap();
        let existing = names(&["siterelay-0-a.conf", "siterelay-7-b+0-2.conf"]);
        assert_eq!(
            plan(&rejected, &existing, 2),
            vec![EntryChange::Remove { name: "siterelay-7-b+0-2.conf".into() }]
        );
        // After a confirmed update to b, a's older entry is the fallback and stays.
        let confirmed = state.booted(SlotId::B).1.confirm().unwrap();
        assert_eq!(plan(&confirmed, &names(&["siterelay-0-a.conf", "siterelay-7-b.conf"]), 2), []);
        assert_eq!(
            slot_entries(&names(&["siterelay-0-a.conf", "siterelay-7-b.conf"]), SlotId::A),
            names(&["siterelay-0-a.conf"])
        );
    }
}
