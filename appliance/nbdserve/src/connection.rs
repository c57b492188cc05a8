//! One NBD connection: the option haggling, then the transmission loop. A request is read,
//! handed to the [`Backend`] and answered before the next one is read.
//!
//! Every export advertises multi-conn: the backend's FLUSH covers writes completed on every
//! connection (see [`Backend::flush`]).

use std::io::{self, Read, Write};

use nbd::consts::*;
use nbd::{ClientOption, Command, Export, Request};

use crate::Backend;

/// Option payloads larger than this are skipped and refused rather than read into memory;
/// more than this and the connection is closed.
const OPTION_DISCARD_BYTES_MAX: u32 = 1 << 20;
const CONTEXT_ID_BASE_ALLOCATION: u32 = 1;

const TRANSMISSION_FLAGS: u16 = FLAG_HAS_FLAGS
    | FLAG_SEND_FLUSH
    | FLAG_SEND_FUA
    | FLAG_SEND_TRIM
    | FLAG_SEND_WRITE_ZEROES
    | FLAG_CAN_MULTI_CONN
    | FLAG_SEND_CACHE;

/// A read-only export offers no trim or write-zeroes (FUA stays: the specification lets
/// clients set it on any command once advertised, and it costs nothing on reads).
const READ_ONLY_TRANSMISSION_FLAGS: u16 =
    (TRANSMISSION_FLAGS & !(FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES)) | FLAG_READ_ONLY;

/// DF ("don't fragment" reads) only means something with structured replies; the spec says to
/// leave it clear otherwise.
fn transmission_flags(writable: bool, structured: bool) -> u16 {
    let flags = if writable { TRANSMISSION_FLAGS } else { READ_ONLY_TRANSMISSION_FLAGS };
    if structured {
        flags | FLAG_SEND_DF
    } else {
        flags
    }
}

/// A connection's two directions: reads through a buffer, so one `recv` usually brings a
/// request header together with its payload (small writes cost one syscall, not two).
pub(crate) struct Duplex<R: Read, W: Write> {
    pub(crate) reader: io::BufReader<R>,
    pub(crate) writer: W,
}

/// Large enough for a request and a typical write payload in one `recv`.
pub(crate) const READ_BUFFER_BYTES: usize = 128 << 10;

impl<R: Read, W: Write> Read for Duplex<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl<R: Read, W: Write> Write for Duplex<R, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// Serves one client connection to the end: `Ok` when the client disconnected or ended the
/// handshake without choosing an export. Errors are for the caller to log; `peer` names the
/// client in this function's own log lines. For a socket, wrap it in a buffered reader (as
/// [`crate::Server`] does), or each request header costs its own `recv`.
pub fn serve_connection<S: Read + Write, B: Backend + ?Sized>(
    stream: &mut S,
    backend: &B,
    peer: &str,
) -> Result<(), ServeError> {
    let Some(session) = handshake(stream, backend)? else { return Ok(()) };
    log::info!("nbd {peer}: serving disk {}", backend.export_name(session.export_id));
    transmission(stream, backend, &session)
}

/// Why a connection was closed by the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reading from or writing to the connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The client broke the protocol in a way no reply can answer (a bad magic, say).
    #[error("{0}")]
    Nbd(#[from] nbd::NbdError),
    /// The server closed the connection on purpose: an unknown export named with
    /// `NBD_OPT_EXPORT_NAME`, a huge option, a write over the payload limit.
    #[error("{0}")]
    Refused(String),
}

struct Session {
    export_id: usize,
    export: Export,
}

