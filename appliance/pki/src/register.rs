//! Registration by one-time passphrase, bound to the TLS session.
//!
//! The node has no certificate yet and does not know the site CA, so neither side can rely on
//! the other's certificate. Both prove they know the passphrase instead, with an HMAC over key
//! material exported from *this* TLS session (RFC 8446 §7.5): a machine in the middle runs two
//! sessions with two different exports, so it can neither forward the node's proof nor forge
//! the server's, and the CA the node receives is the one its passphrase's issuer holds. The
//! node also signs the export with its new key (proof of possession). Passphrases carry 160
//! random bits, so a fast hash is enough to derive the stored key from them.

use ring::hmac;
use ring::rand::SecureRandom;

use crate::PkiError;

/// The TLS exporter label both sides use.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-siterelay-registration";
const KEY_DOMAIN: &[u8] = b"siterelay registration passphrase v1\0";
const CLIENT_DOMAIN: &[u8] = b"siterelay registration client\0";
const SERVER_DOMAIN: &[u8] = b"siterelay registration server\0";
const POSSESSION_DOMAIN: &[u8] = b"siterelay registration key\0";
const BASE32: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const PASSPHRASE_SYMBOLS: usize = 32;

/// 32 symbols of 5 bits (160 random bits), in groups of four: `ABCD-EFGH-…`.
pub fn generate_passphrase() -> String {
    let mut random = [0u8; PASSPHRASE_SYMBOLS];
    ring::rand::SystemRandom::new().fill(&mut random).expect("the system's random source works");
    let mut out = String::new();
    for (i, byte) in random.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        out.push(char::from(BASE32[usize::from(byte & 31)]));
    }
    out
}

/// The passphrase as typed: case, dashes and spaces do not matter.
fn normalize(passphrase: &str) -> String {
    passphrase
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t'))
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The key both sides derive from the passphrase (and the only form the server stores).
pub fn passphrase_key(passphrase: &str) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(KEY_DOMAIN);
    context.update(normalize(passphrase).as_bytes());
    context.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Length-prefixed parts, so no two sequences of parts give the same input.
fn message(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, &message(parts)).as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
}

/// Constant-time check of a received MAC.
fn mac_matches(key: &[u8; 32], parts: &[&[u8]], received: &[u8]) -> bool {
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), &message(parts), received).is_ok()
}

pub fn client_proof(key: &[u8; 32], exporter: &[u8; 32]) -> [u8; 32] {
    mac(key, &[CLIENT_DOMAIN, exporter])
}

pub fn server_proof(key: &[u8; 32], exporter: &[u8; 32], ca: &[u8], cert: &[u8]) -> [u8; 32] {
    mac(key, &[SERVER_DOMAIN, exporter, ca, cert])
}

pub(crate) fn key_from_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

/// Whether a node's proof was made with the passphrase behind this stored key.
pub(crate) fn proof_matches(stored_key: &str, exporter: &[u8; 32], proof: &[u8]) -> bool {
    key_from_hex(stored_key).is_some_and(|key| mac_matches(&key, &[CLIENT_DOMAIN, exporter], proof))
}

/// Node names: 1..=64 of `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node name {name:?} is not 1..=64 characters of A-Z a-z 0-9 . _ - (not starting with '.')"
        ))
    }
}

/// An uncompressed P-256 public key, as rcgen needs it to issue a certificate.
#[derive(Debug)]
pub(crate) struct P256PublicKey(Vec<u8>);

impl rcgen::PublicKeyData for P256PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Checks the request's key signed this session's export.
pub(crate) fn check_possession(
    request: &wire::Register<'_>,
    exporter: &[u8; 32],
) -> Result<P256PublicKey, String> {
    if request.public_key.len() != 65 || request.public_key[0] != 4 {
        return Err("the registration key is not an uncompressed P-256 public key".into());
    }
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        request.public_key,
    );
    let mut message = POSSESSION_DOMAIN.to_vec();
    message.extend_from_slice(exporter);
    key.verify(&message, request.signature)
        .map_err(|_| "the registration key's signature does not verify".to_string())?;
    Ok(P256PublicKey(request.public_key.to_vec()))
}

/// What a registration gives a node.
#[derive(Debug, Clone)]
pub struct Credential {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key_pem: String,
}

/// A node's side of one registration.
#[derive(Debug)]
pub struct Request {
    key_pair: rcgen::KeyPair,
    key: [u8; 32],
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
    pub proof: [u8; 32],
}

impl Request {
    /// A new key and the proofs for this session's export.
    pub fn new(passphrase: &str, exporter: &[u8; 32]) -> Result<Request, PkiError> {
        use rcgen::SigningKey;
        let key_pair = rcgen::KeyPair::generate()?;
        let mut message = POSSESSION_DOMAIN.to_vec();
        message.extend_from_slice(exporter);
        let signature = key_pair.sign(&message)?;
        let key = passphrase_key(passphrase);
        Ok(Request {
            public_key: key_pair.public_key_raw().to_vec(),
            signature,
            proof: client_proof(&key, exporter),
            key,
            key_pair,
        })
    }

