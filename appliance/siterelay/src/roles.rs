//! The role subcommands: configuration file first, then flags on top, then validation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use config::Config;

use crate::args::Args;

/// Loads `--config FILE` (or the built-in defaults).
pub(crate) fn load_config(args: &Args) -> Result<Config, String> {
    match args.value("config") {
        None => Ok(Config::default()),
        Some(path) => read_config(Path::new(path)),
    }
}

pub(crate) fn read_config(path: &Path) -> Result<Config, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    Config::from_toml(&text).map_err(|error| format!("{}: {error}", path.display()))
}

fn validated(config: Config) -> Result<Config, String> {
    config.validate().map_err(|error| format!("invalid settings: {error}"))?;
    logger_from(&config);
    announce(&config.appliance);
    Ok(config)
}

/// The version, site and node this process names in its Hellos: the active slot's version
/// when `siterelay update` manages this node, else the build's.
fn announce(appliance: &config::ApplianceConfig) {
    use update::Slots;
    let slots = update::DirSlots::new(&appliance.update_state_dir.join("slots"));
    let version = slots
        .load_state()
        .ok()
        .flatten()
        .map_or_else(|| env!("CARGO_PKG_VERSION").to_string(), |state| state.active_version);
    let node = if appliance.node.is_empty() { agent::hostname() } else { appliance.node.clone() };
    wire::set_identity(wire::Identity {
        product_version: version,
        site_id: appliance.site.clone(),
        node_id: node,
    });
}

fn logger_from(config: &Config) {
    crate::logger::init(crate::logger::level_of(config.log.level));
}

fn addr(args: &Args, name: &str) -> Result<Option<std::net::SocketAddr>, String> {
    args.parsed(name)
}

pub(crate) fn target(rest: &[String]) -> Result<(), String> {
    if rest.first().map(String::as_str) == Some("adopt") {
        return target_adopt(&rest[1..]);
    }
    let args = Args::parse(
        "target",
        rest,
        &[("listen", true), ("data-dir", true), ("config", true), ("pki-dir", true)],
    )?;
    let mut config = load_config(&args)?;
    apply_pki_dir(&args, &mut config);
    if let Some(listen) = addr(&args, "listen")? {
        config.target.listen = listen;
    }
    if let Some(dir) = args.value("data-dir") {
        config.target.data_dir = PathBuf::from(dir);
    }
    run_target(config)
}

/// Serves the target role until it is stopped.
pub(crate) fn run_target(config: Config) -> Result<(), String> {
    let config = validated(config)?;
    let options = target::TargetOptions {
        listen: config.target.listen,
        data_dir: config.target.data_dir.clone(),
        group_commit_bytes_max: config.target.group_commit_bytes_max as usize,
        retention: retention_options(&config.target),
        tls: crate::security::authority(&config, pki::CaKind::Target)?,
        at_rest: crate::security::at_rest_key(&config)?,
    };
    let target = target::Target::bind(&options).map_err(|error| error.to_string())?;
    target.serve();
    Ok(())
}

/// `target adopt`: an existing image becomes a replica (see `target::adopt`).
fn target_adopt(rest: &[String]) -> Result<(), String> {
    let args =
        Args::parse("target adopt", rest, &[("data-dir", true), ("disk", true), ("image", true)])?;
    let need =
        |name: &str| args.value(name).ok_or_else(|| format!("target adopt: --{name} is required"));
    let (dir, disk, image) = (need("data-dir")?, need("disk")?, need("image")?);
    config::validate_disk_name(disk).map_err(|error| format!("target adopt: {error}"))?;
    target::adopt(Path::new(dir), disk, Path::new(image)).map_err(|error| error.to_string())?;
    println!(
        "disk {disk}: {image} adopted as its replica in {dir}; replicate into it with \
         `siterelay agent ... --take-over` (a checksum resync moves only differing blocks)"
    );
    Ok(())
}

pub(crate) fn relay_options(config: &config::RelayConfig) -> relay::RelayOptions {
    relay::RelayOptions {
        listen: config.listen,
        target: config.target,
        cache_dir: config.cache_dir.clone(),
        cache_bytes_max: config.cache_bytes_max,
        segment_bytes: config.segment_bytes,
        compression_level: config.compression_level as i32,
        compression_threads: config.compression_threads as usize,
        group_commit_bytes_max: config.group_commit_bytes_max as usize,
        agents_max: config.agents_max as usize,
        disks_max: config.disks_max as usize,
        queue_depth: config.queue_depth,
        heartbeat_secs: u64::from(config.heartbeat_secs),
        groups: config
            .groups
            .iter()
            .map(|group| relay::GroupOptions {
                name: group.name.clone(),
                disks: group.disks.clone(),
                interval: std::time::Duration::from_secs(u64::from(group.interval_secs)),
            })
            .collect(),
        tls: None,
        upstream_tls: None,
        at_rest: None,
    }
}

