//! Unit tests: a valid bundle end to end, then every rejection with its exact message.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::{
    check_upgrade, create_manifest, encode_signatures, parse_signatures, sign, verify_manifest,
    verify_payload, verify_root_chain, verify_root_rotation, BundleError, KeyId, KeyPair, Manifest,
    Payload, PayloadVerifier, PublicKey, Root, Signature, SignedDocument, MANIFEST_MAX,
};

pub(crate) const NOW: u64 = 1_800_000_000;
pub(crate) const EXPIRES: u64 = 1_900_000_000;
pub(crate) const ROOT_EXPIRES: u64 = 2_000_000_000;
pub(crate) const INSTALLED: u64 = 6;
pub(crate) const IMAGE: &[u8] = b"erofs image bytes";
pub(crate) const KERNEL: &[u8] = b"vmlinuz bytes";

/// Five keys from fixed seeds; the trusted root lists the first three, threshold 2.
pub(crate) fn keys() -> Vec<KeyPair> {
    (1u8..=5).map(|i| KeyPair::from_seed(&[i; 32]).unwrap()).collect()
}

fn public(keys: &[KeyPair], which: &[usize]) -> Vec<PublicKey> {
    which.iter().map(|&i| keys[i].public_key()).collect()
}

pub(crate) fn root1(keys: &[KeyPair]) -> Root {
    Root::new(1, ROOT_EXPIRES, 2, &public(keys, &[0, 1, 2])).unwrap()
}

pub(crate) fn manifest() -> Manifest {
    create_manifest(
        "siterelay",
        "UR33",
        7,
        EXPIRES,
        &[("agent", "1.4.0"), ("relay", "1.4.0"), ("Unified Setup", "9.55.6812.1")],
        &[("relay", "1.0.0")],
        vec![Payload::describe("rootfs.erofs", IMAGE), Payload::describe("boot/vmlinuz", KERNEL)],
    )
    .unwrap()
}

/// The valid manifest's JSON as a value, for edits that produce invalid documents.
fn manifest_value() -> Value {
    serde_json::from_slice(&manifest().encode().unwrap()).unwrap()
}

fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(value).unwrap()
}

/// The valid manifest with one edit, parsed.
fn parse_edited(edit: impl FnOnce(&mut Value)) -> Result<Manifest, BundleError> {
    let mut value = manifest_value();
    edit(&mut value);
    Manifest::parse(&bytes(&value))
}

fn message<T: std::fmt::Debug>(result: Result<T, BundleError>) -> String {
    result.expect_err("expected an error").to_string()
}

fn verify(root: &Root, signed: &SignedDocument) -> Result<Manifest, BundleError> {
    verify_manifest(root, signed, NOW, INSTALLED, "siterelay")
}

fn id(keys: &[KeyPair], i: usize) -> String {
    keys[i].key_id().to_string()
}

// --- The happy path --------------------------------------------------------------------------

