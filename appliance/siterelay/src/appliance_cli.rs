//! `siterelay appliance run | ready | ovf-config`: what the appliance image's init runs.
//!
//! - `run` starts the configured role (`[appliance] role`) in the foreground, for the init's
//!   respawn; a configuration that does not validate puts the appliance in *maintenance*:
//!   the error goes to the console and to `run-dir/config-error`, and a status responder on
//!   the role's port answers `siterelay status` with it, until the file changes (then `run`
//!   returns and the init starts it again, with the corrected file). A role that stops with
//!   an error (its cache directory, its port) gives maintenance too, retried after 30 s.
//! - `ready` waits until the role answers its status, for the init's "ready" line.
//! - `ovf-config` writes the first boot's configuration from the OVF environment.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use wire::{Frame, FrameReader};

use crate::args::Args;

const RUN_DIR_DEFAULT: &str = "/run/siterelay";
/// Where maintenance answers when the configuration cannot say: the relay's usual port.
const MAINTENANCE_LISTEN_DEFAULT: &str = "0.0.0.0:7700";
/// How often maintenance looks for a corrected configuration file.
const CONFIG_POLL: Duration = Duration::from_secs(1);
/// A role that stopped is tried again after this long even if the file did not change.
const ROLE_RETRY: Duration = Duration::from_secs(30);
/// A status client gets this long to send its request.
const MAINTENANCE_CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from one maintenance client before it is dropped (a Hello and a request).
const MAINTENANCE_REQUEST_BYTES_MAX: usize = 64 << 10;

pub(crate) fn run(rest: &[String]) -> Result<(), String> {
    let Some((sub, rest)) = rest.split_first() else {
        return Err("appliance: expected run, ready or ovf-config".into());
    };
    match sub.as_str() {
        "run" => run_role(rest),
        "ready" => ready(rest),
        "ovf-config" => ovf_config(rest),
        other => Err(format!(
            "appliance: unknown subcommand {other:?} (expected run, ready, ovf-config)"
        )),
    }
}

fn config_path(args: &Args) -> Result<PathBuf, String> {
    args.value("config").map(PathBuf::from).ok_or_else(|| "--config FILE is required".to_string())
}

/// `appliance run --config FILE [--run-dir DIR] [--maintenance-listen ADDR]`.
fn run_role(rest: &[String]) -> Result<(), String> {
    let args = Args::parse(
        "appliance run",
        rest,
        &[("config", true), ("run-dir", true), ("maintenance-listen", true)],
    )?;
    let path = config_path(&args)?;
    let run_dir = PathBuf::from(args.value("run-dir").unwrap_or(RUN_DIR_DEFAULT));
    std::fs::create_dir_all(&run_dir).map_err(|error| format!("{}: {error}", run_dir.display()))?;
    let error_file = run_dir.join("config-error");
    let checked = crate::roles::read_config(&path).and_then(|config| {
        config
            .validate()
            .map_err(|error| format!("{}: invalid settings: {error}", path.display()))?;
        Ok(config)
    });
    let maintenance_listen: SocketAddr = args
        .value("maintenance-listen")
        .unwrap_or(MAINTENANCE_LISTEN_DEFAULT)
        .parse()
        .map_err(|parse_error| format!("--maintenance-listen: {parse_error}"))?;
    let config = match checked {
        Ok(config) => config,
        Err(error) => {
            eprintln!("siterelay-appliance: CONFIGURATION ERROR: {error}");
            eprintln!(
                "siterelay-appliance: maintenance mode: correct {} (check it with `siterelay \
                 config check`); the role starts as soon as the file changes",
                path.display()
            );
            fsio::write_atomic(&error_file, error.as_bytes())
                .map_err(|write_error| format!("{}: {write_error}", error_file.display()))?;
            let problem = Problem { key: "config_error", text: error };
            return maintenance(maintenance_listen, &path, &problem, None);
        }
    };
    let _ = std::fs::remove_file(&error_file);
    let pid = std::process::id().to_string();
    fsio::write_atomic(&run_dir.join("role.pid"), pid.as_bytes())
        .map_err(|error| format!("{}: {error}", run_dir.display()))?;
    let role = config.appliance.role.as_str();
    eprintln!("siterelay-appliance: starting the {role} role from {}", path.display());
    let listen = role_listen(&config);
    let outcome = match config.appliance.role {
        config::ApplianceRole::Relay => {
            enroll_relay(&config).and_then(|()| crate::roles::run_relay(config))
        }
        config::ApplianceRole::Target => crate::roles::run_target(config),
    };
    let Err(error) = outcome else { return Ok(()) };
    // A role that cannot run (its cache directory, its port) stays reachable too: status
    // says why, and it is tried again when the file changes or after a while.
    let text = format!("the {role} role stopped: {error}");
    eprintln!("siterelay-appliance: {text}");
    let problem = Problem { key: "role_error", text };
    maintenance(listen, &path, &problem, Some(ROLE_RETRY))
}

