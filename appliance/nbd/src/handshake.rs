//! Handshake phase: greeting, client flags, options and option replies.

use crate::consts::{
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT,
    INFO_BLOCK_SIZE, INFO_EXPORT, NBDMAGIC, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST,
    OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_STARTTLS, OPT_STRUCTURED_REPLY,
    REPLY_MAGIC_OPT, REP_INFO, REP_META_CONTEXT, REP_SERVER,
};
use crate::limits::{NAME_BYTES_MAX, OPTION_DATA_BYTES_MAX, QUERIES_MAX};
use crate::{to_usize, truncate_message, wire_len, NbdError, Reader};

/// Size of the server greeting.
pub const GREETING_BYTES: usize = 18;

/// Size of an option header (magic, option, length).
pub const OPTION_HEADER_BYTES: usize = 16;

/// The greeting the server sends first: newstyle magic and our handshake flags.
pub fn server_greeting() -> [u8; GREETING_BYTES] {
    let mut out = [0; GREETING_BYTES];
    out[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// Client flags accepted by [`parse_client_flags`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    /// Always true once parsed: nothing else is served.
    pub fixed_newstyle: bool,
    /// Omit the 124 zero bytes after an `NBD_OPT_EXPORT_NAME` reply.
    pub no_zeroes: bool,
}

/// Parses the client's reply to the greeting.
///
/// Unknown bits are an error because the specification requires the server to close
/// the connection on them; so is a missing fixed-newstyle bit, since plain newstyle
/// cannot report option errors and is not served.
pub fn parse_client_flags(bytes: [u8; 4]) -> Result<ClientFlags, NbdError> {
    let flags = u32::from_be_bytes(bytes);
    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(NbdError::ClientFlags { flags, reason: "unknown flag bits are set" });
    }
    if flags & FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::ClientFlags {
            flags,
            reason: "fixed newstyle is not set and only fixed newstyle is served",
        });
    }
    Ok(ClientFlags { fixed_newstyle: true, no_zeroes: flags & FLAG_C_NO_ZEROES != 0 })
}

/// Header of a client option; `length` bytes of option data follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option number (`consts::OPT_*`, or anything else).
    pub option: u32,
    /// Length of the option data. Not limited here: the caller compares it with
    /// [`crate::limits::OPTION_DATA_BYTES_MAX`] and skips what it will not buffer.
    pub length: u32,
}

/// Parses an option header. A wrong magic means the stream is out of sync.
pub fn parse_option_header(bytes: &[u8; OPTION_HEADER_BYTES]) -> Result<OptionHeader, NbdError> {
    let mut r = Reader::new(bytes);
    let magic = r.u64("option magic")?;
    if magic != IHAVEOPT {
        return Err(NbdError::BadMagic { what: "NBD option", found: magic, expected: IHAVEOPT });
    }
    Ok(OptionHeader { option: r.u32("option")?, length: r.u32("option length")? })
}

/// A parsed client option; byte strings borrow from the option data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption<'a> {
    /// `NBD_OPT_EXPORT_NAME`: enter transmission with this export.
    ExportName(&'a [u8]),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest<'a>),
    /// `NBD_OPT_GO`.
    Go(InfoRequest<'a>),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaContextQuery<'a>),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaContextQuery<'a>),
    /// Any other option, including `NBD_OPT_EXTENDED_HEADERS`; answer `NBD_REP_ERR_UNSUP`.
    Unknown(u32),
}

/// Data of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// Export name; empty selects the default export.
    pub name: &'a [u8],
    /// Requested information types (`consts::INFO_*`), possibly unknown ones.
    pub requests: Vec<u16>,
}

/// Data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextQuery<'a> {
    /// Export the contexts are for.
    pub export_name: &'a [u8],
    /// Queries; at most [`QUERIES_MAX`]. Empty means "all" for LIST and "none" for SET.
    pub queries: Vec<&'a [u8]>,
}

