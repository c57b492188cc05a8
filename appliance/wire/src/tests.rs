use super::*;
use crate::limits::{FRAME_HEADER_BYTES, KEY_BYTES_MAX};
use proptest::prelude::*;

fn compress_batch(level: i32, data: &[u8], out: &mut Vec<u8>) -> bool {
    BatchCompressor::new(level).compress(data, out)
}

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out).expect("valid frame encodes");
    out
}

fn sample_writes(payload: &[u8]) -> Frame<'_> {
    Frame::Writes(Writes {
        disk_id: 3,
        seq: 42,
        compression: Compression::None,
        data_len: payload.len() as u32,
        extents: vec![
            Extent { offset: 0, len: payload.len() as u32, flags: 0 },
            Extent { offset: 1 << 20, len: 65536, flags: EXTENT_ZERO },
        ],
        payload,
    })
}

#[test]
fn writes_round_trip() {
    let payload = vec![7u8; 4096];
    let frame = sample_writes(&payload);
    let bytes = encode(&frame);
    let (decoded, used) = decode_frame(&bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(decoded, frame);
}

#[test]
fn every_prefix_is_incomplete_not_an_error() {
    let payload = vec![1u8; 100];
    let bytes = encode(&sample_writes(&payload));
    for cut in 0..bytes.len() {
        assert_eq!(decode_frame(&bytes[..cut]), Ok(None), "cut at {cut}");
    }
}

#[test]
fn wrong_magic_is_refused_from_the_first_byte() {
    assert!(matches!(decode_frame(b"G"), Err(WireError::BadMagic { .. })));
    assert!(matches!(decode_frame(b"GET / HTTP/1.1\r\n\r\n"), Err(WireError::BadMagic { .. })));
}

#[test]
fn oversize_length_is_refused_before_the_body_arrives() {
    let mut bytes = encode(&Frame::Heartbeat { time_unix_ms: 1 });
    bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    bytes.truncate(16);
    assert!(matches!(decode_frame(&bytes), Err(WireError::FrameTooLarge { .. })));
}

#[test]
fn crc_mismatch_is_detected() {
    let payload = vec![9u8; 64];
    let mut bytes = encode(&sample_writes(&payload));
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    assert!(matches!(decode_frame(&bytes), Err(WireError::CrcMismatch { .. })));
}

#[test]
fn data_len_must_match_extents() {
    let payload = vec![9u8; 64];
    let frame = Frame::Writes(Writes {
        disk_id: 0,
        seq: 1,
        compression: Compression::None,
        data_len: 64,
        extents: vec![Extent { offset: 0, len: 32, flags: 0 }],
        payload: &payload,
    });
    assert!(matches!(frame.encode(&mut Vec::new()), Err(WireError::Invalid { .. })));
}

#[test]
fn version_negotiation() {
    assert_eq!(negotiate_version(1, 5), Ok(1));
    let error = negotiate_version(2, 3).unwrap_err();
    assert_eq!(
        error.to_string(),
        "incompatible protocol versions: we speak 1..=1, peer speaks 2..=3"
    );
}

#[test]
fn raw_frame_is_readdressed() {
    let payload = vec![5u8; 10];
    let bytes = encode(&sample_writes(&payload));
    let (raw, _) = split_frame(&bytes).unwrap().unwrap();
    let mut out = Vec::new();
    encode_raw_frame(raw.frame_type, Some(99), raw.body, &mut out).unwrap();
    let Frame::Writes(writes) = decode_frame(&out).unwrap().unwrap().0 else {
        panic!("not writes")
    };
    assert_eq!(writes.disk_id, 99);
    assert_eq!(writes.payload, &payload[..]);
}

#[test]
fn stored_body_round_trip() {
    let disk = DiskInfo {
        name: "vm1-disk0",
        generation: [7; 16],
        size_bytes: 1 << 30,
        take_over: true,
        fresh: false,
    };
    let mut out = Vec::new();
    encode_stored(&disk, b"body", &mut out).unwrap();
    assert_eq!(decode_stored(&out).unwrap(), (disk, &b"body"[..]));
    assert!(decode_stored(&out[..5]).is_err());
    // Flag bits this version does not know are refused, not ignored.
    let flags_at = out.len() - b"body".len() - 1;
    out[flags_at] |= 0x80;
    assert!(decode_stored(&out).is_err());
}

#[test]
fn compression_round_trip_and_skip() {
    let text = b"siterelay ".repeat(10_000);
    let mut packed = Vec::new();
    assert!(compress_batch(1, &text, &mut packed));
    let writes = Writes {
        disk_id: 0,
        seq: 1,
        compression: Compression::Zstd,
        data_len: text.len() as u32,
        extents: vec![Extent { offset: 0, len: text.len() as u32, flags: 0 }],
        payload: &packed,
    };
    let mut data = Vec::new();
    append_writes_data(&writes, &mut data).unwrap();
    assert_eq!(data, text);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let random: Vec<u8> = (0..65536)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    let mut out = Vec::new();
    assert!(!compress_batch(1, &random, &mut out));
    assert!(out.is_empty());
}

#[test]
fn lying_zstd_length_is_an_error() {
    let text = vec![b'a'; 100_000];
    let mut packed = Vec::new();
    assert!(compress_batch(1, &text, &mut packed));
    let writes = Writes {
        disk_id: 0,
        seq: 1,
        compression: Compression::Zstd,
        data_len: 1000,
        extents: vec![Extent { offset: 0, len: 1000, flags: 0 }],
        payload: &packed,
    };
    assert!(matches!(
        append_writes_data(&writes, &mut Vec::new()),
        Err(WireError::Decompress { .. })
    ));
}

#[test]
fn append_decompresses_in_place_and_keeps_output_on_error() {
    let text = b"replica ".repeat(20_000);
    let mut packed = Vec::new();
    assert!(compress_batch(1, &text, &mut packed));
    let mut writes = Writes {
        disk_id: 0,
        seq: 1,
        compression: Compression::Zstd,
        data_len: text.len() as u32,
        extents: vec![Extent { offset: 0, len: text.len() as u32, flags: 0 }],
        payload: &packed,
    };
    let mut out = b"head".to_vec();
    append_writes_data(&writes, &mut out).unwrap();
    assert_eq!(&out[..4], b"head");
    assert_eq!(&out[4..], &text[..]);
    writes.data_len -= 1;
    let before = out.clone();
    assert!(matches!(append_writes_data(&writes, &mut out), Err(WireError::Decompress { .. })));
    assert_eq!(out, before);
}

#[test]
fn zero_detection() {
    assert!(is_zero(&[0u8; 65536]));
    let mut block = vec![0u8; 65537];
    block[65536] = 1;
    assert!(!is_zero(&block));
}

fn arb_name() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{0,64}"
}

