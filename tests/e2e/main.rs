//! End-to-end tests of the real `siterelay` binary: every role runs as its own process on
//! loopback, driven only through the command line, sockets and files.
//!
//! Registered as the `e2e` test target of the `siterelay` package (see its Cargo.toml), so
//! `cargo nextest run --workspace` runs it. Each test uses its own temp dir and ports; a
//! failing test keeps its dir (path printed) with the role logs. Environment:
//! - `SITERELAY_CRASH_TRIALS`, `SITERELAY_CRASH_SEED`: see `crash.rs`.
//! - `SITERELAY_E2E_TMP`: where the temp dirs go (default: the system temp dir).
//! - `SITERELAY_E2E_KEEP`: keep temp dirs of passing tests too.
//! - Tests under `boot::` build the appliance image and boot it in QEMU (minutes);
//!   `scripts/test` runs them after the rest.
//! - `CI`: when set, a missing external tool (cmp, mkfs.ext4, ...) fails instead of skipping.

mod appliance;
mod badinput;
mod boot;
mod concurrent;
mod config;
mod crash;
mod failback;
mod generation;
mod groups;
mod harness;
mod hwtest;
mod image;
mod limits;
mod nbd_badinput;
mod plans;
mod points;
mod prune_crash;
mod security;
mod sync;
mod tap;
mod update;
mod vmware;