#[test]
fn valid_bundle_verifies_end_to_end() {
    let keys = keys();
    let root = root1(&keys);
    let signed = sign(manifest().encode().unwrap(), &[&keys[0], &keys[2]]);
    let verified = verify(&root, &signed).unwrap();
    assert_eq!(verified, manifest());
    verify_payload(&verified, "rootfs.erofs", IMAGE).unwrap();
    verify_payload(&verified, "boot/vmlinuz", KERNEL).unwrap();
    let installed: BTreeMap<String, String> =
        [("agent", "1.3.0"), ("relay", "1.2.0"), ("Unified Setup", "9.55.6812.1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let hops = std::cell::RefCell::new(Vec::new());
    check_upgrade(&verified, &installed, &|c, from, to| {
        hops.borrow_mut().push(format!("{c} {from}->{to}"));
        Ok(())
    })
    .unwrap();
    // "Unified Setup" is already at the bundle's version: no hop asked.
    assert_eq!(hops.into_inner(), ["agent 1.3.0->1.4.0", "relay 1.2.0->1.4.0"]);
}

#[test]
fn manifest_encoding_is_canonical_and_round_trips() {
    let text = manifest().encode().unwrap();
    assert_eq!(Manifest::parse(&text).unwrap(), manifest());
    assert_eq!(Manifest::parse(&text).unwrap().encode().unwrap(), text);
    let text = String::from_utf8(text).unwrap();
    assert!(text.starts_with("{\n  \"type\": \"siterelay-bundle-manifest-v1\",\n  \"product\""));
    assert!(text.ends_with("}\n"));
}

#[test]
fn root_encoding_round_trips() {
    let keys = keys();
    let root = root1(&keys);
    let text = root.encode().unwrap();
    assert_eq!(Root::parse(&text).unwrap(), root);
    assert!(String::from_utf8(text).unwrap().contains(&format!(
        "\"{}\": \"{}\"",
        keys[0].key_id(),
        keys[0].public_key()
    )));
}

#[test]
fn signature_file_round_trips() {
    let keys = keys();
    let signed = sign(b"body".to_vec(), &[&keys[0], &keys[1]]);
    let file = signed.signatures_file();
    assert_eq!(SignedDocument::from_files(b"body".to_vec(), &file).unwrap(), signed);
    assert_eq!(encode_signatures(&signed.signatures), file);
}

#[test]
fn key_pair_matches_rfc8032_test_vector_and_key_id_is_sha256_prefix() {
    let seed = crate::hex::decode::<32>(
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    )
    .unwrap();
    let pair = KeyPair::from_seed(&seed).unwrap();
    assert_eq!(
        pair.public_key().to_string(),
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );
    let hash = ring::digest::digest(&ring::digest::SHA256, &pair.public_key().0);
    assert_eq!(pair.key_id().to_string(), crate::hex::encode(&hash.as_ref()[..8]));
    let signature = pair.sign(b"");
    assert_eq!(
        crate::hex::encode(&signature.sig),
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
         5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    );
    // Debug never shows the seed.
    let debug = format!("{pair:?}");
    assert_eq!(debug, format!("KeyPair {{ key_id: KeyId({}), .. }}", pair.key_id()));
}

#[test]
fn generated_seeds_differ() {
    assert_ne!(KeyPair::generate_seed().unwrap(), KeyPair::generate_seed().unwrap());
}

#[test]
fn versions_compare_number_by_number() {
    use std::cmp::Ordering::*;
    assert_eq!(crate::compare_versions("9.55.6812.1", "9.56.0.0"), Some(Less));
    assert_eq!(crate::compare_versions("10.0", "9.99"), Some(Greater));
    assert_eq!(crate::compare_versions("1.4", "1.4.0"), Some(Equal));
    assert_eq!(crate::compare_versions("1.4", "1.4.0.1"), Some(Less));
    assert_eq!(crate::compare_versions("1.x", "1.4"), None);
    assert_eq!(
        crate::parse_version("5.1.3600 .0"),
        Err("it must be numbers separated by single dots, like 9.55.6812.1")
    );
    assert_eq!(crate::parse_version("1.01"), Err("a number has a leading zero"));
    assert_eq!(crate::parse_version("18446744073709551616"), Err("a number is 2^64 or more"));
    assert_eq!(crate::parse_version("18446744073709551615"), Ok(vec![u64::MAX]));
    assert_eq!(crate::parse_version("1.2.3.4.5.6.7.8.9"), Err("it has more than 8 numbers"));
    assert_eq!(crate::parse_version(""), Err("it is empty"));
}

// --- Signatures and thresholds ---------------------------------------------------------------

#[test]
fn missing_signature() {
    let keys = keys();
    let signed = sign(manifest().encode().unwrap(), &[]);
    assert_eq!(message(verify(&root1(&keys), &signed)), "bundle: manifest is not signed");
}

#[test]
fn too_many_signatures() {
    let keys = keys();
    let key = &keys[0];
    let signed = sign(manifest().encode().unwrap(), &[key; 17]);
    assert_eq!(
        message(verify(&root1(&keys), &signed)),
        "bundle: manifest carries 17 signatures, more than the limit of 16"
    );
}

#[test]
fn bad_signature() {
    let keys = keys();
    let mut signed = sign(manifest().encode().unwrap(), &[&keys[0], &keys[1]]);
    signed.signatures[1].sig[10] ^= 1;
    assert_eq!(
        message(verify(&root1(&keys), &signed)),
        format!("bundle: manifest: signature by key {} does not verify", id(&keys, 1))
    );
}

#[test]
fn bad_signature_is_refused_even_when_others_meet_the_threshold() {
    let keys = keys();
    let mut signed = sign(manifest().encode().unwrap(), &[&keys[0], &keys[1], &keys[2]]);
    signed.signatures[2].sig.truncate(10);
    assert_eq!(
        message(verify(&root1(&keys), &signed)),
        format!("bundle: manifest: signature by key {} does not verify", id(&keys, 2))
    );
}

#[test]
fn altered_body_fails_the_first_signature() {
    let keys = keys();
    let mut signed = sign(manifest().encode().unwrap(), &[&keys[0], &keys[1]]);
    let at = signed.body.len() / 2;
    signed.body[at] ^= 0x20;
    assert_eq!(
        message(verify(&root1(&keys), &signed)),
        format!("bundle: manifest: signature by key {} does not verify", id(&keys, 0))
    );
}

#[test]
fn below_threshold() {
    let keys = keys();
    let signed = sign(manifest().encode().unwrap(), &[&keys[1]]);
    assert_eq!(
        message(verify(&root1(&keys), &signed)),
        "bundle: manifest signatures below threshold: 2 of 3 required, 1 valid"
    );
}

#[test]
fn repeated_signature_by_one_key_counts_once() {
    let keys = keys();
    let signed = sign(manifest().encode().unwrap(), &[&keys[0], &keys[0], &keys[0]]);
    assert_eq!(
        message(verify(&root1(&keys), &signed)),
        "bundle: manifest signatures below threshold: 2 of 3 required, 1 valid"
    );
}

#[test]
fn unknown_key_is_named_when_the_threshold_is_not_met() {
    let keys = keys();
    let signed = sign(manifest().encode().unwrap(), &[&keys[0], &keys[3]]);
    assert_eq!(
        message(verify(&root1(&keys), &signed)),
        format!(
            "bundle: manifest is signed by unknown key {}, which root version 1 does not list \
             (2 of 3 required, 1 valid)",
            id(&keys, 3)
        )
    );
}

#[test]
fn unknown_key_is_ignored_when_the_threshold_is_met() {
    // A manifest signed for appliances on two roots during a rotation.
    let keys = keys();
    let signed = sign(manifest().encode().unwrap(), &[&keys[3], &keys[0], &keys[4], &keys[1]]);
    assert_eq!(verify(&root1(&keys), &signed).unwrap(), manifest());
}

#[test]
fn malformed_signature_files() {
    let cases: &[(&str, &str)] = &[
        ("", "bundle: malformed signature file: line 1, column 0: EOF while parsing a value"),
        (
            r#"{"signatures": [], "extra": 1}"#,
            "bundle: malformed signature file: line 1, column 26: unknown field `extra`, expected `signatures`",
        ),
        (
            r#"{"signatures": [{"key_id": "0123456789ABCDEF", "sig": ""}]}"#,
            "bundle: malformed signature file: signature #1: key_id \"0123456789ABCDEF\" must be 16 lowercase hex digits",
        ),
        (
            r#"{"signatures": [{"key_id": "0123456789abcdef", "sig": "00"}]}"#,
            "bundle: malformed signature file: signature #1: sig must be 128 lowercase hex digits",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(&message(parse_signatures(text.as_bytes())), expected, "{text}");
    }
    let entry = format!(r#"{{"key_id": "0123456789abcdef", "sig": "{}"}}"#, "0".repeat(128));
    let many = format!(r#"{{"signatures": [{}]}}"#, vec![entry; 17].join(","));
    assert_eq!(
        message(parse_signatures(many.as_bytes())),
        "bundle: malformed signature file: 17 signatures, more than the limit of 16"
    );
}

#[test]
fn signature_file_too_large() {
    assert_eq!(
        message(parse_signatures(&vec![b' '; 8193])),
        "bundle: signature file is 8193 bytes, more than the limit of 8192"
    );
}

// --- Manifest against this appliance ---------------------------------------------------------

#[test]
fn wrong_product() {
    let keys = keys();
    let mut other = manifest();
    other.product = "otherproduct".into();
    let signed = sign(other.encode().unwrap(), &[&keys[0], &keys[1]]);
    assert_eq!(
        message(verify(&root1(&keys), &signed)),
        "bundle: manifest is for product \"otherproduct\", this appliance runs \"siterelay\""
    );
}

#[test]
fn rollback_and_already_installed() {
    let keys = keys();
    let root = root1(&keys);
    let signed = sign(manifest().encode().unwrap(), &[&keys[0], &keys[1]]);
    assert_eq!(
        message(verify_manifest(&root, &signed, NOW, 9, "siterelay")),
        "bundle: bundle version 7 is older than bundle version 9, which was installed before \
         (rollback refused)"
    );
    assert_eq!(
        message(verify_manifest(&root, &signed, NOW, 7, "siterelay")),
        "bundle: bundle version 7 is already installed (not newer)"
    );
    assert!(verify_manifest(&root, &signed, NOW, 0, "siterelay").is_ok());
}

#[test]
fn manifest_expired() {
    let keys = keys();
    let root = root1(&keys);
    let signed = sign(manifest().encode().unwrap(), &[&keys[0], &keys[1]]);
    assert!(verify_manifest(&root, &signed, EXPIRES - 1, INSTALLED, "siterelay").is_ok());
    assert_eq!(
        message(verify_manifest(&root, &signed, EXPIRES, INSTALLED, "siterelay")),
        "bundle: manifest expired at 1900000000 (now 1900000000)"
    );
}

#[test]
fn root_expired_refuses_manifests() {
    let keys = keys();
    let root = root1(&keys);
    let signed = sign(manifest().encode().unwrap(), &[&keys[0], &keys[1]]);
    assert_eq!(
        message(verify_manifest(&root, &signed, ROOT_EXPIRES + 5, INSTALLED, "siterelay")),
        "bundle: root version 1 expired at 2000000000 (now 2000000005)"
    );
}

#[test]
fn root_offered_as_manifest_is_refused_by_type() {
    let keys = keys();
    let root = root1(&keys);
    let signed = sign(root.encode().unwrap(), &[&keys[0], &keys[1]]);
    assert_eq!(
        message(verify(&root, &signed)),
        "bundle: expected a document of type \"siterelay-bundle-manifest-v1\", found type \
         \"siterelay-root-v1\""
    );
    assert_eq!(
        message(Root::parse(&manifest().encode().unwrap())),
        "bundle: expected a document of type \"siterelay-root-v1\", found type \
         \"siterelay-bundle-manifest-v1\""
    );
}

#[test]
fn oversize_manifest() {
    let keys = keys();
    let mut body = manifest().encode().unwrap();
    body.resize(MANIFEST_MAX + 1, b' ');
    let signed = sign(body.clone(), &[&keys[0], &keys[1]]);
    let expected = "bundle: manifest is 65537 bytes, more than the limit of 65536";
    assert_eq!(message(verify(&root1(&keys), &signed)), expected);
    assert_eq!(message(Manifest::parse(&body)), expected);
    // Whitespace up to the limit is fine.
    body.truncate(MANIFEST_MAX);
    assert!(Manifest::parse(&body).is_ok());
}

#[test]
fn largest_valid_manifest_fits_the_size_limit() {
    // Every field at its limit: the encoder never writes what the parser would refuse for size.
    let version = "123456789.".repeat(7);
    let version = &version[..64];
    let mut big = manifest();
    big.product = "P".repeat(64);
    big.rollup = "R".repeat(64);
    big.components = (0..32).map(|i| (format!("{i:0>64}"), version.to_string())).collect();
    big.min_source = big.components.clone();
    big.payloads = (0..64).map(|i| Payload::describe(&format!("{i:0>255}"), b"")).collect();
    for payload in &mut big.payloads {
        payload.size = 4 << 30;
    }
    let text = big.encode().unwrap();
    assert!(text.len() < MANIFEST_MAX, "{}", text.len());
    assert_eq!(Manifest::parse(&text).unwrap(), big);
}

// --- Manifest contents -----------------------------------------------------------------------

/// An edit of the valid manifest's JSON value.
type Edit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn malformed_manifests() {
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| v["colour"] = json!("red")),
            "bundle: malformed manifest: line 3, column 10: unknown field `colour`, expected one of `type`, `product`, `rollup`, `bundle_version`, `expires`, `components`, `min_source`, `payloads`",
        ),
        (
            Box::new(|v| v["bundle_version"] = json!(-1)),
            "bundle: malformed manifest: line 2, column 22: invalid value: integer `-1`, expected u64",
        ),
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("expires");
            }),
            "bundle: malformed manifest: line 26, column 1: missing field `expires`",
        ),
        (
            Box::new(|v| v["type"] = json!(1)),
            "bundle: malformed manifest: line 26, column 11: invalid type: integer `1`, expected a string",
        ),
    ];
    for (edit, expected) in cases {
        assert_eq!(message(parse_edited(edit)), expected);
    }
    assert_eq!(
        message(Manifest::parse(b"{\"type\": \"siterelay-bundle-manifest-v1\",")),
        "bundle: malformed manifest: line 1, column 40: EOF while parsing a value"
    );
}

