//! `siterelay bundle keygen | root | create | verify`: release tooling for signed update
//! bundles (docs/BUNDLES.md). Keys are 32-byte ed25519 seeds stored as hex in a file only
//! its owner may read; whoever holds a threshold of them can publish updates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bundle::fs::{BundleDir, MANIFEST_FILE, MANIFEST_SIGNATURES_FILE, PAYLOADS_DIR, ROOTS_DIR};
use bundle::{KeyPair, Root, SignedDocument};

use crate::args::Args;

const DAY_SECS: u64 = 86_400;

pub(crate) fn run(rest: &[String]) -> Result<(), String> {
    let Some((sub, rest)) = rest.split_first() else {
        return Err("bundle: expected keygen, root, create or verify".into());
    };
    match sub.as_str() {
        "keygen" => keygen(rest),
        "root" => root(rest),
        "create" => create(rest),
        "verify" => verify(rest),
        other => Err(format!(
            "bundle: unknown subcommand {other:?} (expected keygen, root, create, verify)"
        )),
    }
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|error| format!("{}: {error}", parent.display()))?;
    }
    std::fs::write(path, bytes).map_err(|error| format!("{}: {error}", path.display()))
}

fn read_key(path: &str) -> Result<KeyPair, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("key {path}: {error}"))?;
    let text = text.trim();
    let mut seed = [0u8; 32];
    if text.len() != 64 {
        return Err(format!("key {path}: expected 64 hex digits (an ed25519 seed)"));
    }
    for (index, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16)
            .map_err(|_| format!("key {path}: not hex"))?;
    }
    KeyPair::from_seed(&seed).map_err(|error| format!("key {path}: {error}"))
}

fn read_keys(list: &[String]) -> Result<Vec<KeyPair>, String> {
    list.iter().flat_map(|item| item.split(',')).map(read_key).collect()
}

fn pairs(values: &[String], flag: &str) -> Result<Vec<(String, String)>, String> {
    values
        .iter()
        .map(|value| {
            value
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("--{flag} {value:?}: expected COMPONENT=VERSION"))
        })
        .collect()
}

/// `bundle keygen --out FILE`
fn keygen(rest: &[String]) -> Result<(), String> {
    let args = Args::parse("bundle keygen", rest, &[("out", true)])?;
    let out = PathBuf::from(args.value("out").ok_or("bundle keygen: --out FILE is required")?);
    if out.exists() {
        return Err(format!("{} exists; refusing to overwrite a key", out.display()));
    }
    let seed = KeyPair::generate_seed().map_err(|error| error.to_string())?;
    let key = KeyPair::from_seed(&seed).map_err(|error| error.to_string())?;
    let hex: String = seed.iter().map(|byte| format!("{byte:02x}")).collect();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&out)
            .map_err(|error| format!("{}: {error}", out.display()))?;
        writeln!(file, "{hex}").map_err(|error| format!("{}: {error}", out.display()))?;
    }
    println!("key {} written to {}", key.key_id(), out.display());
    Ok(())
}

/// `bundle root --keys K,... --threshold N --version V --expires-days D --out FILE
/// [--previous-keys K,...]`: a root signed by its own keys (and, for a rotation, by a
/// threshold of the previous root's keys).
fn root(rest: &[String]) -> Result<(), String> {
    const SPEC: &[(&str, bool)] = &[
        ("keys", true),
        ("threshold", true),
        ("version", true),
        ("expires-days", true),
        ("previous-keys", true),
        ("out", true),
    ];
    let args = Args::parse("bundle root", rest, SPEC)?;
    let keys = read_keys(args.values("keys"))?;
    let previous = read_keys(args.values("previous-keys"))?;
    let threshold: u32 = args.parsed("threshold")?.unwrap_or(1);
    let version: u64 = args.parsed("version")?.unwrap_or(1);
    let days: u64 = args.parsed("expires-days")?.unwrap_or(365);
    let out =
        PathBuf::from(args.value("out").ok_or("bundle root: --out FILE.root.json is required")?);
    let public: Vec<bundle::PublicKey> = keys.iter().map(KeyPair::public_key).collect();
    let root = Root::new(version, now_unix() + days * DAY_SECS, threshold, &public)
        .map_err(|error| error.to_string())?;
    let body = root.encode().map_err(|error| error.to_string())?;
    let signers: Vec<&KeyPair> = keys.iter().chain(previous.iter()).collect();
    let signed = bundle::sign(body, &signers);
    write(&out, &signed.body)?;
    write(&signature_path(&out), &signed.signatures_file())?;
    println!(
        "root version {version} ({} keys, threshold {threshold}) written to {}",
        public.len(),
        out.display()
    );
    Ok(())
}