/// The option haggling phase. `None` when the client ended it without choosing an export.
fn handshake<S: Read + Write, B: Backend + ?Sized>(
    stream: &mut S,
    backend: &B,
) -> Result<Option<Session>, ServeError> {
    stream.write_all(&nbd::server_greeting())?;
    let mut flags = [0u8; 4];
    stream.read_exact(&mut flags)?;
    let client = nbd::parse_client_flags(flags)?;
    let mut structured = false;
    let mut meta_context = false;
    let mut reply = Vec::new();
    let mut data = Vec::new();
    loop {
        let mut header = [0u8; nbd::OPTION_HEADER_BYTES];
        stream.read_exact(&mut header)?;
        let header = nbd::parse_option_header(&header)?;
        reply.clear();
        if header.length > nbd::limits::OPTION_DATA_BYTES_MAX {
            if header.length > OPTION_DISCARD_BYTES_MAX {
                return Err(ServeError::Refused(format!(
                    "option {} with {} bytes of data",
                    header.option, header.length
                )));
            }
            io::copy(&mut (&mut *stream).take(u64::from(header.length)), &mut io::sink())?;
            nbd::encode_rep_error(
                header.option,
                REP_ERR_TOO_BIG,
                "option data too long",
                &mut reply,
            );
            stream.write_all(&reply)?;
            continue;
        }
        data.resize(header.length as usize, 0);
        stream.read_exact(&mut data)?;
        let option = match nbd::parse_option(header.option, &data) {
            Ok(option) => option,
            Err(error) => {
                nbd::encode_rep_error(
                    header.option,
                    REP_ERR_INVALID,
                    &error.to_string(),
                    &mut reply,
                );
                stream.write_all(&reply)?;
                continue;
            }
        };
        match option {
            ClientOption::ExportName(name) => {
                // No error reply exists for this option: an unknown name closes the connection.
                let Some(export_id) = find_export(backend, name) else {
                    return Err(ServeError::Refused(format!(
                        "unknown export {:?}",
                        String::from_utf8_lossy(name)
                    )));
                };
                let size = backend.export_size(export_id);
                let writable = backend.writable(export_id);
                nbd::encode_export_name_reply(
                    size,
                    transmission_flags(writable, false),
                    client.no_zeroes,
                    &mut reply,
                );
                stream.write_all(&reply)?;
                let export = Export {
                    size,
                    structured_replies: false,
                    meta_context: false,
                    read_only: !writable,
                };
                return Ok(Some(Session { export_id, export }));
            }
            ClientOption::Abort => {
                nbd::encode_option_reply(header.option, REP_ACK, &[], &mut reply);
                // The client may already have closed; that is fine.
                let _ = stream.write_all(&reply);
                return Ok(None);
            }
            ClientOption::List => {
                for export_id in 0..backend.export_count() {
                    let name = backend.export_name(export_id).as_bytes();
                    nbd::encode_rep_server(header.option, name, &mut reply);
                }
                nbd::encode_option_reply(header.option, REP_ACK, &[], &mut reply);
            }
            ClientOption::StartTls => {
                nbd::encode_rep_error(
                    header.option,
                    REP_ERR_POLICY,
                    "TLS is not offered",
                    &mut reply,
                );
            }
            ClientOption::StructuredReply => {
                structured = true;
                nbd::encode_option_reply(header.option, REP_ACK, &[], &mut reply);
            }
            ClientOption::ListMetaContext(query) | ClientOption::SetMetaContext(query) => {
                let set = header.option == OPT_SET_META_CONTEXT;
                if !structured {
                    let message = "meta contexts need structured replies first";
                    nbd::encode_rep_error(header.option, REP_ERR_INVALID, message, &mut reply);
                } else if find_export(backend, query.export_name).is_none() {
                    nbd::encode_rep_error(
                        header.option,
                        REP_ERR_UNKNOWN,
                        "unknown export",
                        &mut reply,
                    );
                } else {
                    let wanted = if set {
                        query.queries.iter().any(|q| *q == BASE_ALLOCATION.as_bytes())
                    } else {
                        query.queries.is_empty()
                            || query.queries.iter().any(|q| {
                                *q == b"base:".as_slice() || *q == BASE_ALLOCATION.as_bytes()
                            })
                    };
                    if set {
                        meta_context = wanted;
                    }
                    if wanted {
                        nbd::encode_rep_meta_context(
                            header.option,
                            CONTEXT_ID_BASE_ALLOCATION,
                            BASE_ALLOCATION.as_bytes(),
                            &mut reply,
                        );
                    }
                    nbd::encode_option_reply(header.option, REP_ACK, &[], &mut reply);
                }
            }
            ClientOption::Info(request) | ClientOption::Go(request) => {
                let go = header.option == OPT_GO;
                let Some(export_id) = find_export(backend, request.name) else {
                    nbd::encode_rep_error(
                        header.option,
                        REP_ERR_UNKNOWN,
                        "unknown export",
                        &mut reply,
                    );
                    stream.write_all(&reply)?;
                    continue;
                };
                let size = backend.export_size(export_id);
                let writable = backend.writable(export_id);
                let flags = transmission_flags(writable, structured);
                nbd::encode_info_export(header.option, size, flags, &mut reply);
                if request.requests.contains(&INFO_BLOCK_SIZE) {
                    nbd::encode_info_block_size(
                        header.option,
                        nbd::limits::BLOCK_SIZE_MIN,
                        nbd::limits::BLOCK_SIZE_PREFERRED,
                        nbd::limits::PAYLOAD_BYTES_MAX,
                        &mut reply,
                    );
                }
                nbd::encode_option_reply(header.option, REP_ACK, &[], &mut reply);
                stream.write_all(&reply)?;
                if go {
                    let export = Export {
                        size,
                        structured_replies: structured,
                        meta_context,
                        read_only: !writable,
                    };
                    return Ok(Some(Session { export_id, export }));
                }
                continue;
            }
            ClientOption::Unknown(option) => {
                let message = format!("option {option} is not supported");
                nbd::encode_rep_error(header.option, REP_ERR_UNSUP, &message, &mut reply);
            }
        }
        stream.write_all(&reply)?;
    }
}

/// The export `name` refers to: an export's name, or "" for the first export.
fn find_export<B: Backend + ?Sized>(backend: &B, name: &[u8]) -> Option<usize> {
    let count = backend.export_count();
    if name.is_empty() {
        return (count > 0).then_some(0);
    }
    (0..count).find(|&export_id| backend.export_name(export_id).as_bytes() == name)
}