/// Parses the data of option `option`.
///
/// Unknown options are returned without looking at `data`. Structured data over
/// [`OPTION_DATA_BYTES_MAX`] bytes, or names and counts over [`crate::limits`], give
/// [`NbdError::TooLong`] (reply `NBD_REP_ERR_TOO_BIG`); other malformed data gives
/// [`NbdError::Truncated`] or [`NbdError::Invalid`] (reply `NBD_REP_ERR_INVALID`).
/// Data sent with `NBD_OPT_ABORT` is ignored, as the specification asks of servers.
pub fn parse_option(option: u32, data: &[u8]) -> Result<ClientOption<'_>, NbdError> {
    Ok(match option {
        OPT_EXPORT_NAME => {
            check_limit("export name length", data.len(), NAME_BYTES_MAX)?;
            ClientOption::ExportName(data)
        }
        OPT_ABORT => ClientOption::Abort,
        OPT_LIST => no_data("NBD_OPT_LIST", data, ClientOption::List)?,
        OPT_STARTTLS => no_data("NBD_OPT_STARTTLS", data, ClientOption::StartTls)?,
        OPT_STRUCTURED_REPLY => {
            no_data("NBD_OPT_STRUCTURED_REPLY", data, ClientOption::StructuredReply)?
        }
        OPT_INFO => ClientOption::Info(parse_info_request("NBD_OPT_INFO", data)?),
        OPT_GO => ClientOption::Go(parse_info_request("NBD_OPT_GO", data)?),
        OPT_LIST_META_CONTEXT => {
            ClientOption::ListMetaContext(parse_meta_query("NBD_OPT_LIST_META_CONTEXT", data)?)
        }
        OPT_SET_META_CONTEXT => {
            ClientOption::SetMetaContext(parse_meta_query("NBD_OPT_SET_META_CONTEXT", data)?)
        }
        other => ClientOption::Unknown(other),
    })
}

fn check_limit(what: &'static str, len: usize, max: u32) -> Result<(), NbdError> {
    let max = to_usize(max);
    if len > max {
        return Err(NbdError::TooLong { what, len, max });
    }
    Ok(())
}

fn no_data<'a>(
    what: &'static str,
    data: &[u8],
    option: ClientOption<'a>,
) -> Result<ClientOption<'a>, NbdError> {
    if data.is_empty() {
        return Ok(option);
    }
    let reason = format!("takes no data but {} bytes were sent", data.len());
    Err(NbdError::Invalid { what, reason })
}

/// A reader over structured option data, refusing data over the option limit.
fn option_reader(data: &[u8]) -> Result<Reader<'_>, NbdError> {
    check_limit("option data length", data.len(), OPTION_DATA_BYTES_MAX)?;
    Ok(Reader::new(data))
}

fn no_trailing(what: &'static str, r: &Reader<'_>) -> Result<(), NbdError> {
    if r.remaining() == 0 {
        return Ok(());
    }
    let reason = format!("{} unexpected bytes after the data", r.remaining());
    Err(NbdError::Invalid { what, reason })
}

/// Reads a u32 length, checks it against `max`, then the string it announces.
fn string<'a>(r: &mut Reader<'a>, what: &'static str, max: u32) -> Result<&'a [u8], NbdError> {
    let len = r.u32(what)?;
    check_limit(what, to_usize(len), max)?;
    r.bytes(to_usize(len), what)
}

fn parse_info_request<'a>(what: &'static str, data: &'a [u8]) -> Result<InfoRequest<'a>, NbdError> {
    let mut r = option_reader(data)?;
    let name = string(&mut r, "export name", NAME_BYTES_MAX)?;
    let count = r.u16("information request count")?;
    // The count is only trusted once the bytes it describes are known to be present.
    let raw = r.bytes(usize::from(count) * 2, "information requests")?;
    no_trailing(what, &r)?;
    let requests = raw.chunks_exact(2).map(|pair| u16::from_be_bytes([pair[0], pair[1]])).collect();
    Ok(InfoRequest { name, requests })
}

fn parse_meta_query<'a>(
    what: &'static str,
    data: &'a [u8],
) -> Result<MetaContextQuery<'a>, NbdError> {
    let mut r = option_reader(data)?;
    let export_name = string(&mut r, "export name", NAME_BYTES_MAX)?;
    let count = r.u32("meta context query count")?;
    check_limit("meta context query count", to_usize(count), QUERIES_MAX)?;
    let mut queries = Vec::with_capacity(to_usize(count));
    for _ in 0..count {
        queries.push(string(&mut r, "meta context query", NAME_BYTES_MAX)?);
    }
    no_trailing(what, &r)?;
    Ok(MetaContextQuery { export_name, queries })
}

fn option_reply_header(option: u32, reply_type: u32, len: usize, out: &mut Vec<u8>) {
    out.reserve(20 + len);
    out.extend_from_slice(&REPLY_MAGIC_OPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&wire_len(len).to_be_bytes());
}

