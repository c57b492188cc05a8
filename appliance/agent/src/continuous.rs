//! Continuous protection: the write tap serves the disks over NBD while the replicator thread
//! turns captured writes into frames, runs the syncs a disk needs, drains the dirty bitmap,
//! and tells the relay each disk's state.
//!
//! Start-up decides per disk (invariant 4): no state file means a full sync; a clean
//! shutdown with a verifiable bitmap means only the bitmap's grains are read back; anything
//! else (a crash, a lost or damaged bitmap, a size change) means a checksum resync.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wire::{DiskStateKind, Extent, EXTENT_ZERO};

use crate::capture::{Capture, Captured, DiskSetup};
use crate::dirtymap::DirtyMap;
use crate::error::AgentError;
use crate::link::{Link, LinkDisk, LinkPolicy};
use crate::sync::{report_state, DiskSync, SyncLimits};
use crate::{state, AgentOptions, SyncMode};

/// Items (writes, zero ranges) per frame.
const FRAME_ITEMS_MAX: usize = 1024;
/// How long a small write may wait for others to share its frame (see `Capture::ready_in`).
const BATCH_DELAY: Duration = Duration::from_millis(2);
/// The replicator's longest sleep: acks and state reports are handled at least this often.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Quiet time after sent writes before the agent marks a consistency boundary itself.
const QUIET_MARKER_AFTER: Duration = Duration::from_millis(200);
const STATE_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a clean shutdown keeps sending what is queued before it records the rest in the
/// bitmap instead.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Where the write tap listens (`IP:PORT` or a unix socket path).
pub use nbdserve::ListenAddr as TapAddr;

#[derive(Debug, Clone)]
pub struct CaptureOptions {
    pub tap: TapAddr,
    pub buffer_bytes: u64,
    pub grain_bytes: u64,
    pub connections_max: usize,
    pub app_consistent: Option<AppConsistentOptions>,
}

/// App-consistent points: every `interval`, freeze, a marker on every disk, thaw.
#[derive(Debug, Clone)]
pub struct AppConsistentOptions {
    pub interval: Duration,
    pub freeze: crate::hooks::Hook,
    pub thaw: crate::hooks::Hook,
}

/// Takes app-consistent points until `stop`. A failed or timed-out freeze still thaws and
/// takes a crash-consistent point instead, with a warning: the workload is never left frozen
/// and protection goes on.
fn app_consistent_points(capture: &Capture, options: &AppConsistentOptions, stop: &AtomicBool) {
    let mut next = Instant::now() + options.interval;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50).min(next - Instant::now()));
            continue;
        }
        next += options.interval;
        let result = crate::hooks::app_consistent(&options.freeze, &options.thaw, |consistency| {
            let kind = match consistency {
                crate::hooks::Consistency::App => wire::MarkerKind::App,
                crate::hooks::Consistency::Crash => wire::MarkerKind::Crash,
            };
            (0..capture.disks.len()).filter(|&disk| capture.mark(disk, kind)).count()
        });
        let disks = capture.disks.len();
        match (&result.consistency, result.marker) {
            (crate::hooks::Consistency::App, marked) if marked == disks => log::info!(
                "app-consistent point on {marked} disk(s), applications frozen for {:.1?}",
                result.freeze_window
            ),
            (crate::hooks::Consistency::App, marked) => log::warn!(
                "app-consistent point on {marked} of {disks} disk(s): the others are resyncing \
                 or catching up, so no point is possible there now"
            ),
            (crate::hooks::Consistency::Crash, _) => {}
        }
    }
}

/// Per-disk bookkeeping of the replicator.
#[derive(Debug)]
struct DiskProgress {
    /// A sync this disk still needs before it can be protected.
    pending_sync: Option<SyncMode>,
    /// The last frame of the most recent sync: protected only once the target holds it.
    sync_end_seq: u64,
    /// Frames built from captured writes, with their extents, until the relay holds them: at
    /// shutdown, the ones it does not hold go to the bitmap.
    inflight: VecDeque<(u64, Vec<(u64, u64)>)>,
    drain_cursor: u64,
    reported: Option<(DiskStateKind, u64)>,
    last_report: Instant,
    /// The link connection the last report went over.
    reported_on: u64,
    state_path: PathBuf,
    state: state::DiskStateFile,
    /// When data was last sent with no marker after it yet.
    unmarked_since: Option<Instant>,
}

