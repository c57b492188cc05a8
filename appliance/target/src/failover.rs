//! Test failover and materialize (design.md §5): a recovery point exported read-write over
//! NBD with copy-on-write, or copied out to a raw or qcow2 file. The replica, its journal and
//! its replication are untouched: writes land in an overlay file of the job, and the point
//! is pinned so retention keeps it (and everything it reads) until the job is cleaned up.
//!
//! Jobs live in the target's memory. A target restart ends them; their leftovers (overlays,
//! unfinished `.partial` outputs of materialize) are removed when it starts again.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use points::{ExtentMap, Piece, StoredPoint};

use crate::index::PointView;

/// Jobs a target runs at once (test failovers and materializations together).
pub(crate) const JOBS_MAX: usize = 64;
/// NBD clients per test-failover export.
const EXPORT_CONNECTIONS_MAX: usize = 16;
const COPY_CHUNK_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobKind {
    TestFailover,
    Materialize,
}

impl JobKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JobKind::TestFailover => "test-failover",
            JobKind::Materialize => "materialize",
        }
    }
}

/// A job's progress, for `jobs` listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobState {
    Running,
    /// A test failover's export is serving.
    Ready,
    Done,
    Failed(String),
}

impl JobState {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            JobState::Running => "running",
            JobState::Ready => "ready",
            JobState::Done => "done",
            JobState::Failed(_) => "failed",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) kind: JobKind,
    pub(crate) disk: String,
    pub(crate) point: StoredPoint,
    pub(crate) state: JobState,
    pub(crate) log: Vec<String>,
    pub(crate) export: Option<nbdserve::Running>,
    pub(crate) export_uri: Option<String>,
    pub(crate) output: Option<PathBuf>,
    pub(crate) dir: PathBuf,
    pub(crate) done_bytes: u64,
    pub(crate) total_bytes: u64,
    /// The point is pinned at its replica until the job is cleaned up or finishes.
    pub(crate) pinned: bool,
}

impl Job {
    pub(crate) fn note(&mut self, line: String) {
        log::info!("job {} ({} of {}): {line}", self.id, self.kind.as_str(), self.disk);
        self.log.push(line);
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "kind": self.kind.as_str(),
            "disk": self.disk,
            "point": self.point.id,
            "point_time_unix_ms": self.point.time_unix_ms,
            "point_kind": self.point.kind.as_str(),
            "state": self.state.as_str(),
            "error": match &self.state { JobState::Failed(reason) => Some(reason.clone()), _ => None },
            "export": self.export_uri,
            "output": self.output,
            "done_bytes": self.done_bytes,
            "total_bytes": self.total_bytes,
            "log": self.log,
        })
    }
}

#[derive(Debug, Default)]
pub(crate) struct Jobs {
    pub(crate) next_id: u64,
    pub(crate) jobs: BTreeMap<u64, Arc<Mutex<Job>>>,
}

/// Where a target keeps its jobs' files.
pub(crate) fn jobs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("jobs")
}

/// The file in a job's directory naming its unfinished output.
const PARTIAL_RECORD: &str = "partial-output";

/// Records (durably) that the job writes `output` through its `.partial` file.
pub(crate) fn record_partial(job_dir: &Path, output: &Path) -> io::Result<()> {
    fs::create_dir_all(job_dir)?;
    let partial = partial_path(output);
    let text = partial.to_str().ok_or_else(|| io::Error::other("output path is not UTF-8"))?;
    fsio::write_atomic(&job_dir.join(PARTIAL_RECORD), text.as_bytes())
}