/// Appends an option reply carrying `data` verbatim (for example `NBD_REP_ACK` with no data).
///
/// # Panics
///
/// If `data` is 4 GiB or more.
pub fn encode_option_reply(option: u32, reply_type: u32, data: &[u8], out: &mut Vec<u8>) {
    option_reply_header(option, reply_type, data.len(), out);
    out.extend_from_slice(data);
}

/// Appends an `NBD_REP_SERVER` reply describing export `name` (answer to `NBD_OPT_LIST`).
///
/// # Panics
///
/// If `name` is 4 GiB or more.
pub fn encode_rep_server(option: u32, name: &[u8], out: &mut Vec<u8>) {
    option_reply_header(option, REP_SERVER, 4 + name.len(), out);
    out.extend_from_slice(&wire_len(name.len()).to_be_bytes());
    out.extend_from_slice(name);
}

/// Appends `NBD_REP_INFO` / `NBD_INFO_EXPORT`: export size and transmission flags.
pub fn encode_info_export(option: u32, size: u64, transmission_flags: u16, out: &mut Vec<u8>) {
    option_reply_header(option, REP_INFO, 12, out);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
}

/// Appends `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE`.
pub fn encode_info_block_size(option: u32, min: u32, preferred: u32, max: u32, out: &mut Vec<u8>) {
    option_reply_header(option, REP_INFO, 14, out);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for value in [min, preferred, max] {
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// Appends an `NBD_REP_META_CONTEXT` reply naming context `context_id`.
///
/// # Panics
///
/// If `name` is 4 GiB or more.
pub fn encode_rep_meta_context(option: u32, context_id: u32, name: &[u8], out: &mut Vec<u8>) {
    option_reply_header(option, REP_META_CONTEXT, 4 + name.len(), out);
    out.extend_from_slice(&context_id.to_be_bytes());
    out.extend_from_slice(name);
}

/// Appends an error reply (`reply_type` is one of `consts::REP_ERR_*`) with a message for
/// humans, cut to the specification's 4096-byte string limit.
pub fn encode_rep_error(option: u32, reply_type: u32, message: &str, out: &mut Vec<u8>) {
    encode_option_reply(option, reply_type, truncate_message(message).as_bytes(), out);
}

/// Appends the reply to `NBD_OPT_EXPORT_NAME`, which has no option-reply framing.
pub fn encode_export_name_reply(
    size: u64,
    transmission_flags: u16,
    no_zeroes: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0; 124]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{OPT_EXTENDED_HEADERS, REP_ACK, REP_ERR_UNSUP};

    #[test]
    fn greeting_is_magic_magic_flags() {
        let greeting = server_greeting();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        assert_eq!(&greeting[8..16], b"IHAVEOPT");
        assert_eq!(greeting[16..], [0, 3]);
    }

    #[test]
    fn client_flags() {
        let flags = parse_client_flags([0, 0, 0, 3]).unwrap();
        assert_eq!(flags, ClientFlags { fixed_newstyle: true, no_zeroes: true });
        assert!(!parse_client_flags([0, 0, 0, 1]).unwrap().no_zeroes);
        assert!(matches!(parse_client_flags([0, 0, 0, 2]), Err(NbdError::ClientFlags { .. })));
        assert!(matches!(parse_client_flags([0, 0, 0, 5]), Err(NbdError::ClientFlags { .. })));
        assert!(matches!(parse_client_flags([0x80, 0, 0, 1]), Err(NbdError::ClientFlags { .. })));
    }

    /// Splits a captured option stream into (header, data) pairs.
    fn options(mut stream: &[u8]) -> Vec<(OptionHeader, &[u8])> {
        let mut out = Vec::new();
        while !stream.is_empty() {
            let header = parse_option_header(stream[..16].try_into().unwrap()).unwrap();
            let (data, rest) = stream[16..].split_at(header.length as usize);
            out.push((header, data));
            stream = rest;
        }
        out
    }

    #[test]
    fn qemu_handshake() {
        // What qemu-nbd 8.x sends to a server that refuses extended headers, written out by
        // hand from the specification so the test does not depend on our encoders.
        let mut stream = Vec::new();
        for (option, data) in [
            (11u32, &b""[..]),
            (8, b""),
            (10, b"\0\0\0\x04disk\0\0\0\x01\0\0\0\x0fbase:allocation"),
            (7, b"\0\0\0\x04disk\0\x01\0\x03"),
        ] {
            stream.extend_from_slice(b"IHAVEOPT");
            stream.extend_from_slice(&option.to_be_bytes());
            stream.extend_from_slice(&(data.len() as u32).to_be_bytes());
            stream.extend_from_slice(data);
        }
        let parsed: Vec<_> =
            options(&stream).into_iter().map(|(h, d)| parse_option(h.option, d).unwrap()).collect();
        assert_eq!(
            parsed,
            [
                ClientOption::Unknown(OPT_EXTENDED_HEADERS),
                ClientOption::StructuredReply,
                ClientOption::SetMetaContext(MetaContextQuery {
                    export_name: b"disk",
                    queries: vec![b"base:allocation"],
                }),
                ClientOption::Go(InfoRequest { name: b"disk", requests: vec![INFO_BLOCK_SIZE] }),
            ]
        );
    }

    #[test]
    fn bad_option_magic() {
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(b"IHAVEOPX");
        let err = parse_option_header(&header).unwrap_err();
        assert!(matches!(err, NbdError::BadMagic { what: "NBD option", .. }), "{err}");
    }

    #[test]
    fn malformed_option_data() {
        let invalid = |r| matches!(r, Err(NbdError::Invalid { .. }));
        assert!(invalid(parse_option(OPT_LIST, b"x")));
        assert!(invalid(parse_option(OPT_STRUCTURED_REPLY, b"x")));
        assert!(invalid(parse_option(OPT_STARTTLS, b"x")));
        assert_eq!(parse_option(OPT_ABORT, b"x"), Ok(ClientOption::Abort));
        // Name length pointing past the end, then a trailing byte after the requests.
        assert!(matches!(
            parse_option(OPT_GO, b"\0\0\0\x09disk\0\0"),
            Err(NbdError::Truncated { needed: 9, got: 6, .. })
        ));
        assert!(invalid(parse_option(OPT_INFO, b"\0\0\0\0\0\x01\0\x03!")));
        let too_many = [&b"\0\0\0\0"[..], &17u32.to_be_bytes()].concat();
        assert!(matches!(
            parse_option(OPT_LIST_META_CONTEXT, &too_many),
            Err(NbdError::TooLong { len: 17, max: 16, .. })
        ));
        let huge_name = u32::MAX.to_be_bytes();
        assert!(matches!(parse_option(OPT_GO, &huge_name), Err(NbdError::TooLong { .. })));
        assert!(matches!(
            parse_option(OPT_EXPORT_NAME, &[b'a'; 4097]),
            Err(NbdError::TooLong { .. })
        ));
        assert_eq!(parse_option(99, &[0; 10_000]), Ok(ClientOption::Unknown(99)));
    }

    #[test]
    fn option_reply_bytes() {
        let mut out = Vec::new();
        encode_option_reply(OPT_GO, REP_ACK, b"", &mut out);
        assert_eq!(
            out,
            [0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        out.clear();
        encode_rep_error(OPT_EXTENDED_HEADERS, REP_ERR_UNSUP, "no", &mut out);
        assert_eq!(out[8..], [0, 0, 0, 11, 0x80, 0, 0, 1, 0, 0, 0, 2, b'n', b'o']);
        out.clear();
        encode_rep_server(OPT_LIST, b"d", &mut out);
        assert_eq!(out[12..], [0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0, 1, b'd']);
        out.clear();
        encode_info_export(OPT_GO, 0x0102, 0x0d, &mut out);
        assert_eq!(out[12..], [0, 0, 0, 3, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0x0d]);
        out.clear();
        encode_info_block_size(OPT_GO, 1, 4096, 1 << 25, &mut out);
        assert_eq!(out[16..], [0, 0, 0, 14, 0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 2, 0, 0, 0]);
        out.clear();
        encode_rep_meta_context(OPT_SET_META_CONTEXT, 7, b"m", &mut out);
        assert_eq!(out[12..], [0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 7, b'm']);
    }

    #[test]
    fn long_error_messages_are_cut_on_a_char_boundary() {
        let mut out = Vec::new();
        encode_rep_error(OPT_GO, REP_ERR_UNSUP, &"é".repeat(3000), &mut out);
        assert_eq!(out[16..20], 4096u32.to_be_bytes());
        assert!(std::str::from_utf8(&out[20..]).is_ok());
    }

    #[test]
    fn export_name_reply() {
        let mut out = Vec::new();
        encode_export_name_reply(1 << 20, 3, true, &mut out);
        assert_eq!(out, [0, 0, 0, 0, 0, 0x10, 0, 0, 0, 3]);
        out.clear();
        encode_export_name_reply(1 << 20, 3, false, &mut out);
        assert_eq!(out.len(), 10 + 124);
        assert!(out[10..].iter().all(|&b| b == 0));
    }
}
