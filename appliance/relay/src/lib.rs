//! The relay, siterelay's process server (design.md §4). One thread runs an `io_uring` event
//! loop (crate `uring`, built on `io-uring` directly: tokio-uring is unmaintained and loses
//! stream bytes when an in-flight future is dropped). The loop accepts agents, stages their
//! frames in the cache journal, acks them once a group commit made them durable, and forwards
//! the durable records to the target, freeing cache segments once the target acked them.
//!
//! Connections are byte buffers in, byte buffers out (`wire::FrameReader`); no protocol logic
//! touches a socket, so TLS can wrap the streams later without restructuring.

mod cache;
mod disks;
mod error;
mod event_loop;
mod groups;
mod pool;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use error::RelayError;
pub use event_loop::Relay;
pub use groups::GroupOptions;

#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub listen: SocketAddr,
    pub target: SocketAddr,
    pub cache_dir: PathBuf,
    pub cache_bytes_max: u64,
    pub segment_bytes: u64,
    pub compression_level: i32,
    /// Compression threads; 0 = one per CPU.
    pub compression_threads: usize,
    pub group_commit_bytes_max: usize,
    pub agents_max: usize,
    pub disks_max: usize,
    pub queue_depth: u32,
    pub heartbeat_secs: u64,
    /// Consistency groups whose points the relay coordinates.
    pub groups: Vec<GroupOptions>,
    /// The relay's CA, which authenticates its agents and operators; `None` runs plaintext.
    pub tls: Option<std::sync::Arc<pki::Authority>>,
    /// The credential registered with the target; `None` connects plaintext.
    pub upstream_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Encrypts the cache journal's records (AES-256-GCM); `None` stores them as they are.
    pub at_rest: Option<std::sync::Arc<journal::RecordKey>>,
}
