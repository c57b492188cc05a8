//! The text descriptor (VMDK 5.0 spec §"The Descriptor File"): header keys, extent lines and
//! the disk database. Pure: bytes in, checked values out.
//!
//! Lines are `key = value` (value optionally in double quotes), extent lines
//! `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`, comments (`#`) and blank lines; anything else is
//! an error. Unknown keys (the `ddb.*` disk database, `changeTrackPath`, ...) are ignored,
//! except encryption keys, which refuse the disk.

use std::fmt;

use crate::error::{shown, VmdkError};
use crate::{CAPACITY_MAX_BYTES, DESCRIPTOR_MAX, EXTENTS_MAX, SECTOR};

/// `CID` / `parentCID` value meaning "none".
pub(crate) const CID_NONE: u32 = 0xffff_ffff;

/// A supported `createType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CreateType {
    MonolithicSparse,
    TwoGbMaxExtentSparse,
    MonolithicFlat,
    TwoGbMaxExtentFlat,
    StreamOptimized,
    /// ESXi flat disk (`-flat.vmdk` with `VMFS` extents).
    Vmfs,
}

impl CreateType {
    const ALL: [CreateType; 6] = [
        CreateType::MonolithicSparse,
        CreateType::TwoGbMaxExtentSparse,
        CreateType::MonolithicFlat,
        CreateType::TwoGbMaxExtentFlat,
        CreateType::StreamOptimized,
        CreateType::Vmfs,
    ];

    /// The name as written in descriptors.
    pub fn as_str(self) -> &'static str {
        match self {
            CreateType::MonolithicSparse => "monolithicSparse",
            CreateType::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            CreateType::MonolithicFlat => "monolithicFlat",
            CreateType::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            CreateType::StreamOptimized => "streamOptimized",
            CreateType::Vmfs => "vmfs",
        }
    }

    /// Parses a create type, case-insensitively. `Err(true)` for a known but unsupported type,
    /// `Err(false)` for an unknown one.
    fn parse(value: &str) -> Result<CreateType, bool> {
        if let Some(t) = CreateType::ALL.iter().find(|t| t.as_str().eq_ignore_ascii_case(value)) {
            return Ok(*t);
        }
        const KNOWN_UNSUPPORTED: &[&str] = &[
            "vmfsSparse",
            "vmfsThin",
            "seSparse",
            "vmfsRaw",
            "vmfsRawDeviceMap",
            "vmfsPassthroughRawDeviceMap",
            "vmfsPreallocated",
            "vmfsEagerZeroedThick",
            "fullDevice",
            "partitionedDevice",
            "custom",
            "monolithicSparseCompressed",
        ];
        Err(KNOWN_UNSUPPORTED.iter().any(|t| t.eq_ignore_ascii_case(value)))
    }
}

impl fmt::Display for CreateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An extent line's access mode. All three are read alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
    NoAccess,
}

/// A supported extent type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentType {
    /// A hosted sparse ("KDMV") file, possibly streamOptimized.
    Sparse,
    /// A raw file from a sector offset.
    Flat,
    /// ESXi's flat file; read like `Flat`.
    Vmfs,
    /// No file: reads as zeros.
    Zero,
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    pub access: Access,
    /// Sectors of disk the extent covers.
    pub sectors: u64,
    pub kind: ExtentType,
    /// File name as written (relative to the descriptor's directory); `None` for `ZERO`.
    pub file: Option<String>,
    /// Start within the file, in sectors (flat extents only; 0 otherwise).
    pub offset: u64,
}

/// A checked descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Descriptor `version` (1 if absent).
    pub version: u32,
    /// Content ID; `None` if absent.
    pub cid: Option<u32>,
    /// The parent's content ID; `None` when absent or `ffffffff` (no parent).
    pub parent_cid: Option<u32>,
    pub create_type: CreateType,
    pub parent_file_name_hint: Option<String>,
    /// At least one; their sectors sum to at most [`CAPACITY_MAX_BYTES`].
    pub extents: Vec<ExtentLine>,
}

impl Descriptor {
    /// Total sectors of the extents.
    pub fn capacity_sectors(&self) -> u64 {
        self.extents.iter().map(|e| e.sectors).sum()
    }

