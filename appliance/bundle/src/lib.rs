//! Signed update bundles, the pure part (design.md §6, "Bundles"): a **root** of trusted
//! Ed25519 keys with a threshold, rotated only by a root signed by a threshold of the old keys
//! and of the new; a **manifest** signed by a threshold of the root's keys, naming the product,
//! rollup, component versions, minimum source versions, expiry, a monotonic bundle version,
//! and the size and SHA-256 of every payload; and the **payloads** themselves, bound to the
//! manifest by hash.
//!
//! No files, clocks or randomness in the checks: the caller passes bytes and the time (fixed
//! once when an update starts). [`fs`] is a thin, separate reader for a bundle directory; key
//! generation ([`KeyPair::generate_seed`]) is the one use of the system's randomness, on the
//! creation side. Operators' and release engineers' description: `docs/BUNDLES.md`.
//!
//! # Documents
//!
//! A signed document is a **body** (UTF-8 JSON text) and a **signature file**. Signatures
//! cover the body's exact bytes; verification checks them before parsing the body and never
//! re-encodes it, so no canonicalization is involved in verifying. The encoders here write one
//! canonical form (pretty JSON, fixed field order, sorted maps, final newline), which is what
//! the release tooling signs.
//!
//! ```json
//! {
//!   "type": "siterelay-bundle-manifest-v1",
//!   "product": "siterelay",
//!   "rollup": "UR33",
//!   "bundle_version": 7,
//!   "expires": 1767225600,
//!   "components": { "agent": "1.4.0", "relay": "1.4.0" },
//!   "min_source": { "relay": "1.0.0" },
//!   "payloads": [ { "name": "rootfs.erofs", "size": 123, "sha256": "<64 hex>" } ]
//! }
//! ```
//!
//! ```json
//! {
//!   "type": "siterelay-root-v1",
//!   "version": 1,
//!   "expires": 1830297600,
//!   "threshold": 2,
//!   "keys": { "<16 hex key id>": "<64 hex ed25519 public key>" }
//! }
//! ```
//!
//! ```json
//! { "signatures": [ { "key_id": "<16 hex>", "sig": "<128 hex>" } ] }
//! ```
//!
//! - Unknown fields, a repeated field or a repeated map key are errors; hex is lowercase only
//!   (one value, one spelling). A key id is the first 16 hex digits of the SHA-256 of the
//!   public key, and a root must list each key under exactly that id.
//! - `type` keeps a root from being accepted as a manifest and the reverse, since the same
//!   keys sign both.
//! - Limits: manifest ≤ [`MANIFEST_MAX`] bytes, root ≤ [`ROOT_MAX`], signature file ≤
//!   [`SIGNATURES_FILE_MAX`] with ≤ [`SIGNATURES_MAX`] signatures, ≤ [`KEYS_MAX`] keys,
//!   ≤ [`COMPONENTS_MAX`] components, 1 to [`PAYLOADS_MAX`] payloads of ≤ [`PAYLOAD_SIZE_MAX`]
//!   bytes each, payload names ≤ [`NAME_MAX`] bytes, root chains ≤ [`ROOT_CHAIN_MAX`].
//! - Product and rollup ids: 1 to [`IDENT_MAX`] bytes of `A-Z a-z 0-9 . _ -`; component names
//!   the same plus single inner spaces ("Unified Setup"). Versions: 1 to 8 dot-separated
//!   decimal numbers without leading zeros (`9.55.6812.1`), compared number by number.
//! - Payload names: relative `/`-separated paths of `A-Z a-z 0-9 . _ + -`; no `..`, `.` or
//!   empty component, no leading `/`, no backslash or NUL; unique; no name inside another
//!   (`a` and `a/b`).
//!
//! # Verifying
//!
//! ```text
//! root   = verify_root_chain(&shipped_or_stored_root, &newer_roots, now)?;   // rotation
//! man    = verify_manifest(&root, &signed_manifest, now, highest_installed, "siterelay")?;
//! check_upgrade(&man, &installed_versions, &|component, from, to| planner.hop(component, from, to))?;
//! for each payload: PayloadVerifier::new(&man, name)?; update(chunk)?…; finish()?;
//! ```
//!
//! Signatures: a signature by a key the root lists must verify (else the document is refused,
//! even if others meet the threshold); a signature by an unlisted key is ignored, unless the
//! threshold is then not met, when the error names that key. Distinct keys count, never
//! signatures.
//!
//! # Threats covered
//!
//! Each has its own [`BundleError`] variant: forged or altered documents ([`BundleError::BadSignature`]),
//! unsigned ones ([`BundleError::MissingSignature`]), too few distinct keys, including one key
//! repeated ([`BundleError::BelowThreshold`], [`BundleError::UnknownKey`]), rollback and replay
//! ([`BundleError::Rollback`], [`BundleError::AlreadyInstalled`]), freeze
//! ([`BundleError::ManifestExpired`], [`BundleError::RootExpired`]), wrong software
//! ([`BundleError::WrongProduct`], [`BundleError::WrongDocumentType`]), substituted payloads
//! ([`BundleError::SizeMismatch`], [`BundleError::PayloadOverrun`],
//! [`BundleError::HashMismatch`]), endless data (every `…TooLarge`/`TooMany…`), writing outside
//! the payload directory (the `PayloadName…` variants), unsupported hops
//! ([`BundleError::BelowMinimumSource`], [`BundleError::HopRefused`]), and illegitimate root
//! rotation ([`BundleError::RootNotSignedByOld`], [`BundleError::RootNotSignedByNew`],
//! [`BundleError::RootVersionNotNext`]).
//!
//! # Compared with TUF
//!
//! The root is TUF's root, rotated the same way. The manifest stands in for TUF's targets,
//! snapshot and timestamp at once, signed by the root's keys (no delegations, no separate
//! release keys). That gives up: freshness beyond the manifest's expiry (a withheld newer
//! bundle goes unnoticed until the last seen manifest expires, where TUF's short-lived
//! timestamp notices within hours); a signed list of all current bundles (snapshot); a root
//! kept offline apart from release keys; and recovery from a fast-forwarded bundle version by
//! rotation. `docs/BUNDLES.md` has the full table.
//!
//! # Example
//!
//! ```
//! use bundle::{create_manifest, sign, verify_manifest, verify_payload, KeyPair, Payload, Root};
//!
//! let keys: Vec<KeyPair> = (1u8..=3).map(|i| KeyPair::from_seed(&[i; 32])).collect::<Result<_, _>>()?;
//! let public: Vec<_> = keys.iter().map(KeyPair::public_key).collect();
//! let root = Root::new(1, 2_000_000_000, 2, &public)?;
//!
//! let image = b"erofs image bytes".to_vec();
//! let manifest = create_manifest(
//!     "siterelay", "UR33", 7, 1_900_000_000,
//!     &[("relay", "1.4.0")], &[("relay", "1.0.0")],
//!     vec![Payload::describe("rootfs.erofs", &image)],
//! )?;
//! let signed = sign(manifest.encode()?, &[&keys[0], &keys[2]]);
//!
//! let verified = verify_manifest(&root, &signed, 1_800_000_000, 6, "siterelay")?;
//! verify_payload(&verified, "rootfs.erofs", &image)?;
//! # Ok::<(), bundle::BundleError>(())
//! ```

