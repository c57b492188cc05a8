//! Property tests: the parsers survive any bytes and any mutation of valid documents; any
//! single flipped byte in a signed body or a signature is refused; valid documents round-trip.

use std::path::{Component, Path};

use proptest::prelude::*;
use proptest::sample::Index;

use crate::tests::{keys, manifest, root1, EXPIRES, INSTALLED, NOW, ROOT_EXPIRES};
use crate::{
    compare_versions, create_manifest, parse_signatures, sign, verify_manifest,
    verify_root_rotation, KeyPair, Manifest, Payload, PublicKey, Root, SignedDocument,
};

/// Pieces of manifest and root syntax, so mutations reach past the JSON tokenizer into the
/// checks.
const SNIPPETS: &[&str] = &[
    "\"",
    ",",
    "{",
    "}",
    "[",
    "]",
    ":",
    "\\u0000",
    "\"../x\"",
    "\"/etc/x\"",
    "\"a\\\\b\"",
    "\"\"",
    "0",
    "-1",
    "18446744073709551616",
    "4294967297",
    "1e3",
    "null",
    "\"siterelay-root-v1\"",
    "\"siterelay-bundle-manifest-v1\"",
    "\"name\": \"x\", ",
    "\"size\": 1, ",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: Index, len: usize },
    Insert { at: Index, snippet: Index },
    Replace { at: Index, with: u8 },
    Flip { at: Index, mask: u8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<Index>(), any::<Index>()).prop_map(|(at, snippet)| Mutation::Insert { at, snippet }),
        (any::<Index>(), any::<u8>()).prop_map(|(at, with)| Mutation::Replace { at, with }),
        (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    match mutation {
        Mutation::Delete { at, len: count } => {
            let start = at.index(len + 1).min(len);
            let end = (start + count).min(len);
            bytes.drain(start..end);
        }
        Mutation::Insert { at, snippet } => {
            let start = at.index(len + 1);
            let snippet = SNIPPETS[snippet.index(SNIPPETS.len())].bytes();
            bytes.splice(start..start, snippet);
        }
        Mutation::Replace { at, with } if len > 0 => bytes[at.index(len)] = *with,
        Mutation::Flip { at, mask } if len > 0 => bytes[at.index(len)] ^= *mask,
        _ => {}
    }
}

/// What every accepted manifest satisfies: it re-encodes to text that parses to itself, and
/// its payload names stay under the payload directory.
fn check_manifest(manifest: &Manifest) {
    let text = manifest.encode().expect("an accepted manifest encodes");
    assert_eq!(&Manifest::parse(&text).expect("its encoding parses"), manifest);
    for payload in &manifest.payloads {
        assert!(Path::new(&payload.name).components().all(|c| matches!(c, Component::Normal(_))));
    }
}

fn check_root(root: &Root) {
    let text = root.encode().expect("an accepted root encodes");
    assert_eq!(&Root::parse(&text).expect("its encoding parses"), root);
}

