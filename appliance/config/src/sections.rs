//! The configuration sections as Rust types, with their defaults.
//!
//! Every section uses `deny_unknown_fields` so a misspelled key is an error
//! (listing the valid keys) instead of being silently ignored, and `default`
//! so any key may be omitted.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::size::{self, GIB, KIB, MIB};

/// Log verbosity, from least to most verbose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// Normal operational messages.
    #[default]
    Info,
    /// Diagnostic detail.
    Debug,
    /// Everything, including per-request tracing.
    Trace,
}

impl LogLevel {
    /// Every level, in increasing verbosity.
    pub const ALL: [LogLevel; 5] =
        [LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug, LogLevel::Trace];

    /// The spelling used in the configuration file (and CLI flags).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogLevel {
    type Err = String;

    /// Parses the same spellings as the configuration file, for CLI flags.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LogLevel::ALL.into_iter().find(|level| level.as_str() == s).ok_or_else(|| {
            format!("unknown log level `{s}`, expected one of error, warn, info, debug, trace")
        })
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Verbosity of all components.
    pub level: LogLevel,
}

/// The role an appliance image runs (`siterelay appliance run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplianceRole {
    /// The process server: agents send to it, it forwards to the target.
    #[default]
    Relay,
    /// The recovery site: replicas and recovery points.
    Target,
}

impl ApplianceRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplianceRole::Relay => "relay",
            ApplianceRole::Target => "target",
        }
    }
}

/// `[appliance]`: who this node is, for update ordering and cluster membership.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplianceConfig {
    /// What the appliance image runs at boot.
    pub role: ApplianceRole,
    /// The site this node belongs to: nodes of one role at one site form a cluster.
    pub site: String,
    /// This node's name (default: the host name).
    pub node: String,
    /// The update state (slots, trusted root); its active version is the version this node
    /// announces.
    pub update_state_dir: PathBuf,
}

impl Default for ApplianceConfig {
    fn default() -> Self {
        ApplianceConfig {
            role: ApplianceRole::Relay,
            site: String::new(),
            node: String::new(),
            update_state_dir: PathBuf::from("/var/lib/siterelay/update"),
        }
    }
}

/// `[security]`: how roles authenticate each other.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Run without TLS: no authentication, no encryption on the wire. Must be set explicitly;
    /// `status` shows it as a warning.
    pub plaintext: bool,
    /// This node's CA, certificates and registry (see docs/SECURITY.md).
    pub pki_dir: PathBuf,
    /// Encrypt the records of the relay's cache and of the target's journals (AES-256-GCM).
    pub encrypt_at_rest: bool,
    /// The 256-bit key (64 hex digits); empty = `pki_dir/at-rest.key`, created at first start.
    pub at_rest_key_file: PathBuf,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            plaintext: false,
            pki_dir: PathBuf::from("/var/lib/siterelay/pki"),
            encrypt_at_rest: false,
            at_rest_key_file: PathBuf::new(),
        }
    }
}

/// `[relay]`: the middle hop that caches writes durably and forwards them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Where agents connect.
    #[serde(deserialize_with = "deserialize_socket_addr")]
    pub listen: SocketAddr,
    /// The recovery-site target the relay forwards to.
    #[serde(deserialize_with = "deserialize_socket_addr")]
    pub target: SocketAddr,
    /// Directory of the durable write cache.
    pub cache_dir: PathBuf,
    /// Upper bound of the cache size on disk, in bytes.
    #[serde(deserialize_with = "size::deserialize")]
    pub cache_bytes_max: u64,
    /// Size of one cache journal segment, in bytes.
    #[serde(deserialize_with = "size::deserialize")]
    pub segment_bytes: u64,
    /// zstd level for cached data; 0 disables compression.
    pub compression_level: u32,
    /// Threads compressing batches in parallel; 0 = one per CPU.
    pub compression_threads: u32,
    /// Bytes gathered before one durable commit (fsync).
    #[serde(deserialize_with = "size::deserialize")]
    pub group_commit_bytes_max: u64,
    /// Concurrent agent connections accepted.
    pub agents_max: u32,
    /// Disks tracked across all agents.
    pub disks_max: u32,
    /// io_uring submission queue entries.
    pub queue_depth: u32,
    /// Interval of liveness messages, in seconds.
    pub heartbeat_secs: u32,
    /// Consistency groups (`[[relay.group]]`): disks, possibly of several agents, whose
    /// recovery points the relay coordinates so that one point is consistent across all.
    #[serde(rename = "group")]
    pub groups: Vec<GroupConfig>,
}

/// `[[relay.group]]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    pub disks: Vec<String>,
    /// Seconds between group points.
    #[serde(default = "default_group_interval")]
    pub interval_secs: u32,
}

fn default_group_interval() -> u32 {
    300
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: loopback(7700),
            target: loopback(7800),
            cache_dir: PathBuf::from("/var/lib/siterelay/cache"),
            cache_bytes_max: 64 * GIB,
            segment_bytes: 64 * MIB,
            compression_level: 1,
            compression_threads: 0,
            group_commit_bytes_max: 4 * MIB,
            agents_max: 256,
            disks_max: 1024,
            queue_depth: 256,
            heartbeat_secs: 5,
            groups: Vec::new(),
        }
    }
}

