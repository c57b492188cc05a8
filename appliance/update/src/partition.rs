//! `PartitionSlots`: the appliance image's slots. Slot A and B are GPT partitions holding a
//! read-only root file system image (`root.img`); each slot's kernel and initrd sit on the
//! ESP under `EFI/siterelay/<slot>/`, and a systemd-boot entry per bootable slot selects one
//! (`loader` module). The boot state and each slot's manifest live in a directory on the
//! data partition, like `DirSlots`.
//!
//! Ordering, so that no boot ever starts a half-written slot: the slot's loader entries go
//! first (durably), then the partition and kernel files are written and synced, and only
//! `save_state` with the trial creates the trial's entry.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ab::{BootState, SlotId};
use crate::loader::{self, EntryChange};
use crate::slots::{DirSlots, Slots};

/// The root file system image of a slot, written raw to its partition.
pub const ROOT_IMAGE: &str = "root.img";
/// The kernel and initrd the slot's entry starts, copied to the ESP.
pub const KERNEL: &str = "vmlinuz";
pub const INITRD: &str = "initrd.img";
/// Recorded length of the root image (a partition is larger than what it holds).
const ROOT_IMAGE_SIZE: &str = "root.img.size";

/// `layout.json` in the update state directory: where the slots are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Where the ESP is mounted.
    pub esp: PathBuf,
    /// Slot A's and B's partition: a GPT partition name (found in /sys/class/block) or a path.
    pub partition_a: String,
    pub partition_b: String,
    /// Boots a new slot gets before the loader falls back (systemd-boot's `+N`).
    pub boot_tries: u32,
    /// Kernel command line of every entry (the slot is appended).
    pub cmdline: String,
}

