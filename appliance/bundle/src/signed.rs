//! Signed documents: the exact body bytes plus detached signatures, the signature file's
//! format, and threshold counting.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::keys::{KeyId, PublicKey};
use crate::{hex, json, BundleError, SIGNATURES_FILE_MAX, SIGNATURES_MAX};

/// One signature: the signing key's id and the 64-byte Ed25519 signature of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub key_id: KeyId,
    pub sig: Vec<u8>,
}

/// A document as signed: `body` is exactly the bytes the signatures cover (a manifest's or a
/// root's JSON text). Verification checks signatures over these bytes before parsing them, and
/// never re-encodes: what was signed is what is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDocument {
    pub body: Vec<u8>,
    pub signatures: Vec<Signature>,
}

impl SignedDocument {
    /// A document from its body file and its signature file (`manifest.json` +
    /// `manifest.sig`).
    pub fn from_files(body: Vec<u8>, signatures_file: &[u8]) -> Result<Self, BundleError> {
        Ok(SignedDocument { body, signatures: parse_signatures(signatures_file)? })
    }

    /// The signature file for this document; [`parse_signatures`] reads it back.
    pub fn signatures_file(&self) -> Vec<u8> {
        encode_signatures(&self.signatures)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignaturesJson {
    signatures: Vec<SignatureJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureJson {
    key_id: String,
    sig: String,
}

/// Encodes signatures as `{"signatures":[{"key_id":"<16 hex>","sig":"<128 hex>"},…]}`.
pub fn encode_signatures(signatures: &[Signature]) -> Vec<u8> {
    let file = SignaturesJson {
        signatures: signatures
            .iter()
            .map(|s| SignatureJson { key_id: s.key_id.to_string(), sig: hex::encode(&s.sig) })
            .collect(),
    };
    let mut bytes =
        serde_json::to_vec_pretty(&file).expect("serializing strings into JSON cannot fail");
    bytes.push(b'\n');
    bytes
}

/// Parses a signature file: at most [`SIGNATURES_FILE_MAX`] bytes and [`SIGNATURES_MAX`]
/// entries, each a 16-hex-digit key id and a 128-hex-digit signature (lowercase).
pub fn parse_signatures(bytes: &[u8]) -> Result<Vec<Signature>, BundleError> {
    if bytes.len() > SIGNATURES_FILE_MAX {
        return Err(BundleError::SignaturesFileTooLarge { len: bytes.len() });
    }
    let malformed = |message: String| BundleError::MalformedSignatures { message };
    let file: SignaturesJson = serde_json::from_slice(bytes).map_err(|error| {
        let (line, column, message) = json::position(&error);
        malformed(format!("line {line}, column {column}: {message}"))
    })?;
    if file.signatures.len() > SIGNATURES_MAX {
        return Err(malformed(format!(
            "{} signatures, more than the limit of {SIGNATURES_MAX}",
            file.signatures.len()
        )));
    }
    file.signatures
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let number = index + 1;
            let key_id = KeyId::parse(&entry.key_id).ok_or_else(|| {
                malformed(format!(
                    "signature #{number}: key_id {:?} must be 16 lowercase hex digits",
                    entry.key_id
                ))
            })?;
            let sig = hex::decode::<64>(&entry.sig).ok_or_else(|| {
                malformed(format!("signature #{number}: sig must be 128 lowercase hex digits"))
            })?;
            Ok(Signature { key_id, sig: sig.to_vec() })
        })
        .collect()
}

/// Refuses an unsigned document or one with more signatures than any verifier would count.
pub(crate) fn check_count(
    document: &'static str,
    signatures: &[Signature],
) -> Result<(), BundleError> {
    if signatures.is_empty() {
        return Err(BundleError::MissingSignature { document });
    }
    if signatures.len() > SIGNATURES_MAX {
        return Err(BundleError::TooManySignatures { document, count: signatures.len() });
    }
    Ok(())
}

/// The distinct keys of `keys` with a valid signature of `body`. A signature by a key not in
/// `keys` is skipped (it may belong to another root); a signature by a key in `keys` that
/// does not verify is an error, because no honest signer produces one. A key signing twice
/// counts once.
pub(crate) fn valid_keys(
    document: &'static str,
    body: &[u8],
    signatures: &[Signature],
    keys: &BTreeMap<KeyId, PublicKey>,
) -> Result<BTreeSet<KeyId>, BundleError> {
    let mut valid = BTreeSet::new();
    for signature in signatures {
        let Some(key) = keys.get(&signature.key_id) else { continue };
        if !key.verify(body, &signature.sig) {
            return Err(BundleError::BadSignature { document, key_id: signature.key_id });
        }
        valid.insert(signature.key_id);
    }
    Ok(valid)
}
