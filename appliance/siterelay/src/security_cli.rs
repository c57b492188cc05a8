//! `siterelay register` and `siterelay certs`: passphrases, registration, the registry.

use std::path::PathBuf;
use std::time::Duration;

use crate::args::Args;

const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);

/// `--pki-dir DIR`, else `--config FILE`'s `[security] pki_dir`, else the default.
fn pki_dir(args: &Args) -> Result<pki::PkiDir, String> {
    if let Some(dir) = args.value("pki-dir") {
        return Ok(pki::PkiDir::new(&PathBuf::from(dir)));
    }
    let config = crate::roles::load_config(args)?;
    Ok(pki::PkiDir::new(&config.security.pki_dir))
}

const REGISTER_USAGE: &str = "register: expected `register --new-passphrase [--ttl SECS]` on the \
    relay or target, or `register --connect ADDR --passphrase P [--name NAME] [--role agent|relay]` \
    on the node joining it (both take --pki-dir DIR or --config FILE)";

pub(crate) fn register(rest: &[String]) -> Result<(), String> {
    let args = Args::parse(
        "register",
        rest,
        &[
            ("new-passphrase", false),
            ("ttl", true),
            ("connect", true),
            ("passphrase", true),
            ("name", true),
            ("role", true),
            ("pki-dir", true),
            ("config", true),
        ],
    )?;
    let pki = pki_dir(&args)?;
    if args.flag("new-passphrase") {
        let ttl: u64 = args.parsed("ttl")?.unwrap_or(pki::PASSPHRASE_TTL_SECS);
        if ttl == 0 || ttl > 30 * 86_400 {
            return Err(format!("register: --ttl {ttl}: must be 1..=2592000 seconds (30 days)"));
        }
        let kind = pki.ca_kind().map_err(|error| error.to_string())?;
        let passphrase = pki.new_passphrase(ttl).map_err(|error| error.to_string())?;
        println!("{passphrase}");
        eprintln!(
            "registers one {} within {ttl} s; it is shown only now (only a hash is kept)",
            kind.registers().name()
        );
        return Ok(());
    }
    let (Some(addr), Some(passphrase)) = (args.value("connect"), args.value("passphrase")) else {
        return Err(REGISTER_USAGE.into());
    };
    let addr: std::net::SocketAddr =
        addr.parse().map_err(|error| format!("register: --connect {addr:?}: {error}"))?;
    let role = match args.value("role").unwrap_or("agent") {
        "agent" => wire::Role::Agent,
        "relay" => wire::Role::Relay,
        other => return Err(format!("register: --role {other:?}: expected agent or relay")),
    };
    let name = match args.value("name") {
        Some(name) => name.to_string(),
        None => {
            let config = crate::roles::load_config(&args)?;
            if config.appliance.node.is_empty() {
                agent::hostname()
            } else {
                config.appliance.node
            }
        }
    };
    if pki.is_registered() {
        return Err(format!(
            "register: {} already holds a registration; remove {} to register again",
            pki.dir().display(),
            pki.path("upstream").display()
        ));
    }
    pki::register::register_with(addr, &name, role, passphrase, &pki, REGISTER_TIMEOUT)
        .map_err(|error| format!("register: {error}"))?;
    println!("registered {name:?} with {addr}; credential in {}", pki.path("upstream").display());
    Ok(())
}

pub(crate) fn certs(rest: &[String]) -> Result<(), String> {
    let usage = "certs: expected `certs list [--json]`, `certs revoke NAME|SERIAL` or \
        `certs init --kind relay|target [--site S]` (each takes --pki-dir DIR or --config FILE)";
    let Some(sub) = rest.first() else { return Err(usage.into()) };
    let args = Args::parse(
        "certs",
        &rest[1..],
        &[("json", false), ("pki-dir", true), ("config", true), ("kind", true), ("site", true)],
    )?;
    let pki = pki_dir(&args)?;
    match sub.as_str() {
        "init" => {
            let kind = match args.value("kind") {
                Some("relay") => pki::CaKind::Relay,
                Some("target") => pki::CaKind::Target,
                _ => return Err("certs init: --kind relay|target is required".into()),
            };
            let created = pki
                .init_ca(kind, args.value("site").unwrap_or(""))
                .map_err(|error| error.to_string())?;
            let verb = if created { "created" } else { "already holds" };
            println!("{} {verb} a {} CA", pki.dir().display(), kind.name());
            Ok(())
        }
        "list" => {
            let registry = pki.registry().map_err(|error| {
                if pki.has_ca() {
                    error.to_string()
                } else {
                    pki::PkiError::NoCa { dir: pki.dir().to_owned() }.to_string()
                }
            })?;
            if args.flag("json") {
                let json = serde_json::json!({ "certificates": registry.certs.iter().map(|c| {
                    serde_json::json!({
                        "serial": c.serial, "name": c.name, "role": c.role.name(),
                        "fingerprint": c.fingerprint, "issued_unix": c.issued_unix,
                        "not_after_unix": c.not_after_unix, "revoked_unix": c.revoked_unix,
                    })
                }).collect::<Vec<_>>() });
                println!("{json}");
                return Ok(());
            }
            println!("{:>6}  {:<8} {:<24} {:<10} FINGERPRINT", "SERIAL", "ROLE", "NAME", "STATE");
            for cert in &registry.certs {
                let state = if cert.revoked_unix.is_some() { "revoked" } else { "valid" };
                println!(
                    "{:>6}  {:<8} {:<24} {:<10} {}",
                    cert.serial,
                    cert.role.name(),
                    cert.name,
                    state,
                    &cert.fingerprint[..16]
                );
            }
            Ok(())
        }
        "revoke" => {
            let [target] = args.positional.as_slice() else {
                return Err("certs revoke: expected one NAME or SERIAL".into());
            };
            let cert = pki.revoke(target).map_err(|error| error.to_string())?;
            println!(
                "revoked {} {:?} (serial {}): refused from its next connection",
                cert.role.name(),
                cert.name,
                cert.serial
            );
            Ok(())
        }
        _ => Err(usage.into()),
    }
}
