//! Compression workers. zstd is the relay's most expensive step (level 1 runs at roughly
//! 150 MB/s on log-like text on one core), so batches are compressed on a small thread pool
//! while the event loop keeps receiving. Each job carries a ticket; the event loop stages
//! finished records in ticket order, so the cache journal keeps arrival order.

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use wire::{Compression, Frame, FrameType, RawFrame};

/// A validated, uncompressed `Writes` frame body to compress and wrap as a journal record.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) ticket: u64,
    pub(crate) disk: usize,
    pub(crate) seq: u64,
    /// `wire::encode_stored` prefix (the disk's identity).
    pub(crate) stored_prefix: Vec<u8>,
    pub(crate) body: Vec<u8>,
}

/// A finished journal record.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) ticket: u64,
    pub(crate) disk: usize,
    pub(crate) seq: u64,
    pub(crate) record: Vec<u8>,
    pub(crate) stored_payload_bytes: usize,
}

/// Recycled byte buffers. Frames are about 1 MiB: allocating and freeing one per frame would
/// map and unmap memory each time (page faults on the hot path) and, across threads, grow
/// allocator arenas; recycling keeps both flat.
#[derive(Debug, Default, Clone)]
pub(crate) struct Buffers {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Buffers kept for reuse; more than the jobs and records that can be in flight at once.
const FREE_BUFFERS_MAX: usize = 4;

impl Buffers {
    pub(crate) fn take(&self) -> Vec<u8> {
        self.free.lock().expect("buffer list lock").pop().unwrap_or_default()
    }

    pub(crate) fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut free = self.free.lock().expect("buffer list lock");
        if free.len() < FREE_BUFFERS_MAX {
            free.push(buf);
        }
    }
}

pub(crate) struct Pool {
    pub(crate) buffers: Buffers,
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    wake: Arc<uring::EventFd>,
    threads: Vec<JoinHandle<()>>,
    pub(crate) in_flight: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads.len())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Pool {
    pub(crate) fn start(
        threads: usize,
        level: i32,
        key: Option<Arc<journal::RecordKey>>,
    ) -> std::io::Result<Pool> {
        assert!(threads > 0, "at least one compression thread");
        let wake = Arc::new(uring::EventFd::new()?);
        let (job_sender, job_receiver) = mpsc::channel::<Job>();
        let (done_sender, done) = mpsc::channel();
        let job_receiver = Arc::new(Mutex::new(job_receiver));
        let buffers = Buffers::default();
        let mut handles = Vec::with_capacity(threads);
        for index in 0..threads {
            let jobs = job_receiver.clone();
            let done = done_sender.clone();
            let wake = wake.clone();
            let buffers = buffers.clone();
            let key = key.clone();
            let handle = std::thread::Builder::new()
                .name(format!("relay-zstd-{index}"))
                .spawn(move || work(&jobs, &done, &wake, &buffers, level, key.as_deref()))?;
            handles.push(handle);
        }
        Ok(Pool { buffers, jobs: Some(job_sender), done, wake, threads: handles, in_flight: 0 })
    }

    pub(crate) fn wake_fd(&self) -> std::os::fd::RawFd {
        self.wake.raw_fd()
    }

    pub(crate) fn submit(&mut self, job: Job) {
        self.jobs
            .as_ref()
            .expect("pool running")
            .send(job)
            .expect("compression workers run until the pool is dropped");
        self.in_flight += 1;
    }

    /// Moves every finished record into `out`.
    pub(crate) fn drain(&mut self, out: &mut Vec<Done>) {
        loop {
            match self.done.try_recv() {
                Ok(done) => {
                    self.in_flight -= 1;
                    out.push(done);
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => panic!("a compression worker died"),
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None; // Workers see the channel close and return.
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

fn work(
    jobs: &Mutex<Receiver<Job>>,
    done: &Sender<Done>,
    wake: &uring::EventFd,
    buffers: &Buffers,
    level: i32,
    key: Option<&journal::RecordKey>,
) {
    let mut compressor = wire::BatchCompressor::new(level);
    loop {
        let job = match jobs.lock().expect("job queue lock").recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let mut record = buffers.take();
        let stored_payload_bytes = build_record(&mut compressor, &job, &mut record, key);
        buffers.give(job.body);
        let finished =
            Done { ticket: job.ticket, disk: job.disk, seq: job.seq, record, stored_payload_bytes };
        if done.send(finished).is_err() {
            return;
        }
        wake.notify();
    }
}

/// The journal record for a job, built in place: header, stored prefix, the `Writes` fields,
/// then the payload, compressed straight into the record when that is worth it.
fn build_record(
    compressor: &mut wire::BatchCompressor,
    job: &Job,
    record: &mut Vec<u8>,
    key: Option<&journal::RecordKey>,
) -> usize {
    let decoded = RawFrame { frame_type: FrameType::Writes, body: &job.body }.decode();
    let Ok(Frame::Writes(writes)) = decoded else {
        unreachable!("the event loop submits only validated Writes bodies");
    };
    record.clear();
    let start = journal::begin_record(FrameType::Writes as u8, record);
    record.extend_from_slice(&job.stored_prefix);
    let body_at = record.len();
    wire::encode_writes_head(&writes, Compression::Zstd, record);
    let payload_at = record.len();
    let stored_payload_bytes = if compressor.compress_append(writes.payload, record) {
        record.len() - payload_at
    } else {
        record.truncate(body_at);
        record.extend_from_slice(&job.body);
        writes.payload.len()
    };
    if let Some(key) = key {
        key.encrypt_body(record, start);
    }
    journal::seal_record(record, start).expect("stored frames fit a journal record");
    stored_payload_bytes
}