/// `X.root.json` → `X.root.sig`
fn signature_path(root_json: &Path) -> PathBuf {
    let name = root_json.file_name().and_then(|n| n.to_str()).unwrap_or("root.json");
    let stem = name.strip_suffix(".json").unwrap_or(name);
    root_json.with_file_name(format!("{stem}.sig"))
}

pub(crate) fn read_root(path: &str) -> Result<Root, String> {
    let body = std::fs::read(path).map_err(|error| format!("root {path}: {error}"))?;
    Root::parse(&body).map_err(|error| format!("root {path}: {error}"))
}

/// `bundle create --out DIR --rollup ID --bundle-version N --component C=V ... --payload FILE
/// ... --sign KEY ... [--min-source C=V ...] [--expires-days D] [--root FILE.root.json ...]`
fn create(rest: &[String]) -> Result<(), String> {
    const SPEC: &[(&str, bool)] = &[
        ("out", true),
        ("rollup", true),
        ("bundle-version", true),
        ("component", true),
        ("min-source", true),
        ("payload", true),
        ("sign", true),
        ("expires-days", true),
        ("root", true),
        ("product", true),
    ];
    let args = Args::parse("bundle create", rest, SPEC)?;
    let out = PathBuf::from(args.value("out").ok_or("bundle create: --out DIR is required")?);
    if out.exists() {
        return Err(format!("{} exists; refusing to overwrite a bundle", out.display()));
    }
    let rollup = args.value("rollup").ok_or("bundle create: --rollup ID is required")?;
    let bundle_version: u64 =
        args.parsed("bundle-version")?.ok_or("bundle create: --bundle-version N is required")?;
    let days: u64 = args.parsed("expires-days")?.unwrap_or(90);
    let components = pairs(args.values("component"), "component")?;
    let min_source = pairs(args.values("min-source"), "min-source")?;
    let keys = read_keys(args.values("sign"))?;
    let mut payloads = Vec::new();
    for path in args.values("payload") {
        let bytes = std::fs::read(path).map_err(|error| format!("payload {path}: {error}"))?;
        let name = Path::new(path)
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| format!("payload {path}: no file name"))?;
        write(&out.join(PAYLOADS_DIR).join(name), &bytes)?;
        payloads.push(bundle::Payload::describe(name, &bytes));
    }
    let as_refs = |pairs: &[(String, String)]| -> Vec<(String, String)> { pairs.to_vec() };
    let components = as_refs(&components);
    let component_refs: Vec<(&str, &str)> =
        components.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let min_refs: Vec<(&str, &str)> =
        min_source.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Another product's bundles can be made with the same tooling; appliances refuse them.
    let product = args.value("product").unwrap_or(bundle::PRODUCT);
    let manifest = bundle::create_manifest(
        product,
        rollup,
        bundle_version,
        now_unix() + days * DAY_SECS,
        &component_refs,
        &min_refs,
        payloads,
    )
    .map_err(|error| error.to_string())?;
    let body = manifest.encode().map_err(|error| error.to_string())?;
    let signed = bundle::sign(body, &keys.iter().collect::<Vec<_>>());
    write(&out.join(MANIFEST_FILE), &signed.body)?;
    write(&out.join(MANIFEST_SIGNATURES_FILE), &signed.signatures_file())?;
    for root in args.values("root") {
        let parsed = read_root(root)?;
        let sig = signature_path(Path::new(root));
        let dir = out.join(ROOTS_DIR);
        let copy = |from: &Path, to: PathBuf| {
            std::fs::read(from)
                .map_err(|error| format!("{}: {error}", from.display()))
                .and_then(|bytes| write(&to, &bytes))
        };
        copy(Path::new(root), dir.join(format!("{}.root.json", parsed.version)))?;
        copy(&sig, dir.join(format!("{}.root.sig", parsed.version)))?;
    }
    println!(
        "bundle {rollup} (bundle version {bundle_version}, {} payloads, {} signatures) written to {}",
        manifest.payloads.len(),
        signed.signatures.len(),
        out.display()
    );
    Ok(())
}

