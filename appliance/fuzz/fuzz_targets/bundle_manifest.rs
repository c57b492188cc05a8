//! Update bundle documents: the manifest, the trusted root, the signature file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bundle::Manifest::parse(data);
    let _ = bundle::Root::parse(data);
    let _ = bundle::parse_signatures(data);
});