/// Protects the disks continuously until `stop` is set (SIGINT/SIGTERM), then shuts down
/// cleanly: what the relay does not hold is recorded in the bitmap, so the next start reads
/// back only those grains.
pub fn run_continuous(
    options: &AgentOptions,
    capture_options: &CaptureOptions,
    stop: Arc<AtomicBool>,
) -> Result<(), AgentError> {
    let mut setups = Vec::with_capacity(options.disks.len());
    let mut progress: Vec<DiskProgress> = Vec::with_capacity(options.disks.len());
    for source in &options.disks {
        let (setup, disk_progress) = prepare_disk(options, capture_options, source)?;
        setups.push(setup);
        progress.push(disk_progress);
    }
    let capture = Arc::new(Capture::new(setups, capture_options.buffer_bytes));
    let tap = crate::listener::start_tap(
        &capture_options.tap,
        Arc::clone(&capture),
        capture_options.connections_max,
    )?;
    log::info!("write tap listening on {}", capture_options.tap);
    let app_points = match &capture_options.app_consistent {
        Some(app) => {
            let (capture, app, stop) = (Arc::clone(&capture), app.clone(), Arc::clone(&stop));
            let spawned = std::thread::Builder::new()
                .name("app-consistent".into())
                .spawn(move || app_consistent_points(&capture, &app, &stop));
            Some(spawned.map_err(|source| AgentError::Io {
                action: "start the app-consistent point thread",
                path: "agent".into(),
                source,
            })?)
        }
        None => None,
    };
    let link_disks = capture
        .disks
        .iter()
        .zip(&progress)
        .map(|(disk, progress)| LinkDisk {
            name: disk.name.clone(),
            generation: disk.generation,
            size_bytes: disk.size_bytes,
            take_over: options.take_over,
            fresh: progress.state.fresh,
        })
        .collect();
    let policy = LinkPolicy {
        window_bytes_max: options.window_bytes,
        reconnect_timeout: Duration::MAX,
        up: Arc::clone(&capture.link_up),
        stop: Arc::clone(&stop),
        resync_on_loss: true,
        tls: options.tls.clone(),
    };
    let result =
        Link::connect(options.relay, crate::hostname(), link_disks, policy).and_then(|link| {
            // Durable before the first frame: from now on this generation has a history the
            // relay must not number from 1 again (see `wire::DiskInfo::fresh`).
            for disk in &mut progress {
                state::mark_sent(&disk.state_path, &mut disk.state)?;
            }
            let mut replicator = Replicator {
                link,
                lag: crate::lag::LagMeter::new(capture.disks.len()),
                capture: &capture,
                progress,
                limits: options.sync_limits(),
                show_progress: options.progress,
                stop: &stop,
            };
            let result = replicator.run();
            tap.stop();
            replicator.shut_down(result)
        });
    stop.store(true, Ordering::Relaxed);
    if let Some(thread) = app_points {
        let _ = thread.join();
    }
    match result {
        Err(AgentError::Stopped) => {
            // Stopped before the relay was ever reached: nothing was sent, everything the
            // tap wrote is in the bitmap (the link never came up).
            tap.stop();
            shut_down_offline(&capture)
        }
        other => other,
    }
}