fn arb_disks() -> impl Strategy<Value = Vec<(String, [u8; 16], u64)>> {
    prop::collection::vec((arb_name(), any::<[u8; 16]>(), any::<u64>()), 0..8)
}

proptest! {
    #[test]
    fn hello_round_trip(version in any::<(u16, u16)>(), names in (arb_name(), arb_name(), arb_name()), disks in arb_disks()) {
        let disks: Vec<DiskInfo<'_>> = disks.iter().map(|(name, generation, size_bytes)| DiskInfo { name, generation: *generation, size_bytes: *size_bytes, take_over: *size_bytes % 2 == 0, fresh: *size_bytes % 3 == 0 }).collect();
        let frame = Frame::Hello(Hello { version_min: version.0, version_max: version.1, role: Role::Agent, product_version: &names.0, site_id: &names.1, node_id: &names.2, disks });
        let bytes = encode(&frame);
        prop_assert_eq!(decode_frame(&bytes).unwrap().unwrap(), (frame, bytes.len()));
    }

    #[test]
    fn writes_round_trip_arbitrary(disk_id in any::<u32>(), seq in any::<u64>(), chunks in prop::collection::vec((any::<u32>(), 1u32..5000, any::<bool>()), 1..20), fill in any::<u8>()) {
        let extents: Vec<Extent> = chunks.iter().map(|&(block, len, zero)| Extent { offset: u64::from(block) * 512, len, flags: if zero { EXTENT_ZERO } else { 0 } }).collect();
        let data_len: u32 = extents.iter().filter(|e| e.has_payload()).map(|e| e.len).sum();
        let payload = vec![fill; data_len as usize];
        let frame = Frame::Writes(Writes { disk_id, seq, compression: Compression::None, data_len, extents, payload: &payload });
        let bytes = encode(&frame);
        prop_assert_eq!(decode_frame(&bytes).unwrap().unwrap(), (frame, bytes.len()));
    }

    #[test]
    fn small_frames_round_trip(disk_id in any::<u32>(), a in any::<u64>(), b in any::<u64>(), code in any::<u16>(), text in "\\PC{0,200}") {
        let (a_bytes, b_bytes) = (a.to_le_bytes(), b.to_le_bytes());
        let frames = vec![
            Frame::Ack(vec![AckEntry { disk_id, durable_seq: a, replicated_seq: b }]),
            Frame::Heartbeat { time_unix_ms: a },
            Frame::Error { code, message: &text },
            Frame::Marker(Marker { disk_id, seq: a, kind: MarkerKind::App, marker_id: b, time_unix_ms: a ^ b }),
            Frame::ChecksumRequest(ChecksumRequest { disk_id, request_id: a, offset: b, block_bytes: 65536, block_count: 7 }),
            Frame::DiskState(DiskState { disk_id, state: DiskStateKind::Resyncing, done_bytes: a, total_bytes: b }),
            Frame::StatusRequest,
            Frame::Status { json: &text },
            Frame::Control { json: &text },
            Frame::Register(Register { name: "agent-1", public_key: &text.as_bytes()[..text.len().min(65)], signature: &a_bytes, proof: &b_bytes }),
            Frame::Registered { ca: text.as_bytes(), cert: &a_bytes, proof: &[] },
        ];
        let mut stream = Vec::new();
        for frame in &frames { frame.encode(&mut stream).unwrap(); }
        let mut reader = FrameReader::new();
        // Feed in odd-sized pieces to exercise reassembly.
        let mut decoded = Vec::new();
        for piece in stream.chunks(7) {
            reader.feed(piece);
            while let Some((raw, used)) = reader.peek().unwrap() {
                decoded.push(format!("{:?}", raw.decode().unwrap()));
                reader.consume(used);
            }
        }
        let expected: Vec<String> = frames.iter().map(|f| format!("{f:?}")).collect();
        prop_assert_eq!(decoded, expected);
    }

    /// Arbitrary bytes never panic the decoder; any frame it accepts is within the limits.
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(Some((frame, used))) = decode_frame(&bytes) {
            prop_assert!(used <= bytes.len());
            prop_assert!(used - limits::FRAME_HEADER_BYTES <= limits::FRAME_BODY_BYTES_MAX);
            let _ = frame.frame_type();
        }
    }

    /// Valid header, arbitrary body: the body decoder never panics and never over-allocates,
    /// since every count it reads is checked against a limit smaller than the body itself.
    #[test]
    fn garbage_bodies_never_panic(frame_type in 1u8..=12, body in prop::collection::vec(any::<u8>(), 0..4096)) {
        let frame_type = FrameType::from_u8(frame_type).unwrap();
        let mut bytes = Vec::new();
        encode_raw_frame(frame_type, None, &body, &mut bytes).unwrap();
        if let Ok(Some((Frame::Writes(writes), _))) = decode_frame(&bytes) {
            prop_assert!(writes.extents.len() <= limits::EXTENTS_PER_WRITES_MAX);
            let mut scratch = Vec::new();
            let _ = append_writes_data(&writes, &mut scratch);
            prop_assert!(scratch.capacity() <= limits::WRITE_PAYLOAD_BYTES_MAX.max(64));
        }
    }
}

