//! Frame types of protocol v1 and their body layouts.
//!
//! Every frame: a 16-byte header (`magic u32`, `type u8`, `flags u8 = 0`, `reserved u16 = 0`,
//! `body_len u32`, `crc32c u32` over the first 12 header bytes and the body), then the body.
//! Disk-scoped frames (`Writes`, `Marker`, `ChecksumRequest`, `Checksums`, `DiskAttach`,
//! `DiskState`) start their body with `disk_id u32`, so a relay can re-address a stored frame
//! body without decoding it.

use crate::codec::{FieldReader, FieldWriter};
use crate::error::WireError;
use crate::limits::*;

pub const FRAME_MAGIC: u32 = 0x3157_5253; // "SRW1"
pub const PROTOCOL_VERSION_MIN: u16 = 1;
pub const PROTOCOL_VERSION_MAX: u16 = 1;

/// Generation UUID of one disk replication (invariant 5).
pub type Generation = [u8; 16];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 1,
    Writes = 2,
    Marker = 3,
    Ack = 4,
    Heartbeat = 5,
    Error = 6,
    ChecksumRequest = 7,
    Checksums = 8,
    DiskAttach = 9,
    DiskState = 10,
    StatusRequest = 11,
    Status = 12,
    /// An operator command (JSON) to a target; answered by `Status` (JSON) or `Error`.
    Control = 13,
    /// A node without a certificate asks for one with a one-time passphrase (pki crate).
    Register = 14,
    /// The answer: the site CA and the node's certificate, proven by the same passphrase.
    Registered = 15,
}

