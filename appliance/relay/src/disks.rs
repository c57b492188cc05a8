//! The relay's view of every disk it has seen: identity, sequence positions, ownership by an
//! agent connection, and counters for status.

use std::collections::HashMap;

use wire::{DiskStateKind, Generation};

#[derive(Debug)]
pub(crate) struct Disk {
    pub(crate) name: String,
    pub(crate) generation: Generation,
    pub(crate) size_bytes: u64,
    /// Highest sequence accepted into the cache (maybe not durable yet).
    pub(crate) received_seq: u64,
    /// Highest sequence durable in the cache: what agents are acked.
    pub(crate) cache_seq: u64,
    /// Highest sequence the target acked as durable.
    pub(crate) replicated_seq: u64,
    /// Owning agent connection and the disk's id on it.
    pub(crate) agent: Option<(u64, u32)>,
    pub(crate) reported_state: Option<(DiskStateKind, u64, u64)>,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_stored: u64,
    pub(crate) bytes_forwarded: u64,
    /// An ack to the agent is due.
    pub(crate) ack_due: bool,
    /// This generation took over the disk from another (`agent --take-over`): its records
    /// say so, so the target adopts it too.
    pub(crate) take_over: bool,
    /// The relay knows where the disk's sequence stands (from cache.state, its records, or
    /// the target). A disk first seen in an agent's Hello has no position until the target
    /// reports one: after a lost cache, the target may already hold a long history, and
    /// numbering from 1 again would make it drop new frames as retransmissions.
    pub(crate) position_known: bool,
}

impl Disk {
    /// The identity the relay stores with each record and attaches at the target.
    pub(crate) fn info(&self) -> wire::DiskInfo<'_> {
        wire::DiskInfo {
            name: &self.name,
            generation: self.generation,
            size_bytes: self.size_bytes,
            take_over: self.take_over,
            fresh: false,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Disks {
    pub(crate) list: Vec<Disk>,
    by_name: HashMap<String, usize>,
}

impl Disks {
    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn insert(
        &mut self,
        name: &str,
        generation: Generation,
        size_bytes: u64,
        seq: u64,
    ) -> usize {
        if let Some(index) = self.find(name) {
            return index;
        }
        self.list.push(Disk {
            name: name.to_string(),
            generation,
            size_bytes,
            received_seq: seq,
            cache_seq: seq,
            replicated_seq: seq,
            agent: None,
            reported_state: None,
            take_over: false,
            position_known: true,
            bytes_received: 0,
            bytes_stored: 0,
            bytes_forwarded: 0,
            ack_due: false,
        });
        self.by_name.insert(name.to_string(), self.list.len() - 1);
        self.list.len() - 1
    }
}