#[test]
fn writes_frame_built_in_place_equals_the_encoded_frame() {
    let extents = vec![
        Extent { offset: 0, len: 3, flags: 0 },
        Extent { offset: 4096, len: 8192, flags: EXTENT_ZERO },
        Extent { offset: 65536, len: 2, flags: 0 },
    ];
    let payload = b"abcde";
    let expected = encode(&Frame::Writes(Writes {
        disk_id: 3,
        seq: 9,
        compression: Compression::None,
        data_len: 5,
        extents: extents.clone(),
        payload,
    }));
    let mut out = vec![0xee];
    let mut frame = WritesFrame::begin(3, 9, extents, &mut out).unwrap();
    frame.append(b"abc");
    frame.append(b"de");
    frame.finish();
    assert_eq!(&out[1..], &expected[..]);
    let zero_len = vec![Extent { offset: 0, len: 0, flags: 0 }];
    assert!(WritesFrame::begin(0, 1, zero_len, &mut Vec::new()).is_err());
}

#[test]
fn registration_blobs_are_bounded() {
    let big = vec![7u8; KEY_BYTES_MAX + 1];
    let frame =
        Frame::Register(Register { name: "n", public_key: &big, signature: &[], proof: &[] });
    assert_eq!(
        frame.encode(&mut Vec::new()).unwrap_err().to_string(),
        WireError::OverLimit { field: "Register.public_key", value: 513, max: 512 }.to_string()
    );
    // A hand-made body stating a longer certificate than the limit is refused before slicing.
    let mut bytes = Vec::new();
    Frame::Registered { ca: b"ca", cert: b"cert", proof: b"p" }.encode(&mut bytes).unwrap();
    bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + 2].copy_from_slice(&u16::MAX.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..12]), &bytes[FRAME_HEADER_BYTES..]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    let err = decode_frame(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        WireError::OverLimit { field: "Registered.ca", value: 65535, max: 8192 }.to_string()
    );
}