impl FrameType {
    pub fn from_u8(value: u8) -> Result<Self, WireError> {
        Ok(match value {
            1 => Self::Hello,
            2 => Self::Writes,
            3 => Self::Marker,
            4 => Self::Ack,
            5 => Self::Heartbeat,
            6 => Self::Error,
            7 => Self::ChecksumRequest,
            8 => Self::Checksums,
            9 => Self::DiskAttach,
            10 => Self::DiskState,
            11 => Self::StatusRequest,
            12 => Self::Status,
            13 => Self::Control,
            14 => Self::Register,
            15 => Self::Registered,
            other => return Err(WireError::UnknownFrameType(other)),
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "Hello",
            Self::Writes => "Writes",
            Self::Marker => "Marker",
            Self::Ack => "Ack",
            Self::Heartbeat => "Heartbeat",
            Self::Error => "Error",
            Self::ChecksumRequest => "ChecksumRequest",
            Self::Checksums => "Checksums",
            Self::DiskAttach => "DiskAttach",
            Self::DiskState => "DiskState",
            Self::StatusRequest => "StatusRequest",
            Self::Status => "Status",
            Self::Control => "Control",
            Self::Register => "Register",
            Self::Registered => "Registered",
        }
    }
    /// Frames whose body starts with `disk_id u32`.
    pub fn is_disk_scoped(self) -> bool {
        matches!(
            self,
            Self::Writes
                | Self::Marker
                | Self::ChecksumRequest
                | Self::Checksums
                | Self::DiskAttach
                | Self::DiskState
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    Agent = 1,
    Relay = 2,
    Target = 3,
    /// An operator tool (`siterelay status`).
    Control = 4,
}

impl Role {
    fn from_u8(value: u8) -> Result<Self, WireError> {
        Ok(match value {
            1 => Self::Agent,
            2 => Self::Relay,
            3 => Self::Target,
            4 => Self::Control,
            _ => return Err(WireError::Invalid { field: "Hello.role", reason: "unknown role" }),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo<'a> {
    pub name: &'a str,
    pub generation: Generation,
    pub size_bytes: u64,
    /// The operator asked this source to replace the replica's history (an explicit
    /// `agent --take-over`): a receiver that knows the disk under another generation adopts
    /// this one, keeps the replica's data and expects a checksum resync. Without it, a
    /// generation mismatch is refused (design.md invariant 5).
    pub take_over: bool,
    /// This generation has never sent a frame: its sequence starts at 0. A relay with no
    /// record of the disk may then accept it at once; otherwise it first asks the target
    /// where the sequence stands (its own cache may have been lost).
    pub fresh: bool,
}

const DISK_FLAG_TAKE_OVER: u8 = 1;
const DISK_FLAG_FRESH: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello<'a> {
    pub version_min: u16,
    pub version_max: u16,
    pub role: Role,
    pub product_version: &'a str,
    pub site_id: &'a str,
    pub node_id: &'a str,
    pub disks: Vec<DiskInfo<'a>>,
}

/// Who this process is, as its Hellos say: the installed version (an updated appliance
/// runs the version of its active slot), its site (nodes of one role at one site form a
/// cluster) and its node name. Set once at start; unset, the build's version and no names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub product_version: String,
    pub site_id: String,
    pub node_id: String,
}

static IDENTITY: std::sync::OnceLock<Identity> = std::sync::OnceLock::new();

/// Sets this process's identity; false if it was already set (the first one stays).
pub fn set_identity(identity: Identity) -> bool {
    IDENTITY.set(identity).is_ok()
}

pub fn identity() -> Option<&'static Identity> {
    IDENTITY.get()
}

impl<'a> Hello<'a> {
    /// Our own Hello: the protocol versions this build speaks, the installed product version,
    /// site and node (`node_id` when no identity names the node).
    pub fn ours(role: Role, node_id: &'a str, disks: Vec<DiskInfo<'a>>) -> Hello<'a> {
        let identity = identity();
        Hello {
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION_MAX,
            role,
            product_version: identity
                .map_or(env!("CARGO_PKG_VERSION"), |id| id.product_version.as_str()),
            site_id: identity.map_or("", |id| id.site_id.as_str()),
            node_id: identity
                .filter(|id| !id.node_id.is_empty())
                .map_or(node_id, |id| id.node_id.as_str()),
            disks,
        }
    }
}

pub const EXTENT_ZERO: u8 = 1;
pub const EXTENT_TRIM: u8 = 2;
const EXTENT_FLAGS_KNOWN: u8 = EXTENT_ZERO | EXTENT_TRIM;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u32,
    pub flags: u8,
}

impl Extent {
    /// Zero and trim extents carry no payload bytes.
    pub fn has_payload(&self) -> bool {
        self.flags & (EXTENT_ZERO | EXTENT_TRIM) == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writes<'a> {
    pub disk_id: u32,
    /// Per-disk sequence number of this frame, monotonic within a generation.
    pub seq: u64,
    pub compression: Compression,
    /// Sum of the lengths of the extents that carry payload.
    pub data_len: u32,
    pub extents: Vec<Extent>,
    /// `data_len` raw bytes, or a zstd frame that decompresses to exactly `data_len` bytes.
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MarkerKind {
    Crash = 1,
    App = 2,
    Group = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub disk_id: u32,
    pub seq: u64,
    pub kind: MarkerKind,
    pub marker_id: u64,
    pub time_unix_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckEntry {
    pub disk_id: u32,
    /// Highest sequence durable at the sender of the ack (the relay's cache, or the target).
    pub durable_seq: u64,
    /// Highest sequence durable at the recovery site, as far as the sender knows.
    pub replicated_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChecksumRequest {
    pub disk_id: u32,
    pub request_id: u64,
    pub offset: u64,
    pub block_bytes: u32,
    pub block_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksums<'a> {
    pub disk_id: u32,
    pub request_id: u64,
    pub offset: u64,
    pub block_bytes: u32,
    /// `CHECKSUM_BYTES` per block, concatenated; blocks past the end of the replica hash as
    /// their zero-filled bytes.
    pub sums: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DiskStateKind {
    InitialSync = 1,
    Resyncing = 2,
    /// Capture is running, no gap is open: every write reaches the replica in order.
    Protected = 3,
    /// Capture stopped cleanly; writes since then are in the agent's bitmap.
    Paused = 4,
    /// A one-shot sync or scan finished: the replica matched the source at that moment, and
    /// nothing tracks writes since (the next run compares checksums).
    Synced = 5,
    /// Set by the relay, never sent: the agent's connection ended without a clean stop, so
    /// nothing can be claimed until it reconnects.
    Disconnected = 6,
}

impl DiskStateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InitialSync => "initial-sync",
            Self::Resyncing => "resyncing",
            Self::Protected => "protected",
            Self::Paused => "paused",
            Self::Synced => "synced",
            Self::Disconnected => "disconnected",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskState {
    pub disk_id: u32,
    pub state: DiskStateKind,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello(Hello<'a>),
    Writes(Writes<'a>),
    Marker(Marker),
    Ack(Vec<AckEntry>),
    Heartbeat { time_unix_ms: u64 },
    Error { code: u16, message: &'a str },
    ChecksumRequest(ChecksumRequest),
    Checksums(Checksums<'a>),
    DiskAttach { disk_id: u32, disk: DiskInfo<'a> },
    DiskState(DiskState),
    StatusRequest,
    Status { json: &'a str },
    Control { json: &'a str },
    Register(Register<'a>),
    Registered { ca: &'a [u8], cert: &'a [u8], proof: &'a [u8] },
}

/// A registration request. `public_key` is the node's new key (an uncompressed P-256
/// point), `signature` its signature over the TLS session's exported key material (proof of
/// possession), `proof` an HMAC of that material keyed by the passphrase (so a relay in the
/// middle, in another TLS session, cannot reuse it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register<'a> {
    pub name: &'a str,
    pub public_key: &'a [u8],
    pub signature: &'a [u8],
    pub proof: &'a [u8],
}

/// Error codes carried by `Error` frames.
pub mod error_code {
    pub const PROTOCOL: u16 = 1;
    pub const VERSION: u16 = 2;
    pub const GENERATION: u16 = 3;
    pub const LIMIT: u16 = 4;
    pub const SEQUENCE: u16 = 5;
    pub const INTERNAL: u16 = 6;
    pub const UNKNOWN_DISK: u16 = 7;
    /// Not now: retry after a pause (e.g. a take-over while the old generation still drains).
    pub const BUSY: u16 = 8;
    /// An operator's `Control` request that cannot be done as asked (unknown point, bad
    /// argument); the message says why.
    pub const REFUSED: u16 = 9;
}

impl Frame<'_> {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Writes(_) => FrameType::Writes,
            Frame::Marker(_) => FrameType::Marker,
            Frame::Ack(_) => FrameType::Ack,
            Frame::Heartbeat { .. } => FrameType::Heartbeat,
            Frame::Error { .. } => FrameType::Error,
            Frame::ChecksumRequest(_) => FrameType::ChecksumRequest,
            Frame::Checksums(_) => FrameType::Checksums,
            Frame::DiskAttach { .. } => FrameType::DiskAttach,
            Frame::DiskState(_) => FrameType::DiskState,
            Frame::StatusRequest => FrameType::StatusRequest,
            Frame::Status { .. } => FrameType::Status,
            Frame::Control { .. } => FrameType::Control,
            Frame::Register(_) => FrameType::Register,
            Frame::Registered { .. } => FrameType::Registered,
        }
    }

    /// Appends the whole frame (header and body) to `out`. Fails, writing nothing, if any field
    /// breaks a protocol limit: we never emit a frame our own decoder would refuse.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.validate()?;
        let start = out.len();
        out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
        self.encode_body(&mut FieldWriter { out });
        let body_len = out.len() - start - FRAME_HEADER_BYTES;
        if body_len > FRAME_BODY_BYTES_MAX {
            out.truncate(start);
            return Err(WireError::FrameTooLarge { len: body_len, max: FRAME_BODY_BYTES_MAX });
        }
        seal_header(&mut out[start..], self.frame_type());
        Ok(())
    }

    fn encode_body(&self, w: &mut FieldWriter<'_>) {
        match self {
            Frame::Hello(hello) => {
                w.u16(hello.version_min);
                w.u16(hello.version_max);
                w.u8(hello.role as u8);
                w.name(hello.product_version);
                w.name(hello.site_id);
                w.name(hello.node_id);
                w.u32(hello.disks.len() as u32);
                for disk in &hello.disks {
                    encode_disk_info(w, disk);
                }
            }
            Frame::Writes(writes) => {
                encode_writes_head(writes, writes.compression, w.out);
                w.bytes(writes.payload);
            }
            Frame::Marker(marker) => {
                w.u32(marker.disk_id);
                w.u64(marker.seq);
                w.u8(marker.kind as u8);
                w.u64(marker.marker_id);
                w.u64(marker.time_unix_ms);
            }
            Frame::Ack(entries) => {
                w.u32(entries.len() as u32);
                for entry in entries {
                    w.u32(entry.disk_id);
                    w.u64(entry.durable_seq);
                    w.u64(entry.replicated_seq);
                }
            }
            Frame::Heartbeat { time_unix_ms } => w.u64(*time_unix_ms),
            Frame::Error { code, message } => {
                w.u16(*code);
                w.text(message);
            }
            Frame::ChecksumRequest(request) => {
                w.u32(request.disk_id);
                w.u64(request.request_id);
                w.u64(request.offset);
                w.u32(request.block_bytes);
                w.u32(request.block_count);
            }
            Frame::Checksums(sums) => {
                w.u32(sums.disk_id);
                w.u64(sums.request_id);
                w.u64(sums.offset);
                w.u32(sums.block_bytes);
                w.u32((sums.sums.len() / CHECKSUM_BYTES) as u32);
                w.bytes(sums.sums);
            }
            Frame::DiskAttach { disk_id, disk } => {
                w.u32(*disk_id);
                encode_disk_info(w, disk);
            }
            Frame::DiskState(state) => {
                w.u32(state.disk_id);
                w.u8(state.state as u8);
                w.u64(state.done_bytes);
                w.u64(state.total_bytes);
            }
            Frame::StatusRequest => {}
            Frame::Status { json } | Frame::Control { json } => w.text(json),
            Frame::Register(register) => {
                w.name(register.name);
                w.blob(register.public_key);
                w.blob(register.signature);
                w.blob(register.proof);
            }
            Frame::Registered { ca, cert, proof } => {
                w.blob(ca);
                w.blob(cert);
                w.blob(proof);
            }
        }
    }

    fn validate(&self) -> Result<(), WireError> {
        match self {
            Frame::Hello(hello) => {
                check_name("Hello.product_version", hello.product_version)?;
                check_name("Hello.site_id", hello.site_id)?;
                check_name("Hello.node_id", hello.node_id)?;
                check_count("Hello.disks", hello.disks.len(), DISKS_PER_HELLO_MAX)?;
                hello.disks.iter().try_for_each(|disk| check_name("DiskInfo.name", disk.name))
            }
            Frame::Writes(writes) => validate_writes(writes),
            Frame::Ack(entries) => check_count("Ack.entries", entries.len(), ACK_ENTRIES_MAX),
            Frame::Error { message, .. } => {
                check_count("Error.message", message.len(), TEXT_BYTES_MAX)
            }
            Frame::ChecksumRequest(request) => validate_checksum_request(request),
            Frame::Checksums(sums) => validate_checksums(sums),
            Frame::DiskAttach { disk, .. } => check_name("DiskInfo.name", disk.name),
            Frame::Status { json } => check_count("Status.json", json.len(), STATUS_JSON_BYTES_MAX),
            Frame::Control { json } => {
                check_count("Control.json", json.len(), STATUS_JSON_BYTES_MAX)
            }
            Frame::Register(register) => {
                check_name("Register.name", register.name)?;
                check_count("Register.public_key", register.public_key.len(), KEY_BYTES_MAX)?;
                check_count("Register.signature", register.signature.len(), KEY_BYTES_MAX)?;
                check_count("Register.proof", register.proof.len(), KEY_BYTES_MAX)
            }
            Frame::Registered { ca, cert, proof } => {
                check_count("Registered.ca", ca.len(), CERTIFICATE_BYTES_MAX)?;
                check_count("Registered.cert", cert.len(), CERTIFICATE_BYTES_MAX)?;
                check_count("Registered.proof", proof.len(), KEY_BYTES_MAX)
            }
            Frame::Marker(_)
            | Frame::Heartbeat { .. }
            | Frame::DiskState(_)
            | Frame::StatusRequest => Ok(()),
        }
    }
}

fn encode_disk_info(w: &mut FieldWriter<'_>, disk: &DiskInfo<'_>) {
    w.name(disk.name);
    w.bytes(&disk.generation);
    w.u64(disk.size_bytes);
    let mut flags = 0;
    if disk.take_over {
        flags |= DISK_FLAG_TAKE_OVER;
    }
    if disk.fresh {
        flags |= DISK_FLAG_FRESH;
    }
    w.u8(flags);
}

/// Fills in magic, type, length and CRC of a frame whose body follows the header in `frame`.
fn seal_header(frame: &mut [u8], frame_type: FrameType) {
    let body_len = (frame.len() - FRAME_HEADER_BYTES) as u32;
    frame[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    frame[4] = frame_type as u8;
    frame[5..8].copy_from_slice(&[0, 0, 0]);
    frame[8..12].copy_from_slice(&body_len.to_le_bytes());
    let crc = frame_crc(&frame[0..12], &frame[FRAME_HEADER_BYTES..]);
    frame[12..16].copy_from_slice(&crc.to_le_bytes());
}

fn frame_crc(header_prefix: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_prefix), body)
}

/// Appends a frame made of an already encoded body. The relay stores disk-scoped frame bodies in
/// its cache and forwards them under a new `disk_id` without decoding the payload.
pub fn encode_raw_frame(
    frame_type: FrameType,
    disk_id: Option<u32>,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    if body.len() > FRAME_BODY_BYTES_MAX {
        return Err(WireError::FrameTooLarge { len: body.len(), max: FRAME_BODY_BYTES_MAX });
    }
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    out.extend_from_slice(body);
    if let Some(disk_id) = disk_id {
        if !frame_type.is_disk_scoped() || body.len() < 4 {
            out.truncate(start);
            return Err(WireError::Invalid {
                field: "disk_id",
                reason: "frame is not disk-scoped",
            });
        }
        let at = start + FRAME_HEADER_BYTES;
        out[at..at + 4].copy_from_slice(&disk_id.to_le_bytes());
    }
    seal_header(&mut out[start..], frame_type);
    Ok(())
}

/// A frame split into its checked header and raw body, before the body is decoded.
#[derive(Debug, Clone, Copy)]
pub struct RawFrame<'a> {
    pub frame_type: FrameType,
    pub body: &'a [u8],
}

impl<'a> RawFrame<'a> {
    pub fn decode(&self) -> Result<Frame<'a>, WireError> {
        decode_body(self.frame_type, self.body)
    }
}

/// Splits one frame off the front of `buf`. `Ok(None)`: more bytes are needed. The header is
/// checked (magic, type, reserved bytes, length limit) before the body is awaited, so a hostile
/// length is refused at once instead of being buffered.
pub fn split_frame(buf: &[u8]) -> Result<Option<(RawFrame<'_>, usize)>, WireError> {
    let Some(header) = buf.get(..FRAME_HEADER_BYTES) else {
        // Check what we already have so garbage is refused without waiting for 16 bytes.
        return check_partial_magic(buf).map(|()| None);
    };
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if magic != FRAME_MAGIC {
        return Err(WireError::BadMagic { found: magic, expected: FRAME_MAGIC });
    }
    let frame_type = FrameType::from_u8(header[4])?;
    if header[5..8] != [0, 0, 0] {
        return Err(WireError::ReservedNotZero);
    }
    let body_len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if body_len > FRAME_BODY_BYTES_MAX {
        return Err(WireError::FrameTooLarge { len: body_len, max: FRAME_BODY_BYTES_MAX });
    }
    let total = FRAME_HEADER_BYTES + body_len;
    let Some(body) = buf.get(FRAME_HEADER_BYTES..total) else {
        return Ok(None);
    };
    let expected = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    let actual = frame_crc(&header[0..12], body);
    if expected != actual {
        return Err(WireError::CrcMismatch { expected, actual });
    }
    Ok(Some((RawFrame { frame_type, body }, total)))
}

fn check_partial_magic(buf: &[u8]) -> Result<(), WireError> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let seen = buf.len().min(4);
    if buf[..seen] != magic[..seen] {
        let mut found = [0u8; 4];
        found[..seen].copy_from_slice(&buf[..seen]);
        return Err(WireError::BadMagic {
            found: u32::from_le_bytes(found),
            expected: FRAME_MAGIC,
        });
    }
    Ok(())
}

/// Splits and decodes one frame off the front of `buf`.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    match split_frame(buf)? {
        None => Ok(None),
        Some((raw, used)) => Ok(Some((raw.decode()?, used))),
    }
}

fn decode_body(frame_type: FrameType, body: &[u8]) -> Result<Frame<'_>, WireError> {
    let mut r = FieldReader::new(body, frame_type.name());
    let frame = match frame_type {
        FrameType::Hello => Frame::Hello(decode_hello(&mut r)?),
        FrameType::Writes => Frame::Writes(decode_writes(&mut r)?),
        FrameType::Marker => Frame::Marker(Marker {
            disk_id: r.u32("disk_id")?,
            seq: r.u64("seq")?,
            kind: match r.u8("kind")? {
                1 => MarkerKind::Crash,
                2 => MarkerKind::App,
                3 => MarkerKind::Group,
                _ => {
                    return Err(WireError::Invalid { field: "Marker.kind", reason: "unknown kind" })
                }
            },
            marker_id: r.u64("marker_id")?,
            time_unix_ms: r.u64("time_unix_ms")?,
        }),
        FrameType::Ack => {
            let count = r.count("Ack.entries", ACK_ENTRIES_MAX)?;
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                entries.push(AckEntry {
                    disk_id: r.u32("disk_id")?,
                    durable_seq: r.u64("durable_seq")?,
                    replicated_seq: r.u64("replicated_seq")?,
                });
            }
            Frame::Ack(entries)
        }
        FrameType::Heartbeat => Frame::Heartbeat { time_unix_ms: r.u64("time_unix_ms")? },
        FrameType::Error => {
            Frame::Error { code: r.u16("code")?, message: r.text("Error.message", TEXT_BYTES_MAX)? }
        }
        FrameType::ChecksumRequest => {
            let request = ChecksumRequest {
                disk_id: r.u32("disk_id")?,
                request_id: r.u64("request_id")?,
                offset: r.u64("offset")?,
                block_bytes: r.u32("block_bytes")?,
                block_count: r.u32("block_count")?,
            };
            validate_checksum_request(&request)?;
            Frame::ChecksumRequest(request)
        }
        FrameType::Checksums => {
            let disk_id = r.u32("disk_id")?;
            let request_id = r.u64("request_id")?;
            let offset = r.u64("offset")?;
            let block_bytes = r.u32("block_bytes")?;
            let count = r.count("Checksums.count", CHECKSUMS_PER_FRAME_MAX)?;
            let sums = r.take(count * CHECKSUM_BYTES, "sums")?;
            Frame::Checksums(Checksums { disk_id, request_id, offset, block_bytes, sums })
        }
        FrameType::DiskAttach => {
            Frame::DiskAttach { disk_id: r.u32("disk_id")?, disk: decode_disk_info(&mut r)? }
        }
        FrameType::DiskState => Frame::DiskState(DiskState {
            disk_id: r.u32("disk_id")?,
            state: match r.u8("state")? {
                1 => DiskStateKind::InitialSync,
                2 => DiskStateKind::Resyncing,
                3 => DiskStateKind::Protected,
                4 => DiskStateKind::Paused,
                5 => DiskStateKind::Synced,
                6 => DiskStateKind::Disconnected,
                _ => {
                    return Err(WireError::Invalid {
                        field: "DiskState.state",
                        reason: "unknown state",
                    })
                }
            },
            done_bytes: r.u64("done_bytes")?,
            total_bytes: r.u64("total_bytes")?,
        }),
        FrameType::StatusRequest => Frame::StatusRequest,
        FrameType::Status => Frame::Status { json: r.text("Status.json", STATUS_JSON_BYTES_MAX)? },
        FrameType::Control => {
            Frame::Control { json: r.text("Control.json", STATUS_JSON_BYTES_MAX)? }
        }
        FrameType::Register => {
            let name = r.name("Register.name")?;
            check_name("Register.name", name)?;
            Frame::Register(Register {
                name,
                public_key: r.blob("Register.public_key", KEY_BYTES_MAX)?,
                signature: r.blob("Register.signature", KEY_BYTES_MAX)?,
                proof: r.blob("Register.proof", KEY_BYTES_MAX)?,
            })
        }
        FrameType::Registered => Frame::Registered {
            ca: r.blob("Registered.ca", CERTIFICATE_BYTES_MAX)?,
            cert: r.blob("Registered.cert", CERTIFICATE_BYTES_MAX)?,
            proof: r.blob("Registered.proof", KEY_BYTES_MAX)?,
        },
    };
    r.finish()?;
    Ok(frame)
}

fn decode_disk_info<'a>(r: &mut FieldReader<'a>) -> Result<DiskInfo<'a>, WireError> {
    let name = r.name("DiskInfo.name")?;
    check_name("DiskInfo.name", name)?;
    let generation = r.array("DiskInfo.generation")?;
    let size_bytes = r.u64("DiskInfo.size")?;
    let flags = r.u8("DiskInfo.flags")?;
    if flags & !(DISK_FLAG_TAKE_OVER | DISK_FLAG_FRESH) != 0 {
        return Err(WireError::Invalid { field: "DiskInfo.flags", reason: "unknown flag bits" });
    }
    Ok(DiskInfo {
        name,
        generation,
        size_bytes,
        take_over: flags & DISK_FLAG_TAKE_OVER != 0,
        fresh: flags & DISK_FLAG_FRESH != 0,
    })
}