fn transmission<S: Read + Write, B: Backend + ?Sized>(
    stream: &mut S,
    backend: &B,
    session: &Session,
) -> Result<(), ServeError> {
    let export_id = session.export_id;
    let mut reply = Vec::with_capacity(64);
    loop {
        let mut header = [0u8; nbd::REQUEST_BYTES];
        match stream.read_exact(&mut header) {
            Ok(()) => {}
            // A client that vanishes between requests has nothing outstanding.
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error.into()),
        }
        let request = nbd::parse_request(&header)?;
        if let Err(errno) = nbd::check_request(&request, &session.export) {
            if request.command == Command::Write {
                if !nbd::write_payload_readable(&request) {
                    return Err(ServeError::Refused(format!(
                        "write of {} bytes is over the {} byte limit",
                        request.length,
                        nbd::limits::PAYLOAD_BYTES_MAX
                    )));
                }
                let len = u64::from(request.length);
                io::copy(&mut (&mut *stream).take(len), &mut io::sink())?;
            }
            send_error(stream, session, &request, errno, &mut reply)?;
            continue;
        }
        let done = match request.command {
            Command::Read => {
                let mut data = vec![0u8; request.length as usize];
                match backend.read(export_id, request.offset, &mut data) {
                    Ok(()) => {
                        reply.clear();
                        if session.export.structured_replies {
                            nbd::encode_chunk_offset_data_header(
                                REPLY_FLAG_DONE,
                                request.handle,
                                request.offset,
                                request.length,
                                &mut reply,
                            );
                        } else {
                            nbd::encode_simple_reply(0, request.handle, &mut reply);
                        }
                        stream.write_all(&reply)?;
                        stream.write_all(&data)?;
                        continue;
                    }
                    Err(error) => Err(error),
                }
            }
            Command::Write => {
                let mut data = backend.take_buffer(request.length as usize);
                stream.read_exact(&mut data)?;
                backend
                    .write(export_id, request.offset, data)
                    .and_then(|()| fua(backend, export_id, &request))
            }
            Command::Trim | Command::WriteZeroes => backend
                .zero(export_id, request.offset, u64::from(request.length))
                .and_then(|()| fua(backend, export_id, &request)),
            Command::Flush => backend.flush(export_id),
            Command::Cache => Ok(()),
            Command::BlockStatus => {
                send_block_status(stream, backend, session, &request, &mut reply)?;
                continue;
            }
            Command::Disconnect => return Ok(()),
            Command::Unknown(_) => unreachable!("check_request refuses unknown commands"),
        };
        match done {
            Ok(()) => {
                reply.clear();
                nbd::encode_simple_reply(0, request.handle, &mut reply);
                stream.write_all(&reply)?;
            }
            Err(error) => {
                let name = backend.export_name(export_id);
                log::error!("disk {name}: {:?} failed: {error}", request.command);
                send_error(stream, session, &request, errno_of(&error), &mut reply)?;
            }
        }
    }
}

fn fua<B: Backend + ?Sized>(backend: &B, export_id: usize, request: &Request) -> io::Result<()> {
    if request.flags & CMD_FLAG_FUA != 0 {
        backend.sync_data(export_id)?;
    }
    Ok(())
}

fn errno_of(error: &io::Error) -> u32 {
    match error.raw_os_error() {
        Some(28) => ENOSPC,
        Some(12) => ENOMEM,
        _ => EIO,
    }
}

fn send_error<S: Write>(
    stream: &mut S,
    session: &Session,
    request: &Request,
    errno: u32,
    reply: &mut Vec<u8>,
) -> io::Result<()> {
    reply.clear();
    // A structured-reply client expects chunks for reads and block status.
    let chunked = session.export.structured_replies
        && matches!(request.command, Command::Read | Command::BlockStatus);
    if chunked {
        nbd::encode_chunk_error(REPLY_FLAG_DONE, request.handle, errno, "", reply);
    } else {
        nbd::encode_simple_reply(errno, request.handle, reply);
    }
    stream.write_all(reply)
}

fn send_block_status<S: Write, B: Backend + ?Sized>(
    stream: &mut S,
    backend: &B,
    session: &Session,
    request: &Request,
    reply: &mut Vec<u8>,
) -> io::Result<()> {
    let len = u64::from(request.length);
    let max = nbd::limits::BLOCK_STATUS_EXTENTS_MAX;
    let data = backend.data_ranges(session.export_id, request.offset, len, max).unwrap_or_else(
        // Without hole information, everything is data: always a correct answer.
        |_| vec![(request.offset, len)],
    );
    let req_one = request.flags & CMD_FLAG_REQ_ONE != 0;
    let extents = nbd::block_status_extents(
        request.offset,
        request.length,
        session.export.size,
        &data,
        req_one,
    );
    reply.clear();
    nbd::encode_chunk_block_status(
        REPLY_FLAG_DONE,
        request.handle,
        CONTEXT_ID_BASE_ALLOCATION,
        &extents,
        reply,
    );
    stream.write_all(reply)
}
