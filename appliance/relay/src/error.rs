use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cache journal {}: {source}", path.display())]
    Journal {
        path: PathBuf,
        #[source]
        source: journal::JournalError,
    },
    #[error("cache segment {} is damaged at byte {offset} although newer segments follow: {reason}; refusing to start (acknowledged data would be lost)", path.display())]
    DamagedSealedSegment { path: PathBuf, offset: u64, reason: String },
    #[error("{} at offset {offset}: {source}; start the relay with the key that wrote the cache ([security] at_rest_key_file), or move the cache directory away (its unforwarded writes are then lost and the agents resync)", path.display())]
    Sealed {
        path: PathBuf,
        offset: u64,
        #[source]
        source: journal::SealError,
    },
    #[error("cache record at {} byte {offset}: {source}", path.display())]
    Record {
        path: PathBuf,
        offset: u64,
        #[source]
        source: wire::WireError,
    },
    #[error("cache {}: {reason}", dir.display())]
    CacheKey { dir: PathBuf, reason: String },
    #[error("bad cache state file {}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    #[error(transparent)]
    Uring(#[from] uring::UringError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cache write failed on {}: {source}; stopping so that nothing unwritten is acknowledged", path.display())]
    CacheWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io_error(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> RelayError {
    let path = path.to_path_buf();
    move |source| RelayError::Io { action, path, source }
}
