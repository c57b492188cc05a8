use thiserror::Error;

/// Why bytes from a peer are not a valid v1 frame. Every variant names the field or limit, so
/// the log line tells an operator what the peer got wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("bad frame magic {found:#010x} (expected {expected:#010x}): peer is not a siterelay v1 endpoint")]
    BadMagic { found: u32, expected: u32 },
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    #[error("frame header reserved bytes are not zero")]
    ReservedNotZero,
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame CRC32C mismatch: header says {expected:#010x}, computed {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("{frame} frame truncated while reading {field}")]
    Truncated { frame: &'static str, field: &'static str },
    #[error("{frame} frame has {extra} unexpected trailing bytes")]
    TrailingBytes { frame: &'static str, extra: usize },
    #[error("{field} is {value}, over the limit of {max}")]
    OverLimit { field: &'static str, value: u64, max: u64 },
    #[error("{field} is not valid UTF-8")]
    BadUtf8 { field: &'static str },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: &'static str },
    #[error("incompatible protocol versions: we speak {ours_min}..={ours_max}, peer speaks {theirs_min}..={theirs_max}")]
    IncompatibleVersion { ours_min: u16, ours_max: u16, theirs_min: u16, theirs_max: u16 },
    #[error("zstd batch does not decompress to its declared {declared} bytes: {reason}")]
    Decompress { declared: usize, reason: String },
}