fn decode_hello<'a>(r: &mut FieldReader<'a>) -> Result<Hello<'a>, WireError> {
    let version_min = r.u16("version_min")?;
    let version_max = r.u16("version_max")?;
    let role = Role::from_u8(r.u8("role")?)?;
    let product_version = r.name("product_version")?;
    let site_id = r.name("site_id")?;
    let node_id = r.name("node_id")?;
    let count = r.count("Hello.disks", DISKS_PER_HELLO_MAX)?;
    let mut disks = Vec::with_capacity(count);
    for _ in 0..count {
        disks.push(decode_disk_info(r)?);
    }
    Ok(Hello { version_min, version_max, role, product_version, site_id, node_id, disks })
}

fn decode_writes<'a>(r: &mut FieldReader<'a>) -> Result<Writes<'a>, WireError> {
    let disk_id = r.u32("disk_id")?;
    let seq = r.u64("seq")?;
    let compression = match r.u8("compression")? {
        0 => Compression::None,
        1 => Compression::Zstd,
        _ => {
            return Err(WireError::Invalid { field: "Writes.compression", reason: "unknown codec" })
        }
    };
    if r.u8("reserved")? != 0 || r.u16("reserved")? != 0 {
        return Err(WireError::ReservedNotZero);
    }
    let data_len = r.u32("data_len")?;
    let count = r.count("Writes.extents", EXTENTS_PER_WRITES_MAX)?;
    let mut extents = Vec::with_capacity(count);
    for _ in 0..count {
        let extent = Extent {
            offset: r.u64("extent.offset")?,
            len: r.u32("extent.len")?,
            flags: r.u8("extent.flags")?,
        };
        if r.take(3, "extent.reserved")? != [0, 0, 0] {
            return Err(WireError::ReservedNotZero);
        }
        extents.push(extent);
    }
    let writes = Writes { disk_id, seq, compression, data_len, extents, payload: r.rest() };
    validate_writes(&writes)?;
    Ok(writes)
}