pub(crate) fn relay(rest: &[String]) -> Result<(), String> {
    let args = Args::parse(
        "relay",
        rest,
        &[
            ("listen", true),
            ("target", true),
            ("cache-dir", true),
            ("config", true),
            ("pki-dir", true),
        ],
    )?;
    let mut config = load_config(&args)?;
    apply_pki_dir(&args, &mut config);
    if let Some(listen) = addr(&args, "listen")? {
        config.relay.listen = listen;
    }
    if let Some(target) = addr(&args, "target")? {
        config.relay.target = target;
    }
    if let Some(dir) = args.value("cache-dir") {
        config.relay.cache_dir = PathBuf::from(dir);
    }
    run_relay(config)
}

/// Serves the relay role until it is stopped.
pub(crate) fn run_relay(config: Config) -> Result<(), String> {
    let config = validated(config)?;
    let mut options = relay_options(&config.relay);
    options.tls = crate::security::authority(&config, pki::CaKind::Relay)?;
    options.upstream_tls = crate::security::upstream(&config)?;
    options.at_rest = crate::security::at_rest_key(&config)?;
    let relay = relay::Relay::bind(options).map_err(|error| error.to_string())?;
    relay.serve().map_err(|error| error.to_string())
}

/// `--pki-dir DIR` over `[security] pki_dir`.
fn apply_pki_dir(args: &Args, config: &mut Config) {
    if let Some(dir) = args.value("pki-dir") {
        config.security.pki_dir = PathBuf::from(dir);
    }
}

pub(crate) fn agent_options(whole: &Config, progress: bool) -> Result<agent::AgentOptions, String> {
    let config = &whole.agent;
    Ok(agent::AgentOptions {
        relay: config.relay,
        disks: config
            .disks
            .iter()
            .map(|disk| agent::DiskSource::parse(&disk.name, &disk.path))
            .collect(),
        state_dir: config.state_dir.clone(),
        block_bytes: config.block_bytes as usize,
        read_chunk_bytes: config.read_chunk_bytes as usize,
        frame_payload_bytes: config.frame_payload_bytes as usize,
        window_bytes: config.window_bytes as usize,
        reconnect_timeout: Duration::from_secs(u64::from(config.reconnect_timeout_secs)),
        progress,
        take_over: false,
        tls: crate::security::upstream(whole)?,
    })
}

