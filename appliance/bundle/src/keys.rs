//! Ed25519 keys: public keys and their ids (what a root lists), key pairs (what the release
//! tooling signs with), and [`sign`].

use std::fmt;

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::signed::{Signature, SignedDocument};
use crate::{hex, BundleError};

/// Bytes in a key id: the first 8 bytes (16 hex digits) of the SHA-256 of the public key.
pub const KEY_ID_LEN: usize = 8;

/// A key's id: the first 16 hex digits of the SHA-256 of its 32-byte public key. It is derived,
/// never chosen, so a root cannot list one key under two ids (and count it twice toward a
/// threshold), and a signature's id cannot point at a key other than the one it names.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    /// The id of `public_key`.
    pub fn of(public_key: &PublicKey) -> KeyId {
        let hash = digest::digest(&digest::SHA256, &public_key.0);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&hash.as_ref()[..KEY_ID_LEN]);
        KeyId(id)
    }

    /// Parses 16 lowercase hex digits.
    pub fn parse(text: &str) -> Option<KeyId> {
        hex::decode(text).map(KeyId)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An Ed25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn id(&self) -> KeyId {
        KeyId::of(self)
    }

    /// Parses 64 lowercase hex digits.
    pub fn parse(text: &str) -> Option<PublicKey> {
        hex::decode(text).map(PublicKey)
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An Ed25519 signing key. Its `Debug` shows only the key id, never secret material.
pub struct KeyPair {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl KeyPair {
    /// The key pair whose private key is the 32-byte `seed` (RFC 8032's "secret key"). Keep the
    /// seed secret; it is the whole key.
    pub fn from_seed(seed: &[u8; 32]) -> Result<KeyPair, BundleError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|error| BundleError::KeyRejected { reason: error.to_string() })?;
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(KeyPair { pair, public: PublicKey(public) })
    }

    /// A fresh random seed from the operating system, for [`KeyPair::from_seed`].
    pub fn generate_seed() -> Result<[u8; 32], BundleError> {
        let mut seed = [0u8; 32];
        SystemRandom::new().fill(&mut seed).map_err(|_| BundleError::RandomFailed)?;
        Ok(seed)
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub fn key_id(&self) -> KeyId {
        self.public.id()
    }

    /// This key's signature of `message` (64 bytes; Ed25519 signing is deterministic).
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature { key_id: self.key_id(), sig: self.pair.sign(message).as_ref().to_vec() }
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair").field("key_id", &self.key_id()).finish_non_exhaustive()
    }
}

/// Signs `body` with each key, in the order given: the document a verifier receives.
pub fn sign(body: Vec<u8>, keys: &[&KeyPair]) -> SignedDocument {
    let signatures = keys.iter().map(|key| key.sign(&body)).collect();
    SignedDocument { body, signatures }
}