fn validate_writes(writes: &Writes<'_>) -> Result<(), WireError> {
    validate_writes_head(writes)?;
    match writes.compression {
        Compression::None if writes.payload.len() != writes.data_len as usize => {
            Err(WireError::Invalid {
                field: "Writes.payload",
                reason: "length differs from data_len",
            })
        }
        Compression::Zstd
            if writes.payload.is_empty() || writes.payload.len() > WRITE_PAYLOAD_BYTES_MAX =>
        {
            Err(WireError::Invalid {
                field: "Writes.payload",
                reason: "compressed payload empty or over limit",
            })
        }
        _ => Ok(()),
    }
}

/// Everything about a `Writes` frame but its payload: extents and `data_len`.
fn validate_writes_head(writes: &Writes<'_>) -> Result<(), WireError> {
    check_count("Writes.extents", writes.extents.len(), EXTENTS_PER_WRITES_MAX)?;
    check_count("Writes.data_len", writes.data_len as usize, WRITE_PAYLOAD_BYTES_MAX)?;
    let mut data_len: u64 = 0;
    for extent in &writes.extents {
        if extent.len == 0 {
            return Err(WireError::Invalid { field: "extent.len", reason: "zero-length extent" });
        }
        if extent.flags & !EXTENT_FLAGS_KNOWN != 0 {
            return Err(WireError::Invalid { field: "extent.flags", reason: "unknown flag bits" });
        }
        if extent.offset.checked_add(u64::from(extent.len)).is_none() {
            return Err(WireError::Invalid {
                field: "extent.offset",
                reason: "extent ends past 2^64",
            });
        }
        if extent.has_payload() {
            data_len += u64::from(extent.len);
        }
    }
    if data_len != u64::from(writes.data_len) {
        return Err(WireError::Invalid {
            field: "Writes.data_len",
            reason: "does not equal the sum of data extents",
        });
    }
    Ok(())
}

