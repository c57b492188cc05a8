//! The recovery-site role (design.md §5): receives frames from relays, makes them durable in a
//! per-disk redo journal, acks, and applies them into one sparse raw replica image per disk.
//!
//! Threads: one per connection. A disk is a `Mutex<Replica>`, so two connections (an old and a
//! reconnected relay link) never interleave inside one disk's journal.

mod control;
mod error;
mod failover;
mod groups;
mod index;
mod pointlog;
mod recovery;
mod replica;
mod session;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use error::TargetError;
pub use points::retention::Policy as RetentionPolicy;
pub use replica::RetentionOptions;
use replica::{FailoverPhase, Replica};

#[derive(Debug, Clone)]
pub struct TargetOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Staged bytes per connection after which a group commit happens.
    pub group_commit_bytes_max: usize,
    pub retention: RetentionOptions,
    /// The site CA that authenticates peers, or `None` to run plaintext (an explicit choice).
    pub tls: Option<Arc<pki::Authority>>,
    /// Encrypts the journals' records (AES-256-GCM); `None` stores them as they are.
    pub at_rest: Option<Arc<journal::RecordKey>>,
}

/// Registers an existing image (the original source, for a failback) as the replica of disk
/// `name` under `data_dir`, without copying it: `replicas/NAME.img` becomes a symbolic link to
/// it. Its generation is unknown (all zeroes), so the agent that replicates into it must take
/// it over (`agent --take-over`), which compares checksums and moves only differing blocks.
/// Run it while no target uses `data_dir`.
pub fn adopt(data_dir: &Path, name: &str, image: &Path) -> Result<(), TargetError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| TargetError::Io { action, path, source }
    };
    let image = std::fs::canonicalize(image).map_err(io("find", image))?;
    let metadata = std::fs::metadata(&image).map_err(io("stat", &image))?;
    if !metadata.is_file() {
        return Err(TargetError::Metadata {
            path: image,
            reason: "is not a regular file (adopting block devices is not supported)".into(),
        });
    }
    let disk_dir = data_dir.join("disks").join(name);
    if disk_dir.join("meta.json").exists() {
        return Err(TargetError::Metadata {
            path: disk_dir,
            reason: format!("disk {name} already exists on this target; adopt needs a new name"),
        });
    }
    replica::Replica::adopt(data_dir, name, &image, metadata.len())
}

/// Where the replica of disk `name` lives under a target's data directory.
pub fn replica_path(data_dir: &Path, name: &str) -> PathBuf {
    replica::image_path(data_dir, name)
}

#[derive(Debug)]
pub(crate) struct Store {
    data_dir: PathBuf,
    retention: RetentionOptions,
    /// Seals the journals' records at rest (`[security] encrypt_at_rest`).
    key: Option<Arc<journal::RecordKey>>,
    disks: Mutex<HashMap<String, Arc<Mutex<Replica>>>>,
    /// Disks that could not be opened, with the reason: refused until an operator repairs
    /// them, and never recreated over (that would destroy the replica).
    broken: HashMap<String, String>,
    jobs: Mutex<failover::Jobs>,
    /// Failed-over disks being served, by disk name.
    exports: Mutex<HashMap<String, nbdserve::Running>>,
    groups: Mutex<groups::ConfirmedGroups>,
    /// Relays connected now, by connection, as their Hellos named them.
    peers: Mutex<std::collections::BTreeMap<u64, wire::Identity>>,
}

impl Store {
    /// Opens every disk found in the data directory, replaying journals left by a crash.
    fn open(
        data_dir: &Path,
        retention: RetentionOptions,
        key: Option<Arc<journal::RecordKey>>,
    ) -> Result<Store, TargetError> {
        let disks_dir = data_dir.join("disks");
        std::fs::create_dir_all(&disks_dir).map_err(|source| TargetError::Io {
            action: "create directory",
            path: disks_dir.clone(),
            source,
        })?;
        let mut disks = HashMap::new();
        let mut broken = HashMap::new();
        let entries = std::fs::read_dir(&disks_dir).map_err(|source| TargetError::Io {
            action: "list",
            path: disks_dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| TargetError::Io {
                action: "list",
                path: disks_dir.clone(),
                source,
            })?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            match Replica::open_existing(data_dir, &name, retention, key.clone()) {
                Ok(Some(replica)) => {
                    disks.insert(name, Arc::new(Mutex::new(replica)));
                }
                Ok(None) => {}
                Err(error) => {
                    log::error!("replica {name} cannot be opened and is refused: {error}");
                    broken.insert(name, error.to_string());
                }
            }
        }
        failover::remove_leftovers(data_dir).map_err(|source| TargetError::Io {
            action: "remove old job files under",
            path: failover::jobs_dir(data_dir),
            source,
        })?;
        Ok(Store {
            data_dir: data_dir.to_path_buf(),
            retention,
            key,
            disks: Mutex::new(disks),
            broken,
            jobs: Mutex::new(failover::Jobs::default()),
            exports: Mutex::new(HashMap::new()),
            peers: Mutex::new(std::collections::BTreeMap::new()),
            groups: Mutex::new(groups::ConfirmedGroups::open(data_dir).map_err(|source| {
                TargetError::Io { action: "read", path: data_dir.join("groups.json"), source }
            })?),
        })
    }