/// `[target]`: the recovery-site end that applies writes to replica disks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetConfig {
    /// Where the relay connects.
    #[serde(deserialize_with = "deserialize_socket_addr")]
    pub listen: SocketAddr,
    /// Directory of the replica disks and their state.
    pub data_dir: PathBuf,
    /// Bytes gathered before one durable commit (fsync).
    #[serde(deserialize_with = "size::deserialize")]
    pub group_commit_bytes_max: u64,
    /// Seconds between crash-consistent recovery points.
    pub point_interval_secs: u32,
    /// Redo journal kept per disk for its recovery points; beyond it the oldest points go.
    #[serde(deserialize_with = "size::deserialize")]
    pub journal_bytes_max: u64,
    /// Which recovery points are kept.
    pub retention: RetentionConfig,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            listen: loopback(7800),
            data_dir: PathBuf::from("/var/lib/siterelay/target"),
            group_commit_bytes_max: 16 * MIB,
            point_interval_secs: 300,
            journal_bytes_max: 64 * GIB,
            retention: RetentionConfig::default(),
        }
    }
}

/// `[target.retention]`: every point of the recent past, then one per bucket up to the window.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Points younger than this are all kept.
    pub keep_all_secs: u32,
    /// Older points: the newest of each bucket of this many seconds.
    pub bucket_secs: u32,
    /// Points older than this are dropped (the newest point always stays).
    pub window_secs: u32,
    /// The newest app-consistent points kept within the window, whatever the thinning.
    pub app_consistent_count: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep_all_secs: 2 * 3600,
            bucket_secs: 3600,
            window_secs: 24 * 3600,
            app_consistent_count: 12,
        }
    }
}

/// `[agent]`: the protected machine's side that captures disks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The relay to send writes to.
    #[serde(deserialize_with = "deserialize_socket_addr")]
    pub relay: SocketAddr,
    /// Directory of the agent's persistent state (change maps, progress).
    pub state_dir: PathBuf,
    /// Granularity of comparison and zero detection, in bytes.
    #[serde(deserialize_with = "size::deserialize")]
    pub block_bytes: u64,
    /// Size of one large aligned read, in bytes.
    #[serde(deserialize_with = "size::deserialize")]
    pub read_chunk_bytes: u64,
    /// Maximum payload of one Writes frame, in bytes.
    #[serde(deserialize_with = "size::deserialize")]
    pub frame_payload_bytes: u64,
    /// Unacknowledged bytes allowed in flight.
    #[serde(deserialize_with = "size::deserialize")]
    pub window_bytes: u64,
    /// Give up after the relay was unreachable this long, in seconds (one-shot syncs; the
    /// continuous agent keeps retrying and records writes in its dirty bitmap meanwhile).
    pub reconnect_timeout_secs: u32,
    /// Captured write payload held in memory for replication; beyond it, writes are recorded
    /// in the dirty bitmap and read back from the source later.
    #[serde(deserialize_with = "size::deserialize")]
    pub capture_buffer_bytes: u64,
    /// Granularity of the persistent dirty bitmap, in bytes.
    #[serde(deserialize_with = "size::deserialize")]
    pub dirty_grain_bytes: u64,
    /// Concurrent NBD client connections served by the write tap.
    pub nbd_connections_max: u32,
    /// Seconds between checksum scans in `--mode scan`.
    pub scan_interval_secs: u32,
    /// Seconds between app-consistent points (0: none, only crash-consistent ones).
    pub app_consistent_interval_secs: u32,
    /// Command that quiesces the applications (e.g. `fsfreeze -f /srv/data`).
    pub freeze_command: String,
    /// Command that resumes them (e.g. `fsfreeze -u /srv/data`); always run after a freeze.
    pub thaw_command: String,
    /// Seconds a freeze or thaw command may take before it is killed.
    pub hook_timeout_secs: u32,
    /// Disks to protect (`[[agent.disk]]`).
    #[serde(rename = "disk")]
    pub disks: Vec<DiskConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            relay: loopback(7700),
            state_dir: PathBuf::from("/var/lib/siterelay/agent"),
            block_bytes: 4 * KIB,
            read_chunk_bytes: 4 * MIB,
            frame_payload_bytes: MIB,
            window_bytes: 64 * MIB,
            reconnect_timeout_secs: 120,
            capture_buffer_bytes: 64 * MIB,
            dirty_grain_bytes: 64 * KIB,
            nbd_connections_max: 16,
            scan_interval_secs: 300,
            app_consistent_interval_secs: 0,
            freeze_command: String::new(),
            thaw_command: String::new(),
            hook_timeout_secs: 30,
            disks: Vec::new(),
        }
    }
}

/// One `[[agent.disk]]` entry. Both keys are required: a disk without a name
/// or path has no meaningful default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Identifies the disk across agent, relay and target.
    pub name: String,
    /// Raw image file or block device to capture.
    pub path: PathBuf,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Like `SocketAddr`'s own deserializer, but with a message that shows the
/// value and the expected form (serde's says only "invalid socket address
/// syntax").
fn deserialize_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_str(SocketAddrVisitor)
}

struct SocketAddrVisitor;

impl Visitor<'_> for SocketAddrVisitor {
    type Value = SocketAddr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a socket address string such as \"127.0.0.1:7700\" or \"[::1]:7700\"")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<SocketAddr, E> {
        value.parse().map_err(|_| {
            E::custom(format!(
                "invalid socket address `{value}`: expected IP:port such as \"127.0.0.1:7700\" or \"[::1]:7700\" (host names are not resolved)"
            ))
        })
    }
}