// Pure logic with nothing to gain from `unsafe`; forbidding it keeps the proof burden at zero.
#![forbid(unsafe_code)]

mod error;
pub mod fs;
mod hex;
mod json;
mod keys;
mod manifest;
mod names;
mod root;
mod signed;
mod verify;

pub use error::BundleError;
pub use keys::{sign, KeyId, KeyPair, PublicKey, KEY_ID_LEN};
pub use manifest::{create_manifest, Manifest, Payload};
pub use names::{compare_versions, parse_version};
pub use root::{verify_root_chain, verify_root_rotation, Root};
pub use signed::{encode_signatures, parse_signatures, Signature, SignedDocument};
pub use verify::{check_upgrade, verify_manifest, verify_payload, AllowedHop, PayloadVerifier};

/// The product this appliance is.
pub const PRODUCT: &str = "siterelay";
/// The `type` of a manifest body.
pub const MANIFEST_TYPE: &str = "siterelay-bundle-manifest-v1";
/// The `type` of a root body.
pub const ROOT_TYPE: &str = "siterelay-root-v1";

/// Largest manifest body, in bytes (checked before signatures are).
pub const MANIFEST_MAX: usize = 64 << 10;
/// Largest root body, in bytes.
pub const ROOT_MAX: usize = 16 << 10;
/// Largest signature file, in bytes.
pub const SIGNATURES_FILE_MAX: usize = 8 << 10;
/// Most signatures on one document.
pub const SIGNATURES_MAX: usize = 16;
/// Most keys in a root.
pub const KEYS_MAX: usize = 16;
/// Most roots walked in one [`verify_root_chain`].
pub const ROOT_CHAIN_MAX: usize = 32;
/// Most components in a manifest.
pub const COMPONENTS_MAX: usize = 32;
/// Most payloads in a manifest.
pub const PAYLOADS_MAX: usize = 64;
/// Largest payload, in bytes (4 GiB).
pub const PAYLOAD_SIZE_MAX: u64 = 4 << 30;
/// Longest payload name, in bytes.
pub const NAME_MAX: usize = 255;
/// Longest product, rollup id or component name, in bytes.
pub const IDENT_MAX: usize = 64;
/// Longest version string, in bytes.
pub const VERSION_MAX: usize = 64;
/// Most numbers in a version.
pub const VERSION_SEGMENTS_MAX: usize = 8;

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod tests;
