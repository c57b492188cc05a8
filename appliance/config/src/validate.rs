//! Limits and cross-field rules that serde cannot express.
//!
//! Each check returns the first violation as `ConfigError::Invalid` with the
//! dotted key, so the operator knows which line to change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use crate::error::ConfigError;
use crate::sections::{AgentConfig, DiskConfig, RelayConfig, TargetConfig};
use crate::size::{format_byte_size, GIB, KIB, MIB, TIB};
use crate::Config;

/// Longest accepted disk name; names end up in file names and log lines.
const DISK_NAME_LEN_MAX: usize = 64;
/// Most disks one agent may protect: the relay's own `disks_max` ceiling.
const AGENT_DISKS_MAX: usize = 65_536;

pub(crate) fn validate_config(config: &Config) -> Result<(), ConfigError> {
    for (key, name) in
        [("appliance.site", &config.appliance.site), ("appliance.node", &config.appliance.node)]
    {
        if !name.is_empty() {
            validate_disk_name(name).map_err(|reason| invalid(key, toml_string(name), &reason))?;
        }
    }
    check_path("security.pki_dir", &config.security.pki_dir)?;
    validate_relay(&config.relay)?;
    validate_target(&config.target)?;
    validate_agent(&config.agent)
}

fn validate_relay(relay: &RelayConfig) -> Result<(), ConfigError> {
    check_connect_addr("relay.target", relay.target)?;
    if relay.target == relay.listen {
        let reason = "must differ from relay.listen (the relay would forward to itself)";
        return Err(invalid("relay.target", addr_literal(relay.target), reason));
    }
    check_path("relay.cache_dir", &relay.cache_dir)?;
    check_size_range("relay.cache_bytes_max", relay.cache_bytes_max, 64 * MIB, 64 * TIB)?;
    check_size_range("relay.segment_bytes", relay.segment_bytes, MIB, GIB)?;
    check_segment_fits_cache(relay)?;
    check_count_range("relay.compression_level", relay.compression_level, 0, 19)?;
    check_count_range("relay.compression_threads", relay.compression_threads, 0, 64)?;
    check_group_commit("relay.group_commit_bytes_max", relay.group_commit_bytes_max)?;
    check_count_range("relay.agents_max", relay.agents_max, 1, 4096)?;
    check_count_range("relay.disks_max", relay.disks_max, 1, 65_536)?;
    check_power_of_two_count("relay.queue_depth", relay.queue_depth, 16, 4096)?;
    check_count_range("relay.heartbeat_secs", relay.heartbeat_secs, 1, 300)?;
    validate_groups(&relay.groups)
}

/// Consistency groups per relay, and disks per group.
const GROUPS_MAX: usize = 64;
const GROUP_DISKS_MAX: usize = 256;

fn validate_groups(groups: &[crate::GroupConfig]) -> Result<(), ConfigError> {
    if groups.len() > GROUPS_MAX {
        let reason = format!("must have at most {GROUPS_MAX} entries");
        return Err(invalid("relay.group", format!("[{} entries]", groups.len()), &reason));
    }
    let mut group_of_disk: HashMap<&str, usize> = HashMap::new();
    let mut first_by_name: HashMap<&str, usize> = HashMap::new();
    for (index, group) in groups.iter().enumerate() {
        let key = format!("relay.group[{index}].name");
        validate_disk_name(&group.name)
            .map_err(|reason| invalid(&key, toml_string(&group.name), &reason))?;
        if let Some(first) = first_by_name.insert(&group.name, index) {
            let reason =
                format!("duplicates relay.group[{first}].name; group names must be unique");
            return Err(invalid(&key, toml_string(&group.name), &reason));
        }
        let key = format!("relay.group[{index}].interval_secs");
        check_count_range(&key, group.interval_secs, 1, 86_400)?;
        let key = format!("relay.group[{index}].disks");
        if group.disks.is_empty() || group.disks.len() > GROUP_DISKS_MAX {
            let reason = format!("must list 1 to {GROUP_DISKS_MAX} disks");
            return Err(invalid(&key, format!("[{} entries]", group.disks.len()), &reason));
        }
        for disk in &group.disks {
            validate_disk_name(disk).map_err(|reason| invalid(&key, toml_string(disk), &reason))?;
            if let Some(other) = group_of_disk.insert(disk, index) {
                let reason = format!(
                    "must not repeat disk {disk:?} of relay.group[{other}]; a disk is in at most \
                     one group"
                );
                return Err(invalid(&key, toml_string(disk), &reason));
            }
        }
    }
    Ok(())
}

