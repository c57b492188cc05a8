//! Payload helpers shared by every role: batch compression, zero detection, block checksums.

use crate::error::WireError;
use crate::frame::{Compression, Writes};
use crate::limits::{CHECKSUM_BYTES, WRITE_PAYLOAD_BYTES_MAX};

/// A batch is sent compressed only when zstd saves at least this share (in 1/16ths) of it;
/// below that, the receiver's decompression costs more than the bytes saved on the link.
const COMPRESSION_SAVING_MIN_SIXTEENTHS: usize = 1;

/// Compresses `data` with zstd at `level` into `out` (cleared first). Returns `false`, leaving
/// `out` empty, when the data is not worth compressing (random or already compressed).
pub fn compress_batch(level: i32, data: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    if level == 0 || data.is_empty() {
        return false;
    }
    let worth_max = data.len() - data.len() * COMPRESSION_SAVING_MIN_SIXTEENTHS / 16;
    out.resize(zstd::zstd_safe::compress_bound(data.len()), 0);
    match zstd::bulk::compress_to_buffer(data, out, level) {
        Ok(written) if written <= worth_max => {
            out.truncate(written);
            true
        }
        _ => {
            out.clear();
            false
        }
    }
}

/// The uncompressed data bytes of a `Writes` frame, decompressing into `scratch` if needed.
/// The output is bounded by the frame's `data_len`, itself bounded by the payload limit.
pub fn writes_data<'a>(
    writes: &Writes<'a>,
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], WireError> {
    match writes.compression {
        Compression::None => Ok(writes.payload),
        Compression::Zstd => {
            let declared = writes.data_len as usize;
            assert!(declared <= WRITE_PAYLOAD_BYTES_MAX, "validated at decode");
            scratch.clear();
            scratch.resize(declared, 0);
            let written = zstd::bulk::decompress_to_buffer(writes.payload, scratch)
                .map_err(|error| WireError::Decompress { declared, reason: error.to_string() })?;
            if written != declared {
                return Err(WireError::Decompress {
                    declared,
                    reason: format!("got {written} bytes"),
                });
            }
            Ok(&scratch[..])
        }
    }
}

/// True when every byte is zero. Compares word-sized chunks so a 64 KiB block costs little.
pub fn is_zero(data: &[u8]) -> bool {
    let (words, tail) = data.split_at(data.len() - data.len() % 8);
    words.chunks_exact(8).all(|word| word == [0u8; 8]) && tail.iter().all(|&byte| byte == 0)
}

/// Checksum of one block for resync: SHA-256 truncated to 128 bits. A collision would skip a
/// block that differs, so a cryptographic hash is used rather than a CRC.
pub fn block_checksum(data: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&digest.as_ref()[..CHECKSUM_BYTES]);
    out
}