fn validate_checksum_request(request: &ChecksumRequest) -> Result<(), WireError> {
    if request.block_bytes == 0 || request.block_bytes > CHECKSUM_BLOCK_BYTES_MAX {
        return Err(WireError::OverLimit {
            field: "ChecksumRequest.block_bytes",
            value: u64::from(request.block_bytes),
            max: u64::from(CHECKSUM_BLOCK_BYTES_MAX),
        });
    }
    check_count(
        "ChecksumRequest.block_count",
        request.block_count as usize,
        CHECKSUMS_PER_FRAME_MAX,
    )
}

fn validate_checksums(sums: &Checksums<'_>) -> Result<(), WireError> {
    if !sums.sums.len().is_multiple_of(CHECKSUM_BYTES) {
        return Err(WireError::Invalid {
            field: "Checksums.sums",
            reason: "not a whole number of checksums",
        });
    }
    check_count("Checksums.count", sums.sums.len() / CHECKSUM_BYTES, CHECKSUMS_PER_FRAME_MAX)
}

fn check_name(field: &'static str, value: &str) -> Result<(), WireError> {
    check_count(field, value.len(), NAME_BYTES_MAX)
}

fn check_count(field: &'static str, value: usize, max: usize) -> Result<(), WireError> {
    if value > max {
        return Err(WireError::OverLimit { field, value: value as u64, max: max as u64 });
    }
    Ok(())
}