    pub fn frame<'a>(&'a self, name: &'a str) -> wire::Register<'a> {
        wire::Register {
            name,
            public_key: &self.public_key,
            signature: &self.signature,
            proof: &self.proof,
        }
    }

    /// Checks the server's proof and keeps what it sent.
    pub fn finish(
        self,
        exporter: &[u8; 32],
        ca: &[u8],
        cert: &[u8],
        proof: &[u8],
    ) -> Result<Credential, PkiError> {
        if !mac_matches(&self.key, &[SERVER_DOMAIN, exporter, ca, cert], proof) {
            return Err(PkiError::Refused(
                "the peer's answer is not proven by the passphrase: it is not the node that \
                 made the passphrase (or someone is in between); nothing was saved"
                    .into(),
            ));
        }
        Ok(Credential {
            ca: ca.to_vec(),
            cert: cert.to_vec(),
            key_pem: self.key_pair.serialize_pem(),
        })
    }
}

/// Registers this node with the peer at `addr` using a passphrase the peer made, and stores
/// the credential in `pki`. Returns the peer's answer summary for the operator.
pub fn register_with(
    addr: std::net::SocketAddr,
    name: &str,
    role: wire::Role,
    passphrase: &str,
    pki: &crate::PkiDir,
    timeout: std::time::Duration,
) -> Result<(), PkiError> {
    use wire::{Frame, FrameReader};
    check_name(name).map_err(PkiError::Refused)?;
    let io = |what: &'static str| {
        move |error: std::io::Error| PkiError::Refused(format!("{what} {addr}: {error}"))
    };
    let tcp = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(io("cannot reach"))?;
    tcp.set_read_timeout(Some(timeout)).map_err(io("cannot reach"))?;
    let mut transport = crate::Transport::client(tcp, Some(crate::registration_config()))
        .map_err(io("TLS handshake failed with"))?;
    let exporter = transport.exporter(EXPORTER_LABEL).map_err(io("TLS export failed with"))?;
    let request = Request::new(passphrase, &exporter)?;
    let mut out = Vec::new();
    let hello = Frame::Hello(wire::Hello::ours(role, name, Vec::new()));
    hello.encode(&mut out).map_err(|error| PkiError::Refused(error.to_string()))?;
    Frame::Register(request.frame(name))
        .encode(&mut out)
        .map_err(|error| PkiError::Refused(error.to_string()))?;
    transport.write_all(&out).map_err(io("cannot send to"))?;
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let received = transport.read(&mut buf).map_err(io("no answer from"))?;
        if received == 0 {
            return Err(PkiError::Refused(format!(
                "{addr} closed the connection without an answer"
            )));
        }
        reader.feed(&buf[..received]);
        while let Some((raw, used)) =
            reader.peek().map_err(|error| PkiError::Refused(format!("{addr}: {error}")))?
        {
            match raw.decode().map_err(|error| PkiError::Refused(format!("{addr}: {error}")))? {
                Frame::Registered { ca, cert, proof } => {
                    let credential = request.finish(&exporter, ca, cert, proof)?;
                    return pki.save_upstream(&credential);
                }
                Frame::Error { message, .. } => return Err(PkiError::Refused(message.to_string())),
                _ => {}
            }
            reader.consume(used);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn passphrases_have_160_bits_in_groups_of_four() {
        let a = generate_passphrase();
        assert_eq!(a.len(), 39);
        assert!(a.split('-').all(|group| group.len() == 4));
        assert_ne!(a, generate_passphrase());
        assert_eq!(passphrase_key(&a), passphrase_key(&a.to_lowercase().replace('-', " ")));
    }

    #[test]
    fn a_valid_request_is_accepted_once_its_key_signed_this_session() {
        let exporter = [3u8; 32];
        let request = Request::new("ABCD", &exporter).unwrap();
        let frame = request.frame("web01");
        assert!(check_possession(&frame, &exporter).is_ok());
        // The same request replayed in another session does not verify.
        let other = [4u8; 32];
        assert_eq!(
            check_possession(&frame, &other).unwrap_err(),
            "the registration key's signature does not verify"
        );
        let key = passphrase_key("ABCD");
        assert!(proof_matches(&crate::tls::hex(&key), &exporter, &request.proof));
        assert!(!proof_matches(&crate::tls::hex(&key), &other, &request.proof));
    }

    proptest! {
        /// Whatever a peer sends as key, signature and proof is an error, never a panic.
        #[test]
        fn hostile_requests_are_errors(
            key in proptest::collection::vec(any::<u8>(), 0..100),
            signature in proptest::collection::vec(any::<u8>(), 0..100),
            proof in proptest::collection::vec(any::<u8>(), 0..40),
            stored in "[0-9a-fA-Fg-z]{0,70}",
            name in "\\PC{0,70}",
        ) {
            let exporter = [1u8; 32];
            let frame = wire::Register { name: &name, public_key: &key, signature: &signature, proof: &proof };
            prop_assert!(check_possession(&frame, &exporter).is_err());
            prop_assert!(!proof_matches(&stored, &exporter, &proof));
            let _ = check_name(&name);
        }
    }
}