/// Removes what jobs of an earlier run of the target left behind: their directories, and the
/// unfinished `.partial` outputs of materializations they record.
pub(crate) fn remove_leftovers(data_dir: &Path) -> io::Result<()> {
    let dir = jobs_dir(data_dir);
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let Ok(text) = fs::read_to_string(entry.path().join(PARTIAL_RECORD)) else { continue };
            let partial = PathBuf::from(text.trim());
            if partial.extension().is_some_and(|ext| ext == "partial") {
                match fs::remove_file(&partial) {
                    Ok(()) => log::warn!(
                        "removed {}: a materialization the previous target run did not finish",
                        partial.display()
                    ),
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => log::error!("cannot remove {}: {error}", partial.display()),
                }
            }
        }
    }
    match fs::remove_dir_all(&dir) {
        Ok(()) => {
            log::warn!("removed the files of jobs that ended with the previous target run");
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// A point served over NBD: reads come from the overlay where the client wrote, else from the
/// point; writes go to the overlay only.
#[derive(Debug)]
pub(crate) struct CowPoint {
    name: String,
    view: PointView,
    overlay: Option<File>,
    written: Mutex<ExtentMap<()>>,
    /// For a failover (not a test): every written range, appended, so the overlay's map
    /// survives a target restart. Synced with the overlay on FLUSH.
    map_log: Option<Mutex<File>>,
}

/// Bytes of one overlay map record: offset and length, little endian.
const MAP_RECORD_BYTES: usize = 16;

impl CowPoint {
    /// A writable export with a new overlay at `overlay_path`, or a read-only one without.
    pub(crate) fn new(
        name: String,
        view: PointView,
        overlay_path: Option<&Path>,
    ) -> io::Result<CowPoint> {
        let overlay = match overlay_path {
            Some(path) => {
                let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
                file.set_len(view.size_bytes)?;
                Some(file)
            }
            None => None,
        };
        Ok(CowPoint { name, view, overlay, written: Mutex::new(ExtentMap::new()), map_log: None })
    }

    /// A writable export whose overlay and map persist in `dir` (created or reopened): what a
    /// failed-over disk is served from until it is committed.
    pub(crate) fn persistent(name: String, view: PointView, dir: &Path) -> io::Result<CowPoint> {
        fs::create_dir_all(dir)?;
        let overlay = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("overlay.img"))?;
        overlay.set_len(view.size_bytes)?;
        let map_path = dir.join("overlay.map");
        let mut written = ExtentMap::new();
        for (offset, len) in read_map(&map_path)? {
            written.insert(offset, len, ());
        }
        let map_log = OpenOptions::new().create(true).append(true).open(&map_path)?;
        fsio::fsync_dir(dir)?;
        Ok(CowPoint {
            name,
            view,
            overlay: Some(overlay),
            written: Mutex::new(written),
            map_log: Some(Mutex::new(map_log)),
        })
    }

    fn overlay(&self) -> io::Result<&File> {
        self.overlay
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "read-only export"))
    }

    fn record_written(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut written = self.written.lock().expect("overlay map lock");
        if let Some(log) = &self.map_log {
            let mut record = [0u8; MAP_RECORD_BYTES];
            record[..8].copy_from_slice(&offset.to_le_bytes());
            record[8..].copy_from_slice(&len.to_le_bytes());
            std::io::Write::write_all(&mut *log.lock().expect("map log lock"), &record)?;
        }
        written.insert(offset, len, ());
        Ok(())
    }
}

/// The ranges an overlay map log records; a torn final record (a crash mid-append, never
/// acknowledged as flushed) is ignored.
pub(crate) fn read_map(path: &Path) -> io::Result<Vec<(u64, u64)>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    Ok(bytes
        .chunks_exact(MAP_RECORD_BYTES)
        .map(|record| {
            let offset = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
            let len = u64::from_le_bytes(record[8..].try_into().expect("8 bytes"));
            (offset, len)
        })
        .collect())
}

impl nbdserve::Backend for CowPoint {
    fn export_count(&self) -> usize {
        1
    }

    fn export_name(&self, _export: usize) -> &str {
        &self.name
    }

    fn export_size(&self, _export: usize) -> u64 {
        self.view.size_bytes
    }

    fn writable(&self, _export: usize) -> bool {
        self.overlay.is_some()
    }

    fn read(&self, _export: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let pieces = self.written.lock().expect("overlay map lock").read(offset, buf.len() as u64);
        let mut at = 0usize;
        for piece in pieces {
            match piece {
                Piece::Stored { offset, len, .. } => {
                    self.overlay()?.read_exact_at(&mut buf[at..at + len as usize], offset)?;
                    at += len as usize;
                }
                Piece::Base { offset, len } => {
                    self.view.read_at(&mut buf[at..at + len as usize], offset)?;
                    at += len as usize;
                }
            }
        }
        Ok(())
    }

    fn write(&self, _export: usize, offset: u64, data: Vec<u8>) -> io::Result<()> {
        self.overlay()?.write_all_at(&data, offset)?;
        self.record_written(offset, data.len() as u64)
    }

    fn zero(&self, _export: usize, offset: u64, len: u64) -> io::Result<()> {
        fsio::zero_range(self.overlay()?, offset, len)?;
        self.record_written(offset, len)
    }

    fn flush(&self, _export: usize) -> io::Result<()> {
        if let Some(overlay) = &self.overlay {
            overlay.sync_data()?;
        }
        if let Some(log) = &self.map_log {
            log.lock().expect("map log lock").sync_data()?;
        }
        Ok(())
    }

    fn sync_data(&self, export: usize) -> io::Result<()> {
        self.flush(export)
    }

    fn data_ranges(
        &self,
        _export: usize,
        offset: u64,
        len: u64,
        ranges_max: usize,
    ) -> io::Result<Vec<(u64, u64)>> {
        let pieces = self.written.lock().expect("overlay map lock").read(offset, len);
        let mut ranges = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Stored { offset, len, .. } => ranges.push((offset, len)),
                Piece::Base { offset, len } => {
                    ranges.extend(self.view.data_ranges(offset, len, ranges_max))
                }
            }
            if ranges.len() >= ranges_max {
                break;
            }
        }
        ranges.truncate(ranges_max);
        Ok(ranges)
    }
}