/// A valid manifest built from generated parts.
fn valid_manifest() -> impl Strategy<Value = Manifest> {
    let version = proptest::collection::vec(prop_oneof![0u64..10, 0u64..1_000_000], 1..=8)
        .prop_map(|v| v.iter().map(u64::to_string).collect::<Vec<_>>().join("."));
    let components = proptest::collection::btree_map("[A-Za-z0-9._-]{1,20}", version, 1..=32);
    let payloads = proptest::collection::vec(
        ("[A-Za-z0-9._+-]{0,40}", any::<bool>(), 0u64..=(4 << 30), any::<[u8; 32]>()),
        1..=64,
    );
    (
        "[A-Za-z0-9._-]{1,64}",
        "[A-Za-z0-9._-]{1,64}",
        any::<u64>(),
        any::<u64>(),
        components,
        payloads,
        any::<Index>(),
    )
        .prop_map(|(product, rollup, bundle_version, expires, components, payloads, pick)| {
            // Prefixes keep names unique and no name inside another.
            let payloads = payloads
                .into_iter()
                .enumerate()
                .map(|(i, (stem, nested, size, sha256))| Payload {
                    name: if nested { format!("d{i}/{stem}x") } else { format!("f{i}{stem}") },
                    size,
                    sha256,
                })
                .collect();
            // One component gets a min_source equal to its own version (always allowed).
            let (name, version) = components.iter().nth(pick.index(components.len())).unwrap();
            let min_source = [(name.clone(), version.clone())].into_iter().collect();
            Manifest { product, rollup, bundle_version, expires, components, min_source, payloads }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn manifest_parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        if let Ok(manifest) = Manifest::parse(&bytes) {
            check_manifest(&manifest);
        }
    }

    #[test]
    fn root_and_signature_parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        if let Ok(root) = Root::parse(&bytes) {
            check_root(&root);
        }
        let _ = parse_signatures(&bytes);
    }

    #[test]
    fn manifest_parse_never_panics_on_mutations(mutations in proptest::collection::vec(mutation(), 1..6)) {
        let mut bytes = manifest().encode().unwrap();
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        if let Ok(manifest) = Manifest::parse(&bytes) {
            check_manifest(&manifest);
        }
    }

    #[test]
    fn root_and_signature_parsers_never_panic_on_mutations(mutations in proptest::collection::vec(mutation(), 1..6)) {
        let keys = keys();
        let mut bytes = root1(&keys).encode().unwrap();
        let mut sigs = sign(bytes.clone(), &[&keys[0], &keys[1]]).signatures_file();
        for m in &mutations {
            mutate(&mut bytes, m);
            mutate(&mut sigs, m);
        }
        if let Ok(root) = Root::parse(&bytes) {
            check_root(&root);
        }
        let _ = parse_signatures(&sigs);
    }

    #[test]
    fn any_flipped_byte_in_a_signed_manifest_is_refused(
        in_body in any::<bool>(),
        which in any::<Index>(),
        at in any::<Index>(),
        mask in 1u8..=255,
    ) {
        let keys = keys();
        let root = root1(&keys);
        let mut signed = sign(manifest().encode().unwrap(), &[&keys[0], &keys[1], &keys[2]]);
        prop_assert!(verify_manifest(&root, &signed, NOW, INSTALLED, "siterelay").is_ok());
        if in_body {
            let len = signed.body.len();
            signed.body[at.index(len)] ^= mask;
        } else {
            let signature = &mut signed.signatures[which.index(3)];
            signature.sig[at.index(64)] ^= mask;
        }
        prop_assert!(verify_manifest(&root, &signed, NOW, INSTALLED, "siterelay").is_err());
    }

    #[test]
    fn any_flipped_byte_in_a_signed_root_is_refused(
        in_body in any::<bool>(),
        which in any::<Index>(),
        at in any::<Index>(),
        mask in 1u8..=255,
    ) {
        let keys = keys();
        let new: Vec<PublicKey> = [1, 2, 3].iter().map(|&i| keys[i].public_key()).collect();
        let body = Root::new(2, ROOT_EXPIRES, 2, &new).unwrap().encode().unwrap();
        let mut signed = sign(body, &[&keys[0], &keys[1], &keys[2], &keys[3]]);
        prop_assert!(verify_root_rotation(&root1(&keys), &signed, NOW).is_ok());
        if in_body {
            let len = signed.body.len();
            signed.body[at.index(len)] ^= mask;
        } else {
            let signature = &mut signed.signatures[which.index(4)];
            signature.sig[at.index(64)] ^= mask;
        }
        prop_assert!(verify_root_rotation(&root1(&keys), &signed, NOW).is_err());
    }

    #[test]
    fn valid_manifests_round_trip_and_verify(manifest in valid_manifest()) {
        let text = manifest.encode().unwrap();
        prop_assert_eq!(&Manifest::parse(&text).unwrap(), &manifest);
        let keys = keys();
        let signed = sign(text, &[&keys[2], &keys[1]]);
        let now = manifest.expires.saturating_sub(1);
        let installed = manifest.bundle_version.saturating_sub(1);
        let result = verify_manifest(&Root { expires: u64::MAX, ..root1(&keys) }, &signed, now, installed, &manifest.product);
        if manifest.expires > 0 && manifest.bundle_version > 0 {
            prop_assert_eq!(result.unwrap(), manifest);
        } else {
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn valid_roots_round_trip(seeds in proptest::collection::btree_set(any::<[u8; 32]>(), 1..=16), threshold in any::<Index>(), version in 1u64.., expires in any::<u64>()) {
        let keys: Vec<PublicKey> = seeds.iter().map(|s| KeyPair::from_seed(s).unwrap().public_key()).collect();
        let threshold = threshold.index(keys.len()) as u32 + 1;
        let root = Root::new(version, expires, threshold, &keys).unwrap();
        check_root(&root);
    }

    #[test]
    fn signature_files_round_trip(count in 0usize..=16, seed in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..100)) {
        let pair = KeyPair::from_seed(&[seed; 32]).unwrap();
        let signed = sign(body.clone(), &vec![&pair; count]);
        prop_assert_eq!(SignedDocument::from_files(body, &signed.signatures_file()).unwrap(), signed);
    }

    #[test]
    fn accepted_payload_names_stay_inside_the_payload_directory(name in "[A-Za-z0-9./\\\\:_+ -]{0,20}|\\PC{0,20}") {
        let result = create_manifest("siterelay", "UR1", 1, EXPIRES, &[("relay", "1")], &[], vec![Payload::describe(&name, b"")]);
        if result.is_ok() {
            let path = Path::new(&name);
            prop_assert!(path.is_relative());
            prop_assert!(path.components().all(|c| matches!(c, Component::Normal(_))), "{:?}", name);
            prop_assert!(!name.contains('\\') && !name.contains('\0') && !name.ends_with('/'));
        }
    }

    #[test]
    fn version_order_is_antisymmetric(a in "[0-9.]{0,12}", b in "[0-9.]{0,12}") {
        prop_assert_eq!(compare_versions(&a, &b), compare_versions(&b, &a).map(std::cmp::Ordering::reverse));
    }
}
