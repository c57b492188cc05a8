//! Self-update of the appliance (design.md §6): A/B slots with an automatic rollback.
//! `ab` holds the transitions (pure, unit-tested); `slots` keeps the slots and the boot
//! state, as directories (`DirSlots`) and as partitions with systemd-boot entries in the
//! appliance image (`PartitionSlots`, `loader`), behind one trait.
//! What may be installed (signatures, the rollup matrix and its N-4 rule) is decided before:
//! crates `bundle` and `rollup`.

#![forbid(unsafe_code)]

pub mod ab;
pub mod loader;
pub mod partition;
pub mod slots;

pub use ab::{AbError, BootState, SlotId, Start, Trial};
pub use partition::{Layout, PartitionSlots};
pub use slots::{DirSlots, Slots};
