//! Verification of a manifest against a root and the appliance's state, of the upgrade hops it
//! implies, and of payload bytes against the manifest.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use ring::digest;

use crate::manifest::{Manifest, Payload};
use crate::names::parse_version;
use crate::root::Root;
use crate::signed::{check_count, valid_keys, SignedDocument};
use crate::{compare_versions, hex, BundleError, MANIFEST_MAX};

/// The planner's verdict on one hop: `Ok(())`, or `Err(reason)` to refuse it.
pub type AllowedHop<'a> = &'a dyn Fn(&str, &str, &str) -> Result<(), String>;

/// Verifies a signed manifest and returns it, in this order (each step trusts only what the
/// steps before it established):
///
/// 1. the body is at most [`MANIFEST_MAX`] bytes;
/// 2. `root` has not expired at `now_unix`;
/// 3. the manifest is signed, with at most [`crate::SIGNATURES_MAX`] signatures;
/// 4. every signature by a key of `root` verifies, and at least `root.threshold` distinct keys
///    signed (a key's repeated signature counts once) — all before the body is parsed;
/// 5. the body parses as a valid manifest;
/// 6. its product is `product`;
/// 7. its bundle version is greater than `installed_bundle_version`, the highest bundle version
///    ever installed (0: none); equal is "already installed", lower is a rollback;
/// 8. it has not expired at `now_unix`.
///
/// `now_unix` should be fixed once when an update starts. The caller then checks the hops with
/// [`check_upgrade`] and each payload with [`verify_payload`] or [`PayloadVerifier`].
pub fn verify_manifest(
    root: &Root,
    signed: &SignedDocument,
    now_unix: u64,
    installed_bundle_version: u64,
    product: &str,
) -> Result<Manifest, BundleError> {
    const DOCUMENT: &str = "manifest";
    if signed.body.len() > MANIFEST_MAX {
        return Err(BundleError::ManifestTooLarge { len: signed.body.len() });
    }
    root.check_expiry(now_unix)?;
    check_count(DOCUMENT, &signed.signatures)?;
    let valid = valid_keys(DOCUMENT, &signed.body, &signed.signatures, &root.keys)?;
    if valid.len() < root.threshold as usize {
        let unknown = signed.signatures.iter().find(|s| !root.keys.contains_key(&s.key_id));
        return Err(match unknown {
            Some(signature) => BundleError::UnknownKey {
                document: DOCUMENT,
                key_id: signature.key_id,
                root_version: root.version,
                required: root.threshold,
                keys: root.keys.len(),
                valid: valid.len(),
            },
            None => BundleError::BelowThreshold {
                document: DOCUMENT,
                required: root.threshold,
                keys: root.keys.len(),
                valid: valid.len(),
            },
        });
    }
    let manifest = Manifest::parse(&signed.body)?;
    if manifest.product != product {
        return Err(BundleError::WrongProduct {
            found: manifest.product,
            expected: product.to_string(),
        });
    }
    match manifest.bundle_version.cmp(&installed_bundle_version) {
        Ordering::Less => {
            return Err(BundleError::Rollback {
                version: manifest.bundle_version,
                installed: installed_bundle_version,
            })
        }
        Ordering::Equal => {
            return Err(BundleError::AlreadyInstalled { version: manifest.bundle_version })
        }
        Ordering::Greater => {}
    }
    if now_unix >= manifest.expires {
        return Err(BundleError::ManifestExpired { expires: manifest.expires, now: now_unix });
    }
    Ok(manifest)
}

