//! The NBD server's parsers of what a client sends: handshake flags, option headers and
//! option payloads, transmission requests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(flags) = data.get(..4) {
        let _ = nbd::parse_client_flags(flags.try_into().expect("4 bytes"));
    }
    if let Some(header) = data.get(..nbd::OPTION_HEADER_BYTES) {
        let _ = nbd::parse_option_header(header.try_into().expect("header size"));
    }
    if let Some((option, payload)) = data.split_first_chunk::<4>() {
        let _ = nbd::parse_option(u32::from_be_bytes(*option), payload);
    }
    for request in data.chunks_exact(nbd::REQUEST_BYTES) {
        let _ = nbd::parse_request(request.try_into().expect("request size"));
    }
});