fn prepare_disk(
    options: &AgentOptions,
    capture_options: &CaptureOptions,
    source: &crate::DiskSource,
) -> Result<(DiskSetup, DiskProgress), AgentError> {
    let (file, size_bytes) = crate::open_source(source, true)?;
    let state_path = state::state_path(&options.state_dir, &source.name);
    let bitmap_path = state::bitmap_path(&options.state_dir, &source.name);
    let (mut disk_state, pending_sync, dirty) = match state::load(&state_path)? {
        Some(_) | None if options.take_over => {
            (state::take_over(&state_path, source, size_bytes)?, Some(SyncMode::Resync), None)
        }
        None => {
            let fresh = state::DiskStateFile::new(source.path.clone(), size_bytes);
            (fresh, Some(SyncMode::Full), None)
        }
        Some(existing) => {
            let generation = existing.generation_bytes(&state_path)?;
            let dirty = if !existing.clean_shutdown && existing.synced {
                log::info!(
                    "disk {}: last replicated by a one-shot sync; resyncing by checksums",
                    source.name
                );
                None
            } else if !existing.clean_shutdown {
                log::warn!("disk {}: the agent did not shut down cleanly; resyncing", source.name);
                None
            } else if existing.size_bytes != Some(size_bytes) {
                log::warn!("disk {}: size changed to {size_bytes} bytes; resyncing", source.name);
                None
            } else {
                load_bitmap(&bitmap_path, &generation, size_bytes, capture_options.grain_bytes)
                    .map_err(|reason| {
                        log::warn!("disk {}: dirty bitmap {reason}; resyncing", source.name);
                    })
                    .ok()
            };
            let pending = if dirty.is_some() { None } else { Some(SyncMode::Resync) };
            (existing, pending, dirty)
        }
    };
    let generation = disk_state.generation_bytes(&state_path)?;
    let dirty = match dirty {
        Some(dirty) => dirty,
        None => DirtyMap::new(size_bytes, capture_options.grain_bytes).map_err(|error| {
            AgentError::Disk { disk: source.name.clone(), reason: error.to_string() }
        })?,
    };
    if !dirty.is_clean() {
        log::info!(
            "disk {}: {} bytes dirty since the last run; reading them back",
            source.name,
            dirty.dirty_bytes()
        );
    }
    // From here until a clean shutdown, a crash must lead to a resync: the source may hold
    // writes that nothing recorded.
    disk_state.clean_shutdown = false;
    disk_state.synced = false;
    disk_state.size_bytes = Some(size_bytes);
    disk_state.source = source.path.clone();
    state::store(&state_path, &disk_state)?;
    let setup = DiskSetup {
        name: source.name.clone(),
        file,
        size_bytes,
        generation,
        bitmap_path,
        dirty,
        gap: pending_sync.is_some(),
    };
    let progress = DiskProgress {
        pending_sync,
        sync_end_seq: 0,
        inflight: VecDeque::new(),
        drain_cursor: 0,
        reported: None,
        last_report: Instant::now(),
        reported_on: 0,
        state_path,
        state: disk_state,
        unmarked_since: None,
    };
    Ok((setup, progress))
}

fn load_bitmap(
    path: &Path,
    generation: &wire::Generation,
    size_bytes: u64,
    grain_bytes: u64,
) -> Result<DirtyMap, String> {
    let bytes = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
    DirtyMap::decode(&bytes, generation, size_bytes, grain_bytes)
        .map_err(|error| format!("{} is unverifiable: {error}", path.display()))
}

struct Replicator<'a> {
    link: Link,
    lag: crate::lag::LagMeter,
    capture: &'a Capture,
    progress: Vec<DiskProgress>,
    limits: SyncLimits,
    show_progress: bool,
    stop: &'a AtomicBool,
}

