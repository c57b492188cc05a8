//! The capture agent (design.md §1): protects raw image files and block devices by sending
//! their content to a relay. A first run does a full sync (zero blocks become zero extents, no
//! payload); later runs compare block checksums with the replica and send only what differs.
//! Continuous capture through the NBD write tap builds on this.

mod capture;
mod continuous;
mod dirtymap;
mod error;
pub mod hooks;
mod lag;
mod link;
mod listener;
mod state;
mod sync;
mod tap;
mod vmdk_source;

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub use continuous::{run_continuous, AppConsistentOptions, CaptureOptions, TapAddr};
pub use error::AgentError;
use link::{Link, LinkDisk, LinkPolicy};
use sync::{DiskSync, SyncLimits};

#[derive(Debug, Clone)]
pub struct DiskSource {
    pub name: String,
    pub path: PathBuf,
    pub format: SourceFormat,
}

/// How a source is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// A raw image file or block device.
    Raw,
    /// A VMDK or the newest link of a VMDK snapshot chain (`--disk NAME=vmdk:PATH`).
    Vmdk,
}

impl DiskSource {
    /// `PATH` or `vmdk:PATH`.
    pub fn parse(name: &str, spec: &std::path::Path) -> DiskSource {
        let text = spec.to_string_lossy();
        match text.strip_prefix("vmdk:") {
            Some(rest) => DiskSource {
                name: name.to_string(),
                path: PathBuf::from(rest),
                format: SourceFormat::Vmdk,
            },
            None => DiskSource {
                name: name.to_string(),
                path: spec.to_path_buf(),
                format: SourceFormat::Raw,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub relay: SocketAddr,
    pub disks: Vec<DiskSource>,
    pub state_dir: PathBuf,
    pub block_bytes: usize,
    pub read_chunk_bytes: usize,
    pub frame_payload_bytes: usize,
    pub window_bytes: usize,
    pub reconnect_timeout: Duration,
    /// Show progress bars (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Replace the replicas' history with a new generation of these sources and resync them
    /// by checksums (an explicit operator decision, see `wire::DiskInfo::take_over`).
    pub take_over: bool,
    /// The credential registered with the relay, or `None` to connect plaintext.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl AgentOptions {
    pub(crate) fn sync_limits(&self) -> SyncLimits {
        SyncLimits {
            block_bytes: self.block_bytes,
            read_chunk_bytes: self.read_chunk_bytes,
            frame_payload_bytes: self.frame_payload_bytes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Full,
    Resync,
}

/// What one sync of one disk did.
#[derive(Debug, Clone)]
pub struct DiskReport {
    pub name: String,
    pub mode: SyncMode,
    pub size_bytes: u64,
    /// Bytes sent as data extents.
    pub data_bytes: u64,
    /// Bytes sent as zero extents (no payload).
    pub zero_bytes: u64,
    /// Bytes whose checksum matched the replica (resync only).
    pub unchanged_bytes: u64,
    pub differing_blocks: u64,
    pub replicated_seq: u64,
    pub seconds: f64,
}

impl DiskReport {
    fn new(name: &str, mode: SyncMode, size_bytes: u64) -> Self {
        DiskReport {
            name: name.to_string(),
            mode,
            size_bytes,
            data_bytes: 0,
            zero_bytes: 0,
            unchanged_bytes: 0,
            differing_blocks: 0,
            replicated_seq: 0,
            seconds: 0.0,
        }
    }
}

struct OpenDisk {
    source: DiskSource,
    reader: Reader,
    size_bytes: u64,
    mode: SyncMode,
    state_path: PathBuf,
    state: state::DiskStateFile,
}

/// Syncs every disk once and returns when all of them are durable at the target.
pub fn sync_once(options: &AgentOptions) -> Result<Vec<DiskReport>, AgentError> {
    let stop = Arc::new(AtomicBool::new(false));
    let (mut link, mut disks) = connect_for_sync(options, options.reconnect_timeout, &stop)?;
    sync_disks(options, &mut link, &mut disks, &stop)
}

/// Snapshot sync of VMDK sources: sends only what the snapshot links added since the last
/// synced link hold (their allocated grains), then a consistency marker; each disk must have
/// been synced before (`--once`) from the same chain.
pub fn snapshot_sync(options: &AgentOptions) -> Result<Vec<DiskReport>, AgentError> {
    let stop = Arc::new(AtomicBool::new(false));
    for source in &options.disks {
        if source.format != SourceFormat::Vmdk {
            return Err(AgentError::Disk {
                disk: source.name.clone(),
                reason: "snapshot sync reads VMDK snapshot links; give --disk NAME=vmdk:PATH"
                    .into(),
            });
        }
    }
    let (mut link, mut disks) = connect_for_sync(options, options.reconnect_timeout, &stop)?;
    let limits = options.sync_limits();
    let mut reports = Vec::with_capacity(disks.len());
    for (index, disk) in disks.iter_mut().enumerate() {
        let started = std::time::Instant::now();
        let Reader::Vmdk(source) = &disk.reader else { unreachable!("checked above") };
        let synced = match (&disk.state.synced, &disk.state.synced_link) {
            (true, Some(cid)) => cid.clone(),
            _ => {
                return Err(AgentError::Disk {
                    disk: disk.source.name.clone(),
                    reason: "not synced from a VMDK chain yet; run `agent --once` first".into(),
                })
            }
        };
        let ranges = source.changed_since(&disk.source.name, &synced)?;
        let (data_bytes, zero_bytes) =
            sync::send_ranges(&mut link, index, source, &ranges, limits)?;
        sync::send_marker(&mut link, index, wire::MarkerKind::Crash, 0)?;
        link.wait_replicated()?;
        let mut report = DiskReport::new(&disk.source.name, SyncMode::Resync, disk.size_bytes);
        report.data_bytes = data_bytes;
        report.zero_bytes = zero_bytes;
        report.unchanged_bytes = disk.size_bytes.saturating_sub(data_bytes + zero_bytes);
        report.replicated_seq = link.replicated_seq(index);
        report.seconds = started.elapsed().as_secs_f64();
        disk.state.synced_link = source.top_cid();
        state::store(&disk.state_path, &disk.state)?;
        log::info!(
            "disk {}: snapshot sync of {} range(s) since link {synced}: {data_bytes} data bytes, \
             {zero_bytes} zero bytes",
            disk.source.name,
            ranges.len()
        );
        reports.push(report);
    }
    Ok(reports)
}

/// The scan source (design.md §1): for disks that cannot be tapped, a checksum scan every
/// `interval` sends only the blocks that changed. Runs until `stop` is set.
pub fn run_scan(
    options: &AgentOptions,
    interval: Duration,
    stop: Arc<AtomicBool>,
    mut on_scan: impl FnMut(&DiskReport),
) -> Result<(), AgentError> {
    let result = (|| {
        let (mut link, mut disks) = connect_for_sync(options, Duration::MAX, &stop)?;
        loop {
            for report in sync_disks(options, &mut link, &mut disks, &stop)? {
                on_scan(&report);
            }
            for disk in &mut disks {
                disk.mode = SyncMode::Resync;
            }
            let next = std::time::Instant::now() + interval;
            while std::time::Instant::now() < next {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(());
                }
                link.poll(Duration::from_millis(100))?;
            }
        }
    })();
    match result {
        Err(AgentError::Stopped) => Ok(()),
        other => other,
    }
}

fn connect_for_sync(
    options: &AgentOptions,
    reconnect_timeout: Duration,
    stop: &Arc<AtomicBool>,
) -> Result<(Link, Vec<OpenDisk>), AgentError> {
    let mut disks = Vec::with_capacity(options.disks.len());
    for source in &options.disks {
        disks.push(open_disk(options, source)?);
    }
    let link_disks = disks
        .iter()
        .map(|disk| LinkDisk {
            name: disk.source.name.clone(),
            generation: wire::generation_from_hex(&disk.state.generation)
                .expect("validated on load"),
            size_bytes: disk.size_bytes,
            take_over: options.take_over,
            fresh: disk.state.fresh,
        })
        .collect();
    let policy = LinkPolicy {
        window_bytes_max: options.window_bytes,
        reconnect_timeout,
        up: Arc::new(AtomicBool::new(false)),
        stop: Arc::clone(stop),
        resync_on_loss: false,
        tls: options.tls.clone(),
    };
    let link = Link::connect(options.relay, hostname(), link_disks, policy)?;
    for disk in &mut disks {
        state::mark_sent(&disk.state_path, &mut disk.state)?;
    }
    Ok((link, disks))
}

fn sync_disks(
    options: &AgentOptions,
    link: &mut Link,
    disks: &mut [OpenDisk],
    stop: &AtomicBool,
) -> Result<Vec<DiskReport>, AgentError> {
    let limits = options.sync_limits();
    let mut reports = Vec::with_capacity(disks.len());
    for (index, disk) in disks.iter_mut().enumerate() {
        let progress =
            progress_bar(options.progress, &disk.source.name, disk.size_bytes, disk.mode);
        let mut report = DiskSync {
            link,
            disk: index,
            name: &disk.source.name,
            source: disk.reader.as_source(),
            size_bytes: disk.size_bytes,
            limits,
            progress: &progress,
            stop,
        }
        .run(disk.mode)?;
        // The end of a sync is a recovery point at the target: the source as read, which is
        // consistent if nothing wrote to it during the sync (a one-shot copy or a scan).
        sync::send_marker(link, index, wire::MarkerKind::Crash, 0)?;
        link.wait_replicated()?;
        let size = disk.size_bytes;
        sync::report_state(link, index, wire::DiskStateKind::Synced, size, size)?;
        report.replicated_seq = link.replicated_seq(index);
        progress.finish_and_clear();
        disk.state.synced = true;
        disk.state.synced_link = disk.reader.synced_link();
        state::store(&disk.state_path, &disk.state)?;
        reports.push(report);
    }
    Ok(reports)
}

/// An open source, as a sync reads it.
enum Reader {
    Raw(File),
    Vmdk(vmdk_source::VmdkSource),
}

impl Reader {
    fn as_source(&self) -> &dyn sync::SourceRead {
        match self {
            Reader::Raw(file) => file,
            Reader::Vmdk(disk) => disk,
        }
    }

    /// What a later snapshot sync continues from: the newest link's content id.
    fn synced_link(&self) -> Option<String> {
        match self {
            Reader::Raw(_) => None,
            Reader::Vmdk(disk) => disk.top_cid(),
        }
    }
}

/// Opens a source disk (read-write for the tap, which applies writes to it) and its size.
fn open_source(source: &DiskSource, writable: bool) -> Result<(File, u64), AgentError> {
    let file = std::fs::OpenOptions::new().read(true).write(writable).open(&source.path).map_err(
        |error| AgentError::Io {
            action: if writable { "open source disk read-write" } else { "open source disk" },
            path: source.path.clone(),
            source: error,
        },
    )?;
    let size_bytes = fsio::size_of(&file).map_err(|error| AgentError::Io {
        action: "get the size of",
        path: source.path.clone(),
        source: error,
    })?;
    Ok((file, size_bytes))
}

fn open_disk(options: &AgentOptions, source: &DiskSource) -> Result<OpenDisk, AgentError> {
    let (reader, size_bytes) = match source.format {
        SourceFormat::Raw => {
            let (file, size_bytes) = open_source(source, false)?;
            (Reader::Raw(file), size_bytes)
        }
        SourceFormat::Vmdk => {
            let disk = vmdk_source::VmdkSource::open(&source.name, &source.path)?;
            let size_bytes = disk.capacity_bytes();
            (Reader::Vmdk(disk), size_bytes)
        }
    };
    let state_path = state::state_path(&options.state_dir, &source.name);
    let (state, mode) = match state::load(&state_path)? {
        Some(_) | None if options.take_over => {
            (state::take_over(&state_path, source, size_bytes)?, SyncMode::Resync)
        }
        Some(existing) => {
            existing.generation_bytes(&state_path)?;
            (existing, SyncMode::Resync)
        }
        None => {
            let fresh = state::DiskStateFile::new(source.path.clone(), size_bytes);
            // Persist the generation before any byte leaves, so a crash cannot fork history.
            state::store(&state_path, &fresh)?;
            (fresh, SyncMode::Full)
        }
    };
    Ok(OpenDisk { source: source.clone(), reader, size_bytes, mode, state_path, state })
}

fn progress_bar(
    enabled: bool,
    name: &str,
    size_bytes: u64,
    mode: SyncMode,
) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(size_bytes);
    let verb = match mode {
        SyncMode::Full => "initial sync",
        SyncMode::Resync => "resync",
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{name} {verb}"));
    bar
}

/// This machine's host name (the default node name).
pub fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    let name = if name.is_empty() { "agent" } else { name };
    name.chars().take(wire::limits::NAME_BYTES_MAX).collect()
}