#[test]
fn duplicate_json_keys_are_refused() {
    let text = String::from_utf8(manifest().encode().unwrap()).unwrap();
    let doubled =
        text.replace("\"agent\": \"1.4.0\",", "\"agent\": \"1.4.0\",\n    \"agent\": \"0.1\",");
    assert_ne!(doubled, text);
    let error = message(Manifest::parse(doubled.as_bytes()));
    assert!(error.starts_with("bundle: malformed manifest: line 10, column "), "{error}");
    assert!(error.ends_with(": duplicate key \"agent\""), "{error}");
    let doubled =
        text.replacen("\"rollup\": \"UR33\",", "\"rollup\": \"UR33\",\n  \"rollup\": \"UR34\",", 1);
    let error = message(Manifest::parse(doubled.as_bytes()));
    assert!(error.ends_with(": duplicate field `rollup`"), "{error}");
}

#[test]
fn product_and_rollup_rules() {
    assert_eq!(
        message(parse_edited(|v| v["product"] = json!(""))),
        "bundle: product \"\" is invalid: it is empty"
    );
    assert_eq!(
        message(parse_edited(|v| v["rollup"] = json!("UR 33"))),
        "bundle: rollup id \"UR 33\" is invalid: only A-Z a-z 0-9 . _ - are allowed"
    );
    assert_eq!(
        message(parse_edited(|v| v["rollup"] = json!("U".repeat(65)))),
        format!("bundle: rollup id \"{}\" is invalid: it is longer than 64 bytes", "U".repeat(65))
    );
}