/// A committed failed-over disk: the image itself, read-write.
#[derive(Debug)]
pub(crate) struct PlainImage {
    pub(crate) name: String,
    pub(crate) file: File,
    pub(crate) size_bytes: u64,
}

impl nbdserve::Backend for PlainImage {
    fn export_count(&self) -> usize {
        1
    }

    fn export_name(&self, _export: usize) -> &str {
        &self.name
    }

    fn export_size(&self, _export: usize) -> u64 {
        self.size_bytes
    }

    fn read(&self, _export: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        fsio::read_at_padded(&self.file, buf, offset).map(|_| ())
    }

    fn write(&self, _export: usize, offset: u64, data: Vec<u8>) -> io::Result<()> {
        self.file.write_all_at(&data, offset)
    }

    fn zero(&self, _export: usize, offset: u64, len: u64) -> io::Result<()> {
        fsio::zero_range(&self.file, offset, len)
    }

    fn flush(&self, _export: usize) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_data(&self, _export: usize) -> io::Result<()> {
        self.file.sync_data()
    }

    fn data_ranges(
        &self,
        _export: usize,
        offset: u64,
        len: u64,
        ranges_max: usize,
    ) -> io::Result<Vec<(u64, u64)>> {
        fsio::data_ranges(&self.file, offset, len, ranges_max)
    }
}

/// Starts serving an export at `listen`.
pub(crate) fn start_export<B: nbdserve::Backend + 'static>(
    backend: B,
    listen: &nbdserve::ListenAddr,
) -> io::Result<nbdserve::Running> {
    let server = nbdserve::Server::bind(listen, Arc::new(backend), EXPORT_CONNECTIONS_MAX)?;
    server.spawn()
}

/// Copies `view` into a sparse raw file at `output` (through `output.partial`, renamed when
/// complete and synced), reporting progress through `progress(done_bytes)`.
pub(crate) fn write_raw(
    view: &PointView,
    output: &Path,
    mut progress: impl FnMut(u64),
) -> io::Result<()> {
    let partial = partial_path(output);
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(&partial)?;
    file.set_len(view.size_bytes)?;
    let mut chunk = vec![0u8; COPY_CHUNK_BYTES];
    let mut offset = 0u64;
    while offset < view.size_bytes {
        let len = (view.size_bytes - offset).min(chunk.len() as u64) as usize;
        for (start, range_len) in view.data_ranges(offset, len as u64, usize::MAX) {
            let buf = &mut chunk[..range_len as usize];
            view.read_at(buf, start)?;
            if !wire::is_zero(buf) {
                file.write_all_at(buf, start)?;
            }
        }
        offset += len as u64;
        progress(offset);
    }
    file.sync_all()?;
    fs::rename(&partial, output)?;
    fsio::fsync_dir(output.parent().unwrap_or(Path::new(".")))
}

pub(crate) fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

/// A point as the VMDK writer reads it.
struct PointSource<'a>(&'a PointView);

impl vmdkwrite::ReadAt for PointSource<'_> {
    fn len(&self) -> u64 {
        self.0.size_bytes
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }

    fn data_ranges(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        self.0.data_ranges(offset, len, usize::MAX)
    }
}

/// Writes `view` as a VMDK at `output` (through `.partial`): monolithicSparse, or
/// streamOptimized with an OVF descriptor next to it (`NAME.ovf`) for a VMware-style import.
pub(crate) fn write_vmdk(
    view: &PointView,
    output: &Path,
    stream: bool,
    vm_name: &str,
) -> io::Result<()> {
    let partial = partial_path(output);
    let file_name = output
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| io::Error::other("the output has no UTF-8 file name"))?
        .to_string();
    let options = vmdkwrite::VmdkOptions { file_name: file_name.clone(), ..Default::default() };
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&partial)?;
    let source = PointSource(view);
    let report = if stream {
        vmdkwrite::write_stream_optimized(&source, &mut file, 6, &options)
    } else {
        vmdkwrite::write_monolithic_sparse(&source, &mut file, &options)
    }
    .map_err(|error| io::Error::other(error.to_string()))?;
    file.sync_all()?;
    if stream {
        let ovf =
            vmdkwrite::ovf_descriptor(&vmdkwrite::OvfVm::for_disk(vm_name, &file_name, &report));
        let ovf_path = output.with_extension("ovf");
        fsio::write_atomic(&ovf_path, ovf.as_bytes())?;
    }
    fs::rename(&partial, output)?;
    fsio::fsync_dir(output.parent().unwrap_or(Path::new(".")))
}
