//! The root: the keys an appliance trusts and how many of them must sign, itself a signed
//! document that only a threshold of its predecessor's keys (and of its own) can replace.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::keys::{KeyId, PublicKey};
use crate::signed::{check_count, valid_keys, SignedDocument};
use crate::{json, BundleError, KEYS_MAX, ROOT_CHAIN_MAX, ROOT_MAX, ROOT_TYPE};

/// A root, checked: version ≥ 1, 1 ≤ threshold ≤ keys ≤ [`KEYS_MAX`], each key under its own id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub version: u64,
    /// Unix seconds; the root is trusted for manifests while `now < expires`.
    pub expires: u64,
    /// How many distinct keys must sign a manifest (or the next root).
    pub threshold: u32,
    pub keys: BTreeMap<KeyId, PublicKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RootJson {
    #[serde(rename = "type")]
    kind: String,
    version: u64,
    expires: u64,
    threshold: u32,
    #[serde(deserialize_with = "json::unique_map")]
    keys: BTreeMap<String, String>,
}

impl Root {
    /// A root listing `keys` (ids derived), checked (release tooling and tests).
    pub fn new(
        version: u64,
        expires: u64,
        threshold: u32,
        keys: &[PublicKey],
    ) -> Result<Root, BundleError> {
        let root = Root {
            version,
            expires,
            threshold,
            keys: keys.iter().map(|key| (key.id(), *key)).collect(),
        };
        root.check()?;
        Ok(root)
    }