/// Everything `update apply` checks before it writes a slot: the root chain, the manifest
/// (signatures, product, expiry, rollback), the hops against the installed versions (the
/// rollup planner), and every payload's size and hash.
pub(crate) struct Verified {
    pub(crate) root: Root,
    pub(crate) manifest: bundle::Manifest,
    pub(crate) dir: BundleDir,
}

pub(crate) fn verify_bundle(
    path: &Path,
    trusted: &Root,
    installed_bundle_version: u64,
    installed: &BTreeMap<String, String>,
    matrix: &rollup::Matrix,
) -> Result<Verified, String> {
    let dir = BundleDir::open(path).map_err(|error| error.to_string())?;
    let now = now_unix();
    let chain: Vec<SignedDocument> = dir.root_chain_after(trusted.version);
    let root =
        bundle::verify_root_chain(trusted, &chain, now).map_err(|error| error.to_string())?;
    let manifest = bundle::verify_manifest(
        &root,
        &dir.manifest,
        now,
        installed_bundle_version,
        bundle::PRODUCT,
    )
    .map_err(|error| error.to_string())?;
    let hop = |component: &str, from: &str, to: &str| allowed_hop(matrix, component, from, to);
    bundle::check_upgrade(&manifest, installed, &hop).map_err(|error| error.to_string())?;
    dir.verify_payloads(&manifest).map_err(|error| error.to_string())?;
    Ok(Verified { root, manifest, dir })
}

/// A bundle may take a component only one planner hop at a time; a longer way names the
/// bundles it needs first.
pub(crate) fn allowed_hop(
    matrix: &rollup::Matrix,
    component: &str,
    from: &str,
    to: &str,
) -> Result<(), String> {
    if from == to {
        return Ok(());
    }
    if matrix.component(component).is_none() {
        // Not a matrix component (a payload-only part): nothing to check.
        return Ok(());
    }
    let hops =
        rollup::plan(matrix, component, from, Some(to), None).map_err(|error| error.to_string())?;
    match hops.as_slice() {
        [_] => Ok(()),
        [first, ..] => {
            let needed: Vec<&str> =
                hops[..hops.len() - 1].iter().map(|hop| hop.to.as_str()).collect();
            Err(format!(
                "{from} is too old for {to}: the supported way is {}; apply the bundle(s) for {} \
                 first (this one goes from {} on)",
                std::iter::once(first.from.as_str())
                    .chain(hops.iter().map(|hop| hop.to.as_str()))
                    .collect::<Vec<_>>()
                    .join(" -> "),
                needed.join(", "),
                hops.last().map_or(to, |hop| hop.from.as_str())
            ))
        }
        [] => Err(format!("no supported way from {from} to {to}")),
    }
}

/// `bundle verify DIR --root FILE [--installed-bundle-version N] [--installed C=V ...]
/// [--matrix FILE]`
fn verify(rest: &[String]) -> Result<(), String> {
    let Some((path, rest)) = rest.split_first() else {
        return Err("bundle verify: expected DIR --root FILE".into());
    };
    const SPEC: &[(&str, bool)] = &[
        ("root", true),
        ("installed-bundle-version", true),
        ("installed", true),
        ("matrix", true),
    ];
    let args = Args::parse("bundle verify", rest, SPEC)?;
    let trusted = read_root(args.value("root").ok_or("bundle verify: --root FILE is required")?)?;
    let installed: BTreeMap<String, String> =
        pairs(args.values("installed"), "installed")?.into_iter().collect();
    let installed_version: u64 = args.parsed("installed-bundle-version")?.unwrap_or(0);
    let matrix = crate::update_cli::load_matrix(args.value("matrix"))?;
    let verified =
        verify_bundle(Path::new(path), &trusted, installed_version, &installed, &matrix)?;
    let components: Vec<String> =
        verified.manifest.components.iter().map(|(c, v)| format!("{c} {v}")).collect();
    println!(
        "bundle {} verified (bundle version {}, root version {}): {}",
        verified.manifest.rollup,
        verified.manifest.bundle_version,
        verified.root.version,
        components.join(", ")
    );
    Ok(())
}