#[derive(Debug)]
pub struct PartitionSlots {
    layout: Layout,
    meta: DirSlots,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl PartitionSlots {
    /// `meta`: the directory holding the boot state and the slots' manifests.
    pub fn new(layout: Layout, meta: &Path) -> PartitionSlots {
        PartitionSlots { layout, meta: DirSlots::new(meta) }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn entries_dir(&self) -> PathBuf {
        self.layout.esp.join("loader/entries")
    }

    fn kernel_dir(&self, slot: SlotId) -> PathBuf {
        self.layout.esp.join("EFI/siterelay").join(slot.as_str())
    }

    /// The slot's partition as a path.
    pub fn partition(&self, slot: SlotId) -> io::Result<PathBuf> {
        let spec = match slot {
            SlotId::A => &self.layout.partition_a,
            SlotId::B => &self.layout.partition_b,
        };
        if spec.starts_with('/') {
            return Ok(PathBuf::from(spec));
        }
        find_partition(Path::new("/sys/class/block"), spec)?
            .ok_or_else(|| invalid(format!("no partition named {spec:?} on this machine")))
    }

    fn entry_names(&self) -> io::Result<Vec<String>> {
        match fs::read_dir(self.entries_dir()) {
            Ok(dir) => dir
                .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
                .collect(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }

    /// Makes the loader entries match `state`.
    fn sync_entries(&self, state: &BootState) -> io::Result<()> {
        let dir = self.entries_dir();
        fs::create_dir_all(&dir)?;
        let changes = loader::plan(state, &self.entry_names()?, self.layout.boot_tries);
        if changes.is_empty() {
            return Ok(());
        }
        for change in changes {
            match change {
                EntryChange::Create { name, slot, version } => {
                    let text = loader::entry_text(slot, &version, &self.layout.cmdline);
                    fsio::write_atomic(&dir.join(name), text.as_bytes())?;
                }
                EntryChange::Bless { from, to } => fs::rename(dir.join(from), dir.join(to))?,
                EntryChange::Remove { name } => fs::remove_file(dir.join(name))?,
            }
        }
        fsio::fsync_dir(&dir)
    }

    /// Names of the loader entries, for `update status`.
    pub fn entries(&self) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = self
            .entry_names()?
            .into_iter()
            .filter(|name| loader::EntryName::parse(name).is_some())
            .collect();
        names.sort();
        Ok(names)
    }

    fn write_root_image(&self, slot: SlotId, image: &[u8]) -> io::Result<()> {
        let path = self.partition(slot)?;
        let mut device = OpenOptions::new().write(true).open(&path)?;
        let capacity = device.seek(SeekFrom::End(0))?;
        if image.len() as u64 > capacity {
            return Err(invalid(format!(
                "{ROOT_IMAGE} is {} bytes, larger than slot {}'s partition {} ({capacity} bytes)",
                image.len(),
                slot.as_str(),
                path.display()
            )));
        }
        device.seek(SeekFrom::Start(0))?;
        device.write_all(image)?;
        device.sync_all()
    }

    fn read_root_image(&self, slot: SlotId) -> io::Result<Vec<u8>> {
        let size = String::from_utf8_lossy(&self.meta.read_slot_file(slot, ROOT_IMAGE_SIZE)?)
            .trim()
            .parse::<u64>()
            .map_err(|error| invalid(format!("{ROOT_IMAGE_SIZE}: {error}")))?;
        let mut image = Vec::new();
        File::open(self.partition(slot)?)?.take(size).read_to_end(&mut image)?;
        if image.len() as u64 != size {
            return Err(invalid(format!(
                "slot {}'s partition is shorter than its image",
                slot.as_str()
            )));
        }
        Ok(image)
    }
}

/// The device node of the GPT partition named `name`, from the kernel's uevent files.
pub fn find_partition(sys_class_block: &Path, name: &str) -> io::Result<Option<PathBuf>> {
    for entry in fs::read_dir(sys_class_block)? {
        let uevent = match fs::read_to_string(entry?.path().join("uevent")) {
            Ok(text) => text,
            Err(_) => continue,
        };
        let field =
            |key: &str| uevent.lines().find_map(|line| line.strip_prefix(key)).map(str::to_string);
        if field("PARTNAME=").as_deref() == Some(name) {
            if let Some(device) = field("DEVNAME=") {
                return Ok(Some(Path::new("/dev").join(device)));
            }
        }
    }
    Ok(None)
}

impl Slots for PartitionSlots {
    fn load_state(&self) -> io::Result<Option<BootState>> {
        self.meta.load_state()
    }

    fn save_state(&self, state: &BootState) -> io::Result<()> {
        self.meta.save_state(state)?;
        self.sync_entries(state)
    }

    fn write_slot(&self, slot: SlotId, files: &[(&str, &[u8])]) -> io::Result<()> {
        let find = |name: &str| files.iter().find(|(file, _)| *file == name).map(|(_, b)| *b);
        let (Some(image), Some(kernel), Some(initrd)) =
            (find(ROOT_IMAGE), find(KERNEL), find(INITRD))
        else {
            return Err(invalid(format!(
                "an image update needs the payloads {ROOT_IMAGE}, {KERNEL} and {INITRD}"
            )));
        };
        // Nothing may boot this slot while it is rewritten.
        let dir = self.entries_dir();
        for name in loader::slot_entries(&self.entry_names()?, slot) {
            fs::remove_file(dir.join(name))?;
        }
        if dir.exists() {
            fsio::fsync_dir(&dir)?;
        }
        self.write_root_image(slot, image)?;
        let kernel_dir = self.kernel_dir(slot);
        fs::create_dir_all(&kernel_dir)?;
        fsio::write_atomic(&kernel_dir.join(KERNEL), kernel)?;
        fsio::write_atomic(&kernel_dir.join(INITRD), initrd)?;
        let size = image.len().to_string();
        let mut rest: Vec<(&str, &[u8])> = files
            .iter()
            .filter(|(name, _)| ![ROOT_IMAGE, KERNEL, INITRD].contains(name))
            .copied()
            .collect();
        rest.push((ROOT_IMAGE_SIZE, size.as_bytes()));
        self.meta.write_slot(slot, &rest)
    }

    fn read_slot_file(&self, slot: SlotId, name: &str) -> io::Result<Vec<u8>> {
        match name {
            ROOT_IMAGE => self.read_root_image(slot),
            KERNEL | INITRD => fs::read(self.kernel_dir(slot).join(name)),
            _ => self.meta.read_slot_file(slot, name),
        }
    }

    fn slot_file(&self, slot: SlotId, name: &str) -> PathBuf {
        self.meta.slot_file(slot, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> (PathBuf, PartitionSlots) {
        let root = std::env::temp_dir().join(format!("update-parts-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("esp")).unwrap();
        for part in ["part-a", "part-b"] {
            File::create(root.join(part)).unwrap().set_len(1 << 16).unwrap();
        }
        let layout = Layout {
            esp: root.join("esp"),
            partition_a: root.join("part-a").display().to_string(),
            partition_b: root.join("part-b").display().to_string(),
            boot_tries: 2,
            cmdline: "console=ttyS0".into(),
        };
        let slots = PartitionSlots::new(layout, &root.join("meta"));
        (root, slots)
    }

    #[test]
    fn an_update_is_written_read_back_and_gets_its_entries_in_order() {
        let (root, slots) = fixture("update");
        let state = BootState::new("0.1.0");
        slots.save_state(&state).unwrap();
        assert_eq!(slots.entries().unwrap(), ["siterelay-0-a.conf"]);
        let image = vec![7u8; 40_000];
        slots
            .write_slot(
                SlotId::B,
                &[(ROOT_IMAGE, &image), (KERNEL, b"k"), (INITRD, b"i"), ("manifest.json", b"{}")],
            )
            .unwrap();
        assert_eq!(slots.read_slot_file(SlotId::B, ROOT_IMAGE).unwrap(), image);
        assert_eq!(slots.read_slot_file(SlotId::B, KERNEL).unwrap(), b"k");
        assert_eq!(slots.read_slot_file(SlotId::B, "manifest.json").unwrap(), b"{}");
        let trial = state.schedule_trial("0.2.0", 3).unwrap();
        slots.save_state(&trial).unwrap();
        assert_eq!(slots.entries().unwrap(), ["siterelay-0-a.conf", "siterelay-3-b+2.conf"]);
        let entry =
            fs::read_to_string(root.join("esp/loader/entries/siterelay-3-b+2.conf")).unwrap();
        assert_eq!(
            entry,
            "title siterelay 0.2.0 (slot b)\nversion 0.2.0\nlinux /EFI/siterelay/b/vmlinuz\n\
             initrd /EFI/siterelay/b/initrd.img\noptions console=ttyS0 siterelay.slot=b\n"
        );
        let confirmed = trial.booted(SlotId::B).1.confirm().unwrap();
        slots.save_state(&confirmed).unwrap();
        assert_eq!(slots.entries().unwrap(), ["siterelay-0-a.conf", "siterelay-3-b.conf"]);
        // The next update goes to a: its old entry goes before its partition is touched.
        slots
            .write_slot(SlotId::A, &[(ROOT_IMAGE, &image), (KERNEL, b"k"), (INITRD, b"i")])
            .unwrap();
        assert_eq!(slots.entries().unwrap(), ["siterelay-3-b.conf"]);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refusals_name_the_problem() {
        let (root, slots) = fixture("refusals");
        let too_big = vec![0u8; (1 << 16) + 1];
        let error = slots
            .write_slot(SlotId::B, &[(ROOT_IMAGE, &too_big), (KERNEL, b"k"), (INITRD, b"i")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("larger than slot b's partition"), "{error}");
        let error = slots.write_slot(SlotId::B, &[(ROOT_IMAGE, b"x")]).unwrap_err().to_string();
        assert_eq!(error, "an image update needs the payloads root.img, vmlinuz and initrd.img");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn partitions_are_found_by_their_gpt_name() {
        let root = std::env::temp_dir().join(format!("update-sys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for (dev, name) in [("vda", None), ("vda2", Some("root-a")), ("vda3", Some("root-b"))] {
            fs::create_dir_all(root.join(dev)).unwrap();
            let mut uevent = format!("MAJOR=254\nDEVNAME={dev}\n");
            if let Some(name) = name {
                uevent += &format!("DEVTYPE=partition\nPARTNAME={name}\n");
            }
            fs::write(root.join(dev).join("uevent"), uevent).unwrap();
        }
        assert_eq!(find_partition(&root, "root-b").unwrap(), Some(PathBuf::from("/dev/vda3")));
        assert_eq!(find_partition(&root, "data").unwrap(), None);
        fs::remove_dir_all(&root).unwrap();
    }
}