#[test]
fn component_rules() {
    assert_eq!(
        message(parse_edited(|v| v["components"] = json!({}))),
        "bundle: manifest lists no components"
    );
    assert_eq!(
        message(parse_edited(|v| {
            v["min_source"] = json!({});
            v["components"] = (0..33).map(|i| (format!("c{i}"), json!("1"))).collect();
        })),
        "bundle: manifest lists 33 components, more than the limit of 32"
    );
    assert_eq!(
        message(parse_edited(|v| v["components"]["Unified  Setup"] = json!("1"))),
        "bundle: component name \"Unified  Setup\" is invalid: it starts or ends with a space, \
         or has two in a row"
    );
    assert_eq!(
        message(parse_edited(|v| v["components"]["relay/x"] = json!("1"))),
        "bundle: component name \"relay/x\" is invalid: only A-Z a-z 0-9 . _ - and single inner \
         spaces are allowed"
    );
    assert_eq!(
        message(parse_edited(|v| v["components"]["relay"] = json!("5.1.3600 .0"))),
        "bundle: component \"relay\" has invalid version \"5.1.3600 .0\": it must be numbers \
         separated by single dots, like 9.55.6812.1"
    );
    assert_eq!(
        message(parse_edited(|v| v["min_source"]["OVF"] = json!("1.0"))),
        "bundle: min_source names component \"OVF\", which the manifest does not list"
    );
    assert_eq!(
        message(parse_edited(|v| v["min_source"]["relay"] = json!("1.00"))),
        "bundle: min_source of component \"relay\" has invalid version \"1.00\": a number has a \
         leading zero"
    );
    assert_eq!(
        message(parse_edited(|v| v["min_source"]["relay"] = json!("1.5"))),
        "bundle: min_source of component \"relay\" is \"1.5\", newer than the version \"1.4.0\" \
         the bundle installs"
    );
}

fn with_payload_names(names: &[&str]) -> Result<Manifest, BundleError> {
    parse_edited(|v| {
        v["payloads"] = names
            .iter()
            .map(|name| json!({ "name": name, "size": 1, "sha256": "ab".repeat(32) }))
            .collect();
    })
}

#[test]
fn payload_list_rules() {
    assert_eq!(message(with_payload_names(&[])), "bundle: manifest lists no payloads");
    let many: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        message(with_payload_names(&many)),
        "bundle: manifest lists 65 payloads, more than the limit of 64"
    );
    assert!(with_payload_names(&many[..64]).is_ok());
    assert_eq!(message(with_payload_names(&["a", "b", "a"])), "bundle: duplicate payload \"a\"");
    assert_eq!(
        message(with_payload_names(&["boot/efi/x", "boot"])),
        "bundle: payload \"boot/efi/x\" is inside payload \"boot\", which is a file"
    );
    assert!(with_payload_names(&["boot/efi/x", "boot/efi/y", "boot/z"]).is_ok());
}

#[test]
fn oversize_payload() {
    assert!(parse_edited(|v| v["payloads"][0]["size"] = json!(4u64 << 30)).is_ok());
    assert_eq!(
        message(parse_edited(|v| v["payloads"][0]["size"] = json!((4u64 << 30) + 1))),
        "bundle: payload \"rootfs.erofs\" declares 4294967297 bytes, more than the limit of \
         4294967296"
    );
}

#[test]
fn invalid_hash() {
    assert_eq!(
        message(parse_edited(|v| v["payloads"][0]["sha256"] = json!("AB".repeat(32)))),
        format!(
            "bundle: payload \"rootfs.erofs\" has an invalid sha256 \"{}\": it must be 64 \
             lowercase hex digits",
            "AB".repeat(32)
        )
    );
}