    /// The root's canonical text: pretty JSON, fixed field order, keys sorted by id, final
    /// newline. Sign these bytes (with the old root's keys and the new root's keys).
    pub fn encode(&self) -> Result<Vec<u8>, BundleError> {
        self.check()?;
        let json = RootJson {
            kind: ROOT_TYPE.to_string(),
            version: self.version,
            expires: self.expires,
            threshold: self.threshold,
            keys: self.keys.iter().map(|(id, key)| (id.to_string(), key.to_string())).collect(),
        };
        let mut bytes =
            serde_json::to_vec_pretty(&json).expect("serializing strings and numbers cannot fail");
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Parses and checks root text. This does **not** check signatures: the root an appliance
    /// ships with is trusted as is; every later one goes through [`verify_root_rotation`].
    pub fn parse(bytes: &[u8]) -> Result<Root, BundleError> {
        if bytes.len() > ROOT_MAX {
            return Err(BundleError::RootTooLarge { len: bytes.len() });
        }
        let malformed = |error: serde_json::Error| {
            let (line, column, message) = json::position(&error);
            BundleError::MalformedRoot { line, column, message }
        };
        let probe: json::TypeProbe = serde_json::from_slice(bytes).map_err(malformed)?;
        if probe.kind != ROOT_TYPE {
            return Err(BundleError::WrongDocumentType { expected: ROOT_TYPE, found: probe.kind });
        }
        let json: RootJson = serde_json::from_slice(bytes).map_err(malformed)?;
        if json.keys.len() > KEYS_MAX {
            return Err(BundleError::TooManyKeys { count: json.keys.len() });
        }
        let mut keys = BTreeMap::new();
        for (id_text, key_text) in json.keys {
            let key = PublicKey::parse(&key_text)
                .ok_or_else(|| BundleError::InvalidPublicKey { key_id: id_text.clone() })?;
            let id = key.id();
            if id.to_string() != id_text {
                return Err(BundleError::KeyIdMismatch { key_id: id_text, expected: id });
            }
            keys.insert(id, key);
        }
        let root =
            Root { version: json.version, expires: json.expires, threshold: json.threshold, keys };
        root.check()?;
        Ok(root)
    }

    /// Whether the root is expired at `now`.
    pub fn check_expiry(&self, now_unix: u64) -> Result<(), BundleError> {
        if now_unix >= self.expires {
            return Err(BundleError::RootExpired {
                version: self.version,
                expires: self.expires,
                now: now_unix,
            });
        }
        Ok(())
    }

    fn check(&self) -> Result<(), BundleError> {
        if self.version == 0 {
            return Err(BundleError::RootVersionZero);
        }
        if self.keys.len() > KEYS_MAX {
            return Err(BundleError::TooManyKeys { count: self.keys.len() });
        }
        if self.threshold == 0 || self.threshold as usize > self.keys.len() {
            return Err(BundleError::InvalidThreshold {
                threshold: self.threshold,
                keys: self.keys.len(),
            });
        }
        for (id, key) in &self.keys {
            if key.id() != *id {
                return Err(BundleError::KeyIdMismatch {
                    key_id: id.to_string(),
                    expected: key.id(),
                });
            }
        }
        Ok(())
    }
}

/// Replaces `trusted` with the root in `new_signed`, TUF-style:
///
/// 1. at most [`ROOT_MAX`] bytes, signed, at most [`crate::SIGNATURES_MAX`] signatures;
/// 2. a threshold of `trusted`'s keys signed it (checked on the raw bytes, before parsing);
/// 3. it parses and is a valid root;
/// 4. its version is exactly `trusted.version + 1`;
/// 5. a threshold of its *own* keys signed it too (so a root cannot name keys that never
///    agreed to it, and the new key holders proved they hold their keys);
/// 6. it has not expired at `now_unix`.
///
/// A signature by a key in neither root is ignored; a signature by a key in either that does
/// not verify is refused. The trusted root's own expiry does not matter: rotation is how an
/// appliance with an expired root recovers.
pub fn verify_root_rotation(
    trusted: &Root,
    new_signed: &SignedDocument,
    now_unix: u64,
) -> Result<Root, BundleError> {
    let new = rotate(trusted, new_signed)?;
    new.check_expiry(now_unix)?;
    Ok(new)
}

/// Walks `chain` (roots `trusted.version + 1`, `+ 2`, …, at most [`ROOT_CHAIN_MAX`]) one
/// rotation at a time and returns the last root. As in TUF, only the last root's expiry is
/// checked, so an appliance that was offline while intermediate roots expired still catches
/// up. With an empty chain, `trusted` itself must be unexpired.
pub fn verify_root_chain(
    trusted: &Root,
    chain: &[SignedDocument],
    now_unix: u64,
) -> Result<Root, BundleError> {
    if chain.len() > ROOT_CHAIN_MAX {
        return Err(BundleError::RootChainTooLong { count: chain.len() });
    }
    let mut current = trusted.clone();
    for signed in chain {
        current = rotate(&current, signed)?;
    }
    current.check_expiry(now_unix)?;
    Ok(current)
}

/// Steps 1 to 5 of [`verify_root_rotation`].
fn rotate(trusted: &Root, new_signed: &SignedDocument) -> Result<Root, BundleError> {
    const DOCUMENT: &str = "new root";
    if new_signed.body.len() > ROOT_MAX {
        return Err(BundleError::RootTooLarge { len: new_signed.body.len() });
    }
    check_count(DOCUMENT, &new_signed.signatures)?;
    let by_old = valid_keys(DOCUMENT, &new_signed.body, &new_signed.signatures, &trusted.keys)?;
    if by_old.len() < trusted.threshold as usize {
        return Err(BundleError::RootNotSignedByOld {
            old_version: trusted.version,
            required: trusted.threshold,
            keys: trusted.keys.len(),
            valid: by_old.len(),
        });
    }
    let new = Root::parse(&new_signed.body)?;
    if trusted.version.checked_add(1) != Some(new.version) {
        return Err(BundleError::RootVersionNotNext {
            found: new.version,
            trusted: trusted.version,
        });
    }
    let by_new = valid_keys(DOCUMENT, &new_signed.body, &new_signed.signatures, &new.keys)?;
    if by_new.len() < new.threshold as usize {
        return Err(BundleError::RootNotSignedByNew {
            new_version: new.version,
            required: new.threshold,
            keys: new.keys.len(),
            valid: by_new.len(),
        });
    }
    Ok(new)
}
