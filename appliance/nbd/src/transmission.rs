//! Transmission phase: requests, their validation, and simple and structured replies.

use crate::consts::{
    CMD_BLOCK_STATUS, CMD_CACHE, CMD_DISC, CMD_FLAG_DF, CMD_FLAG_FAST_ZERO, CMD_FLAG_FUA,
    CMD_FLAG_NO_HOLE, CMD_FLAG_REQ_ONE, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES,
    EINVAL, ENOSPC, EPERM, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR,
    REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
};
use crate::limits::PAYLOAD_BYTES_MAX;
use crate::{truncate_message, wire_len, NbdError, Reader};

/// Size of a request header (a write's payload follows it).
pub const REQUEST_BYTES: usize = 28;

/// Size of a simple reply header (a successful read's data follows it).
pub const SIMPLE_REPLY_BYTES: usize = 16;

/// Size of a structured reply chunk header.
pub const CHUNK_HEADER_BYTES: usize = 20;

/// Request type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    /// Any other type; [`check_request`] answers it with `EINVAL`.
    Unknown(u16),
}

impl Command {
    /// The command for a request's type field.
    pub fn from_code(code: u16) -> Self {
        match code {
            CMD_READ => Self::Read,
            CMD_WRITE => Self::Write,
            CMD_DISC => Self::Disconnect,
            CMD_FLUSH => Self::Flush,
            CMD_TRIM => Self::Trim,
            CMD_CACHE => Self::Cache,
            CMD_WRITE_ZEROES => Self::WriteZeroes,
            CMD_BLOCK_STATUS => Self::BlockStatus,
            other => Self::Unknown(other),
        }
    }

    /// The request type field for this command.
    pub fn code(self) -> u16 {
        match self {
            Self::Read => CMD_READ,
            Self::Write => CMD_WRITE,
            Self::Disconnect => CMD_DISC,
            Self::Flush => CMD_FLUSH,
            Self::Trim => CMD_TRIM,
            Self::Cache => CMD_CACHE,
            Self::WriteZeroes => CMD_WRITE_ZEROES,
            Self::BlockStatus => CMD_BLOCK_STATUS,
            Self::Unknown(code) => code,
        }
    }
}

/// A request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`consts::CMD_FLAG_*`).
    pub flags: u16,
    pub command: Command,
    /// Opaque client cookie, echoed in every reply.
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

/// Parses a request header. A wrong magic means the stream is out of sync and the
/// connection must be closed.
pub fn parse_request(bytes: &[u8; REQUEST_BYTES]) -> Result<Request, NbdError> {
    let mut r = Reader::new(bytes);
    let magic = r.u32("request magic")?;
    if magic != REQUEST_MAGIC {
        return Err(NbdError::BadMagic {
            what: "NBD request",
            found: magic.into(),
            expected: REQUEST_MAGIC.into(),
        });
    }
    Ok(Request {
        flags: r.u16("command flags")?,
        command: Command::from_code(r.u16("command")?),
        handle: r.u64("handle")?,
        offset: r.u64("offset")?,
        length: r.u32("length")?,
    })
}

/// What was negotiated for the export a connection serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export {
    /// Size in bytes.
    pub size: u64,
    /// `NBD_OPT_STRUCTURED_REPLY` was acknowledged.
    pub structured_replies: bool,
    /// `NBD_OPT_SET_META_CONTEXT` selected `base:allocation`.
    pub meta_context: bool,
    pub read_only: bool,
}

/// Validates a request against the export; `Err` holds the error value to reply with.
///
/// Follows the specification's error rules: `EINVAL` for unknown commands and for flags
/// not documented for the command; `EPERM` for writes, trims and write-zeroes on a
/// read-only export; `EINVAL` for a zero-length or oversize (over
/// [`PAYLOAD_BYTES_MAX`]) read or write, and for block status without a negotiated
/// metadata context or with length zero; a range past the end of the export is
/// `ENOSPC` for writes and write-zeroes, `EINVAL` otherwise.
///
/// `NBD_CMD_FLAG_FUA` is accepted on every command because the specification requires it
/// once `NBD_FLAG_SEND_FUA` is advertised (older qemu sets it on flush).
/// `NBD_CMD_DISC` is always `Ok`: it has no reply, so the server just closes.
pub fn check_request(request: &Request, export: &Export) -> Result<(), u32> {
    let extra_flags = match request.command {
        Command::Unknown(_) => return Err(EINVAL),
        Command::Disconnect => return Ok(()),
        // DF only means something for structured replies, so it is only advertised then.
        Command::Read if export.structured_replies => CMD_FLAG_DF,
        Command::WriteZeroes => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        Command::BlockStatus => CMD_FLAG_REQ_ONE,
        Command::Read | Command::Write | Command::Flush | Command::Trim | Command::Cache => 0,
    };
    if request.flags & !(CMD_FLAG_FUA | extra_flags) != 0 {
        return Err(EINVAL);
    }
    let writes = matches!(request.command, Command::Write | Command::Trim | Command::WriteZeroes);
    if writes && export.read_only {
        return Err(EPERM);
    }
    match request.command {
        // Offset and length are reserved; ignoring them costs nothing.
        Command::Flush => return Ok(()),
        Command::Read | Command::Write
            if request.length == 0 || request.length > PAYLOAD_BYTES_MAX =>
        {
            return Err(EINVAL);
        }
        // Zero length would leave nothing to describe, yet a reply needs one extent.
        Command::BlockStatus if !export.meta_context || request.length == 0 => {
            return Err(EINVAL);
        }
        _ => {}
    }
    let end = request.offset.checked_add(request.length.into());
    if end.is_none_or(|end| end > export.size) {
        let grows = matches!(request.command, Command::Write | Command::WriteZeroes);
        return Err(if grows { ENOSPC } else { EINVAL });
    }
    Ok(())
}