#[test]
fn payload_names() {
    let long = "x".repeat(256);
    let cases: &[(&str, &str)] = &[
        ("", "bundle: payload name is empty"),
        (&long, "bundle: payload name \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…\" is 256 bytes, more than the limit of 255"),
        ("a\0b", "bundle: payload name \"a\\0b\" contains NUL"),
        ("/etc/x", "bundle: payload name \"/etc/x\" is an absolute path"),
        ("/", "bundle: payload name \"/\" is an absolute path"),
        ("boot\\x", "bundle: payload name \"boot\\\\x\" contains a backslash"),
        ("..\\x", "bundle: payload name \"..\\\\x\" contains a backslash"),
        ("../x", "bundle: payload name \"../x\" contains a \"..\" component (path traversal)"),
        ("a/../../x", "bundle: payload name \"a/../../x\" contains a \"..\" component (path traversal)"),
        ("..", "bundle: payload name \"..\" contains a \"..\" component (path traversal)"),
        ("./x", "bundle: payload name \"./x\" contains a \".\" component"),
        ("a/.", "bundle: payload name \"a/.\" contains a \".\" component"),
        ("a//b", "bundle: payload name \"a//b\" contains an empty component (\"//\" or a trailing \"/\")"),
        ("a/", "bundle: payload name \"a/\" contains an empty component (\"//\" or a trailing \"/\")"),
        ("C:x", "bundle: payload name \"C:x\" contains ':'; only A-Z a-z 0-9 . _ + - and / are allowed"),
        ("a b", "bundle: payload name \"a b\" contains ' '; only A-Z a-z 0-9 . _ + - and / are allowed"),
        ("a\nb", "bundle: payload name \"a\\nb\" contains '\\n'; only A-Z a-z 0-9 . _ + - and / are allowed"),
        ("é", "bundle: payload name \"é\" contains 'é'; only A-Z a-z 0-9 . _ + - and / are allowed"),
    ];
    for (name, expected) in cases {
        assert_eq!(&message(with_payload_names(&[name])), expected, "{name:?}");
    }
    let fine = "x".repeat(255);
    for name in ["rootfs.erofs", "boot/vmlinuz-6.1+deb12", "...x", "a..b", ".hidden", &fine] {
        assert!(with_payload_names(&[name]).is_ok(), "{name:?}");
    }
}

#[test]
fn create_manifest_refuses_what_parse_refuses() {
    let result = create_manifest(
        "siterelay",
        "UR33",
        1,
        EXPIRES,
        &[("relay", "1.0")],
        &[],
        vec![Payload::describe("../etc/passwd", b"x")],
    );
    assert_eq!(
        message(result),
        "bundle: payload name \"../etc/passwd\" contains a \"..\" component (path traversal)"
    );
    let mut bad = manifest();
    bad.payloads.clear();
    assert_eq!(message(bad.encode()), "bundle: manifest lists no payloads");
}

// --- Upgrade hops ----------------------------------------------------------------------------