/// Keeping at least four segments lets the cache retire whole segments while
/// others are still being filled or forwarded.
fn check_segment_fits_cache(relay: &RelayConfig) -> Result<(), ConfigError> {
    let segment_max = relay.cache_bytes_max / 4;
    if relay.segment_bytes <= segment_max {
        return Ok(());
    }
    let reason = format!(
        "must be at most a quarter of relay.cache_bytes_max ({})",
        format_byte_size(segment_max)
    );
    Err(invalid("relay.segment_bytes", size_literal(relay.segment_bytes), reason))
}

fn validate_target(target: &TargetConfig) -> Result<(), ConfigError> {
    check_path("target.data_dir", &target.data_dir)?;
    check_group_commit("target.group_commit_bytes_max", target.group_commit_bytes_max)?;
    check_count_range("target.point_interval_secs", target.point_interval_secs, 1, 86_400)?;
    check_size_range("target.journal_bytes_max", target.journal_bytes_max, 64 * MIB, 64 * TIB)?;
    let retention = &target.retention;
    check_count_range("target.retention.window_secs", retention.window_secs, 1, WINDOW_SECS_MAX)?;
    check_count_range(
        "target.retention.keep_all_secs",
        retention.keep_all_secs,
        0,
        retention.window_secs,
    )?;
    check_count_range("target.retention.bucket_secs", retention.bucket_secs, 1, WINDOW_SECS_MAX)?;
    check_count_range(
        "target.retention.app_consistent_count",
        retention.app_consistent_count,
        0,
        4096,
    )
}

/// The commercial product's longest retention window: 15 days.
const WINDOW_SECS_MAX: u32 = 15 * 24 * 3600;

fn validate_agent(agent: &AgentConfig) -> Result<(), ConfigError> {
    check_connect_addr("agent.relay", agent.relay)?;
    check_path("agent.state_dir", &agent.state_dir)?;
    check_power_of_two_size("agent.block_bytes", agent.block_bytes, 4 * KIB, MIB)?;
    check_size_range("agent.read_chunk_bytes", agent.read_chunk_bytes, 64 * KIB, 64 * MIB)?;
    check_read_chunk_alignment(agent)?;
    check_size_range("agent.frame_payload_bytes", agent.frame_payload_bytes, 64 * KIB, 8 * MIB)?;
    check_window(agent)?;
    check_count_range("agent.reconnect_timeout_secs", agent.reconnect_timeout_secs, 1, 86_400)?;
    check_size_range("agent.capture_buffer_bytes", agent.capture_buffer_bytes, MIB, 4 * GIB)?;
    check_power_of_two_size("agent.dirty_grain_bytes", agent.dirty_grain_bytes, 4 * KIB, 4 * MIB)?;
    check_count_range("agent.nbd_connections_max", agent.nbd_connections_max, 1, 256)?;
    check_app_consistent(agent)?;
    check_count_range("agent.scan_interval_secs", agent.scan_interval_secs, 1, 7 * 86_400)?;
    validate_disks(&agent.disks)
}

/// Reads are compared block by block, so a chunk must hold whole blocks.
fn check_read_chunk_alignment(agent: &AgentConfig) -> Result<(), ConfigError> {
    if agent.read_chunk_bytes % agent.block_bytes == 0 {
        return Ok(());
    }
    let reason = format!(
        "must be a multiple of agent.block_bytes ({})",
        format_byte_size(agent.block_bytes)
    );
    Err(invalid("agent.read_chunk_bytes", size_literal(agent.read_chunk_bytes), reason))
}

/// Two frames in flight is the minimum for the sender to keep the link busy
/// while the previous frame is being acknowledged.
fn check_app_consistent(agent: &AgentConfig) -> Result<(), ConfigError> {
    let interval = agent.app_consistent_interval_secs;
    check_count_range("agent.app_consistent_interval_secs", interval, 0, 604_800)?;
    check_count_range("agent.hook_timeout_secs", agent.hook_timeout_secs, 1, 3600)?;
    for (key, command) in [
        ("agent.freeze_command", &agent.freeze_command),
        ("agent.thaw_command", &agent.thaw_command),
    ] {
        if command.len() > 4096 || command.contains('\0') {
            return Err(invalid(key, toml_string(command), "must be at most 4096 bytes, no NUL"));
        }
        if interval > 0 && command.trim().is_empty() {
            return Err(invalid(
                key,
                toml_string(""),
                "must be set: app-consistent points (agent.app_consistent_interval_secs > 0) \
                 need both a freeze and a thaw command",
            ));
        }
    }
    Ok(())
}

