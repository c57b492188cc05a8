//! The site's public key infrastructure: each relay and target runs a small CA for the nodes
//! that connect to it (a relay's agents, a target's relays, the local administrator), issues
//! certificates in exchange for one-time passphrases, and keeps a registry of every
//! certificate it issued so it can name a peer and refuse a revoked one at its next handshake.
//! TLS is rustls, TLS 1.3 only, with `ring` as the one crypto provider.
//!
//! A PKI directory holds:
//! - `ca.crt`, `ca.key`, `ca.json`: this node's CA (relay and target only);
//! - `server.crt`, `server.key`: the certificate it serves with;
//! - `admin.crt`, `admin.key`: the local administrator's credential;
//! - `registry.json`: issued certificates (by SHA-256 fingerprint) and pending passphrases;
//! - `upstream/{ca.crt,node.crt,node.key}`: the credential this node got by registering
//!   with the peer it connects to (agent → relay, relay → target).

mod access;
mod error;
mod files;
pub mod register;
mod registry;
pub mod stream;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub use access::Access;
pub use error::PkiError;
pub use registry::{IssuedCert, Passphrase, Registry};
pub use stream::Transport;
pub use tls::{fingerprint, registration_config, server_name};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::CertificateDer;

/// Which role runs a CA: it decides what the CA's passphrases register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaKind {
    /// Registers agents.
    Relay,
    /// Registers relays.
    Target,
}

impl CaKind {
    /// The role a passphrase of this CA registers.
    pub fn registers(self) -> CertRole {
        match self {
            CaKind::Relay => CertRole::Agent,
            CaKind::Target => CertRole::Relay,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CaKind::Relay => "relay",
            CaKind::Target => "target",
        }
    }
}

/// What a certificate lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertRole {
    Agent,
    Relay,
    Admin,
    /// The CA's own node, serving TLS.
    Server,
}

impl CertRole {
    pub fn name(self) -> &'static str {
        match self {
            CertRole::Agent => "agent",
            CertRole::Relay => "relay",
            CertRole::Admin => "admin",
            CertRole::Server => "server",
        }
    }
}

/// Who is at the other end of a TLS connection, from this node's registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate: only a registration is allowed.
    Anonymous,
    Node {
        name: String,
        role: CertRole,
        serial: u64,
    },
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Anonymous => write!(f, "an unregistered peer (no certificate)"),
            Peer::Node { name, role, serial } => {
                write!(f, "{} {name:?} (certificate {serial})", role.name())
            }
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

const CA_VALID_SECS: u64 = 20 * 365 * 86_400;
const NODE_VALID_SECS: u64 = 5 * 365 * 86_400;
/// Default lifetime of a registration passphrase.
pub const PASSPHRASE_TTL_SECS: u64 = 86_400;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CaInfo {
    kind: CaKind,
    common_name: String,
}

/// A PKI directory (see the crate documentation).
#[derive(Debug, Clone)]
pub struct PkiDir {
    dir: PathBuf,
}

