//! Why a bundle, a root or a payload was refused. Every message starts with `bundle: ` and
//! names the problem; names and values from a document are printed quoted and escaped
//! (`{:?}`), so a name with control characters cannot garble a log line.

use crate::keys::KeyId;
use crate::{
    COMPONENTS_MAX, KEYS_MAX, MANIFEST_MAX, NAME_MAX, PAYLOADS_MAX, PAYLOAD_SIZE_MAX,
    ROOT_CHAIN_MAX, ROOT_MAX, SIGNATURES_FILE_MAX, SIGNATURES_MAX,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    // --- Signatures and thresholds -------------------------------------------------------
    #[error("bundle: signature file is {len} bytes, more than the limit of {SIGNATURES_FILE_MAX}")]
    SignaturesFileTooLarge { len: usize },
    /// Syntax (the message then starts with the 1-based line and column), unknown keys, too
    /// many entries, a key id or signature that is not lowercase hex of the right length.
    #[error("bundle: malformed signature file: {message}")]
    MalformedSignatures { message: String },
    #[error(
        "bundle: {document} carries {count} signatures, more than the limit of {SIGNATURES_MAX}"
    )]
    TooManySignatures { document: &'static str, count: usize },
    #[error("bundle: {document} is not signed")]
    MissingSignature { document: &'static str },
    /// A signature names a trusted key but does not verify: the document or the signature was
    /// altered. Refused even when other signatures would meet the threshold.
    #[error("bundle: {document}: signature by key {key_id} does not verify")]
    BadSignature { document: &'static str, key_id: KeyId },
    /// The threshold is not met and at least one signature is by a key the root does not list
    /// (typically: signed with a key from a newer root the appliance does not have yet).
    #[error(
        "bundle: {document} is signed by unknown key {key_id}, which root version {root_version} \
         does not list ({required} of {keys} required, {valid} valid)"
    )]
    UnknownKey {
        document: &'static str,
        key_id: KeyId,
        root_version: u64,
        required: u32,
        keys: usize,
        valid: usize,
    },
    #[error(
        "bundle: {document} signatures below threshold: {required} of {keys} required, {valid} valid"
    )]
    BelowThreshold { document: &'static str, required: u32, keys: usize, valid: usize },

    // --- Root documents and rotation -----------------------------------------------------
    #[error("bundle: root is {len} bytes, more than the limit of {ROOT_MAX}")]
    RootTooLarge { len: usize },
    #[error("bundle: malformed root: line {line}, column {column}: {message}")]
    MalformedRoot { line: usize, column: usize, message: String },
    #[error("bundle: expected a document of type {expected:?}, found type {found:?}")]
    WrongDocumentType { expected: &'static str, found: String },
    #[error("bundle: root version must be at least 1, found 0")]
    RootVersionZero,
    #[error("bundle: root lists {count} keys, more than the limit of {KEYS_MAX}")]
    TooManyKeys { count: usize },
    #[error("bundle: root threshold {threshold} is invalid: it must be from 1 to the number of keys ({keys})")]
    InvalidThreshold { threshold: u32, keys: usize },
    #[error("bundle: root key {key_id:?}: public key must be 64 lowercase hex digits")]
    InvalidPublicKey { key_id: String },
    #[error(
        "bundle: root key id {key_id:?} does not match its public key, whose id is {expected}"
    )]
    KeyIdMismatch { key_id: String, expected: KeyId },
    #[error(
        "bundle: new root is not signed by a threshold of root version {old_version}'s keys: \
         {required} of {keys} required, {valid} valid"
    )]
    RootNotSignedByOld { old_version: u64, required: u32, keys: usize, valid: usize },
    #[error(
        "bundle: root version {new_version} is not signed by a threshold of its own keys: \
         {required} of {keys} required, {valid} valid"
    )]
    RootNotSignedByNew { new_version: u64, required: u32, keys: usize, valid: usize },
    #[error(
        "bundle: new root has version {found}; a rotation from root version {trusted} must go \
         to exactly the next version"
    )]
    RootVersionNotNext { found: u64, trusted: u64 },
    #[error("bundle: root version {version} expired at {expires} (now {now})")]
    RootExpired { version: u64, expires: u64, now: u64 },
    #[error("bundle: root chain has {count} roots, more than the limit of {ROOT_CHAIN_MAX}")]
    RootChainTooLong { count: usize },

    // --- Manifest syntax and contents ----------------------------------------------------
    #[error("bundle: manifest is {len} bytes, more than the limit of {MANIFEST_MAX}")]
    ManifestTooLarge { len: usize },
    #[error("bundle: malformed manifest: line {line}, column {column}: {message}")]
    MalformedManifest { line: usize, column: usize, message: String },
    #[error("bundle: product {product:?} is invalid: {reason}")]
    InvalidProduct { product: String, reason: &'static str },
    #[error("bundle: rollup id {rollup:?} is invalid: {reason}")]
    InvalidRollup { rollup: String, reason: &'static str },
    #[error("bundle: manifest lists no components")]
    NoComponents,
    #[error("bundle: manifest lists {count} components, more than the limit of {COMPONENTS_MAX}")]
    TooManyComponents { count: usize },
    #[error("bundle: component name {component:?} is invalid: {reason}")]
    InvalidComponentName { component: String, reason: &'static str },
    #[error("bundle: component {component:?} has invalid version {version:?}: {reason}")]
    InvalidVersion { component: String, version: String, reason: &'static str },
    #[error("bundle: min_source names component {component:?}, which the manifest does not list")]
    MinSourceUnknownComponent { component: String },
    #[error(
        "bundle: min_source of component {component:?} has invalid version {version:?}: {reason}"
    )]
    InvalidMinSourceVersion { component: String, version: String, reason: &'static str },
    #[error(
        "bundle: min_source of component {component:?} is {minimum:?}, newer than the version \
         {version:?} the bundle installs"
    )]
    MinSourceAboveTarget { component: String, minimum: String, version: String },
    #[error("bundle: manifest lists no payloads")]
    NoPayloads,
    #[error("bundle: manifest lists {count} payloads, more than the limit of {PAYLOADS_MAX}")]
    TooManyPayloads { count: usize },
    #[error(
        "bundle: payload {name:?} declares {size} bytes, more than the limit of {PAYLOAD_SIZE_MAX}"
    )]
    PayloadTooLarge { name: String, size: u64 },
    #[error("bundle: payload {name:?} has an invalid sha256 {sha256:?}: it must be 64 lowercase hex digits")]
    InvalidHash { name: String, sha256: String },
    #[error("bundle: duplicate payload {name:?}")]
    DuplicatePayload { name: String },
    #[error("bundle: payload {name:?} is inside payload {file:?}, which is a file")]
    PayloadNameConflict { name: String, file: String },

    // --- Payload names (each becomes a path under the bundle's payload directory) --------
    #[error("bundle: payload name is empty")]
    PayloadNameEmpty,
    #[error("bundle: payload name {name:?} is {len} bytes, more than the limit of {NAME_MAX}")]
    PayloadNameTooLong { name: String, len: usize },
    #[error("bundle: payload name {name:?} contains NUL")]
    PayloadNameNul { name: String },
    #[error("bundle: payload name {name:?} is an absolute path")]
    PayloadNameAbsolute { name: String },
    #[error("bundle: payload name {name:?} contains a backslash")]
    PayloadNameBackslash { name: String },
    #[error("bundle: payload name {name:?} contains a \"..\" component (path traversal)")]
    PayloadNameTraversal { name: String },
    #[error("bundle: payload name {name:?} contains a \".\" component")]
    PayloadNameDotComponent { name: String },
    #[error(
        "bundle: payload name {name:?} contains an empty component (\"//\" or a trailing \"/\")"
    )]
    PayloadNameEmptyComponent { name: String },
    #[error("bundle: payload name {name:?} contains {character:?}; only A-Z a-z 0-9 . _ + - and / are allowed")]
    PayloadNameCharacter { name: String, character: char },

    // --- Manifest against this appliance -------------------------------------------------
    #[error("bundle: manifest is for product {found:?}, this appliance runs {expected:?}")]
    WrongProduct { found: String, expected: String },
    #[error("bundle: bundle version {version} is older than bundle version {installed}, which was installed before (rollback refused)")]
    Rollback { version: u64, installed: u64 },
    #[error("bundle: bundle version {version} is already installed (not newer)")]
    AlreadyInstalled { version: u64 },
    #[error("bundle: manifest expired at {expires} (now {now})")]
    ManifestExpired { expires: u64, now: u64 },
    #[error("bundle: installed component {component:?} has invalid version {version:?}: {reason}")]
    InvalidInstalledVersion { component: String, version: String, reason: &'static str },
    #[error("bundle: component {component:?} is not installed, and the bundle requires at least version {minimum:?}")]
    ComponentNotInstalled { component: String, minimum: String },
    #[error("bundle: component {component:?} is at {installed:?}, older than the bundle's minimum source version {minimum:?}")]
    BelowMinimumSource { component: String, installed: String, minimum: String },
    #[error("bundle: hop of {component:?} from {from:?} to {to:?} refused: {reason}")]
    HopRefused { component: String, from: String, to: String, reason: String },

    // --- Payload bytes -------------------------------------------------------------------
    #[error("bundle: payload {name:?} is not listed in the manifest")]
    UnknownPayload { name: String },
    #[error("bundle: payload {name:?} is {actual} bytes, the manifest says {expected}")]
    SizeMismatch { name: String, expected: u64, actual: u64 },
    #[error("bundle: payload {name:?} is longer than the {expected} bytes the manifest says")]
    PayloadOverrun { name: String, expected: u64 },
    #[error("bundle: payload {name:?} has sha256 {actual}, the manifest says {expected}")]
    HashMismatch { name: String, expected: String, actual: String },

    // --- Keys (creation side) ------------------------------------------------------------
    #[error("bundle: the system random number generator failed")]
    RandomFailed,
    #[error("bundle: ed25519 key rejected: {reason}")]
    KeyRejected { reason: String },
}
