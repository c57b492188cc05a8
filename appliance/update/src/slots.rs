//! Where the slots and the boot state live. `DirSlots`: `ROOT/slot-a/`, `ROOT/slot-b/` and
//! `ROOT/boot-state.json`. A slot is rewritten as a whole: into `slot-X.new`, every file
//! synced, then renamed over `slot-X`; the boot state is replaced atomically. So a crash
//! leaves either the old or the new content of a slot, and the state names a slot only
//! after it was written completely.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::ab::{BootState, SlotId};

pub trait Slots {
    fn load_state(&self) -> io::Result<Option<BootState>>;
    /// Durable when it returns.
    fn save_state(&self, state: &BootState) -> io::Result<()>;
    /// Replaces the whole content of `slot`, durably.
    fn write_slot(&self, slot: SlotId, files: &[(&str, &[u8])]) -> io::Result<()>;
    fn read_slot_file(&self, slot: SlotId, name: &str) -> io::Result<Vec<u8>>;
    /// A path a process can execute or read from (the slot's file).
    fn slot_file(&self, slot: SlotId, name: &str) -> PathBuf;
}

#[derive(Debug, Clone)]
pub struct DirSlots {
    root: PathBuf,
}

impl DirSlots {
    pub fn new(root: &Path) -> DirSlots {
        DirSlots { root: root.to_path_buf() }
    }

    fn slot_dir(&self, slot: SlotId) -> PathBuf {
        self.root.join(format!("slot-{}", slot.as_str()))
    }

    fn state_path(&self) -> PathBuf {
        self.root.join("boot-state.json")
    }
}

/// A slot file's name: one plain path component.
fn check_name(name: &str) -> io::Result<()> {
    let plain =
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
    if plain {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad slot file name {name:?}")))
    }
}

impl Slots for DirSlots {
    fn load_state(&self) -> io::Result<Option<BootState>> {
        match fs::read_to_string(self.state_path()) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn save_state(&self, state: &BootState) -> io::Result<()> {
        fs::create_dir_all(&self.root)?;
        let text = serde_json::to_string_pretty(state).expect("state serializes");
        fsio::write_atomic(&self.state_path(), text.as_bytes())
    }

    fn write_slot(&self, slot: SlotId, files: &[(&str, &[u8])]) -> io::Result<()> {
        for (name, _) in files {
            check_name(name)?;
        }
        let staging = self.root.join(format!("slot-{}.new", slot.as_str()));
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        fs::create_dir_all(&staging)?;
        for (name, bytes) in files {
            let mut file = fs::File::create(staging.join(name))?;
            file.write_all(bytes)?;
            file.sync_all()?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(fs::Permissions::from_mode(0o755))?;
            }
        }
        fsio::fsync_dir(&staging)?;
        let target = self.slot_dir(slot);
        if target.exists() {
            fs::remove_dir_all(&target)?;
        }
        fs::rename(&staging, &target)?;
        fsio::fsync_dir(&self.root)
    }

    fn read_slot_file(&self, slot: SlotId, name: &str) -> io::Result<Vec<u8>> {
        check_name(name)?;
        fs::read(self.slot_dir(slot).join(name))
    }

    fn slot_file(&self, slot: SlotId, name: &str) -> PathBuf {
        self.slot_dir(slot).join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_replaced_whole_and_the_state_round_trips() {
        let root = std::env::temp_dir().join(format!("update-slots-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let slots = DirSlots::new(&root);
        assert_eq!(slots.load_state().unwrap(), None);
        slots.write_slot(SlotId::B, &[("siterelay", b"v1"), ("extra", b"x")]).unwrap();
        slots.write_slot(SlotId::B, &[("siterelay", b"v2")]).unwrap();
        assert_eq!(slots.read_slot_file(SlotId::B, "siterelay").unwrap(), b"v2");
        assert!(slots.read_slot_file(SlotId::B, "extra").is_err(), "old files are gone");
        assert!(slots.write_slot(SlotId::A, &[("../evil", b"x")]).is_err());
        let state = BootState::new("0.1.0").schedule_trial("0.2.0", 3).unwrap();
        slots.save_state(&state).unwrap();
        assert_eq!(slots.load_state().unwrap(), Some(state));
        fs::remove_dir_all(&root).unwrap();
    }
}
