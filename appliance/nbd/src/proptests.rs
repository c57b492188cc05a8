//! Property tests: parsers never panic on hostile bytes, option data round-trips, and
//! block status extents agree with a byte-by-byte model.

use proptest::collection::vec;
use proptest::prelude::*;

use crate::consts::{
    CMD_FLAG_FUA, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, IHAVEOPT, OPT_EXPORT_NAME, OPT_GO,
    OPT_INFO, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, REQUEST_MAGIC, STATE_HOLE, STATE_ZERO,
};
use crate::limits::BLOCK_STATUS_EXTENTS_MAX;
use crate::{
    block_status_extents, check_request, parse_client_flags, parse_option, parse_option_header,
    parse_request, ClientOption, Command, Export, InfoRequest, MetaContextQuery, Request,
};

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Option numbers, mostly the known ones so the data parsers get exercised.
fn option_number() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..13, 1 => any::<u32>()]
}

/// Option data: random bytes, or a plausible prefix (small name length) then random bytes.
fn option_data() -> impl Strategy<Value = Vec<u8>> {
    let raw = vec(any::<u8>(), 0..600);
    let framed = (0u32..40, vec(any::<u8>(), 0..600)).prop_map(|(name_len, tail)| {
        let mut data = name_len.to_be_bytes().to_vec();
        data.extend_from_slice(&tail);
        data
    });
    prop_oneof![raw, framed]
}

fn encode_request(request: &Request) -> [u8; 28] {
    let mut out = Vec::new();
    out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&request.flags.to_be_bytes());
    out.extend_from_slice(&request.command.code().to_be_bytes());
    out.extend_from_slice(&request.handle.to_be_bytes());
    out.extend_from_slice(&request.offset.to_be_bytes());
    out.extend_from_slice(&request.length.to_be_bytes());
    out.try_into().unwrap()
}

fn request() -> impl Strategy<Value = Request> {
    (any::<u16>(), 0u16..10, any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
        |(flags, code, handle, offset, length)| Request {
            flags,
            command: Command::from_code(code),
            handle,
            offset,
            length,
        },
    )
}

proptest! {
    #[test]
    fn parse_option_never_panics(option in option_number(), data in option_data()) {
        let _ = parse_option(option, &data);
    }

    #[test]
    fn parse_option_header_never_panics(mut bytes: [u8; 16], valid_magic: bool) {
        if valid_magic {
            bytes[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        }
        let parsed = parse_option_header(&bytes);
        prop_assert_eq!(parsed.is_ok(), bytes[..8] == IHAVEOPT.to_be_bytes());
    }

    #[test]
    fn parse_client_flags_accepts_exactly_the_known_flags(bytes: [u8; 4]) {
        let flags = u32::from_be_bytes(bytes);
        let ok = flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) == 0
            && flags & FLAG_C_FIXED_NEWSTYLE != 0;
        prop_assert_eq!(parse_client_flags(bytes).is_ok(), ok);
    }

    #[test]
    fn parse_request_never_panics(bytes: [u8; 28]) {
        let _ = parse_request(&bytes);
    }

    #[test]
    fn request_round_trips(request in request()) {
        prop_assert_eq!(parse_request(&encode_request(&request)), Ok(request));
    }

    #[test]
    fn accepted_requests_lie_inside_the_export(
        request in request(),
        size in prop_oneof![0u64..1 << 20, any::<u64>()],
        structured_replies: bool,
        meta_context: bool,
        read_only: bool,
    ) {
        let export = Export { size, structured_replies, meta_context, read_only };
        if check_request(&request, &export).is_ok()
            && !matches!(request.command, Command::Flush | Command::Disconnect)
        {
            let end = request.offset.checked_add(request.length.into());
            prop_assert!(end.is_some_and(|end| end <= size));
        }
    }

    #[test]
    fn fua_never_makes_a_valid_request_invalid(request in request(), size: u64) {
        let export = Export { size, structured_replies: true, meta_context: true, read_only: false };
        let plain = Request { flags: request.flags & !CMD_FLAG_FUA, ..request };
        let fua = Request { flags: request.flags | CMD_FLAG_FUA, ..request };
        prop_assert_eq!(check_request(&plain, &export), check_request(&fua, &export));
    }

    #[test]
    fn info_request_round_trips(
        go: bool,
        name in vec(any::<u8>(), 0..64),
        requests in vec(any::<u16>(), 0..32),
    ) {
        let mut data = Vec::new();
        put_string(&mut data, &name);
        data.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        for request in &requests {
            data.extend_from_slice(&request.to_be_bytes());
        }
        let info = InfoRequest { name: &name, requests: requests.clone() };
        let (option, expected) = if go {
            (OPT_GO, ClientOption::Go(info))
        } else {
            (OPT_INFO, ClientOption::Info(info))
        };
        prop_assert_eq!(parse_option(option, &data), Ok(expected));
    }

    #[test]
    fn meta_context_query_round_trips(
        set: bool,
        name in vec(any::<u8>(), 0..64),
        queries in vec(vec(any::<u8>(), 0..40), 0..=16),
    ) {
        let mut data = Vec::new();
        put_string(&mut data, &name);
        data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for query in &queries {
            put_string(&mut data, query);
        }
        let query = MetaContextQuery {
            export_name: &name,
            queries: queries.iter().map(Vec::as_slice).collect(),
        };
        let (option, expected) = if set {
            (OPT_SET_META_CONTEXT, ClientOption::SetMetaContext(query))
        } else {
            (OPT_LIST_META_CONTEXT, ClientOption::ListMetaContext(query))
        };
        prop_assert_eq!(parse_option(option, &data), Ok(expected));
    }

    #[test]
    fn export_name_round_trips(name in vec(any::<u8>(), 0..256)) {
        prop_assert_eq!(parse_option(OPT_EXPORT_NAME, &name), Ok(ClientOption::ExportName(&name)));
    }

    #[test]
    fn extents_match_a_byte_model(
        offset in 0u64..120,
        length in 0u32..120,
        size in 0u64..120,
        mut allocated in vec((0u64..130, 0u64..30), 0..12),
        req_one: bool,
    ) {
        allocated.sort_unstable();
        let end = (offset + u64::from(length)).min(size);
        let state = |byte: u64| {
            let data = allocated.iter().any(|&(start, len)| (start..start + len).contains(&byte));
            if data { 0 } else { STATE_HOLE | STATE_ZERO }
        };
        let extents = block_status_extents(offset, length, size, &allocated, req_one);

        let mut pos = offset;
        for (i, &(len, status)) in extents.iter().enumerate() {
            prop_assert!(len > 0);
            if i > 0 {
                prop_assert_ne!(status, extents[i - 1].1, "equal neighbours are merged");
            }
            for byte in pos..pos + u64::from(len) {
                prop_assert!(byte < end, "extent reaches past the clamped range");
                prop_assert_eq!(status, state(byte), "byte {}", byte);
            }
            pos += u64::from(len);
        }
        prop_assert!(extents.len() <= BLOCK_STATUS_EXTENTS_MAX);
        if req_one {
            prop_assert!(extents.len() <= 1);
            // The one extent is as long as the first run of equal states allows.
            prop_assert!(pos >= end || state(pos) != state(pos - 1));
        } else {
            prop_assert_eq!(pos.max(offset), end.max(offset), "all of the range is covered");
        }
        prop_assert_eq!(extents.is_empty(), offset >= end);
    }
}
