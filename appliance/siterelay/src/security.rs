//! How this process authenticates: the `[security]` section, the `SITERELAY_PLAINTEXT`
//! override (for test rigs that start many processes), and the operator's admin credential.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use config::Config;

/// Set to `1` to run every role and command of this process without TLS, as if
/// `[security] plaintext = true` were configured.
pub(crate) const PLAINTEXT_ENV: &str = "SITERELAY_PLAINTEXT";
/// The PKI directory operator commands take their admin credential from when no
/// `--pki-dir` is given.
pub(crate) const PKI_DIR_ENV: &str = "SITERELAY_PKI_DIR";

static OPERATOR_PLAINTEXT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub(crate) fn plaintext_forced() -> bool {
    OPERATOR_PLAINTEXT.load(std::sync::atomic::Ordering::Relaxed)
        || std::env::var(PLAINTEXT_ENV).is_ok_and(|value| value == "1")
}

/// Management commands of this process follow `config` (the appliance's own checks).
pub(crate) fn operate_as_configured(config: &Config) {
    if config.security.plaintext {
        OPERATOR_PLAINTEXT.store(true, std::sync::atomic::Ordering::Relaxed);
    } else {
        let _ = OPERATOR_PKI_DIR.set(config.security.pki_dir.clone());
    }
}

/// The arguments and environment a child `siterelay status` needs to follow `config`.
pub(crate) fn operator_args(
    config: &Config,
) -> (Vec<String>, Option<(&'static str, &'static str)>) {
    if plaintext(config) {
        (Vec::new(), Some((PLAINTEXT_ENV, "1")))
    } else {
        (vec!["--pki-dir".into(), config.security.pki_dir.display().to_string()], None)
    }
}

pub(crate) fn plaintext(config: &Config) -> bool {
    config.security.plaintext || plaintext_forced()
}

/// The CA a relay or target authenticates its peers with (created at first start), or
/// `None` when it runs plaintext.
pub(crate) fn authority(
    config: &Config,
    kind: pki::CaKind,
) -> Result<Option<Arc<pki::Authority>>, String> {
    if plaintext(config) {
        return Ok(None);
    }
    pki::Authority::open(&config.security.pki_dir, kind, &config.appliance.site)
        .map(|authority| Some(Arc::new(authority)))
        .map_err(|error| error.to_string())
}

/// The credential an agent or relay reaches its upstream peer with, or `None` plaintext.
pub(crate) fn upstream(config: &Config) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    if plaintext(config) {
        return Ok(None);
    }
    pki::PkiDir::new(&config.security.pki_dir)
        .upstream_config()
        .map(Some)
        .map_err(|error| error.to_string())
}

/// The key the relay's cache or the target's journals are encrypted with, or `None` when
/// encryption at rest is off.
/// The default key file is created at first start; a configured one must exist.
pub(crate) fn at_rest_key(config: &Config) -> Result<Option<Arc<journal::RecordKey>>, String> {
    if !config.security.encrypt_at_rest {
        return Ok(None);
    }
    let configured = !config.security.at_rest_key_file.as_os_str().is_empty();
    let path = if configured {
        config.security.at_rest_key_file.clone()
    } else {
        config.security.pki_dir.join("at-rest.key")
    };
    if configured && !path.exists() {
        return Err(format!(
            "at_rest_key_file {}: no such file (the key the cache is encrypted with; \
             64 hex digits)",
            path.display()
        ));
    }
    let (key, created) = pki::key_file(&path, !configured).map_err(|error| error.to_string())?;
    if created {
        log::warn!(
            "created the at-rest key {}: back it up, the cache and journals cannot be read without it",
            path.display()
        );
    }
    Ok(Some(Arc::new(journal::RecordKey::new(&key))))
}

static OPERATOR_PKI_DIR: OnceLock<PathBuf> = OnceLock::new();

static RELAY_PKI_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Takes `--pki-dir DIR` (the admin credential for `--connect`) and `--relay-pki-dir DIR`
/// (for `--relay`, whose CA is another) out of an operator command's arguments.
pub(crate) fn take_operator_pki_dir(rest: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(rest.len());
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        let mut found = false;
        for (flag, slot) in [("--pki-dir", &OPERATOR_PKI_DIR), ("--relay-pki-dir", &RELAY_PKI_DIR)]
        {
            if arg == flag {
                let dir = args.next().ok_or_else(|| format!("{flag} needs a directory"))?;
                let _ = slot.set(PathBuf::from(dir));
                found = true;
            } else if let Some(dir) = arg.strip_prefix(&format!("{flag}=")) {
                let _ = slot.set(PathBuf::from(dir));
                found = true;
            }
        }
        if !found {
            out.push(arg.clone());
        }
    }
    Ok(out)
}

/// Management commands to the relay at `addr` use the admin credential of `--relay-pki-dir`
/// when one was given (the relay's CA is not the target's).
pub(crate) fn use_relay_credential(addr: std::net::SocketAddr) -> Result<(), String> {
    if let Some(dir) = RELAY_PKI_DIR.get() {
        if !plaintext_forced() {
            set_operator_credential(addr, admin_tls(dir)?);
        }
    }
    Ok(())
}

fn operator_pki_dir() -> PathBuf {
    OPERATOR_PKI_DIR.get().cloned().unwrap_or_else(|| {
        std::env::var_os(PKI_DIR_ENV)
            .map_or_else(|| config::SecurityConfig::default().pki_dir, PathBuf::from)
    })
}

type Credentials = std::collections::HashMap<std::net::SocketAddr, Arc<rustls::ClientConfig>>;
static CREDENTIALS: std::sync::Mutex<Option<Credentials>> = std::sync::Mutex::new(None);

/// Management commands to `addr` use `config` (a process that talks to nodes of several
/// CAs, like the quickstart).
pub(crate) fn set_operator_credential(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) {
    CREDENTIALS
        .lock()
        .expect("credentials lock")
        .get_or_insert_with(Default::default)
        .insert(addr, config);
}

/// The admin credential for management commands to `addr`, or `None` when plaintext is
/// forced.
pub(crate) fn operator_tls(
    addr: std::net::SocketAddr,
) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    let known =
        CREDENTIALS.lock().expect("credentials lock").as_ref().and_then(|m| m.get(&addr).cloned());
    if let Some(config) = known {
        return Ok(Some(config));
    }
    if plaintext_forced() {
        return Ok(None);
    }
    let dir = operator_pki_dir();
    admin_tls(&dir).map(Some)
}

pub(crate) fn admin_tls(dir: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    pki::PkiDir::new(dir).admin_config().map_err(|error| error.to_string())
}