    /// Parses a descriptor: a whole descriptor file or an embedded descriptor area (which ends
    /// at its first NUL byte). `file` only names the descriptor in errors.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Descriptor, VmdkError> {
        if bytes.len() as u64 > DESCRIPTOR_MAX {
            return Err(VmdkError::DescriptorTooLong {
                file: shown(file),
                len: bytes.len() as u64,
            });
        }
        let bytes = match bytes.iter().position(|&b| b == 0) {
            Some(end) => &bytes[..end],
            None => bytes,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| VmdkError::DescriptorNotText {
            file: shown(file),
            offset: e.valid_up_to(),
        })?;

        let mut version: Option<(usize, &str)> = None;
        let mut cid: Option<(usize, &str)> = None;
        let mut parent_cid: Option<(usize, &str)> = None;
        let mut create_type: Option<(usize, &str)> = None;
        let mut hint: Option<(usize, &str)> = None;
        let mut extents = Vec::new();
        let mut sectors_total: u64 = 0;

        for (index, raw) in text.split('\n').enumerate() {
            let number = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_ascii_whitespace().next().unwrap_or("");
            if let Some(access) = parse_access(first) {
                if extents.len() >= EXTENTS_MAX {
                    return Err(VmdkError::TooManyExtents { file: shown(file) });
                }
                let extent = parse_extent(file, number, access, line[first.len()..].trim_start())?;
                sectors_total = sectors_total
                    .checked_add(extent.sectors)
                    .filter(|&s| {
                        u128::from(s) * u128::from(SECTOR) <= u128::from(CAPACITY_MAX_BYTES)
                    })
                    .ok_or_else(|| VmdkError::CapacityTooLarge {
                        file: shown(file),
                        bytes: (u128::from(sectors_total) + u128::from(extent.sectors))
                            * u128::from(SECTOR),
                    })?;
                extents.push(extent);
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(VmdkError::syntax(
                    file,
                    number,
                    "neither a key = value line, an extent line nor a comment",
                ));
            };
            let key = key.trim();
            let value = unquote(file, number, value.trim())?;
            if key.is_empty() {
                return Err(VmdkError::syntax(file, number, "empty key"));
            }
            let lower = key.to_ascii_lowercase();
            if lower.starts_with("ddb.encryption")
                || lower.starts_with("encryption.")
                || lower == "encryption"
            {
                return Err(VmdkError::Encrypted { file: shown(file), key: key.to_owned() });
            }
            let slot = match key {
                "version" => &mut version,
                "CID" => &mut cid,
                "parentCID" => &mut parent_cid,
                "createType" => &mut create_type,
                "parentFileNameHint" => &mut hint,
                _ => continue,
            };
            if slot.is_some() {
                return Err(VmdkError::DuplicateKey {
                    file: shown(file),
                    line: number,
                    key: key.to_owned(),
                });
            }
            *slot = Some((number, value));
        }

        let version = match version {
            None => 1,
            Some((_, v)) => match v.parse::<u32>() {
                Ok(n @ 1..=3) => n,
                _ => {
                    return Err(VmdkError::UnsupportedDescriptorVersion {
                        file: shown(file),
                        version: format!("{v:?}"),
                    })
                }
            },
        };
        let Some((_, create_type)) = create_type else {
            return Err(VmdkError::MissingKey { file: shown(file), key: "createType" });
        };
        let create_type = CreateType::parse(create_type).map_err(|known| {
            let (file, create_type) = (shown(file), create_type.to_owned());
            if known {
                VmdkError::UnsupportedCreateType { file, create_type }
            } else {
                VmdkError::UnknownCreateType { file, create_type }
            }
        })?;
        let cid = cid.map(|(line, v)| parse_cid(file, line, "CID", v)).transpose()?;
        let parent_cid = parent_cid
            .map(|(line, v)| parse_cid(file, line, "parentCID", v))
            .transpose()?
            .filter(|&c| c != CID_NONE);
        let hint = match hint {
            Some((line, "")) => {
                return Err(VmdkError::syntax(file, line, "parentFileNameHint is empty"))
            }
            Some((_, h)) => Some(h.to_owned()),
            None => None,
        };
        match (&hint, parent_cid) {
            (Some(h), None) => {
                return Err(VmdkError::BadParentLink {
                    file: shown(file),
                    reason: format!(
                        "descriptor names parent {:?} but has no parentCID (or ffffffff)",
                        h
                    ),
                })
            }
            (None, Some(p)) => {
                return Err(VmdkError::BadParentLink {
                    file: shown(file),
                    reason: format!("descriptor has parentCID={p:08x} but no parentFileNameHint"),
                })
            }
            _ => {}
        }
        if extents.is_empty() {
            return Err(VmdkError::NoExtents { file: shown(file) });
        }
        Ok(Descriptor {
            version,
            cid,
            parent_cid,
            create_type,
            parent_file_name_hint: hint,
            extents,
        })
    }
}