pub(crate) fn agent(rest: &[String]) -> Result<(), String> {
    let snapshot = rest.first().map(String::as_str) == Some("snapshot-sync");
    let rest = if snapshot { &rest[1..] } else { rest };
    let spec = &[
        ("relay", true),
        ("disk", true),
        ("state-dir", true),
        ("once", false),
        ("reconnect-timeout", true),
        ("nbd-listen", true),
        ("mode", true),
        ("interval", true),
        ("take-over", false),
        ("config", true),
        ("pki-dir", true),
    ];
    let args = Args::parse("agent", rest, spec)?;
    let mut config = load_config(&args)?;
    apply_pki_dir(&args, &mut config);
    if let Some(relay) = addr(&args, "relay")? {
        config.agent.relay = relay;
    }
    if let Some(dir) = args.value("state-dir") {
        config.agent.state_dir = PathBuf::from(dir);
    }
    if let Some(seconds) = args.parsed::<u32>("reconnect-timeout")? {
        config.agent.reconnect_timeout_secs = seconds;
    }
    for disk in args.values("disk") {
        let Some((name, path)) = disk.split_once('=') else {
            return Err(format!("--disk {disk:?}: expected NAME=PATH"));
        };
        config
            .agent
            .disks
            .push(config::DiskConfig { name: name.to_string(), path: PathBuf::from(path) });
    }
    if config.agent.disks.is_empty() {
        return Err(
            "agent: no disk to protect; give --disk NAME=PATH or [[agent.disk]] in the config file"
                .into(),
        );
    }
    if let Some(seconds) = args.parsed::<u32>("interval")? {
        config.agent.scan_interval_secs = seconds;
    }
    let config = validated(config)?;
    let mut options = agent_options(&config, true)?;
    options.take_over = args.flag("take-over");
    if snapshot {
        let reports = agent::snapshot_sync(&options).map_err(|error| error.to_string())?;
        for report in &reports {
            println!(
                "{}: snapshot sync: {} data bytes, {} zero bytes sent, replica durable at target",
                report.name, report.data_bytes, report.zero_bytes
            );
        }
        return Ok(());
    }
    let mode = args.value("mode").unwrap_or(if args.flag("once") { "once" } else { "tap" });
    if mode != "once" {
        if let Some(disk) = options.disks.iter().find(|d| d.format == agent::SourceFormat::Vmdk) {
            return Err(format!(
                "agent: disk {} is a VMDK: VMware sources are replicated with --once and then \
                 `agent snapshot-sync` after each new snapshot link; the write tap and scan \
                 mode read raw images and block devices",
                disk.name
            ));
        }
    }
    let tap = args.parsed::<agent::TapAddr>("nbd-listen")?;
    match (mode, tap) {
        ("tap", Some(tap)) => {
            let capture = agent::CaptureOptions {
                tap,
                buffer_bytes: config.agent.capture_buffer_bytes,
                grain_bytes: config.agent.dirty_grain_bytes,
                connections_max: config.agent.nbd_connections_max as usize,
                app_consistent: app_consistent_options(&config.agent),
            };
            let stop = crate::signals::stop_on_signal()?;
            agent::run_continuous(&options, &capture, stop).map_err(|error| error.to_string())?;
            println!("agent stopped cleanly");
            return Ok(());
        }
        ("tap", None) => {
            return Err("agent: continuous capture needs --nbd-listen ADDR (IP:port or a unix socket path) for the write tap; use --once for a one-time sync or --mode scan --interval S for sources that cannot be tapped".into())
        }
        ("scan", _) => {
            let stop = crate::signals::stop_on_signal()?;
            let interval = Duration::from_secs(u64::from(config.agent.scan_interval_secs));
            return agent::run_scan(&options, interval, stop, print_report)
                .map_err(|error| error.to_string());
        }
        ("once", _) => {}
        (other, _) => {
            return Err(format!("agent: --mode {other:?} is not one of: tap, scan, once"));
        }
    }
    let reports = agent::sync_once(&options).map_err(|error| error.to_string())?;
    for report in &reports {
        print_report(report);
    }
    println!("replica durable at target: {} disk(s)", reports.len());
    Ok(())
}

pub(crate) fn print_report(report: &agent::DiskReport) {
    let mode = match report.mode {
        agent::SyncMode::Full => "full sync",
        agent::SyncMode::Resync => "checksum resync",
    };
    let rate = report.size_bytes as f64 / report.seconds.max(1e-6) / 1e6;
    println!(
        "{}: {mode} of {} bytes in {:.2} s ({rate:.0} MB/s)",
        report.name, report.size_bytes, report.seconds
    );
    println!(
        "      {} data bytes sent, {} zero bytes sent as extents, {} bytes unchanged ({} differing blocks)",
        report.data_bytes, report.zero_bytes, report.unchanged_bytes, report.differing_blocks
    );
}

pub(crate) fn config(rest: &[String]) -> Result<(), String> {
    let args = Args::parse("config", rest, &[])?;
    match args.positional.as_slice() {
        [check, file] if check == "check" => {
            read_config(Path::new(file))?;
            println!("{file}: ok");
            Ok(())
        }
        _ => Err("usage: siterelay config check FILE".into()),
    }
}

/// Freeze/thaw hooks and their interval, when app-consistent points are configured.
fn app_consistent_options(agent: &config::AgentConfig) -> Option<agent::AppConsistentOptions> {
    if agent.app_consistent_interval_secs == 0 {
        return None;
    }
    let timeout = std::time::Duration::from_secs(u64::from(agent.hook_timeout_secs));
    Some(agent::AppConsistentOptions {
        interval: std::time::Duration::from_secs(u64::from(agent.app_consistent_interval_secs)),
        freeze: agent::hooks::Hook { command: agent.freeze_command.clone(), timeout },
        thaw: agent::hooks::Hook { command: agent.thaw_command.clone(), timeout },
    })
}

/// The target's point and retention settings, from its validated configuration.
pub(crate) fn retention_options(target: &config::TargetConfig) -> target::RetentionOptions {
    let retention = &target.retention;
    target::RetentionOptions {
        policy: target::RetentionPolicy {
            keep_all_secs: u64::from(retention.keep_all_secs),
            bucket_secs: u64::from(retention.bucket_secs),
            window_secs: u64::from(retention.window_secs),
            app_consistent_count: retention.app_consistent_count as usize,
        },
        point_interval_ms: u64::from(target.point_interval_secs) * 1000,
        journal_bytes_max: target.journal_bytes_max,
    }
}