impl Replicator<'_> {
    fn run(&mut self) -> Result<(), AgentError> {
        let mut seen = 0u64;
        let mut items = Vec::new();
        let mut payload = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let mut worked = false;
            let mut sleep = IDLE_WAIT;
            for disk in self.link.take_lost() {
                // Whatever the lost frames held is on the source: a resync finds it.
                self.progress[disk].pending_sync = Some(SyncMode::Resync);
                self.progress[disk].inflight.clear();
                self.lag.forget(disk);
                self.capture.lock(disk).gap = true;
            }
            for disk in 0..self.progress.len() {
                if let Some(mode) = self.progress[disk].pending_sync {
                    self.sync(disk, mode)?;
                    worked = true;
                }
                // Captured writes first: the bitmap drain needs an empty queue anyway.
                let payload_min = self.limits.frame_payload_bytes as u64;
                match self.capture.ready_in(disk, payload_min, FRAME_ITEMS_MAX, BATCH_DELAY) {
                    Some(Duration::ZERO) => worked |= self.send_captured(disk, &mut items)?,
                    Some(later) => sleep = sleep.min(later),
                    None => worked |= self.drain_dirty(disk, &mut payload)?,
                }
                worked |= self.mark_if_quiet(disk, QUIET_MARKER_AFTER)?;
                self.report(disk)?;
                self.prune_inflight(disk);
            }
            self.link.poll(Duration::ZERO)?;
            for request in self.link.take_controls() {
                self.on_relay_request(&request)?;
            }
            if !worked {
                self.capture.wait(&mut seen, sleep);
            }
        }
        Ok(())
    }

    fn sync(&mut self, disk: usize, mode: SyncMode) -> Result<(), AgentError> {
        let capture = &self.capture.disks[disk];
        let bar = crate::progress_bar(self.show_progress, &capture.name, capture.size_bytes, mode);
        let state = match mode {
            SyncMode::Full => DiskStateKind::InitialSync,
            SyncMode::Resync => DiskStateKind::Resyncing,
        };
        report_state(&mut self.link, disk, state, 0, capture.size_bytes)?;
        self.progress[disk].reported = Some((state, 0));
        let report = DiskSync {
            link: &mut self.link,
            disk,
            name: &capture.name,
            source: &capture.file,
            size_bytes: capture.size_bytes,
            limits: self.limits,
            progress: &bar,
            stop: self.stop,
        }
        .run(mode)?;
        bar.finish_and_clear();
        log::info!(
            "disk {}: {} done in {:.1} s: {} data bytes, {} zero bytes sent, {} bytes unchanged",
            capture.name,
            if mode == SyncMode::Full { "initial sync" } else { "checksum resync" },
            report.seconds,
            report.data_bytes,
            report.zero_bytes,
            report.unchanged_bytes
        );
        let progress = &mut self.progress[disk];
        progress.pending_sync = None;
        progress.sync_end_seq = self.link.peek_next_seq(disk).saturating_sub(1);
        progress.unmarked_since = Some(Instant::now());
        self.capture.lock(disk).gap = false;
        Ok(())
    }

    /// Sends one frame of captured writes (or a consistency marker). False when none queued.
    fn send_captured(
        &mut self,
        disk: usize,
        items: &mut Vec<Captured>,
    ) -> Result<bool, AgentError> {
        items.clear();
        self.capture.take(disk, self.limits.frame_payload_bytes, FRAME_ITEMS_MAX, items);
        if items.is_empty() {
            return Ok(false);
        }
        let payload_max = self.limits.frame_payload_bytes;
        if let [Captured::Data { data, .. }] = items.as_slice() {
            if data.len() > payload_max {
                // One write larger than a frame (NBD allows up to 32 MiB): split it.
                let Some(Captured::Data { offset, data, at }) = items.pop() else {
                    unreachable!("matched above")
                };
                for (index, chunk) in data.chunks(payload_max).enumerate() {
                    let chunk_offset = offset + (index * payload_max) as u64;
                    let extent = Extent { offset: chunk_offset, len: chunk.len() as u32, flags: 0 };
                    let range = (chunk_offset, chunk.len() as u64);
                    self.send_writes(disk, vec![extent], std::iter::once(chunk), vec![range])?;
                }
                self.lag.sent(disk, self.link.peek_next_seq(disk) - 1, at);
                self.capture.recycle(data);
                return Ok(true);
            }
        }
        let mut extents = Vec::with_capacity(items.len());
        let mut ranges = Vec::with_capacity(items.len());
        let mut oldest = None;
        for item in items.iter() {
            match item {
                Captured::Data { offset, data, at } => {
                    oldest = oldest.or(Some(*at));
                    extents.push(Extent { offset: *offset, len: data.len() as u32, flags: 0 });
                    ranges.push((*offset, data.len() as u64));
                }
                Captured::Zero { offset, len, at } => {
                    oldest = oldest.or(Some(*at));
                    push_zero_extents(&mut extents, *offset, *len);
                    ranges.push((*offset, *len));
                }
                Captured::Boundary(..) => {}
            }
        }
        let marker = match items.last() {
            Some(Captured::Boundary(kind, id)) => Some((*kind, *id)),
            _ => None,
        };
        if !extents.is_empty() {
            let buffers: Vec<Vec<u8>> = items
                .drain(..)
                .filter_map(|item| match item {
                    Captured::Data { data, .. } => Some(data),
                    _ => None,
                })
                .collect();
            self.send_writes(disk, extents, buffers.iter().map(Vec::as_slice), ranges)?;
            for buffer in buffers {
                self.capture.recycle(buffer);
            }
            if let Some(at) = oldest {
                let seq = self.link.peek_next_seq(disk) - 1;
                self.lag.sent(disk, seq, at);
            }
        }
        if let Some((kind, marker_id)) = marker {
            self.send_marker(disk, kind, marker_id)?;
        }
        Ok(true)
    }

    /// Sends one `Writes` frame; `data` holds the payload of the data extents, in order, each
    /// piece copied once, into the frame.
    fn send_writes<'d>(
        &mut self,
        disk: usize,
        extents: Vec<Extent>,
        data: impl Iterator<Item = &'d [u8]>,
        ranges: Vec<(u64, u64)>,
    ) -> Result<(), AgentError> {
        let seq = self.link.next_seq(disk);
        let mut bytes = self.link.take_frame_buffer();
        let mut frame = wire::WritesFrame::begin(disk as u32, seq, extents, &mut bytes)?;
        for piece in data {
            frame.append(piece);
        }
        frame.finish();
        self.progress[disk].inflight.push_back((seq, ranges));
        self.progress[disk].unmarked_since = Some(Instant::now());
        self.link.send_sequenced(disk, seq, bytes)
    }

    /// A crash-consistent boundary: every write the source completed before it (a FLUSH, or
    /// a moment with nothing queued, no gap and a clean bitmap).
    fn send_marker(
        &mut self,
        disk: usize,
        kind: wire::MarkerKind,
        marker_id: u64,
    ) -> Result<(), AgentError> {
        let seq = crate::sync::send_marker(&mut self.link, disk, kind, marker_id)?;
        self.progress[disk].inflight.push_back((seq, Vec::new()));
        self.progress[disk].unmarked_since = None;
        Ok(())
    }

    /// A consistency-group request of the relay: `group-hold` queues a group marker on the
    /// named disks and holds write replies there until `group-release` (design.md §5).
    fn on_relay_request(&mut self, json: &str) -> Result<(), AgentError> {
        let Ok(request) = serde_json::from_str::<serde_json::Value>(json) else {
            log::warn!("ignoring a malformed request from the relay: {json}");
            return Ok(());
        };
        let marker_id = request["marker_id"].as_u64().unwrap_or(0);
        let disks: Vec<usize> = request["disks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|name| {
                let name = name.as_str()?;
                self.capture.disks.iter().position(|disk| disk.name == name)
            })
            .collect();
        match request["op"].as_str() {
            Some("group-hold") if marker_id > 0 => {
                let mut held = Vec::new();
                for &disk in &disks {
                    if self.capture.hold_and_mark(disk, marker_id) {
                        held.push(disk);
                    }
                }
                let ok = held.len() == disks.len() && !disks.is_empty();
                if !ok {
                    // A disk that cannot be consistent now spoils the group point: let the
                    // others go at once.
                    for disk in held {
                        self.capture.release(disk);
                    }
                }
                let reply = serde_json::json!({
                    "op": "group-held",
                    "group": request["group"],
                    "marker_id": marker_id,
                    "ok": ok,
                })
                .to_string();
                self.link.send_unsequenced(&wire::Frame::Control { json: &reply })?;
            }
            Some("group-release") => {
                for disk in disks {
                    self.capture.release(disk);
                }
            }
            _ => log::warn!("ignoring an unknown request from the relay: {json}"),
        }
        Ok(())
    }

    /// Sends a marker once writes have been sent without one and the disk has been quiet for
    /// a moment: a workload that never flushes still gets recovery points, and the end of a
    /// resync or bitmap drain becomes one.
    fn mark_if_quiet(&mut self, disk: usize, quiet_for: Duration) -> Result<bool, AgentError> {
        let Some(since) = self.progress[disk].unmarked_since else { return Ok(false) };
        if since.elapsed() < quiet_for || self.progress[disk].pending_sync.is_some() {
            return Ok(false);
        }
        let quiet = {
            let state = self.capture.lock(disk);
            state.queue.is_empty() && !state.gap && state.dirty.is_clean()
        };
        if quiet {
            self.send_marker(disk, wire::MarkerKind::Crash, 0)?;
        }
        Ok(quiet)
    }

    /// Reads one run of dirty grains back from the source and sends it. The queue must be
    /// empty (checked under the disk lock), so everything queued before went out first and
    /// this read holds the newest data.
    fn drain_dirty(&mut self, disk: usize, payload: &mut Vec<u8>) -> Result<bool, AgentError> {
        let capture = &self.capture.disks[disk];
        let max = self.limits.frame_payload_bytes as u64;
        let mut state = self.capture.lock(disk);
        if !state.queue.is_empty() || state.dirty.is_clean() {
            return Ok(false);
        }
        let cursor = self.progress[disk].drain_cursor;
        let Some((offset, len)) =
            state.dirty.next_run(cursor, max).or_else(|| state.dirty.next_run(0, max))
        else {
            return Ok(false);
        };
        payload.resize(len as usize, 0);
        capture.file.read_exact_at(payload, offset).map_err(|source| AgentError::Io {
            action: "read back dirty grains of",
            path: PathBuf::from(&capture.name),
            source,
        })?;
        state.dirty.clear(offset, len);
        drop(state);
        self.progress[disk].drain_cursor = offset + len;
        let mut extents = Vec::new();
        let data: &[u8] = if wire::is_zero(payload) {
            push_zero_extents(&mut extents, offset, len);
            &[]
        } else {
            extents.push(Extent { offset, len: len as u32, flags: 0 });
            payload
        };
        self.send_writes(disk, extents, std::iter::once(data), vec![(offset, len)])?;
        Ok(true)
    }

    fn prune_inflight(&mut self, disk: usize) {
        self.lag.replicated(disk, self.link.replicated_seq(disk));
        let durable = self.link.durable_seq(disk);
        let inflight = &mut self.progress[disk].inflight;
        while inflight.front().is_some_and(|(seq, _)| *seq <= durable) {
            inflight.pop_front();
        }
    }

    /// Reports the disk's state when it changed, and every second while it is not protected.
    /// Protected needs: no sync pending, an empty bitmap, and the last sync at the target.
    fn report(&mut self, disk: usize) -> Result<(), AgentError> {
        let size = self.capture.disks[disk].size_bytes;
        let dirty_bytes = self.capture.lock(disk).dirty.dirty_bytes();
        let progress = &self.progress[disk];
        if progress.pending_sync.is_some() {
            return Ok(());
        }
        let at_target = self.link.replicated_seq(disk) >= progress.sync_end_seq;
        let (state, done) = capture_state(dirty_bytes, at_target, size);
        let changed = progress.reported.map(|(kind, _)| kind) != Some(state);
        let reconnected = progress.reported_on != self.link.connections();
        let periodic = state != DiskStateKind::Protected
            && progress.last_report.elapsed() >= STATE_REPORT_INTERVAL;
        if !(changed || periodic || reconnected) {
            return Ok(());
        }
        if changed {
            log::info!("disk {}: {}", self.capture.disks[disk].name, state.as_str());
        }
        report_state(&mut self.link, disk, state, done, size)?;
        let progress = &mut self.progress[disk];
        progress.reported = Some((state, done));
        progress.last_report = Instant::now();
        progress.reported_on = self.link.connections();
        Ok(())
    }

    /// Ends a run: sends what is queued for a while, records in the bitmap whatever the relay
    /// does not hold, and marks the shutdown clean when no sync was left unfinished.
    fn shut_down(&mut self, run: Result<(), AgentError>) -> Result<(), AgentError> {
        if let Err(error) = &run {
            if !matches!(error, AgentError::Stopped) {
                log::error!("replication stopped: {error}");
            }
        }
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        let mut items = Vec::new();
        if run.is_ok() || matches!(run, Err(AgentError::Stopped)) {
            'drain: while Instant::now() < deadline && self.capture.link_up.load(Ordering::Relaxed)
            {
                let mut worked = false;
                for disk in 0..self.progress.len() {
                    // The tap is closed: once everything is out, a last marker makes the final
                    // state a recovery point (what a planned failover fails over to).
                    match self
                        .send_captured(disk, &mut items)
                        .and_then(|sent| Ok(sent | self.mark_if_quiet(disk, Duration::ZERO)?))
                    {
                        Ok(sent) => worked |= sent,
                        Err(_) => break 'drain,
                    }
                }
                let all_durable = (0..self.progress.len())
                    .all(|disk| self.link.durable_seq(disk) + 1 >= self.link.peek_next_seq(disk));
                if !worked && all_durable {
                    break;
                }
                if self.link.poll(Duration::from_millis(10)).is_err() {
                    break;
                }
            }
        }
        for disk in 0..self.progress.len() {
            self.prune_inflight(disk);
            let progress = &mut self.progress[disk];
            for (_, ranges) in progress.inflight.drain(..) {
                for (offset, len) in ranges {
                    self.capture.mark_dirty(disk, offset, len);
                }
            }
            self.capture.spill(disk);
            let sync_unfinished = progress.pending_sync.is_some()
                || self.link.durable_seq(disk) < progress.sync_end_seq;
            let _ = report_state(
                &mut self.link,
                disk,
                DiskStateKind::Paused,
                0,
                self.capture.disks[disk].size_bytes,
            );
            finish_disk(self.capture, disk, &mut self.progress[disk], sync_unfinished)?;
        }
        log::info!("replication lag (tap reply to durable at the target): {}", self.lag.summary());
        match run {
            Err(AgentError::Stopped) => Ok(()),
            other => other,
        }
    }
}