/// Picks the highest protocol version both sides speak.
pub fn negotiate_version(peer_min: u16, peer_max: u16) -> Result<u16, WireError> {
    let low = peer_min.max(PROTOCOL_VERSION_MIN);
    let high = peer_max.min(PROTOCOL_VERSION_MAX);
    if low > high || peer_min > peer_max {
        return Err(WireError::IncompatibleVersion {
            ours_min: PROTOCOL_VERSION_MIN,
            ours_max: PROTOCOL_VERSION_MAX,
            theirs_min: peer_min,
            theirs_max: peer_max,
        });
    }
    Ok(high)
}

/// Reads `disk_id` and the following u64 (`seq` of `Writes`/`Marker`, `request_id` of checksum
/// frames) from a disk-scoped body without decoding the rest.
pub fn disk_scoped_prefix(body: &[u8]) -> Result<(u32, u64), WireError> {
    let mut r = FieldReader::new(body, "disk-scoped");
    Ok((r.u32("disk_id")?, r.u64("seq")?))
}

/// Appends a `Writes` body without its payload, declaring `compression`: the caller appends
/// the payload (raw, or compressed straight into `out`). `writes` must come from a decoded or
/// validated frame; the payload the caller appends must match `compression` and `data_len`.
pub fn encode_writes_head(writes: &Writes<'_>, compression: Compression, out: &mut Vec<u8>) {
    let mut w = FieldWriter { out };
    w.u32(writes.disk_id);
    w.u64(writes.seq);
    w.u8(compression as u8);
    w.u8(0);
    w.u16(0);
    w.u32(writes.data_len);
    w.u32(writes.extents.len() as u32);
    for extent in &writes.extents {
        w.u64(extent.offset);
        w.u32(extent.len);
        w.u8(extent.flags);
        w.bytes(&[0, 0, 0]);
    }
}

