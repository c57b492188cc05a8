//! What the write tap hands to replication, shared by the NBD connection threads and the
//! replicator thread.
//!
//! A write is applied to the source and queued under the disk's lock, so the queue order is
//! the order the source applied the writes (design.md invariant 3), also for overlapping
//! writes from several connections. The tap never waits for the relay (invariant 1): when the
//! queue is at its byte bound, or the relay link is down, the write's grains are marked in the
//! dirty bitmap instead, and the replicator reads them back from the source later. The bitmap
//! is written to disk before a FLUSH is answered.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wire::Generation;

use crate::dirtymap::DirtyMap;

/// One captured operation, in the order the source applied it.
#[derive(Debug)]
pub(crate) enum Captured {
    /// `at`: when the source applied it (the replication lag starts there).
    Data { offset: u64, data: Vec<u8>, at: Instant },
    /// Write-zeroes and trim: the source reads zeros there afterwards, and so must the replica.
    Zero { offset: u64, len: u64, at: Instant },
    /// A consistency boundary: a client's FLUSH completed here (crash), or the freeze hook
    /// had quiesced the applications (app).
    /// The id is the relay's for a group marker, 0 otherwise (the marker's sequence is used).
    Boundary(wire::MarkerKind, u64),
}

#[derive(Debug)]
pub(crate) struct DiskCapture {
    pub(crate) name: String,
    pub(crate) file: File,
    pub(crate) size_bytes: u64,
    pub(crate) generation: Generation,
    bitmap_path: PathBuf,
    state: Mutex<CaptureState>,
    /// Serializes bitmap saves, so an older snapshot never overwrites a newer one.
    save: Mutex<Vec<u8>>,
    /// Signalled when a consistency-group hold on this disk ends.
    released: Condvar,
}