/// Whether the server can read (and discard) the payload following this request.
///
/// True for every request except a write longer than [`PAYLOAD_BYTES_MAX`]: such a
/// payload will not be buffered, and without reading it the stream cannot be resynced,
/// so the connection must be closed. Rejected writes within the limit still have their
/// payload read and discarded before the error reply.
pub fn write_payload_readable(request: &Request) -> bool {
    request.command != Command::Write || request.length <= PAYLOAD_BYTES_MAX
}

/// Appends a simple reply header; a successful read's data must follow it.
pub fn encode_simple_reply(error: u32, handle: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
}

/// Appends a structured reply chunk header announcing `length` payload bytes.
pub fn encode_chunk_header(
    flags: u16,
    reply_type: u16,
    handle: u64,
    length: u32,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// Appends an `NBD_REPLY_TYPE_OFFSET_DATA` chunk up to its data; the caller appends (or
/// sends) the `data_len` data bytes, so reads need no extra copy.
///
/// # Panics
///
/// If `data_len` is within 8 of `u32::MAX`: the chunk length would not fit.
pub fn encode_chunk_offset_data_header(
    flags: u16,
    handle: u64,
    offset: u64,
    data_len: u32,
    out: &mut Vec<u8>,
) {
    let length = data_len.checked_add(8).expect("offset data chunk length must fit in 32 bits");
    encode_chunk_header(flags, REPLY_TYPE_OFFSET_DATA, handle, length, out);
    out.extend_from_slice(&offset.to_be_bytes());
}

/// Appends the final, empty `NBD_REPLY_TYPE_NONE` chunk.
pub fn encode_chunk_none(handle: u64, out: &mut Vec<u8>) {
    encode_chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, handle, 0, out);
}

/// Appends an `NBD_REPLY_TYPE_ERROR` chunk; `message` is cut to the 4096-byte string limit.
pub fn encode_chunk_error(flags: u16, handle: u64, error: u32, message: &str, out: &mut Vec<u8>) {
    let message = truncate_message(message).as_bytes();
    // Truncated to 4096 bytes, so the length fits in the 16-bit field.
    let message_len = message.len() as u16;
    encode_chunk_header(flags, REPLY_TYPE_ERROR, handle, 6 + u32::from(message_len), out);
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&message_len.to_be_bytes());
    out.extend_from_slice(message);
}