impl PkiDir {
    pub fn new(dir: &Path) -> PkiDir {
        PkiDir { dir: dir.to_owned() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn has_ca(&self) -> bool {
        self.path("ca.json").exists()
    }

    /// The kind of this directory's CA.
    pub fn ca_kind(&self) -> Result<CaKind, PkiError> {
        Ok(self.ca_info()?.kind)
    }

    fn ca_info(&self) -> Result<CaInfo, PkiError> {
        let path = self.path("ca.json");
        if !path.exists() {
            return Err(PkiError::NoCa { dir: self.dir.clone() });
        }
        files::read_json(&path)
    }

    /// Creates the CA, the server certificate and the admin credential unless they exist;
    /// true if it created them. A CA of the other kind is an error.
    pub fn init_ca(&self, kind: CaKind, site: &str) -> Result<bool, PkiError> {
        if self.has_ca() {
            let existing = self.ca_kind()?;
            if existing != kind {
                return Err(PkiError::bad(
                    &self.path("ca.json"),
                    format!(
                        "this PKI directory belongs to a {} CA, not a {}; give the {} its own \
                         directory",
                        existing.name(),
                        kind.name(),
                        kind.name()
                    ),
                ));
            }
            return Ok(false);
        }
        files::create_dir(&self.dir)?;
        let label = if site.is_empty() { String::new() } else { format!(" {site}") };
        // A random tag makes every CA's name unique: two sites with the same (or no) site
        // name must not look like one issuer (their certificates would then fail as a bad
        // signature instead of an unknown CA).
        let mut tag = [0u8; 4];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut tag)
            .map_err(|_| PkiError::Generate("the system's random source failed".into()))?;
        let common_name = format!("siterelay {}{label} CA {}", kind.name(), tls::hex(&tag));
        let key = KeyPair::generate()?;
        let params = ca_params(&common_name, now_unix());
        let cert = params.self_signed(&key)?;
        files::write_private(&self.path("ca.key"), key.serialize_pem().as_bytes())?;
        files::write_public(&self.path("ca.crt"), cert.pem().as_bytes())?;
        let mut registry = Registry::default();
        let ca = SiteCa { kind, issuer: Issuer::new(params, key), ca_der: cert.der().clone() };
        for (base, name, role) in
            [("server", "server", CertRole::Server), ("admin", "admin", CertRole::Admin)]
        {
            let node_key = KeyPair::generate()?;
            let issued = ca.issue(&mut registry, name, role, &node_key)?;
            files::write_private(
                &self.path(&format!("{base}.key")),
                node_key.serialize_pem().as_bytes(),
            )?;
            files::write_public(&self.path(&format!("{base}.crt")), &pem_cert(&issued))?;
        }
        files::write_json(&self.path("registry.json"), &registry)?;
        // Written last: its presence says the directory is complete.
        files::write_json(&self.path("ca.json"), &CaInfo { kind, common_name })?;
        Ok(true)
    }

    /// Loads the CA to issue certificates.
    pub fn ca(&self) -> Result<SiteCa, PkiError> {
        let info = self.ca_info()?;
        let key_path = self.path("ca.key");
        let key = KeyPair::from_pem(&files::read_text(&key_path)?)
            .map_err(|error| PkiError::bad(&key_path, format!("not a private key: {error}")))?;
        let ca_der = files::read_cert(&self.path("ca.crt"))?;
        // The issuer needs only the CA's name, key usages and key; the validity is not
        // part of what it signs.
        let params = ca_params(&info.common_name, 0);
        Ok(SiteCa { kind: info.kind, issuer: Issuer::new(params, key), ca_der })
    }

    /// Runs `change` on the registry under an exclusive lock and saves the result.
    pub fn update_registry<T>(
        &self,
        change: impl FnOnce(&mut Registry) -> Result<T, PkiError>,
    ) -> Result<T, PkiError> {
        let _lock = files::lock(&self.path("registry.lock"))?;
        let path = self.path("registry.json");
        let mut registry: Registry = files::read_json(&path)?;
        let result = change(&mut registry)?;
        files::write_json(&path, &registry)?;
        Ok(result)
    }

    pub fn registry(&self) -> Result<Registry, PkiError> {
        files::read_json(&self.path("registry.json"))
    }

    /// A new passphrase that registers one node of the role this CA registers, valid for
    /// `ttl_secs`. Only its derived key is stored; the passphrase itself is shown once.
    pub fn new_passphrase(&self, ttl_secs: u64) -> Result<String, PkiError> {
        self.ca_info()?;
        let passphrase = register::generate_passphrase();
        let key = register::passphrase_key(&passphrase);
        let now = now_unix();
        self.update_registry(|registry| {
            registry.passphrases.retain(|p| p.expires_unix > now && p.used_by.is_none());
            registry.passphrases.push(Passphrase {
                key: tls::hex(&key),
                created_unix: now,
                expires_unix: now.saturating_add(ttl_secs),
                used_by: None,
            });
            Ok(())
        })?;
        Ok(passphrase)
    }

    /// Marks a certificate revoked; its holder is refused from its next handshake on.
    pub fn revoke(&self, name_or_serial: &str) -> Result<IssuedCert, PkiError> {
        let now = now_unix();
        self.update_registry(|registry| {
            let cert = registry
                .certs
                .iter_mut()
                .filter(|c| c.role != CertRole::Server)
                .find(|c| c.name == name_or_serial || c.serial.to_string() == name_or_serial)
                .ok_or_else(|| PkiError::UnknownCertificate(name_or_serial.to_string()))?;
            if cert.revoked_unix.is_none() {
                cert.revoked_unix = Some(now);
            }
            Ok(cert.clone())
        })
    }

    /// The TLS configuration this node serves with (client certificates optional, so that
    /// unregistered nodes can register; everything else needs one).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        tls::server_config(
            &files::read_cert(&self.path("ca.crt"))?,
            files::read_cert(&self.path("server.crt"))?,
            files::read_key(&self.path("server.key"))?,
        )
    }

    /// The configuration to reach the upstream peer with this node's registered credential.
    pub fn upstream_config(&self) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let dir = self.path("upstream");
        if !dir.join("node.crt").exists() {
            return Err(PkiError::NotRegistered { dir: self.dir.clone() });
        }
        client_config_from(&dir.join("ca.crt"), &dir.join("node.crt"), &dir.join("node.key"))
    }

    /// The administrator's configuration for management commands to this directory's node.
    pub fn admin_config(&self) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        if !self.path("admin.crt").exists() {
            return Err(PkiError::NoAdmin { dir: self.dir.clone() });
        }
        client_config_from(&self.path("ca.crt"), &self.path("admin.crt"), &self.path("admin.key"))
    }

    /// Stores the credential a registration returned.
    pub fn save_upstream(&self, credential: &register::Credential) -> Result<(), PkiError> {
        let dir = self.path("upstream");
        files::create_dir(&dir)?;
        files::write_private(&dir.join("node.key"), credential.key_pem.as_bytes())?;
        files::write_public(&dir.join("ca.crt"), &pem_cert(&credential.ca))?;
        files::write_public(&dir.join("node.crt"), &pem_cert(&credential.cert))?;
        Ok(())
    }

    pub fn is_registered(&self) -> bool {
        self.path("upstream/node.crt").exists()
    }
}