/// Checks what installing `manifest` does to each component, in component-name order, against
/// `installed` (component → installed version):
///
/// - a component at the bundle's version already (by [`compare_versions`]) needs no hop;
/// - a component not installed is a new one, unless the manifest states a `min_source` for it;
/// - an installed version must be valid and at least the manifest's `min_source`;
/// - every hop `(component, from, to)` goes to `allowed_hop` (the upgrade planner: support
///   window, site and node order, peers' versions); its `Err(reason)` refuses the bundle.
///
/// Whether a component may go *down* is the planner's call too (a re-release of older content
/// under a newer bundle version is legitimate); bundle rollback is [`verify_manifest`]'s.
pub fn check_upgrade(
    manifest: &Manifest,
    installed: &BTreeMap<String, String>,
    allowed_hop: AllowedHop<'_>,
) -> Result<(), BundleError> {
    for (component, to) in &manifest.components {
        let minimum = manifest.min_source.get(component);
        let Some(from) = installed.get(component) else {
            if let Some(minimum) = minimum {
                return Err(BundleError::ComponentNotInstalled {
                    component: component.clone(),
                    minimum: minimum.clone(),
                });
            }
            continue;
        };
        parse_version(from).map_err(|reason| BundleError::InvalidInstalledVersion {
            component: component.clone(),
            version: from.clone(),
            reason,
        })?;
        if compare_versions(from, to) == Some(Ordering::Equal) {
            continue;
        }
        if let Some(minimum) = minimum {
            if compare_versions(from, minimum) == Some(Ordering::Less) {
                return Err(BundleError::BelowMinimumSource {
                    component: component.clone(),
                    installed: from.clone(),
                    minimum: minimum.clone(),
                });
            }
        }
        allowed_hop(component, from, to).map_err(|reason| BundleError::HopRefused {
            component: component.clone(),
            from: from.clone(),
            to: to.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// Checks a whole payload held in memory: listed, then the size, then the SHA-256.
pub fn verify_payload(manifest: &Manifest, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
    let mut verifier = PayloadVerifier::new(manifest, name)?;
    let declared = verifier.payload.size;
    if bytes.len() as u64 != declared {
        return Err(BundleError::SizeMismatch {
            name: name.to_string(),
            expected: declared,
            actual: bytes.len() as u64,
        });
    }
    verifier.update(bytes)?;
    verifier.finish()
}

/// Checks a payload as it streams (into the inactive slot, say): [`update`](Self::update)
/// refuses the first chunk that goes past the declared size, so a payload cannot make the
/// caller write or hash more than the manifest promised; [`finish`](Self::finish) checks that
/// it is not short and that the hash matches. Until `finish` returns `Ok`, treat what was
/// written as garbage.
pub struct PayloadVerifier<'m> {
    payload: &'m Payload,
    seen: u64,
    hasher: digest::Context,
}

impl<'m> PayloadVerifier<'m> {
    pub fn new(manifest: &'m Manifest, name: &str) -> Result<Self, BundleError> {
        let payload = manifest
            .payload(name)
            .ok_or_else(|| BundleError::UnknownPayload { name: name.to_string() })?;
        Ok(PayloadVerifier { payload, seen: 0, hasher: digest::Context::new(&digest::SHA256) })
    }

    /// Bytes accepted so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), BundleError> {
        let seen = self.seen.saturating_add(chunk.len() as u64);
        if seen > self.payload.size {
            return Err(BundleError::PayloadOverrun {
                name: self.payload.name.clone(),
                expected: self.payload.size,
            });
        }
        self.hasher.update(chunk);
        self.seen = seen;
        Ok(())
    }

    pub fn finish(self) -> Result<(), BundleError> {
        if self.seen != self.payload.size {
            return Err(BundleError::SizeMismatch {
                name: self.payload.name.clone(),
                expected: self.payload.size,
                actual: self.seen,
            });
        }
        let actual = self.hasher.finish();
        if actual.as_ref() != self.payload.sha256 {
            return Err(BundleError::HashMismatch {
                name: self.payload.name.clone(),
                expected: hex::encode(&self.payload.sha256),
                actual: hex::encode(actual.as_ref()),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for PayloadVerifier<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadVerifier")
            .field("name", &self.payload.name)
            .field("size", &self.payload.size)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}
