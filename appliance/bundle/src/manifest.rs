//! The manifest: what a bundle installs, for which product, from which installed versions,
//! until when, and the size and SHA-256 of each payload.

use std::collections::{BTreeMap, BTreeSet};

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::names::{check_payload_name, ident_problem, parse_version};
use crate::{
    hex, json, BundleError, COMPONENTS_MAX, MANIFEST_MAX, MANIFEST_TYPE, PAYLOADS_MAX,
    PAYLOAD_SIZE_MAX,
};

/// A bundle's manifest, checked (every value within its rules; see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The product the bundle is for ("siterelay").
    pub product: String,
    /// The rollup or release the bundle delivers ("UR33").
    pub rollup: String,
    /// Monotonic: an appliance installs only a bundle version newer than any it installed.
    pub bundle_version: u64,
    /// Unix seconds; the manifest is valid while `now < expires`.
    pub expires: u64,
    /// Component → the version the bundle installs.
    pub components: BTreeMap<String, String>,
    /// Component → the oldest installed version the bundle upgrades from (a subset of
    /// `components`).
    pub min_source: BTreeMap<String, String>,
    /// In the manifest's order; names are unique.
    pub payloads: Vec<Payload>,
}

/// One payload file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// A relative path under the bundle's payload directory.
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

impl Payload {
    /// The entry for `bytes` under `name` (tooling; for a payload too large to hold in memory,
    /// build the entry from a [`ring::digest::Context`] run over it).
    pub fn describe(name: &str, bytes: &[u8]) -> Payload {
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
        Payload { name: name.to_string(), size: bytes.len() as u64, sha256 }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestJson {
    #[serde(rename = "type")]
    kind: String,
    product: String,
    rollup: String,
    bundle_version: u64,
    expires: u64,
    #[serde(deserialize_with = "json::unique_map")]
    components: BTreeMap<String, String>,
    #[serde(deserialize_with = "json::unique_map")]
    min_source: BTreeMap<String, String>,
    payloads: Vec<PayloadJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PayloadJson {
    name: String,
    size: u64,
    sha256: String,
}

/// Builds and checks a manifest (release tooling and tests). The result encodes with
/// [`Manifest::encode`].
pub fn create_manifest(
    product: &str,
    rollup: &str,
    bundle_version: u64,
    expires: u64,
    components: &[(&str, &str)],
    min_source: &[(&str, &str)],
    payloads: Vec<Payload>,
) -> Result<Manifest, BundleError> {
    let map = |pairs: &[(&str, &str)]| {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()
    };
    let manifest = Manifest {
        product: product.to_string(),
        rollup: rollup.to_string(),
        bundle_version,
        expires,
        components: map(components),
        min_source: map(min_source),
        payloads,
    };
    manifest.check()?;
    Ok(manifest)
}

impl Manifest {
    /// The manifest's canonical text: pretty JSON, keys in a fixed order (fields as below, maps
    /// sorted), a final newline. Sign these bytes. Refuses what [`Manifest::parse`] would.
    pub fn encode(&self) -> Result<Vec<u8>, BundleError> {
        self.check()?;
        let json = ManifestJson {
            kind: MANIFEST_TYPE.to_string(),
            product: self.product.clone(),
            rollup: self.rollup.clone(),
            bundle_version: self.bundle_version,
            expires: self.expires,
            components: self.components.clone(),
            min_source: self.min_source.clone(),
            payloads: self
                .payloads
                .iter()
                .map(|p| PayloadJson {
                    name: p.name.clone(),
                    size: p.size,
                    sha256: hex::encode(&p.sha256),
                })
                .collect(),
        };
        let mut bytes =
            serde_json::to_vec_pretty(&json).expect("serializing strings and numbers cannot fail");
        bytes.push(b'\n');
        if bytes.len() > MANIFEST_MAX {
            return Err(BundleError::ManifestTooLarge { len: bytes.len() });
        }
        Ok(bytes)
    }

    /// Parses and checks manifest text. This does **not** check signatures: use
    /// [`crate::verify_manifest`] on anything that came from outside.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, BundleError> {
        if bytes.len() > MANIFEST_MAX {
            return Err(BundleError::ManifestTooLarge { len: bytes.len() });
        }
        let malformed = |error: serde_json::Error| {
            let (line, column, message) = json::position(&error);
            BundleError::MalformedManifest { line, column, message }
        };
        let probe: json::TypeProbe = serde_json::from_slice(bytes).map_err(malformed)?;
        if probe.kind != MANIFEST_TYPE {
            return Err(BundleError::WrongDocumentType {
                expected: MANIFEST_TYPE,
                found: probe.kind,
            });
        }
        let json: ManifestJson = serde_json::from_slice(bytes).map_err(malformed)?;
        let payloads = json
            .payloads
            .into_iter()
            .map(|p| match hex::decode::<32>(&p.sha256) {
                Some(sha256) => Ok(Payload { name: p.name, size: p.size, sha256 }),
                None => Err(BundleError::InvalidHash { name: p.name, sha256: p.sha256 }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let manifest = Manifest {
            product: json.product,
            rollup: json.rollup,
            bundle_version: json.bundle_version,
            expires: json.expires,
            components: json.components,
            min_source: json.min_source,
            payloads,
        };
        manifest.check()?;
        Ok(manifest)
    }

    /// The payload named `name`, if listed.
    pub fn payload(&self, name: &str) -> Option<&Payload> {
        self.payloads.iter().find(|p| p.name == name)
    }

    /// Every rule of the format, in a fixed order (so one manifest always gets one error).
    fn check(&self) -> Result<(), BundleError> {
        if let Some(reason) = ident_problem(&self.product, false) {
            return Err(BundleError::InvalidProduct { product: self.product.clone(), reason });
        }
        if let Some(reason) = ident_problem(&self.rollup, false) {
            return Err(BundleError::InvalidRollup { rollup: self.rollup.clone(), reason });
        }
        self.check_components()?;
        self.check_payloads()
    }

    fn check_components(&self) -> Result<(), BundleError> {
        if self.components.is_empty() {
            return Err(BundleError::NoComponents);
        }
        if self.components.len() > COMPONENTS_MAX {
            return Err(BundleError::TooManyComponents { count: self.components.len() });
        }
        for (component, version) in &self.components {
            if let Some(reason) = ident_problem(component, true) {
                return Err(BundleError::InvalidComponentName {
                    component: component.clone(),
                    reason,
                });
            }
            parse_version(version).map_err(|reason| BundleError::InvalidVersion {
                component: component.clone(),
                version: version.clone(),
                reason,
            })?;
        }
        for (component, minimum) in &self.min_source {
            let Some(version) = self.components.get(component) else {
                return Err(BundleError::MinSourceUnknownComponent {
                    component: component.clone(),
                });
            };
            parse_version(minimum).map_err(|reason| BundleError::InvalidMinSourceVersion {
                component: component.clone(),
                version: minimum.clone(),
                reason,
            })?;
            if crate::compare_versions(minimum, version) == Some(std::cmp::Ordering::Greater) {
                return Err(BundleError::MinSourceAboveTarget {
                    component: component.clone(),
                    minimum: minimum.clone(),
                    version: version.clone(),
                });
            }
        }
        Ok(())
    }

    fn check_payloads(&self) -> Result<(), BundleError> {
        if self.payloads.is_empty() {
            return Err(BundleError::NoPayloads);
        }
        if self.payloads.len() > PAYLOADS_MAX {
            return Err(BundleError::TooManyPayloads { count: self.payloads.len() });
        }
        let mut names = BTreeSet::new();
        for payload in &self.payloads {
            check_payload_name(&payload.name)?;
            if payload.size > PAYLOAD_SIZE_MAX {
                return Err(BundleError::PayloadTooLarge {
                    name: payload.name.clone(),
                    size: payload.size,
                });
            }
            if !names.insert(payload.name.as_str()) {
                return Err(BundleError::DuplicatePayload { name: payload.name.clone() });
            }
        }
        // "a" and "a/b" cannot both be files. Every proper prefix ending before a '/' is a
        // directory the name needs.
        for payload in &self.payloads {
            for (at, _) in payload.name.match_indices('/') {
                let directory = &payload.name[..at];
                if names.contains(directory) {
                    return Err(BundleError::PayloadNameConflict {
                        name: payload.name.clone(),
                        file: directory.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}