/// The 256-bit key in `path` (64 hex digits, the at-rest key). With `create`, a missing file
/// is made (0600) with a new random key; an existing key is never replaced, since what it
/// encrypted would be lost. Returns the key and whether it was created.
pub fn key_file(path: &Path, create: bool) -> Result<([u8; 32], bool), PkiError> {
    let created = create && !path.exists();
    if created {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| PkiError::Generate("the system's random source failed".into()))?;
        if let Some(dir) = path.parent() {
            files::create_dir(dir)?;
        }
        files::write_private(path, format!("{}\n", tls::hex(&key)).as_bytes())?;
    }
    let text = files::read_text(path)?;
    let key = register::key_from_hex(text.trim())
        .ok_or_else(|| PkiError::bad(path, "not a 256-bit key (64 hex digits)"))?;
    Ok((key, created))
}

/// Writes a secret (mode 0600) atomically: a passphrase kept for later, a key.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    files::write_private(path, bytes)
}

fn client_config_from(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    tls::client_config(&files::read_cert(ca)?, files::read_cert(cert)?, files::read_key(key)?)
}

fn ca_params(common_name: &str, now: u64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = unix_time(now.saturating_sub(3600));
    params.not_after = unix_time(now.saturating_add(CA_VALID_SECS));
    params
}

fn unix_time(secs: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs.min(253_402_300_799) as i64)
        .expect("clamped to year 9999")
}

fn pem_cert(der: &[u8]) -> Vec<u8> {
    tls::pem("CERTIFICATE", der).into_bytes()
}

/// A loaded CA, able to issue certificates.
pub struct SiteCa {
    kind: CaKind,
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
}