fn installed(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn allow_all(_: &str, _: &str, _: &str) -> Result<(), String> {
    Ok(())
}

#[test]
fn hop_refused_by_the_planner() {
    let refuse = |component: &str, from: &str, to: &str| {
        if component == "relay" {
            Err(format!("{from} is below N-4 of {to}; upgrade to 1.2.0 first"))
        } else {
            Ok(())
        }
    };
    assert_eq!(
        message(check_upgrade(
            &manifest(),
            &installed(&[("agent", "1.3.0"), ("relay", "1.1.0")]),
            &refuse
        )),
        "bundle: hop of \"relay\" from \"1.1.0\" to \"1.4.0\" refused: 1.1.0 is below N-4 of \
         1.4.0; upgrade to 1.2.0 first"
    );
}

#[test]
fn below_minimum_source_version() {
    assert_eq!(
        message(check_upgrade(&manifest(), &installed(&[("relay", "0.9.9")]), &allow_all)),
        "bundle: component \"relay\" is at \"0.9.9\", older than the bundle's minimum source \
         version \"1.0.0\""
    );
    assert!(check_upgrade(&manifest(), &installed(&[("relay", "1.0")]), &allow_all).is_ok());
}

#[test]
fn component_with_minimum_must_be_installed() {
    assert_eq!(
        message(check_upgrade(&manifest(), &installed(&[("agent", "1.0.0")]), &allow_all)),
        "bundle: component \"relay\" is not installed, and the bundle requires at least version \
         \"1.0.0\""
    );
}

#[test]
fn invalid_installed_version() {
    assert_eq!(
        message(check_upgrade(&manifest(), &installed(&[("agent", "1.4-rc1")]), &allow_all)),
        "bundle: installed component \"agent\" has invalid version \"1.4-rc1\": it must be \
         numbers separated by single dots, like 9.55.6812.1"
    );
}

#[test]
fn unchanged_and_new_components_ask_no_hop() {
    let never = |c: &str, f: &str, t: &str| Err(format!("asked about {c} {f} {t}"));
    let same =
        installed(&[("relay", "1.4"), ("agent", "1.4.0.0"), ("Unified Setup", "9.55.6812.1")]);
    assert!(check_upgrade(&manifest(), &same, &never).is_ok());
    // A component the appliance lacks and the manifest sets no minimum for is simply added.
    let without_agent = installed(&[("relay", "1.4.0"), ("Unified Setup", "9.55.6812.1")]);
    assert!(check_upgrade(&manifest(), &without_agent, &never).is_ok());
}

// --- Payload bytes ---------------------------------------------------------------------------

#[test]
fn unknown_payload() {
    assert_eq!(
        message(verify_payload(&manifest(), "initrd", b"")),
        "bundle: payload \"initrd\" is not listed in the manifest"
    );
    assert_eq!(
        message(PayloadVerifier::new(&manifest(), "../rootfs.erofs")),
        "bundle: payload \"../rootfs.erofs\" is not listed in the manifest"
    );
}

#[test]
fn size_mismatch_is_checked_before_the_hash() {
    assert_eq!(
        message(verify_payload(&manifest(), "rootfs.erofs", b"short")),
        "bundle: payload \"rootfs.erofs\" is 5 bytes, the manifest says 17"
    );
    let mut long = IMAGE.to_vec();
    long.push(0);
    assert_eq!(
        message(verify_payload(&manifest(), "rootfs.erofs", &long)),
        "bundle: payload \"rootfs.erofs\" is 18 bytes, the manifest says 17"
    );
}

#[test]
fn hash_mismatch() {
    let mut altered = IMAGE.to_vec();
    altered[0] ^= 1;
    let actual = crate::hex::encode(ring::digest::digest(&ring::digest::SHA256, &altered).as_ref());
    let expected = crate::hex::encode(&Payload::describe("x", IMAGE).sha256);
    assert_eq!(
        message(verify_payload(&manifest(), "rootfs.erofs", &altered)),
        format!(
            "bundle: payload \"rootfs.erofs\" has sha256 {actual}, the manifest says {expected}"
        )
    );
}

#[test]
fn streaming_verifier() {
    let manifest = manifest();
    let mut verifier = PayloadVerifier::new(&manifest, "rootfs.erofs").unwrap();
    for chunk in IMAGE.chunks(5) {
        verifier.update(chunk).unwrap();
    }
    assert_eq!(verifier.seen(), 17);
    verifier.finish().unwrap();

    let mut verifier = PayloadVerifier::new(&manifest, "rootfs.erofs").unwrap();
    verifier.update(&IMAGE[..10]).unwrap();
    assert_eq!(
        message(verifier.update(&[0; 8])),
        "bundle: payload \"rootfs.erofs\" is longer than the 17 bytes the manifest says"
    );
    assert_eq!(verifier.seen(), 10, "the refused chunk is not hashed");

    let mut verifier = PayloadVerifier::new(&manifest, "rootfs.erofs").unwrap();
    verifier.update(&IMAGE[..16]).unwrap();
    assert_eq!(
        message(verifier.finish()),
        "bundle: payload \"rootfs.erofs\" is 16 bytes, the manifest says 17"
    );
}

// --- Roots -----------------------------------------------------------------------------------

fn root_value(keys: &[KeyPair]) -> Value {
    serde_json::from_slice(&root1(keys).encode().unwrap()).unwrap()
}

#[test]
fn root_rules() {
    let keys = keys();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut value = root_value(&keys);
        f(&mut value);
        Root::parse(&bytes(&value))
    };
    assert_eq!(
        message(edit(&|v| v["version"] = json!(0))),
        "bundle: root version must be at least 1, found 0"
    );
    assert_eq!(
        message(edit(&|v| v["threshold"] = json!(0))),
        "bundle: root threshold 0 is invalid: it must be from 1 to the number of keys (3)"
    );
    assert_eq!(
        message(edit(&|v| v["threshold"] = json!(4))),
        "bundle: root threshold 4 is invalid: it must be from 1 to the number of keys (3)"
    );
    assert_eq!(
        message(edit(&|v| v["keys"] = json!({}))),
        "bundle: root threshold 2 is invalid: it must be from 1 to the number of keys (0)"
    );
    let id0 = id(&keys, 0);
    assert_eq!(
        message(edit(&|v| v["keys"][&id0] = json!("zz"))),
        format!("bundle: root key \"{id0}\": public key must be 64 lowercase hex digits")
    );
    // Key 3's public key listed under key 0's id: the id is derived, not chosen.
    let key3 = keys[3].public_key().to_string();
    assert_eq!(
        message(edit(&|v| v["keys"][&id0] = json!(key3))),
        format!(
            "bundle: root key id \"{id0}\" does not match its public key, whose id is {}",
            id(&keys, 3)
        )
    );
    assert_eq!(
        message(edit(&|v| {
            v["keys"] = (0..17u8)
                .map(|i| {
                    let key = KeyPair::from_seed(&[i + 100; 32]).unwrap();
                    (key.key_id().to_string(), json!(key.public_key().to_string()))
                })
                .collect()
        })),
        "bundle: root lists 17 keys, more than the limit of 16"
    );
    assert_eq!(
        message(edit(&|v| v["role"] = json!("x"))),
        "bundle: malformed root: line 8, column 8: unknown field `role`, expected one of `type`, `version`, `expires`, `threshold`, `keys`"
    );
    assert_eq!(
        message(Root::parse(&vec![b' '; 16385])),
        "bundle: root is 16385 bytes, more than the limit of 16384"
    );
    assert_eq!(
        message(Root::new(1, ROOT_EXPIRES, 2, &[keys[0].public_key(), keys[0].public_key()])),
        "bundle: root threshold 2 is invalid: it must be from 1 to the number of keys (1)"
    );
}

#[test]
fn root_listing_a_key_twice_is_refused() {
    let keys = keys();
    let text = String::from_utf8(root1(&keys).encode().unwrap()).unwrap();
    let entry = format!("\"{}\": \"{}\"", keys[0].key_id(), keys[0].public_key());
    let doubled = text.replace(&entry, &format!("{entry},\n    {entry}"));
    let error = message(Root::parse(doubled.as_bytes()));
    assert!(error.starts_with("bundle: malformed root: line 8, column "), "{error}");
    assert!(error.ends_with(&format!(": duplicate key \"{}\"", keys[0].key_id())), "{error}");
}

