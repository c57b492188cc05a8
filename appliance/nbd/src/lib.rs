//! The NBD (Network Block Device) protocol wire format, server side.
//!
//! This crate is pure: it never touches sockets, files or clocks. The agent's NBD
//! server reads fixed-size headers from its connection, hands the bytes to these
//! parsers, and sends whatever the encoders append to its output buffer.
//!
//! Every integer on the wire is big endian (network byte order). The protocol is
//! specified in the reference implementation's `doc/proto.md`; constant names in
//! [`consts`] follow it without the `NBD_` prefix.
//!
//! # What is served
//!
//! Only fixed newstyle negotiation ([`parse_client_flags`] refuses anything else),
//! simple and structured replies, and the `base:allocation` metadata context.
//! Extended headers are not implemented: [`parse_option`] reports
//! `NBD_OPT_EXTENDED_HEADERS` as [`ClientOption::Unknown`] so the server answers
//! `NBD_REP_ERR_UNSUP` and clients fall back to compact headers.
//!
//! # Hostile input
//!
//! Parsers never panic and never allocate from a length they have not checked
//! against the remaining bytes and [`limits`]. Errors say what the server must do:
//! [`NbdError::BadMagic`] and [`NbdError::ClientFlags`] mean the stream cannot be
//! trusted and the connection must be closed; errors from [`parse_option`] are
//! answered with `NBD_REP_ERR_TOO_BIG` ([`NbdError::TooLong`]) or
//! `NBD_REP_ERR_INVALID` (the others) and negotiation continues.

#![forbid(unsafe_code)] // pure crate: parsing and encoding only, no unsafe

pub mod consts;
mod error;
mod extents;
mod handshake;
mod transmission;

#[cfg(test)]
mod proptests;

pub use error::NbdError;
pub use extents::block_status_extents;
pub use handshake::{
    encode_export_name_reply, encode_info_block_size, encode_info_export, encode_option_reply,
    encode_rep_error, encode_rep_meta_context, encode_rep_server, parse_client_flags, parse_option,
    parse_option_header, server_greeting, ClientFlags, ClientOption, InfoRequest, MetaContextQuery,
    OptionHeader, GREETING_BYTES, OPTION_HEADER_BYTES,
};
pub use transmission::{
    check_request, encode_chunk_block_status, encode_chunk_error, encode_chunk_header,
    encode_chunk_none, encode_chunk_offset_data_header, encode_simple_reply, parse_request,
    write_payload_readable, Command, Export, Request, CHUNK_HEADER_BYTES, REQUEST_BYTES,
    SIMPLE_REPLY_BYTES,
};

/// Limits this server imposes on clients. Each has the type of the wire field it bounds.
pub mod limits {
    /// Largest option payload the server accepts. The option header carries the length, so
    /// the server compares it with this *before* reading: larger payloads are refused
    /// (`NBD_REP_ERR_TOO_BIG`) and skipped instead of buffered.
    pub const OPTION_DATA_BYTES_MAX: u32 = 4096;

    /// Largest `NBD_CMD_READ` / `NBD_CMD_WRITE` length, also advertised as the maximum
    /// block size. 32 MiB is the size the specification says clients may always use.
    pub const PAYLOAD_BYTES_MAX: u32 = 32 << 20;

    /// Advertised minimum block size: the export is a byte-addressable image.
    pub const BLOCK_SIZE_MIN: u32 = 1;

    /// Advertised preferred block size: below this, writes cost a read-modify-write.
    pub const BLOCK_SIZE_PREFERRED: u32 = 4096;

    /// Longest export name or metadata context query; the specification caps strings here.
    pub const NAME_BYTES_MAX: u32 = 4096;

    /// Most metadata context queries accepted in one option.
    pub const QUERIES_MAX: u32 = 16;

    /// Most extents [`crate::block_status_extents`] returns. The specification lets a
    /// server describe only a prefix of the range, which bounds the reply size.
    pub const BLOCK_STATUS_EXTENTS_MAX: usize = 1024;
}

/// Bounds-checked big-endian reader: every read either fits or becomes
/// [`NbdError::Truncated`], so hostile lengths cannot cause a panic.
#[derive(Debug)]
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], NbdError> {
        if n > self.rest.len() {
            return Err(NbdError::Truncated { what, needed: n, got: self.rest.len() });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], NbdError> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, NbdError> {
        self.array(what).map(u16::from_be_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, NbdError> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, NbdError> {
        self.array(what).map(u64::from_be_bytes)
    }

    fn remaining(&self) -> usize {
        self.rest.len()
    }
}

/// Converts a length to a 32-bit wire field.
///
/// # Panics
///
/// If `len` does not fit in 32 bits: the caller built a message the protocol cannot carry.
fn wire_len(len: usize) -> u32 {
    u32::try_from(len).expect("NBD length fields are 32 bits")
}

/// Widens a 32-bit wire length; saturating keeps this panic-free on 16-bit targets, where
/// no such buffer could exist anyway.
fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Cuts `message` to the specification's 4096-byte string limit on a character boundary,
/// so a long diagnostic never turns into a malformed reply.
fn truncate_message(message: &str) -> &str {
    let max = to_usize(limits::NAME_BYTES_MAX);
    if message.len() <= max {
        return message;
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}