    /// The disk named in `info`, created if new; refuses a different generation.
    pub(crate) fn attach(
        &self,
        info: &wire::DiskInfo<'_>,
    ) -> Result<Arc<Mutex<Replica>>, TargetError> {
        if let Some(reason) = self.broken.get(info.name) {
            return Err(TargetError::Broken {
                disk: info.name.to_string(),
                reason: reason.clone(),
            });
        }
        let mut disks = self.disks.lock().expect("store lock");
        if let Some(existing) = disks.get(info.name) {
            let mut replica = existing.lock().expect("replica lock");
            if let Some(record) = &replica.failover {
                // A disk given back to protection (failback, or the first protection of a
                // committed copy) is replicated into again when an agent takes it over.
                let reprotectable =
                    matches!(record.phase, FailoverPhase::Committed | FailoverPhase::Released);
                if !(info.take_over && reprotectable) {
                    return Err(TargetError::FailedOver {
                        disk: info.name.to_string(),
                        point: record.point,
                        phase: record.phase.as_str(),
                    });
                }
                recovery::end(self, &mut replica)?;
            }
            if replica.generation != info.generation && info.take_over {
                replica.take_over(info.generation)?;
            }
            if replica.generation != info.generation {
                return Err(TargetError::GenerationMismatch {
                    disk: info.name.to_string(),
                    ours: wire::generation_to_hex(&replica.generation),
                    theirs: wire::generation_to_hex(&info.generation),
                });
            }
            replica.resize(info.size_bytes)?;
            return Ok(existing.clone());
        }
        let replica = Replica::create(
            &self.data_dir,
            info.name,
            info.generation,
            info.size_bytes,
            self.retention,
            self.key.clone(),
        )?;
        let replica = Arc::new(Mutex::new(replica));
        disks.insert(info.name.to_string(), replica.clone());
        Ok(replica)
    }

    /// The status document; `plaintext`: this target runs without TLS (`status` warns).
    pub(crate) fn status_json(&self, plaintext: bool) -> String {
        let disks = self.disks.lock().expect("store lock");
        let mut names: Vec<&String> = disks.keys().collect();
        names.sort();
        let list: Vec<serde_json::Value> = names
            .into_iter()
            .map(|name| {
                let replica = disks[name].lock().expect("replica lock");
                serde_json::json!({
                    "name": replica.name,
                    "state": "replica",
                    "size_bytes": replica.size_bytes,
                    "durable_seq": replica.durable_seq,
                    "applied_seq": replica.base_seq,
                    "journal_bytes": replica.journal_bytes(),
                    "points": replica.points.points.len(),
                    "failover": replica.failover.as_ref().map(|record| record.phase.as_str()),
                    "bytes_applied": replica.bytes_applied,
                    "replica_path": replica.image_path,
                    "consistent_seq": replica.consistent.map(|point| point.seq),
                    "consistent_time_unix_ms": replica.consistent.map(|point| point.time_unix_ms),
                    "consistent_points": replica.consistent_points,
                })
            })
            .collect();
        let identity = wire::identity();
        let relays: Vec<serde_json::Value> = self
            .peers
            .lock()
            .expect("peers lock")
            .values()
            .map(|id| {
                serde_json::json!({
                    "node": id.node_id, "site": id.site_id, "version": id.product_version,
                })
            })
            .collect();
        serde_json::json!({
            "role": "target",
            "plaintext": plaintext,
            "version": identity.map_or(env!("CARGO_PKG_VERSION"), |id| id.product_version.as_str()),
            "site": identity.map_or("", |id| id.site_id.as_str()),
            "node": identity.map_or("", |id| id.node_id.as_str()),
            "relays": relays,
            "disks": list,
        })
        .to_string()
    }
}

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Between two maintenance passes over every disk (retention, then pruning steps).
const MAINTAIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl Store {
    /// Retention and pruning for every disk, one bounded step at a time so ingestion of a
    /// disk never waits long for its lock. Runs until the process ends.
    fn maintain_forever(&self) {
        loop {
            let replicas: Vec<Arc<Mutex<Replica>>> =
                self.disks.lock().expect("store lock").values().cloned().collect();
            let mut more = false;
            for replica in replicas {
                let mut replica = replica.lock().expect("replica lock");
                match replica.maintain(now_unix_ms()) {
                    Ok(left) => more |= left,
                    Err(error) => log::error!("replica {}: pruning failed: {error}", replica.name),
                }
            }
            if !more {
                std::thread::sleep(MAINTAIN_INTERVAL);
            }
        }
    }
}