/// Root 2: keys 1, 2, 3 (key 0 retired, key 3 added), threshold 2.
fn root2_body(keys: &[KeyPair], version: u64, expires: u64) -> Vec<u8> {
    Root::new(version, expires, 2, &public(keys, &[1, 2, 3])).unwrap().encode().unwrap()
}

#[test]
fn root_rotation() {
    let keys = keys();
    let old = root1(&keys);
    let signed = sign(root2_body(&keys, 2, ROOT_EXPIRES), &[&keys[0], &keys[1], &keys[3]]);
    let new = verify_root_rotation(&old, &signed, NOW).unwrap();
    assert_eq!(new.version, 2);
    assert_eq!(new.keys.len(), 3);
    // Manifests now need root 2's keys: the retired key 0 is unknown.
    let manifest_signed = sign(manifest().encode().unwrap(), &[&keys[0], &keys[1]]);
    assert_eq!(
        message(verify(&new, &manifest_signed)),
        format!(
            "bundle: manifest is signed by unknown key {}, which root version 2 does not list \
             (2 of 3 required, 1 valid)",
            id(&keys, 0)
        )
    );
    assert!(verify(&new, &sign(manifest().encode().unwrap(), &[&keys[3], &keys[2]])).is_ok());
}

#[test]
fn rotation_not_signed_by_the_old_threshold() {
    let keys = keys();
    // Root 2's own keys all sign, but only key 1 of them is in root 1.
    let signed = sign(root2_body(&keys, 2, ROOT_EXPIRES), &[&keys[1], &keys[3], &keys[4]]);
    assert_eq!(
        message(verify_root_rotation(&root1(&keys), &signed, NOW)),
        "bundle: new root is not signed by a threshold of root version 1's keys: 2 of 3 \
         required, 1 valid"
    );
}

#[test]
fn rotation_not_signed_by_the_new_threshold() {
    let keys = keys();
    // Old keys 0 and 1 agree, but of root 2's keys only key 1 signed.
    let signed = sign(root2_body(&keys, 2, ROOT_EXPIRES), &[&keys[0], &keys[1]]);
    assert_eq!(
        message(verify_root_rotation(&root1(&keys), &signed, NOW)),
        "bundle: root version 2 is not signed by a threshold of its own keys: 2 of 3 required, \
         1 valid"
    );
}

#[test]
fn rotation_version_must_be_old_plus_one() {
    let keys = keys();
    for version in [1, 3, u64::MAX] {
        let signed =
            sign(root2_body(&keys, version, ROOT_EXPIRES), &[&keys[0], &keys[1], &keys[3]]);
        assert_eq!(
            message(verify_root_rotation(&root1(&keys), &signed, NOW)),
            format!(
                "bundle: new root has version {version}; a rotation from root version 1 must go to \
                 exactly the next version"
            )
        );
    }
}

#[test]
fn rotation_to_an_expired_root() {
    let keys = keys();
    let signed = sign(root2_body(&keys, 2, NOW), &[&keys[0], &keys[1], &keys[3]]);
    assert_eq!(
        message(verify_root_rotation(&root1(&keys), &signed, NOW)),
        "bundle: root version 2 expired at 1800000000 (now 1800000000)"
    );
}

#[test]
fn rotation_bad_and_missing_signatures() {
    let keys = keys();
    let mut signed = sign(root2_body(&keys, 2, ROOT_EXPIRES), &[&keys[0], &keys[1], &keys[3]]);
    signed.signatures[2].sig[0] ^= 0x80;
    assert_eq!(
        message(verify_root_rotation(&root1(&keys), &signed, NOW)),
        format!("bundle: new root: signature by key {} does not verify", id(&keys, 3))
    );
    signed.signatures.clear();
    assert_eq!(
        message(verify_root_rotation(&root1(&keys), &signed, NOW)),
        "bundle: new root is not signed"
    );
}

#[test]
fn rotation_of_a_manifest_is_refused_by_type() {
    let keys = keys();
    let signed = sign(manifest().encode().unwrap(), &[&keys[0], &keys[1]]);
    assert_eq!(
        message(verify_root_rotation(&root1(&keys), &signed, NOW)),
        "bundle: expected a document of type \"siterelay-root-v1\", found type \
         \"siterelay-bundle-manifest-v1\""
    );
}

#[test]
fn root_chain_checks_only_the_last_expiry() {
    let keys = keys();
    let step2 = sign(root2_body(&keys, 2, NOW - 100), &[&keys[0], &keys[1], &keys[2], &keys[3]]);
    let root3 = Root::new(3, ROOT_EXPIRES, 1, &public(&keys, &[4])).unwrap();
    let step3 = sign(root3.encode().unwrap(), &[&keys[2], &keys[3], &keys[4]]);
    let chain = [step2.clone(), step3];
    assert_eq!(verify_root_chain(&root1(&keys), &chain, NOW).unwrap(), root3);
    assert_eq!(
        message(verify_root_chain(&root1(&keys), &chain[..1], NOW)),
        "bundle: root version 2 expired at 1799999900 (now 1800000000)"
    );
    assert_eq!(verify_root_chain(&root1(&keys), &[], NOW).unwrap(), root1(&keys));
    assert_eq!(
        message(verify_root_chain(&root1(&keys), &[], ROOT_EXPIRES)),
        "bundle: root version 1 expired at 2000000000 (now 2000000000)"
    );
    assert_eq!(
        message(verify_root_chain(&root1(&keys), &vec![step2; 33], NOW)),
        "bundle: root chain has 33 roots, more than the limit of 32"
    );
}

