use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{}: cannot {what}: {source}", path.display())]
    Io { path: PathBuf, what: &'static str, source: std::io::Error },
    #[error("{}: {reason}", path.display())]
    Bad { path: PathBuf, reason: String },
    #[error(
        "{} holds no site CA: start the relay or target once (it creates one), or run \
         `siterelay certs init --pki-dir DIR --kind relay|target`",
        dir.display()
    )]
    NoCa { dir: PathBuf },
    #[error(
        "{} holds no certificate for this node: register it first with `siterelay register \
         --connect PEER --passphrase PASSPHRASE --pki-dir {}` (the passphrase comes from \
         `siterelay register --new-passphrase` on the peer)",
        dir.display(),
        dir.display()
    )]
    NotRegistered { dir: PathBuf },
    #[error(
        "{} holds no admin credential (admin.crt and admin.key): management commands need \
         it; it is made with the site CA, or copy it from the node's PKI directory",
        dir.display()
    )]
    NoAdmin { dir: PathBuf },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("TLS configuration failed: {0}")]
    Tls(String),
    #[error("registration refused: {0}")]
    Refused(String),
    #[error("no certificate named {0:?} was issued by this site")]
    UnknownCertificate(String),
}

impl PkiError {
    pub(crate) fn io(path: &std::path::Path, what: &'static str, source: std::io::Error) -> Self {
        PkiError::Io { path: path.to_owned(), what, source }
    }

    pub(crate) fn bad(path: &std::path::Path, reason: impl Into<String>) -> Self {
        PkiError::Bad { path: path.to_owned(), reason: reason.into() }
    }
}

impl From<rcgen::Error> for PkiError {
    fn from(error: rcgen::Error) -> Self {
        PkiError::Generate(error.to_string())
    }
}

impl From<rustls::Error> for PkiError {
    fn from(error: rustls::Error) -> Self {
        PkiError::Tls(error.to_string())
    }
}
