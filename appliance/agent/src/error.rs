use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("relay {addr} unreachable for {seconds} s (last error: {last_error}); giving up")]
    RelayUnreachable { addr: std::net::SocketAddr, seconds: u64, last_error: String },
    #[error("the target acknowledged nothing for {seconds} s; {frames} frames are durable in the relay's cache and the relay keeps forwarding them (check the relay's status and its link to the target)")]
    TargetStalled { frames: u64, seconds: u64 },
    #[error("the target answered no checksum request for {seconds} s, so a resync cannot compare blocks (check the relay's status and its link to the target)")]
    TargetSilent { seconds: u64 },
    #[error("relay refused: {0}")]
    Refused(String),
    #[error("protocol error from relay: {0}")]
    Protocol(String),
    #[error("disk {disk}: the relay holds sequence {relay_seq} but we still need to resend from {needed}: the relay lost acknowledged data (cache loss); run the agent again to resync")]
    RelayLostData { disk: String, relay_seq: u64, needed: u64 },
    #[error("bad state file {}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    #[error("stopped")]
    Stopped,
    #[error("NBD write tap: {0}")]
    Tap(String),
    #[error("disk {disk}: {reason}")]
    Disk { disk: String, reason: String },
    #[error("{0}")]
    Wire(#[from] wire::WireError),
}
