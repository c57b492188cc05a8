use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad metadata {}: {reason}", path.display())]
    Metadata { path: PathBuf, reason: String },
    #[error("journal {}: {source}", path.display())]
    Journal {
        path: PathBuf,
        #[source]
        source: journal::JournalError,
    },
    #[error("disk {disk}: {source}")]
    Wire {
        disk: String,
        #[source]
        source: wire::WireError,
    },
    #[error("disk {disk}: write ends at byte {end}, past the disk size {size}")]
    BeyondEnd { disk: String, end: u64, size: u64 },
    #[error("disk {disk}: generation {theirs} does not match the replica's generation {ours}; refusing to mix histories (if this source is the one to keep, run its agent with --take-over: the replica is then resynced to it)")]
    GenerationMismatch { disk: String, ours: String, theirs: String },
    #[error("disk {disk} is failed over at this target (point {point}, {phase}); replication to it stays stopped until the disk is reprotected")]
    FailedOver { disk: String, point: u64, phase: &'static str },
    #[error("disk {disk} is out of service on this target: {reason}")]
    Broken { disk: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