/// Where first boot keeps the OVF registration passphrase until the relay has used it.
fn passphrase_file(config: &config::Config) -> PathBuf {
    config.security.pki_dir.join("registration.passphrase")
}

/// A relay that runs TLS needs a certificate from its target: at its first start it
/// registers with the passphrase first boot kept from the OVF environment, then forgets it.
fn enroll_relay(config: &config::Config) -> Result<(), String> {
    let pki = pki::PkiDir::new(&config.security.pki_dir);
    if crate::security::plaintext(config) || pki.is_registered() {
        return Ok(());
    }
    let file = passphrase_file(config);
    let target = config.relay.target;
    let Ok(passphrase) = std::fs::read_to_string(&file) else {
        return Err(format!(
            "not registered with the target {target}: deploy with the OVF property \
             siterelay.registration (a passphrase from `siterelay register --new-passphrase` \
             on the target), or run `siterelay register --connect {target} --passphrase P \
             --role relay --pki-dir {}` at the console",
            pki.dir().display()
        ));
    };
    let name = if config.appliance.node.is_empty() {
        agent::hostname()
    } else {
        config.appliance.node.clone()
    };
    pki::register::register_with(
        target,
        &name,
        wire::Role::Relay,
        passphrase.trim(),
        &pki,
        Duration::from_secs(15),
    )
    .map_err(|error| format!("registration with the target {target}: {error}"))?;
    std::fs::remove_file(&file).map_err(|error| format!("{}: {error}", file.display()))?;
    eprintln!("siterelay-appliance: registered as relay {name:?} with the target {target}");
    Ok(())
}

/// Why the appliance is in maintenance, as its status document names it.
struct Problem {
    /// `config_error` or `role_error`.
    key: &'static str,
    text: String,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|meta| meta.modified()).ok()
}

/// Answers status requests with the problem until `path` changes (or `retry_after` passes).
fn maintenance(
    listen: SocketAddr,
    path: &Path,
    problem: &Problem,
    retry_after: Option<Duration>,
) -> Result<(), String> {
    let listener =
        fsio::bind_listener(listen).map_err(|bind_error| format!("{listen}: {bind_error}"))?;
    listener.set_nonblocking(true).map_err(|error| error.to_string())?;
    let mut status = serde_json::json!({
        "role": "maintenance",
        "version": env!("CARGO_PKG_VERSION"),
        "config_file": path.display().to_string(),
    });
    status[problem.key] = serde_json::Value::String(problem.text.clone());
    let status = status.to_string();
    let seen = modified(path);
    let started = Instant::now();
    let mut next_poll = started + CONFIG_POLL;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let status = status.clone();
                // One short-lived thread per client: a stalled client cannot block the loop.
                std::thread::spawn(move || answer_maintenance(stream, &status));
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => return Err(format!("{listen}: {error}")),
        }
        if Instant::now() >= next_poll {
            if modified(path) != seen {
                eprintln!("siterelay-appliance: {} changed; starting again", path.display());
                return Ok(());
            }
            if retry_after.is_some_and(|after| started.elapsed() >= after) {
                eprintln!("siterelay-appliance: trying the role again");
                return Ok(());
            }
            next_poll = Instant::now() + CONFIG_POLL;
        }
    }
}

fn answer_maintenance(mut stream: TcpStream, status: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(MAINTENANCE_CLIENT_TIMEOUT));
    let mut reader = FrameReader::new();
    let mut buf = [0u8; 4096];
    let mut received_total = 0;
    while received_total < MAINTENANCE_REQUEST_BYTES_MAX {
        let received = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(received) => received,
        };
        received_total += received;
        reader.feed(&buf[..received]);
        while let Ok(Some((raw, used))) = reader.peek() {
            let reply = match raw.decode() {
                Ok(Frame::Hello(_)) => None,
                Ok(Frame::StatusRequest) => Some(Frame::Status { json: status }),
                _ => Some(Frame::Error {
                    code: wire::error_code::REFUSED,
                    message: "the appliance is in maintenance (siterelay status shows why)",
                }),
            };
            reader.consume(used);
            if let Some(reply) = reply {
                let mut out = Vec::new();
                if reply.encode(&mut out).is_ok() {
                    let _ = stream.write_all(&out);
                }
                return;
            }
        }
    }
}