/// The state of a disk whose syncs are done: `protected` only without any gap (invariant 4).
fn capture_state(dirty_bytes: u64, sync_at_target: bool, size: u64) -> (DiskStateKind, u64) {
    if dirty_bytes == 0 && sync_at_target {
        (DiskStateKind::Protected, size)
    } else {
        (DiskStateKind::Resyncing, size - dirty_bytes.min(size))
    }
}

/// Splits a zero range into extents the protocol can carry (u32 lengths).
fn push_zero_extents(extents: &mut Vec<Extent>, mut offset: u64, len: u64) {
    let end = offset + len;
    while offset < end {
        let step = (end - offset).min(1 << 30);
        extents.push(Extent { offset, len: step as u32, flags: EXTENT_ZERO });
        offset += step;
    }
}

/// Makes the source and the bitmap durable, then records the clean shutdown (unless a sync
/// is unfinished: the next start must then resync).
fn finish_disk(
    capture: &Capture,
    disk: usize,
    progress: &mut DiskProgress,
    sync_unfinished: bool,
) -> Result<(), AgentError> {
    let source = &capture.disks[disk];
    make_durable(capture, disk)?;
    if sync_unfinished {
        log::warn!("disk {}: sync unfinished; the next start resyncs", source.name);
        return Ok(());
    }
    progress.state.clean_shutdown = true;
    state::store(&progress.state_path, &progress.state)?;
    let dirty = capture.lock(disk).dirty.dirty_bytes();
    log::info!("disk {}: clean shutdown, {dirty} bytes recorded in the dirty bitmap", source.name);
    Ok(())
}