fn check_window(agent: &AgentConfig) -> Result<(), ConfigError> {
    let key = "agent.window_bytes";
    let window_min = agent.frame_payload_bytes.saturating_mul(2);
    if agent.window_bytes < window_min {
        let reason = format!(
            "must be at least twice agent.frame_payload_bytes ({})",
            format_byte_size(window_min)
        );
        return Err(invalid(key, size_literal(agent.window_bytes), reason));
    }
    check_size_range(key, agent.window_bytes, window_min, GIB)
}

fn validate_disks(disks: &[DiskConfig]) -> Result<(), ConfigError> {
    if disks.len() > AGENT_DISKS_MAX {
        let value = format!("[{} entries]", disks.len());
        let reason = format!("must have at most {AGENT_DISKS_MAX} entries");
        return Err(invalid("agent.disk", value, &reason));
    }
    let mut first_index_by_name: HashMap<&str, usize> = HashMap::new();
    for (index, disk) in disks.iter().enumerate() {
        let name_key = format!("agent.disk[{index}].name");
        validate_disk_name(&disk.name)
            .map_err(|reason| invalid(&name_key, toml_string(&disk.name), &reason))?;
        if let Some(first) = first_index_by_name.insert(&disk.name, index) {
            let reason = format!("duplicates agent.disk[{first}].name; disk names must be unique");
            return Err(invalid(&name_key, toml_string(&disk.name), &reason));
        }
        check_path(&format!("agent.disk[{index}].path"), &disk.path)?;
    }
    Ok(())
}

/// Checks a disk name: 1 to 64 characters of `[A-Za-z0-9._-]`, not starting
/// with `.`. Names become file names on the relay and target, so this keeps
/// out path separators, hidden files and `.`/`..`.
pub fn validate_disk_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > DISK_NAME_LEN_MAX {
        return Err(format!("must be 1 to {DISK_NAME_LEN_MAX} characters long"));
    }
    if name.starts_with('.') {
        return Err("must not start with '.'".to_string());
    }
    let is_allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    match name.chars().find(|&c| !is_allowed(c)) {
        None => Ok(()),
        Some(c) => Err(format!("contains {c:?}; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed")),
    }
}

/// Addresses we connect to must name a peer: port 0 or 0.0.0.0 are only
/// meaningful for listening. (Listen addresses accept port 0 so tests can
/// bind an ephemeral port.)
fn check_connect_addr(key: &str, addr: SocketAddr) -> Result<(), ConfigError> {
    if addr.port() != 0 && !addr.ip().is_unspecified() {
        return Ok(());
    }
    let reason = "must name a peer to connect to (not port 0 or an unspecified address)";
    Err(invalid(key, addr_literal(addr), reason))
}

fn check_path(key: &str, path: &Path) -> Result<(), ConfigError> {
    if !path.as_os_str().is_empty() {
        return Ok(());
    }
    Err(invalid(key, toml_string(""), "must not be empty"))
}

fn check_group_commit(key: &str, bytes: u64) -> Result<(), ConfigError> {
    check_size_range(key, bytes, 64 * KIB, 256 * MIB)
}

fn check_size_range(key: &str, bytes: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&bytes) {
        return Ok(());
    }
    let reason = format!("must be between {} and {}", format_byte_size(min), format_byte_size(max));
    Err(invalid(key, size_literal(bytes), &reason))
}

fn check_power_of_two_size(key: &str, bytes: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if bytes.is_power_of_two() && (min..=max).contains(&bytes) {
        return Ok(());
    }
    let reason = format!(
        "must be a power of two between {} and {}",
        format_byte_size(min),
        format_byte_size(max)
    );
    Err(invalid(key, size_literal(bytes), &reason))
}

fn check_count_range(key: &str, value: u32, min: u32, max: u32) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    let reason = format!("must be between {min} and {max}");
    Err(invalid(key, value.to_string(), &reason))
}

fn check_power_of_two_count(key: &str, value: u32, min: u32, max: u32) -> Result<(), ConfigError> {
    if value.is_power_of_two() && (min..=max).contains(&value) {
        return Ok(());
    }
    let reason = format!("must be a power of two between {min} and {max}");
    Err(invalid(key, value.to_string(), &reason))
}

fn invalid(key: &str, value: String, reason: impl AsRef<str>) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), value, reason: reason.as_ref().to_string() }
}

/// Renders a string as a TOML literal (quoted and escaped), so `value` in
/// errors reads like the line the user would write.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn size_literal(bytes: u64) -> String {
    toml_string(&format_byte_size(bytes))
}

fn addr_literal(addr: SocketAddr) -> String {
    toml_string(&addr.to_string())
}