/// Stores a disk-scoped frame body together with the disk it belongs to, so that a cache record
/// stays meaningful after the connection that sent it is gone: `DiskInfo ++ frame body`.
pub fn encode_stored(
    disk: &DiskInfo<'_>,
    frame_body: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    check_name("DiskInfo.name", disk.name)?;
    encode_disk_info(&mut FieldWriter { out }, disk);
    out.extend_from_slice(frame_body);
    Ok(())
}

/// Splits a body made by `encode_stored`.
pub fn decode_stored(body: &[u8]) -> Result<(DiskInfo<'_>, &[u8]), WireError> {
    let mut r = FieldReader::new(body, "stored");
    let disk = decode_disk_info(&mut r)?;
    Ok((disk, r.rest()))
}

/// A generation as 32 lowercase hex digits, the form state files and logs use.
pub fn generation_to_hex(generation: &Generation) -> String {
    generation.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Parses `generation_to_hex` output; `None` unless exactly 32 hex digits.
pub fn generation_from_hex(text: &str) -> Option<Generation> {
    if text.len() != 32 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// An uncompressed `Writes` frame built in place, its payload appended piece by piece: the
/// agent copies each captured write once, straight into the frame it sends.
#[derive(Debug)]
pub struct WritesFrame<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
    data_len: usize,
    appended: usize,
}

impl<'o> WritesFrame<'o> {
    /// Writes the frame's head for `extents` (validated as the decoder would); the caller then
    /// appends exactly the data of the payload-bearing extents, in order, and calls `finish`.
    pub fn begin(
        disk_id: u32,
        seq: u64,
        extents: Vec<Extent>,
        out: &'o mut Vec<u8>,
    ) -> Result<WritesFrame<'o>, WireError> {
        let data_len: u64 =
            extents.iter().filter(|extent| extent.has_payload()).map(|e| u64::from(e.len)).sum();
        check_count("Writes.data_len", data_len as usize, WRITE_PAYLOAD_BYTES_MAX)?;
        let writes = Writes {
            disk_id,
            seq,
            compression: Compression::None,
            data_len: data_len as u32,
            extents,
            payload: &[],
        };
        // The payload is checked by `append` and `finish`.
        validate_writes_head(&writes)?;
        let start = out.len();
        out.reserve(FRAME_HEADER_BYTES + 32 + writes.extents.len() * 16 + data_len as usize);
        out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
        encode_writes_head(&writes, Compression::None, out);
        Ok(WritesFrame { out, start, data_len: data_len as usize, appended: 0 })
    }

    pub fn append(&mut self, data: &[u8]) {
        assert!(self.appended + data.len() <= self.data_len, "more payload than the extents");
        self.out.extend_from_slice(data);
        self.appended += data.len();
    }

    pub fn finish(self) {
        assert_eq!(self.appended, self.data_len, "payload shorter than the extents");
        seal_header(&mut self.out[self.start..], FrameType::Writes);
    }
}