/// `appliance ready --config FILE [--timeout SECS]`: waits until the configured role answers
/// its status on its own port; fails with the configuration error in maintenance.
fn ready(rest: &[String]) -> Result<(), String> {
    let args = Args::parse("appliance ready", rest, &[("config", true), ("timeout", true)])?;
    let path = config_path(&args)?;
    let timeout = Duration::from_secs(args.parsed("timeout")?.unwrap_or(120));
    let config = crate::roles::read_config(&path)?;
    crate::security::operate_as_configured(&config);
    let addr = local_addr(role_listen(&config));
    let deadline = Instant::now() + timeout;
    loop {
        match crate::status::fetch_json(addr) {
            Ok(status) if status["role"] == "maintenance" => {
                let problem = status["config_error"].as_str().or(status["role_error"].as_str());
                return Err(format!("in maintenance: {}", problem.unwrap_or("?")));
            }
            Ok(status) => {
                println!("{} answers on {addr}", status["role"].as_str().unwrap_or("the role"));
                return Ok(());
            }
            Err(error) if Instant::now() >= deadline => {
                return Err(format!("the role did not answer within {timeout:?}: {error}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Where the configured role listens.
fn role_listen(config: &config::Config) -> SocketAddr {
    match config.appliance.role {
        config::ApplianceRole::Relay => config.relay.listen,
        config::ApplianceRole::Target => config.target.listen,
    }
}

/// Where a local client reaches a listener bound to `listen` (a wildcard address is reached
/// on loopback).
fn local_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// `appliance ovf-config --env ovf-env.xml --out FILE [--base FILE]`: the deployment's OVF
/// properties as the appliance's configuration (validated before it is written).
fn ovf_config(rest: &[String]) -> Result<(), String> {
    let args =
        Args::parse("appliance ovf-config", rest, &[("env", true), ("out", true), ("base", true)])?;
    let env = args.value("env").ok_or("appliance ovf-config: --env FILE is required")?;
    let out = args.value("out").ok_or("appliance ovf-config: --out FILE is required")?;
    let xml = std::fs::read_to_string(env).map_err(|error| format!("{env}: {error}"))?;
    let properties =
        vmdkwrite::ovfenv::properties(&xml).map_err(|error| format!("{env}: {error}"))?;
    let mut text =
        vmdkwrite::ovfenv::config_toml(&properties).map_err(|error| format!("{env}: {error}"))?;
    if let Some(base) = args.value("base") {
        // The image's defaults (cache and state on the data partition) under the properties.
        let base_text =
            std::fs::read_to_string(base).map_err(|error| format!("{base}: {error}"))?;
        text = merge_toml(&base_text, &text).map_err(|error| format!("{base}: {error}"))?;
    }
    let config = config::Config::from_toml(&text)
        .map_err(|error| format!("{env}: the configuration it gives is invalid: {error}"))?;
    config
        .validate()
        .map_err(|error| format!("{env}: the configuration it gives is invalid: {error}"))?;
    fsio::write_atomic(Path::new(out), text.as_bytes())
        .map_err(|error| format!("{out}: {error}"))?;
    println!("{out}: written from {env} (role {})", config.appliance.role.as_str());
    // The passphrase stays out of the configuration: kept apart (0600) until the relay's
    // first start uses it.
    let passphrase = properties.get("siterelay.registration").map(|p| p.trim()).unwrap_or("");
    if !passphrase.is_empty() && config.appliance.role == config::ApplianceRole::Relay {
        let file = passphrase_file(&config);
        std::fs::create_dir_all(&config.security.pki_dir)
            .map_err(|error| format!("{}: {error}", config.security.pki_dir.display()))?;
        pki::write_secret(&file, passphrase.as_bytes()).map_err(|error| error.to_string())?;
        println!("{}: registration passphrase kept for the relay's first start", file.display());
    }
    Ok(())
}

/// `overlay`'s keys over `base`'s, table by table.
fn merge_toml(base: &str, overlay: &str) -> Result<String, String> {
    let mut base: toml::Table = base.parse().map_err(|error: toml::de::Error| error.to_string())?;
    let overlay: toml::Table =
        overlay.parse().map_err(|error: toml::de::Error| error.to_string())?;
    for (section, values) in overlay {
        match (base.get_mut(&section), values) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(values)) => {
                existing.extend(values);
            }
            (_, values) => {
                base.insert(section, values);
            }
        }
    }
    let body = toml::to_string(&base).map_err(|error| error.to_string())?;
    Ok(format!(
        "# Written at first boot from the OVF environment over the image's defaults.\n{body}"
    ))
}