/// Appends an `NBD_REPLY_TYPE_BLOCK_STATUS` chunk of `(length, status)` extents.
///
/// # Panics
///
/// If the chunk would be 4 GiB or more.
pub fn encode_chunk_block_status(
    flags: u16,
    handle: u64,
    context_id: u32,
    extents: &[(u32, u32)],
    out: &mut Vec<u8>,
) {
    let length = wire_len(extents.len().saturating_mul(8).saturating_add(4));
    out.reserve(CHUNK_HEADER_BYTES + 4 + extents.len() * 8);
    encode_chunk_header(flags, REPLY_TYPE_BLOCK_STATUS, handle, length, out);
    out.extend_from_slice(&context_id.to_be_bytes());
    for (extent_len, status) in extents {
        out.extend_from_slice(&extent_len.to_be_bytes());
        out.extend_from_slice(&status.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{EIO, REPLY_TYPE_ERROR, STATE_HOLE, STATE_ZERO};

    const EXPORT: Export =
        Export { size: 1 << 20, structured_replies: true, meta_context: true, read_only: false };

    fn request(command: Command, flags: u16, offset: u64, length: u32) -> Request {
        Request { flags, command, handle: 7, offset, length }
    }

    fn check(command: Command, flags: u16, offset: u64, length: u32) -> Result<(), u32> {
        check_request(&request(command, flags, offset, length), &EXPORT)
    }

    #[test]
    fn request_round_trips() {
        let bytes: [u8; 28] = [
            0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0x10, 0,
            0, 0, 2, 0,
        ];
        let parsed = parse_request(&bytes).unwrap();
        assert_eq!(
            parsed,
            Request {
                flags: CMD_FLAG_FUA,
                command: Command::Write,
                handle: 0x0102_0304_0506_0708,
                offset: 4096,
                length: 512,
            }
        );
        for code in 0..=9 {
            assert_eq!(Command::from_code(code).code(), code);
        }
        let mut bad = bytes;
        bad[3] = 0x14;
        let err = parse_request(&bad).unwrap_err();
        assert_eq!(err.to_string(), "NBD request magic 0x25609514 is not 0x25609513");
    }

    #[test]
    fn request_checks() {
        assert_eq!(check(Command::Write, 0, EXPORT.size - 512, 512), Ok(()));
        assert_eq!(check(Command::Write, CMD_FLAG_FUA, EXPORT.size, 1), Err(ENOSPC));
        assert_eq!(check(Command::WriteZeroes, 0, EXPORT.size, 1), Err(ENOSPC));
        assert_eq!(check(Command::Read, 0, EXPORT.size - 1, 2), Err(EINVAL));
        assert_eq!(check(Command::Trim, 0, u64::MAX, 1), Err(EINVAL));
        assert_eq!(check(Command::Write, 0, 0, 0), Err(EINVAL));
        assert_eq!(check(Command::Read, 0, 0, PAYLOAD_BYTES_MAX + 1), Err(EINVAL));
        assert_eq!(check(Command::Unknown(9), 0, 0, 1), Err(EINVAL));
        assert_eq!(check(Command::Read, 1 << 9, 0, 1), Err(EINVAL));
        assert_eq!(check(Command::Read, CMD_FLAG_FUA, 0, 1), Ok(()));
        assert_eq!(check(Command::Flush, CMD_FLAG_FUA, 0, 0), Ok(()));
        assert_eq!(check(Command::Read, CMD_FLAG_DF, 0, 1), Ok(()));
        assert_eq!(check(Command::Write, CMD_FLAG_DF, 0, 1), Err(EINVAL));
        assert_eq!(check(Command::Trim, CMD_FLAG_NO_HOLE, 0, 1), Err(EINVAL));
        assert_eq!(
            check(Command::WriteZeroes, CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO, 0, 1),
            Ok(())
        );
        assert_eq!(check(Command::BlockStatus, CMD_FLAG_REQ_ONE, 0, 1), Ok(()));
        assert_eq!(check(Command::Read, CMD_FLAG_REQ_ONE, 0, 1), Err(EINVAL));
        assert_eq!(check(Command::BlockStatus, 0, 0, 0), Err(EINVAL));
        assert_eq!(check(Command::Disconnect, 0xffff, 1, 1), Ok(()));
        let simple = Export { structured_replies: false, meta_context: false, ..EXPORT };
        assert_eq!(check_request(&request(Command::Read, CMD_FLAG_DF, 0, 1), &simple), Err(EINVAL));
        assert_eq!(check_request(&request(Command::BlockStatus, 0, 0, 1), &simple), Err(EINVAL));
        let read_only = Export { read_only: true, ..EXPORT };
        assert_eq!(check_request(&request(Command::Trim, 0, 0, 1), &read_only), Err(EPERM));
        assert_eq!(check_request(&request(Command::Read, 0, 0, 1), &read_only), Ok(()));
    }

    #[test]
    fn oversize_write_payload_is_not_readable() {
        assert!(write_payload_readable(&request(Command::Write, 0, 0, PAYLOAD_BYTES_MAX)));
        assert!(!write_payload_readable(&request(Command::Write, 0, 0, PAYLOAD_BYTES_MAX + 1)));
        assert!(write_payload_readable(&request(Command::Trim, 0, 0, u32::MAX)));
    }

    #[test]
    fn reply_bytes() {
        let mut out = Vec::new();
        encode_simple_reply(EIO, 0x0102_0304_0506_0708, &mut out);
        assert_eq!(out, [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5, 1, 2, 3, 4, 5, 6, 7, 8]);

        out.clear();
        encode_chunk_none(9, &mut out);
        assert_eq!(out, [0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0]);

        out.clear();
        encode_chunk_offset_data_header(0, 9, 0x200, 4, &mut out);
        assert_eq!(out[4..8], [0, 0, 0, 1]);
        assert_eq!(out[16..], [0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 2, 0]);

        out.clear();
        let hole = STATE_HOLE | STATE_ZERO;
        encode_chunk_block_status(REPLY_FLAG_DONE, 9, 1, &[(0x1000, 0), (0x200, hole)], &mut out);
        #[rustfmt::skip]
        let expected = [
            0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 20,
            0, 0, 0, 1,
            0, 0, 0x10, 0, 0, 0, 0, 0,
            0, 0, 0x02, 0, 0, 0, 0, 3,
        ];
        assert_eq!(out, expected);

        out.clear();
        encode_chunk_error(REPLY_FLAG_DONE, 9, EIO, "bad", &mut out);
        assert_eq!(out[6..8], REPLY_TYPE_ERROR.to_be_bytes());
        assert_eq!(out[16..], [0, 0, 0, 9, 0, 0, 0, 5, 0, 3, b'b', b'a', b'd']);
    }
}