/// Shutdown before the relay was ever reached: every captured write is in the bitmap.
fn shut_down_offline(capture: &Capture) -> Result<(), AgentError> {
    for disk in 0..capture.disks.len() {
        capture.spill(disk);
        make_durable(capture, disk)?;
    }
    // The sync state is unknown to this path, so the next start resyncs (state stays unclean).
    Ok(())
}

/// Flushes the source and writes the bitmap: what the bitmap says holds after a power cut.
fn make_durable(capture: &Capture, disk: usize) -> Result<(), AgentError> {
    let source = &capture.disks[disk];
    let io =
        |action, error| AgentError::Io { action, path: PathBuf::from(&source.name), source: error };
    source.file.sync_data().map_err(|error| io("flush source disk", error))?;
    capture.save_bitmap(disk).map_err(|error| io("write the dirty bitmap of disk", error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_only_without_a_gap() {
        assert_eq!(capture_state(0, true, 100), (DiskStateKind::Protected, 100));
        assert_eq!(capture_state(1, true, 100), (DiskStateKind::Resyncing, 99));
        assert_eq!(capture_state(0, false, 100), (DiskStateKind::Resyncing, 100));
        assert_eq!(capture_state(500, true, 100), (DiskStateKind::Resyncing, 0));
    }

    #[test]
    fn zero_ranges_split_at_one_gib() {
        let mut extents = Vec::new();
        push_zero_extents(&mut extents, 4096, (3 << 30) + 5);
        let lens: Vec<u32> = extents.iter().map(|extent| extent.len).collect();
        assert_eq!(lens, vec![1 << 30, 1 << 30, 1 << 30, 5]);
        assert!(extents.iter().all(|extent| extent.flags == EXTENT_ZERO));
        assert_eq!(extents[3].offset, 4096 + (3 << 30));
    }

    #[test]
    fn tap_addresses_parse() {
        assert!(matches!("127.0.0.1:10809".parse::<TapAddr>(), Ok(TapAddr::Tcp(_))));
        assert!(matches!("/run/sr/tap.sock".parse::<TapAddr>(), Ok(TapAddr::Unix(_))));
        let error = "localhost:10809".parse::<TapAddr>().unwrap_err();
        assert!(error.contains("neither IP:port"), "{error}");
    }
}
