//! The registry of one CA: every certificate it issued and every passphrase not yet spent.

use crate::CertRole;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub next_serial: u64,
    pub certs: Vec<IssuedCert>,
    pub passphrases: Vec<Passphrase>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedCert {
    pub serial: u64,
    pub name: String,
    pub role: CertRole,
    /// SHA-256 of the certificate's DER, hex: how a peer is recognised at its handshake.
    pub fingerprint: String,
    pub issued_unix: u64,
    pub not_after_unix: u64,
    pub revoked_unix: Option<u64>,
}

/// A one-time registration passphrase. Only a key derived from it is stored (see
/// `register::passphrase_key`); the passphrase is shown once when it is made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Passphrase {
    pub key: String,
    pub created_unix: u64,
    pub expires_unix: u64,
    pub used_by: Option<String>,
}