/// Longest a consistency-group hold delays a write's reply, whatever the relay does: the
/// source waits at most this long, once, and then the hold ends by itself.
pub(crate) const GROUP_HOLD_MAX: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct CaptureState {
    pub(crate) queue: VecDeque<Captured>,
    /// Payload bytes and FLUSH boundaries in `queue` (kept by `push` and `pop`).
    queued_payload: u64,
    queued_flushes: u32,
    pub(crate) dirty: DirtyMap,
    /// Bits were set since the bitmap file was last written.
    dirty_unsaved: bool,
    /// A sync or resync of this disk is pending or running: the replica is not a
    /// crash-consistent image, so FLUSHes are not turned into consistency boundaries.
    pub(crate) gap: bool,
    /// A consistency-group marker is queued and the relay has not released the group yet:
    /// replies to writes applied after the marker wait (see `hold_and_mark`).
    held_until: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Capture {
    pub(crate) disks: Vec<DiskCapture>,
    buffer_bytes_max: u64,
    queued_bytes: AtomicU64,
    /// False while the relay is unreachable: writes then go straight to the bitmap.
    pub(crate) link_up: Arc<AtomicBool>,
    wake: (Mutex<u64>, Condvar),
    /// Payload buffers returned by the replicator once framed, reused by the tap: a fresh
    /// multi-MiB allocation per write would map and fault in new pages every time.
    spare: Mutex<Vec<Vec<u8>>>,
}

/// Spare payload buffers kept, and the largest kept (bigger ones are freed).
const SPARE_BUFFERS_MAX: usize = 64;
const SPARE_BUFFER_BYTES_MAX: usize = 4 << 20;

pub(crate) struct DiskSetup {
    pub(crate) name: String,
    pub(crate) file: File,
    pub(crate) size_bytes: u64,
    pub(crate) generation: Generation,
    pub(crate) bitmap_path: PathBuf,
    pub(crate) dirty: DirtyMap,
    pub(crate) gap: bool,
}

impl CaptureState {
    /// Queues an item; true when the queue was empty (the replicator may be asleep).
    fn push(&mut self, item: Captured) -> bool {
        let was_empty = self.queue.is_empty();
        match &item {
            Captured::Data { data, .. } => self.queued_payload += data.len() as u64,
            Captured::Boundary(..) => self.queued_flushes += 1,
            Captured::Zero { .. } => {}
        }
        self.queue.push_back(item);
        was_empty
    }

    fn pop(&mut self) -> Option<Captured> {
        let item = self.queue.pop_front()?;
        match &item {
            Captured::Data { data, .. } => self.queued_payload -= data.len() as u64,
            Captured::Boundary(..) => self.queued_flushes -= 1,
            Captured::Zero { .. } => {}
        }
        Some(item)
    }
}

impl Capture {
    pub(crate) fn new(disks: Vec<DiskSetup>, buffer_bytes_max: u64) -> Capture {
        let disks = disks
            .into_iter()
            .map(|setup| DiskCapture {
                name: setup.name,
                file: setup.file,
                size_bytes: setup.size_bytes,
                generation: setup.generation,
                bitmap_path: setup.bitmap_path,
                state: Mutex::new(CaptureState {
                    queue: VecDeque::new(),
                    queued_payload: 0,
                    queued_flushes: 0,
                    dirty: setup.dirty,
                    dirty_unsaved: true,
                    gap: setup.gap,
                    held_until: None,
                }),
                save: Mutex::new(Vec::new()),
                released: Condvar::new(),
            })
            .collect();
        Capture {
            disks,
            buffer_bytes_max,
            queued_bytes: AtomicU64::new(0),
            link_up: Arc::new(AtomicBool::new(false)),
            wake: (Mutex::new(0), Condvar::new()),
            spare: Mutex::new(Vec::new()),
        }
    }

    /// A buffer of `len` bytes for a write's payload (contents unspecified).
    pub(crate) fn take_buffer(&self, len: usize) -> Vec<u8> {
        let mut spare = self.spare.lock().expect("spare lock");
        // A small write must not pin a large buffer: queued bytes count lengths, not capacity.
        let fits = spare.last().is_some_and(|buf| buf.capacity() <= len.max(64 << 10) * 4);
        let mut buf = if fits { spare.pop().unwrap_or_default() } else { Vec::new() };
        drop(spare);
        // A recycled buffer keeps its old bytes: the caller overwrites all `len` of them, so
        // only growth needs filling (zeroing 1 MiB per write showed up in profiles).
        if buf.len() >= len {
            buf.truncate(len);
        } else {
            buf.resize(len, 0);
        }
        buf
    }

    /// Returns a payload buffer the replicator no longer needs.
    pub(crate) fn recycle(&self, mut buf: Vec<u8>) {
        if buf.capacity() > SPARE_BUFFER_BYTES_MAX {
            return;
        }
        let mut spare = self.spare.lock().expect("spare lock");
        if spare.len() < SPARE_BUFFERS_MAX {
            // Keep the length (see `take_buffer`): initialized bytes need no zeroing again.
            let capacity = buf.capacity();
            buf.resize(capacity, 0);
            spare.push(buf);
        }
    }

    pub(crate) fn lock(&self, disk: usize) -> MutexGuard<'_, CaptureState> {
        self.disks[disk].state.lock().expect("capture lock")
    }

    /// Applies a write to the source and hands it to replication (or to the bitmap).
    pub(crate) fn write(&self, disk: usize, offset: u64, data: Vec<u8>) -> io::Result<()> {
        let capture = &self.disks[disk];
        let len = data.len() as u64;
        let mut state = self.lock(disk);
        capture.file.write_all_at(&data, offset)?;
        // The replicator is woken only when its work appears (a queue or bitmap that was
        // empty); one futex wake per write halved the tap's rate.
        let wake = if self.must_mark(&mut state, offset, len) {
            let was_clean = state.dirty.is_clean();
            state.dirty.mark(offset, len);
            state.dirty_unsaved = true;
            was_clean
        } else {
            self.queued_bytes.fetch_add(len, Ordering::Relaxed);
            state.push(Captured::Data { offset, data, at: Instant::now() })
        };
        let state = self.wait_while_held(disk, state);
        drop(state);
        if wake {
            self.notify();
        }
        Ok(())
    }

    /// Delays the reply to a write applied after a group marker until the group is released
    /// (or `GROUP_HOLD_MAX` passed): no write that depends on it can reach another disk of
    /// the group before that disk's marker.
    fn wait_while_held<'a>(
        &'a self,
        disk: usize,
        mut state: MutexGuard<'a, CaptureState>,
    ) -> MutexGuard<'a, CaptureState> {
        while let Some(until) = state.held_until {
            let now = Instant::now();
            if now >= until {
                log::warn!(
                    "disk {}: consistency-group hold not released within {GROUP_HOLD_MAX:?}; \
                     writes go on (that group point will not be confirmed)",
                    self.disks[disk].name
                );
                state.held_until = None;
                break;
            }
            state =
                self.disks[disk].released.wait_timeout(state, until - now).expect("capture lock").0;
        }
        state
    }

    /// Queues a group boundary on `disk` and holds write replies until `release`; false (and
    /// no hold) where the disk cannot be consistent now.
    pub(crate) fn hold_and_mark(&self, disk: usize, marker_id: u64) -> bool {
        let mut state = self.lock(disk);
        let consistent =
            !state.gap && state.dirty.is_clean() && self.link_up.load(Ordering::Relaxed);
        if consistent {
            state.push(Captured::Boundary(wire::MarkerKind::Group, marker_id));
            state.held_until = Some(Instant::now() + GROUP_HOLD_MAX);
        }
        drop(state);
        self.notify();
        consistent
    }

    /// Ends a group hold on `disk`.
    pub(crate) fn release(&self, disk: usize) {
        self.lock(disk).held_until = None;
        self.disks[disk].released.notify_all();
    }

    /// Write-zeroes or trim: the range reads as zeros afterwards (holes where possible).
    pub(crate) fn zero(&self, disk: usize, offset: u64, len: u64) -> io::Result<()> {
        let capture = &self.disks[disk];
        let mut state = self.lock(disk);
        fsio::zero_range(&capture.file, offset, len)?;
        // Zero extents carry no payload, so they only need the bitmap when order demands it.
        let wake = if self.must_mark(&mut state, offset, 0) {
            let was_clean = state.dirty.is_clean();
            state.dirty.mark(offset, len);
            state.dirty_unsaved = true;
            was_clean
        } else {
            state.push(Captured::Zero { offset, len, at: Instant::now() })
        };
        let state = self.wait_while_held(disk, state);
        drop(state);
        if wake {
            self.notify();
        }
        Ok(())
    }

    /// True when the write at `[offset, offset+len)` must go to the bitmap: a grain it touches
    /// is already dirty (the bitmap drain will read the newest data anyway), the relay is
    /// away, or the buffer is full.
    fn must_mark(&self, state: &mut CaptureState, offset: u64, len: u64) -> bool {
        if !self.link_up.load(Ordering::Relaxed) {
            self.spill_queue(state);
            return true;
        }
        state.dirty.any_dirty(offset, len.max(1))
            || self.queued_bytes.load(Ordering::Relaxed) + len > self.buffer_bytes_max
    }

    /// Moves everything queued for `disk` into its bitmap (shutdown: the relay will not get it).
    pub(crate) fn spill(&self, disk: usize) {
        let mut state = self.lock(disk);
        self.spill_queue(&mut state);
    }

    /// Moves everything queued into the bitmap, freeing the buffer while the relay is away.
    fn spill_queue(&self, state: &mut CaptureState) {
        while let Some(item) = state.pop() {
            match item {
                Captured::Data { offset, data, .. } => {
                    self.queued_bytes.fetch_sub(data.len() as u64, Ordering::Relaxed);
                    state.dirty.mark(offset, data.len() as u64);
                    state.dirty_unsaved = true;
                }
                Captured::Zero { offset, len, .. } => {
                    state.dirty.mark(offset, len);
                    state.dirty_unsaved = true;
                }
                Captured::Boundary(..) => {}
            }
        }
    }

    /// The client's FLUSH: the source's data and the bitmap are durable when this returns,
    /// and, without an open gap, the replication stream gets a consistency boundary.
    pub(crate) fn flush(&self, disk: usize) -> io::Result<()> {
        let capture = &self.disks[disk];
        capture.file.sync_data()?;
        self.save_bitmap(disk)?;
        self.mark(disk, wire::MarkerKind::Crash);
        Ok(())
    }

    /// Queues a consistency boundary of `kind` after everything captured so far, unless a gap
    /// is open, the bitmap holds older writes or the relay is unreachable (then the replica
    /// cannot be consistent at this position). True if queued.
    pub(crate) fn mark(&self, disk: usize, kind: wire::MarkerKind) -> bool {
        let mut state = self.lock(disk);
        let consistent =
            !state.gap && state.dirty.is_clean() && self.link_up.load(Ordering::Relaxed);
        if consistent {
            state.push(Captured::Boundary(kind, 0));
        }
        drop(state);
        self.notify();
        consistent
    }

    /// Writes the bitmap file if bits were set since the last save.
    pub(crate) fn save_bitmap(&self, disk: usize) -> io::Result<()> {
        let capture = &self.disks[disk];
        let mut bytes = capture.save.lock().expect("save lock");
        let mut state = self.lock(disk);
        if !state.dirty_unsaved {
            return Ok(());
        }
        state.dirty.encode(&capture.generation, &mut bytes);
        state.dirty_unsaved = false;
        drop(state);
        let result = fsio::write_atomic(&capture.bitmap_path, &bytes);
        if result.is_err() {
            self.lock(disk).dirty_unsaved = true;
        }
        result
    }

    /// Marks extra ranges dirty (writes the relay never acknowledged, at shutdown).
    pub(crate) fn mark_dirty(&self, disk: usize, offset: u64, len: u64) {
        let mut state = self.lock(disk);
        state.dirty.mark(offset, len);
        state.dirty_unsaved = true;
    }

    /// Takes queued items of one disk for one frame: up to `payload_max` payload bytes and
    /// `items_max` items, stopping after a FLUSH boundary.
    pub(crate) fn take(
        &self,
        disk: usize,
        payload_max: usize,
        items_max: usize,
        into: &mut Vec<Captured>,
    ) {
        let mut state = self.lock(disk);
        let mut payload = 0usize;
        while into.len() < items_max {
            let Some(front) = state.queue.front() else { break };
            if let Captured::Data { data, .. } = front {
                if payload > 0 && payload + data.len() > payload_max {
                    break;
                }
                payload += data.len();
            }
            let item = state.pop().expect("front checked");
            let boundary = matches!(item, Captured::Boundary(..));
            into.push(item);
            if boundary {
                break;
            }
        }
        drop(state);
        self.queued_bytes.fetch_sub(payload as u64, Ordering::Relaxed);
    }

    /// When the replicator should take a frame from `disk`'s queue: `None` when it is empty,
    /// zero when a frame's worth of payload or a FLUSH boundary is queued, otherwise when the
    /// oldest write is `delay` old. Waiting that long turns a stream of small writes into
    /// fewer, larger frames (each frame costs a journal append at the relay and the target).
    pub(crate) fn ready_in(
        &self,
        disk: usize,
        payload_min: u64,
        items_min: usize,
        delay: Duration,
    ) -> Option<Duration> {
        let state = self.lock(disk);
        let oldest = match state.queue.front()? {
            Captured::Data { at, .. } | Captured::Zero { at, .. } => *at,
            Captured::Boundary(..) => return Some(Duration::ZERO),
        };
        if state.queued_payload >= payload_min
            || state.queued_flushes > 0
            || state.queue.len() >= items_min
        {
            return Some(Duration::ZERO);
        }
        Some(delay.saturating_sub(oldest.elapsed()))
    }

    pub(crate) fn notify(&self) {
        let (lock, condvar) = &self.wake;
        *lock.lock().expect("wake lock") += 1;
        condvar.notify_one();
    }

    /// Waits until something was captured since `seen`, or the timeout passed.
    pub(crate) fn wait(&self, seen: &mut u64, timeout: Duration) {
        let (lock, condvar) = &self.wake;
        let guard = lock.lock().expect("wake lock");
        let (guard, _) =
            condvar.wait_timeout_while(guard, timeout, |count| *count == *seen).expect("wake lock");
        *seen = *guard;
    }
}