fn parse_access(token: &str) -> Option<Access> {
    match token {
        "RW" => Some(Access::ReadWrite),
        "RDONLY" => Some(Access::ReadOnly),
        "NOACCESS" => Some(Access::NoAccess),
        _ => None,
    }
}

fn unquote<'a>(file: &str, line: usize, value: &'a str) -> Result<&'a str, VmdkError> {
    match value.strip_prefix('"') {
        None => Ok(value),
        Some(rest) => match rest.strip_suffix('"') {
            Some(inner) if !inner.contains('"') => Ok(inner),
            _ => Err(VmdkError::syntax(file, line, "unbalanced double quotes in value")),
        },
    }
}

fn parse_cid(file: &str, line: usize, key: &str, value: &str) -> Result<u32, VmdkError> {
    let ok = !value.is_empty() && value.len() <= 8 && value.bytes().all(|b| b.is_ascii_hexdigit());
    match u32::from_str_radix(value, 16) {
        Ok(cid) if ok => Ok(cid),
        _ => {
            Err(VmdkError::syntax(file, line, format!("{key} {value:?} is not 1 to 8 hex digits")))
        }
    }
}

fn parse_decimal(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// `rest` is the extent line after its access token.
fn parse_extent(
    file: &str,
    line: usize,
    access: Access,
    rest: &str,
) -> Result<ExtentLine, VmdkError> {
    let (sectors, rest) = rest.split_once(|c: char| c.is_ascii_whitespace()).unwrap_or((rest, ""));
    let sectors = parse_decimal(sectors).ok_or_else(|| {
        VmdkError::syntax(file, line, format!("extent size {sectors:?} is not a number of sectors"))
    })?;
    let rest = rest.trim_start();
    let (kind_token, rest) =
        rest.split_once(|c: char| c.is_ascii_whitespace()).unwrap_or((rest, ""));
    let kind = match kind_token {
        "SPARSE" => ExtentType::Sparse,
        "FLAT" => ExtentType::Flat,
        "VMFS" => ExtentType::Vmfs,
        "ZERO" => ExtentType::Zero,
        "" => return Err(VmdkError::syntax(file, line, "extent line has no extent type")),
        other => {
            return Err(VmdkError::UnsupportedExtentType {
                file: shown(file),
                line,
                kind: other.to_owned(),
            })
        }
    };
    let rest = rest.trim();
    let (name, rest) = if rest.is_empty() {
        (None, "")
    } else {
        let Some(quoted) = rest.strip_prefix('"') else {
            return Err(VmdkError::syntax(file, line, "extent file name must be in double quotes"));
        };
        let Some((name, rest)) = quoted.split_once('"') else {
            return Err(VmdkError::syntax(
                file,
                line,
                "extent file name has no closing double quote",
            ));
        };
        if name.is_empty() {
            return Err(VmdkError::syntax(file, line, "extent file name is empty"));
        }
        (Some(name.to_owned()), rest.trim())
    };
    let offset = if rest.is_empty() {
        0
    } else {
        parse_decimal(rest).ok_or_else(|| {
            VmdkError::syntax(
                file,
                line,
                format!("extent offset {rest:?} is not a number of sectors"),
            )
        })?
    };
    match (kind, &name) {
        (ExtentType::Zero, Some(_)) => {
            return Err(VmdkError::syntax(file, line, "a ZERO extent takes no file name"))
        }
        (ExtentType::Sparse | ExtentType::Flat | ExtentType::Vmfs, None) => {
            return Err(VmdkError::syntax(file, line, "extent has no file name"))
        }
        _ => {}
    }
    if offset != 0 && !matches!(kind, ExtentType::Flat | ExtentType::Vmfs) {
        return Err(VmdkError::syntax(file, line, "only FLAT and VMFS extents take an offset"));
    }
    if offset.checked_mul(SECTOR).is_none() {
        return Err(VmdkError::syntax(
            file,
            line,
            format!("extent offset {offset} is out of range"),
        ));
    }
    Ok(ExtentLine { access, sectors, kind, file: name, offset })
}