/// A bound, recovered target, ready to serve.
#[derive(Debug)]
pub struct Target {
    listener: TcpListener,
    store: Arc<Store>,
    group_commit_bytes_max: usize,
    tls: Option<Arc<pki::Authority>>,
}

impl Target {
    pub fn bind(options: &TargetOptions) -> Result<Target, TargetError> {
        let store =
            Arc::new(Store::open(&options.data_dir, options.retention, options.at_rest.clone())?);
        recovery::resume_all(&store);
        let listener = fsio::bind_listener(options.listen)
            .map_err(|source| TargetError::Listen { addr: options.listen, source })?;
        Ok(Target {
            listener,
            store,
            group_commit_bytes_max: options.group_commit_bytes_max,
            tls: options.tls.clone(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves connections until the process ends.
    pub fn serve(self) {
        let security = if self.tls.is_some() { "TLS 1.3, mutual" } else { "PLAINTEXT" };
        log::info!(
            "listening on {} ({security}; data dir {})",
            self.local_addr(),
            self.store.data_dir.display()
        );
        if self.tls.is_none() {
            log::warn!("running without TLS ([security] plaintext = true): anyone who reaches the port can replicate, read status and run failovers");
        }
        let store = self.store.clone();
        let spawned = std::thread::Builder::new().name("target-maintain".into()).spawn(move || {
            store.maintain_forever();
        });
        if let Err(error) = spawned {
            log::error!("cannot start the maintenance thread (points will not be pruned): {error}");
        }
        let mut connection_id = 0u64;
        let connections = Arc::new(AtomicUsize::new(0));
        for stream in self.listener.incoming() {
            let stream = match stream {
                Ok(stream) => stream,
                Err(error) => {
                    log::warn!("accept failed: {error}");
                    continue;
                }
            };
            connection_id += 1;
            // One thread per connection, so their number is capped: a flood of connections
            // is refused by name instead of exhausting threads and memory.
            let open = Arc::clone(&connections);
            if open.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
                open.fetch_sub(1, Ordering::SeqCst);
                refuse_connection(connection_id, stream, self.tls.is_some());
                continue;
            }
            let store = self.store.clone();
            let staged_bytes_max = self.group_commit_bytes_max;
            let tls = self.tls.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("target-conn-{connection_id}"))
                .spawn(move || {
                    session::serve(connection_id, stream, &store, staged_bytes_max, tls);
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(error) = spawned {
                connections.fetch_sub(1, Ordering::SeqCst);
                log::error!("cannot start a thread for connection {connection_id}: {error}");
            }
        }
    }
}

/// Connections a target serves at once (relays, operator tools): each has a thread.
pub const CONNECTIONS_MAX: usize = 256;

/// Tells a connection over the cap why it is closed, without waiting on it. A TLS peer is
/// only closed: answering it would need a handshake, a thread's worth of work the cap is there
/// to refuse.
fn refuse_connection(id: u64, stream: TcpStream, tls: bool) {
    let peer = stream.peer_addr().map_or_else(|_| "?".to_string(), |addr| addr.to_string());
    let message = format!("target serves at most {CONNECTIONS_MAX} connections");
    log::warn!("connection {id} from {peer}: refused: {message}");
    if tls {
        return;
    }
    let mut out = Vec::new();
    let frame = wire::Frame::Error { code: wire::error_code::LIMIT, message: &message };
    if frame.encode(&mut out).is_ok() {
        let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
        let _ = std::io::Write::write_all(&mut &stream, &out);
    }
}