#[test]
fn oversize_root_in_rotation() {
    let keys = keys();
    let mut body = root2_body(&keys, 2, ROOT_EXPIRES);
    body.resize(16385, b' ');
    let signed = sign(body, &[&keys[0], &keys[1], &keys[3]]);
    assert_eq!(
        message(verify_root_rotation(&root1(&keys), &signed, NOW)),
        "bundle: root is 16385 bytes, more than the limit of 16384"
    );
}

#[test]
fn key_rejected_and_random_failed_messages() {
    assert_eq!(
        BundleError::KeyRejected { reason: "InvalidEncoding".into() }.to_string(),
        "bundle: ed25519 key rejected: InvalidEncoding"
    );
    assert_eq!(
        BundleError::RandomFailed.to_string(),
        "bundle: the system random number generator failed"
    );
}

#[test]
fn key_id_parse_is_lowercase_hex_only() {
    assert!(KeyId::parse("0123456789abcdef").is_some());
    assert!(KeyId::parse("0123456789ABCDEF").is_none());
    assert!(KeyId::parse("0123456789abcde").is_none());
    assert!(PublicKey::parse(&"0".repeat(64)).is_some());
    let _ = Signature { key_id: KeyId([0; 8]), sig: vec![] };
}

// --- Reading a bundle directory --------------------------------------------------------------

mod fs_dir {
    use std::path::PathBuf;

    use super::*;
    use crate::fs::{BundleDir, FsError};

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> TempDir {
            let path =
                std::env::temp_dir().join(format!("bundle-test-{label}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write_bundle(label: &str) -> (TempDir, Vec<KeyPair>) {
        let keys = keys();
        let dir = TempDir::new(label);
        let signed = sign(manifest().encode().unwrap(), &[&keys[0], &keys[1]]);
        std::fs::write(dir.0.join("manifest.json"), &signed.body).unwrap();
        std::fs::write(dir.0.join("manifest.sig"), signed.signatures_file()).unwrap();
        std::fs::create_dir_all(dir.0.join("payloads/boot")).unwrap();
        std::fs::write(dir.0.join("payloads/rootfs.erofs"), IMAGE).unwrap();
        std::fs::write(dir.0.join("payloads/boot/vmlinuz"), KERNEL).unwrap();
        let root2 = sign(root2_body(&keys, 2, ROOT_EXPIRES), &[&keys[0], &keys[1], &keys[3]]);
        std::fs::create_dir_all(dir.0.join("roots")).unwrap();
        std::fs::write(dir.0.join("roots/2.root.json"), &root2.body).unwrap();
        std::fs::write(dir.0.join("roots/2.root.sig"), root2.signatures_file()).unwrap();
        (dir, keys)
    }

    #[test]
    fn reads_and_verifies_a_bundle_directory() {
        let (dir, keys) = write_bundle("ok");
        let bundle = BundleDir::open(&dir.0).unwrap();
        let root = verify_root_chain(&root1(&keys), &bundle.root_chain_after(1), NOW).unwrap();
        assert_eq!(root.version, 2);
        assert!(bundle.root_chain_after(2).is_empty());
        // Signed by keys 0 and 1; under root 2 only key 1 counts.
        assert!(verify(&root, &bundle.manifest).is_err());
        let manifest = verify(&root1(&keys), &bundle.manifest).unwrap();
        bundle.verify_payloads(&manifest).unwrap();
    }

    #[test]
    fn refuses_unlisted_files_and_altered_payloads() {
        let (dir, keys) = write_bundle("extra");
        let bundle = BundleDir::open(&dir.0).unwrap();
        let manifest = verify(&root1(&keys), &bundle.manifest).unwrap();
        std::fs::write(dir.0.join("payloads/boot/extra"), b"x").unwrap();
        let error = bundle.verify_payloads(&manifest).unwrap_err();
        assert!(
            matches!(error, FsError::Unexpected { reason: "file not listed in the manifest", .. }),
            "{error}"
        );
        std::fs::remove_file(dir.0.join("payloads/boot/extra")).unwrap();

        std::fs::write(dir.0.join("payloads/rootfs.erofs"), b"a much longer file than declared")
            .unwrap();
        assert_eq!(
            bundle.verify_payloads(&manifest).unwrap_err().to_string(),
            "bundle: payload \"rootfs.erofs\" is longer than the 17 bytes the manifest says"
        );
    }

    #[cfg(unix)]
    #[test]
    fn refuses_symbolic_links() {
        let (dir, keys) = write_bundle("symlink");
        let bundle = BundleDir::open(&dir.0).unwrap();
        let manifest = verify(&root1(&keys), &bundle.manifest).unwrap();
        std::fs::remove_file(dir.0.join("payloads/rootfs.erofs")).unwrap();
        std::fs::write(dir.0.join("elsewhere"), IMAGE).unwrap();
        std::os::unix::fs::symlink(dir.0.join("elsewhere"), dir.0.join("payloads/rootfs.erofs"))
            .unwrap();
        let error = bundle.verify_payloads(&manifest).unwrap_err();
        assert!(
            matches!(error, FsError::Unexpected { reason: "not a regular file", .. }),
            "{error}"
        );
    }

    #[test]
    fn refuses_stray_files_in_roots() {
        let (dir, _) = write_bundle("roots");
        std::fs::write(dir.0.join("roots/notes.txt"), b"x").unwrap();
        let error = BundleDir::open(&dir.0).unwrap_err();
        assert!(
            matches!(error, FsError::Unexpected { reason: "not N.root.json or N.root.sig", .. }),
            "{error}"
        );
    }
}
