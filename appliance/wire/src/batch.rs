//! Payload helpers shared by every role: batch compression, zero detection, block checksums.

use crate::error::WireError;
use crate::frame::{Compression, Writes};
use crate::limits::{CHECKSUM_BYTES, WRITE_PAYLOAD_BYTES_MAX};

/// A batch is sent compressed only when zstd saves at least this share (in 1/16ths) of it;
/// below that, the receiver's decompression costs more than the bytes saved on the link.
const COMPRESSION_SAVING_MIN_SIXTEENTHS: usize = 1;

/// Bytes of each of the four probes a batch is sampled with before compressing it whole.
const SAMPLE_PROBE_BYTES: usize = 4 << 10;

/// zstd with a reused context and a cheap incompressibility probe: random or already
/// compressed data (common on disks: media, archives, encrypted volumes) costs a 16 KiB trial
/// instead of a full compression pass.
pub struct BatchCompressor {
    level: i32,
    context: zstd::bulk::Compressor<'static>,
    sample: Vec<u8>,
    sample_out: Vec<u8>,
}

impl std::fmt::Debug for BatchCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchCompressor").field("level", &self.level).finish()
    }
}

impl BatchCompressor {
    /// `level` 0 turns compression off.
    pub fn new(level: i32) -> BatchCompressor {
        let context =
            zstd::bulk::Compressor::new(level.max(1)).expect("zstd accepts levels 1..=19");
        BatchCompressor {
            level,
            context,
            sample: Vec::with_capacity(4 * SAMPLE_PROBE_BYTES),
            sample_out: Vec::new(),
        }
    }

    /// Compresses `data` into `out` (cleared first). Returns `false`, leaving `out` empty, when
    /// compression is off or would save less than 1/16 of the bytes.
    pub fn compress(&mut self, data: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        self.compress_append(data, out)
    }

    /// Appends the compressed form of `data` to `out`. Returns `false`, leaving `out` as it
    /// was, when compression is off or would save less than 1/16 of the bytes.
    pub fn compress_append(&mut self, data: &[u8], out: &mut Vec<u8>) -> bool {
        if self.level == 0 || data.is_empty() || !self.sample_compresses(data) {
            return false;
        }
        self.compress_into(data, out)
    }

    fn sample_compresses(&mut self, data: &[u8]) -> bool {
        if data.len() <= 8 * SAMPLE_PROBE_BYTES {
            return true;
        }
        self.sample.clear();
        let stride = (data.len() - SAMPLE_PROBE_BYTES) / 3;
        for probe in 0..4 {
            let at = probe * stride;
            self.sample.extend_from_slice(&data[at..at + SAMPLE_PROBE_BYTES]);
        }
        let sample = std::mem::take(&mut self.sample);
        let mut sample_out = std::mem::take(&mut self.sample_out);
        sample_out.clear();
        let worth = self.compress_into(&sample, &mut sample_out);
        self.sample = sample;
        self.sample_out = sample_out;
        worth
    }

    /// Appends to `out` if worth it; otherwise leaves `out` as it was.
    fn compress_into(&mut self, data: &[u8], out: &mut Vec<u8>) -> bool {
        let worth_max = data.len() - data.len() * COMPRESSION_SAVING_MIN_SIXTEENTHS / 16;
        let at = out.len();
        out.resize(at + zstd::zstd_safe::compress_bound(data.len()), 0);
        match self.context.compress_to_buffer(data, &mut out[at..]) {
            Ok(written) if written <= worth_max => {
                out.truncate(at + written);
                true
            }
            _ => {
                out.truncate(at);
                false
            }
        }
    }
}

/// Appends the uncompressed data bytes of a `Writes` frame to `out`, decompressing straight
/// into it. On error `out` is left as it was.
pub fn append_writes_data(writes: &Writes<'_>, out: &mut Vec<u8>) -> Result<(), WireError> {
    match writes.compression {
        Compression::None => {
            out.extend_from_slice(writes.payload);
            Ok(())
        }
        Compression::Zstd => {
            let declared = writes.data_len as usize;
            assert!(declared <= WRITE_PAYLOAD_BYTES_MAX, "validated at decode");
            let at = out.len();
            out.resize(at + declared, 0);
            let result = zstd::bulk::decompress_to_buffer(writes.payload, &mut out[at..]);
            match result {
                Ok(written) if written == declared => Ok(()),
                Ok(written) => {
                    out.truncate(at);
                    Err(WireError::Decompress { declared, reason: format!("got {written} bytes") })
                }
                Err(error) => {
                    out.truncate(at);
                    Err(WireError::Decompress { declared, reason: error.to_string() })
                }
            }
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