impl std::fmt::Debug for SiteCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteCa").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl SiteCa {
    pub fn kind(&self) -> CaKind {
        self.kind
    }

    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// Issues a certificate for `public_key` and records it in `registry`.
    pub fn issue(
        &self,
        registry: &mut Registry,
        name: &str,
        role: CertRole,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<Vec<u8>, PkiError> {
        let serial = registry.next_serial.max(1);
        registry.next_serial = serial + 1;
        let now = now_unix();
        let mut params = CertificateParams::new(vec![tls::SERVER_NAME.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{} {name}", role.name()));
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
        params.not_before = unix_time(now.saturating_sub(3600));
        params.not_after = unix_time(now.saturating_add(NODE_VALID_SECS));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if role == CertRole::Server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &self.issuer)?;
        let der = cert.der().to_vec();
        registry.certs.push(IssuedCert {
            serial,
            name: name.to_string(),
            role,
            fingerprint: fingerprint(&der),
            issued_unix: now,
            not_after_unix: now.saturating_add(NODE_VALID_SECS),
            revoked_unix: None,
        });
        Ok(der)
    }
}

/// What a registration answers: the CA, the new certificate, the passphrase's proof.
#[derive(Debug)]
pub struct Issued {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub proof: [u8; 32],
}

/// A server's view of its registry, re-read whenever the file changes (a `certs revoke`
/// from the command line takes effect at the next handshake).
#[derive(Debug)]
pub struct Authority {
    pki: PkiDir,
    kind: CaKind,
    config: Arc<rustls::ServerConfig>,
    cached: Mutex<(Option<SystemTime>, Registry)>,
    /// Disk name → the agent that owns it (`disk-owners.json`), loaded on first use.
    owners: Mutex<Option<std::collections::BTreeMap<String, String>>>,
}

impl Authority {
    /// Opens (creating on first start) this node's CA.
    pub fn open(dir: &Path, kind: CaKind, site: &str) -> Result<Authority, PkiError> {
        let pki = PkiDir::new(dir);
        if pki.init_ca(kind, site)? {
            log::info!("created the {} CA in {}", kind.name(), dir.display());
        }
        let config = pki.server_config()?;
        Ok(Authority {
            kind,
            config,
            cached: Mutex::new((None, Registry::default())),
            owners: Mutex::new(None),
            pki,
        })
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    pub fn pki(&self) -> &PkiDir {
        &self.pki
    }

    /// Names the peer from its certificate chain (already verified against the CA by rustls),
    /// or says why it is refused.
    pub fn identify(&self, certs: Option<&[CertificateDer<'_>]>) -> Result<Peer, String> {
        let Some(leaf) = certs.and_then(|certs| certs.first()) else {
            return Ok(Peer::Anonymous);
        };
        let print = fingerprint(leaf);
        self.with_registry(|registry| {
            let Some(cert) = registry.certs.iter().find(|c| c.fingerprint == print) else {
                return Err(format!(
                    "certificate {} is signed by this site's CA but not in its registry",
                    &print[..16]
                ));
            };
            if let Some(when) = cert.revoked_unix {
                return Err(format!(
                    "the certificate of {} {:?} (serial {}) was revoked at {when} (Unix time)",
                    cert.role.name(),
                    cert.name,
                    cert.serial
                ));
            }
            Ok(Peer::Node { name: cert.name.clone(), role: cert.role, serial: cert.serial })
        })
        .map_err(|error| error.to_string())?
    }

    /// Binds `disk` to the agent `agent` the first time an agent names it; afterwards only
    /// that agent may write it, until its certificate is revoked (then the next agent that
    /// names the disk takes it, which is how a protected machine moves to a new agent).
    pub fn claim_disk(&self, disk: &str, agent: &str) -> Result<(), String> {
        let mut owners = self.owners.lock().expect("disk owners lock");
        if owners.is_none() {
            let path = self.pki.path("disk-owners.json");
            *owners = Some(if path.exists() {
                files::read_json(&path).map_err(|error| error.to_string())?
            } else {
                std::collections::BTreeMap::new()
            });
        }
        let map = owners.as_mut().expect("loaded above");
        match map.get(disk) {
            Some(owner) if owner == agent => return Ok(()),
            Some(owner) => {
                let owner_valid = self
                    .with_registry(|registry| {
                        registry.certs.iter().any(|c| {
                            &c.name == owner
                                && c.role == CertRole::Agent
                                && c.revoked_unix.is_none()
                        })
                    })
                    .map_err(|error| error.to_string())?;
                if owner_valid {
                    return Err(format!(
                        "disk {disk:?} belongs to agent {owner:?}; an agent may only write its \
                         own disks (revoke {owner:?} with `siterelay certs revoke {owner}` to \
                         move the disk to another agent)"
                    ));
                }
                log::warn!(
                    "disk {disk:?}: its agent {owner:?} was revoked; agent {agent:?} takes it"
                );
            }
            None => {}
        }
        map.insert(disk.to_string(), agent.to_string());
        files::write_json(&self.pki.path("disk-owners.json"), map)
            .map_err(|error| error.to_string())
    }

    /// Runs `look` on the registry as it is on disk now (re-read only when the file changed).
    fn with_registry<T>(&self, look: impl FnOnce(&Registry) -> T) -> Result<T, PkiError> {
        let path = self.pki.path("registry.json");
        let modified = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(|error| PkiError::io(&path, "read", error))?;
        let mut cached = self.cached.lock().expect("registry cache lock");
        if cached.0 != Some(modified) {
            *cached = (Some(modified), self.pki.registry()?);
        }
        Ok(look(&cached.1))
    }

    /// Answers a registration: checks the passphrase proof and the key's proof of
    /// possession against this session's exported key material, issues the certificate,
    /// and returns (CA, certificate, server proof).
    pub fn register(
        &self,
        request: &wire::Register<'_>,
        exporter: &[u8; 32],
    ) -> Result<Issued, String> {
        register::check_name(request.name)?;
        let public_key = register::check_possession(request, exporter)?;
        let ca = self.pki.ca().map_err(|error| error.to_string())?;
        let role = self.kind.registers();
        let now = now_unix();
        let issued = self.pki.update_registry(|registry| {
            let index = registry
                .passphrases
                .iter()
                .position(|p| {
                    p.used_by.is_none()
                        && p.expires_unix > now
                        && register::proof_matches(&p.key, exporter, request.proof)
                })
                .ok_or_else(|| {
                    let expired = registry.passphrases.iter().any(|p| {
                        p.expires_unix <= now && register::proof_matches(&p.key, exporter, request.proof)
                    });
                    let used = registry.passphrases.iter().any(|p| {
                        p.used_by.is_some() && register::proof_matches(&p.key, exporter, request.proof)
                    });
                    PkiError::Refused(if expired {
                        "the passphrase has expired; make a new one with `siterelay register --new-passphrase`".into()
                    } else if used {
                        "the passphrase was already used; each passphrase registers one node".into()
                    } else {
                        "wrong passphrase".into()
                    })
                })?;
            if registry
                .certs
                .iter()
                .any(|c| c.name == request.name && c.role == role && c.revoked_unix.is_none())
            {
                return Err(PkiError::Refused(format!(
                    "a {} named {:?} is already registered; revoke it first (`siterelay certs \
                     revoke {}`) or choose another name",
                    role.name(),
                    request.name,
                    request.name
                )));
            }
            let key = registry.passphrases[index].key.clone();
            registry.passphrases[index].used_by = Some(request.name.to_string());
            let cert = ca.issue(registry, request.name, role, &public_key)?;
            Ok((key, cert))
        });
        let (key, cert) = issued.map_err(|error| match error {
            PkiError::Refused(reason) => reason,
            other => other.to_string(),
        })?;
        let key = register::key_from_hex(&key).ok_or("the stored passphrase key is damaged")?;
        let proof = register::server_proof(&key, exporter, ca.ca_der(), &cert);
        Ok(Issued { ca: ca.ca_der().to_vec(), cert, proof })
    }
}
