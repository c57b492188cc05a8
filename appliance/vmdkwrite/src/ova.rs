//! OVA packaging (DSP0243): a ustar archive holding the OVF descriptor first, then the
//! disk, then the manifest (`.mf`: `SHA256(file)= hex` for every other file). `verify_ova`
//! reads one back and checks the order, the manifest's hashes and the descriptor's
//! references, with a precise error for a truncated or tampered archive.

use std::io::{self, Write};

const BLOCK: usize = 512;
/// Longest member name a plain ustar header holds.
const NAME_MAX: usize = 100;
/// Members in an OVA read back (descriptor, disks, manifest, certificate).
const MEMBERS_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OvaError {
    #[error(
        "ova: truncated: the member at byte {at} needs {needed} bytes, the archive has {have}"
    )]
    Truncated { at: usize, needed: usize, have: usize },
    #[error("ova: the header at byte {at} is not a ustar header (bad checksum or magic)")]
    BadHeader { at: usize },
    #[error("ova: member {name:?} has an unusable name or type")]
    BadMember { name: String },
    #[error("ova: the first member is {first:?}; an OVA starts with its .ovf descriptor")]
    DescriptorNotFirst { first: String },
    #[error("ova: no .mf manifest")]
    NoManifest,
    #[error("ova: {name} has sha256 {actual}, the manifest says {listed}")]
    HashMismatch { name: String, actual: String, listed: String },
    #[error("ova: {name} is not in the manifest")]
    NotInManifest { name: String },
    #[error("ova: the manifest lists {name}, which the archive does not hold")]
    MissingMember { name: String },
    #[error("ova: the descriptor references {name} of {listed} bytes; the archive holds {actual}")]
    SizeMismatch { name: String, listed: u64, actual: u64 },
    #[error("ova: more than {MEMBERS_MAX} members")]
    TooManyMembers,
    #[error("ova: malformed manifest line {line:?}")]
    BadManifestLine { line: String },
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The manifest of `files`: one `SHA256(name)= hex` line each.
pub fn manifest(files: &[(&str, &[u8])]) -> String {
    files.iter().map(|(name, bytes)| format!("SHA256({name})= {}\n", sha256_hex(bytes))).collect()
}

fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}", width = field.len() - 1);
    field[..text.len()].copy_from_slice(text.as_bytes());
    field[text.len()] = 0;
}

/// Writes `files` in order as a ustar archive (names at most 100 bytes).
pub fn write_ova<W: Write>(out: &mut W, files: &[(&str, &[u8])]) -> io::Result<()> {
    for (name, bytes) in files {
        if name.is_empty() || name.len() > NAME_MAX || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad OVA member name {name:?}"),
            ));
        }
        let mut header = [0u8; BLOCK];
        header[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut header[100..108], 0o644);
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], bytes.len() as u64);
        octal(&mut header[136..148], 0);
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u64 = header.iter().map(|&byte| u64::from(byte)).sum();
        let text = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(text.as_bytes());
        out.write_all(&header)?;
        out.write_all(bytes)?;
        let pad = (BLOCK - bytes.len() % BLOCK) % BLOCK;
        out.write_all(&vec![0u8; pad])?;
    }
    out.write_all(&[0u8; 2 * BLOCK])
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let text: String = field
        .iter()
        .take_while(|&&byte| byte != 0)
        .map(|&byte| byte as char)
        .collect::<String>()
        .trim()
        .to_string();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(&text, 8).ok()
}

/// The members of a ustar archive, in order.
pub fn read_ova(bytes: &[u8]) -> Result<Vec<(String, &[u8])>, OvaError> {
    let mut members = Vec::new();
    let mut at = 0usize;
    loop {
        let header = bytes.get(at..at + BLOCK).ok_or(OvaError::Truncated {
            at,
            needed: BLOCK,
            have: bytes.len().saturating_sub(at),
        })?;
        if header.iter().all(|&byte| byte == 0) {
            return Ok(members);
        }
        let stored = parse_octal(&header[148..156]);
        let mut copy = [0u8; BLOCK];
        copy.copy_from_slice(header);
        copy[148..156].copy_from_slice(b"        ");
        let sum: u64 = copy.iter().map(|&byte| u64::from(byte)).sum();
        if stored != Some(sum) || &header[257..262] != b"ustar" {
            return Err(OvaError::BadHeader { at });
        }
        let name_end = header[..NAME_MAX].iter().position(|&byte| byte == 0).unwrap_or(NAME_MAX);
        let name = String::from_utf8_lossy(&header[..name_end]).to_string();
        let size = parse_octal(&header[124..136])
            .ok_or_else(|| OvaError::BadMember { name: name.clone() })?;
        if !(header[156] == b'0' || header[156] == 0) || name.is_empty() || name.contains('/') {
            return Err(OvaError::BadMember { name });
        }
        let start = at + BLOCK;
        let size = usize::try_from(size).map_err(|_| OvaError::BadMember { name: name.clone() })?;
        let data = bytes.get(start..start.saturating_add(size)).ok_or(OvaError::Truncated {
            at: start,
            needed: size,
            have: bytes.len().saturating_sub(start),
        })?;
        members.push((name, data));
        if members.len() > MEMBERS_MAX {
            return Err(OvaError::TooManyMembers);
        }
        at = start + size.div_ceil(BLOCK) * BLOCK;
    }
}

/// Checks an OVA: descriptor first, a manifest covering every other member with matching
/// hashes, and the descriptor's file references present with their sizes. Returns the
/// member names in order.
pub fn verify_ova(bytes: &[u8]) -> Result<Vec<String>, OvaError> {
    let members = read_ova(bytes)?;
    let first = members.first().map(|(name, _)| name.clone()).unwrap_or_default();
    if !first.ends_with(".ovf") {
        return Err(OvaError::DescriptorNotFirst { first });
    }
    let (_, manifest) =
        members.iter().find(|(name, _)| name.ends_with(".mf")).ok_or(OvaError::NoManifest)?;
    let mut listed = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(manifest).lines().filter(|line| !line.trim().is_empty()) {
        let parsed = line
            .strip_prefix("SHA256(")
            .and_then(|rest| rest.split_once(")= "))
            .ok_or_else(|| OvaError::BadManifestLine { line: line.to_string() })?;
        listed.insert(parsed.0.to_string(), parsed.1.trim().to_string());
    }
    for (name, data) in members.iter().filter(|(name, _)| !name.ends_with(".mf")) {
        let hash =
            listed.get(name).ok_or_else(|| OvaError::NotInManifest { name: name.clone() })?;
        let actual = sha256_hex(data);
        if &actual != hash {
            return Err(OvaError::HashMismatch {
                name: name.clone(),
                actual,
                listed: hash.clone(),
            });
        }
    }
    for name in listed.keys() {
        if !members.iter().any(|(member, _)| member == name) {
            return Err(OvaError::MissingMember { name: name.clone() });
        }
    }
    let descriptor = String::from_utf8_lossy(members[0].1).to_string();
    for reference in descriptor.split("<File ").skip(1) {
        let attribute = |key: &str| {
            reference.split(&format!("{key}=\"")).nth(1).and_then(|rest| rest.split('"').next())
        };
        if let (Some(href), Some(size)) = (attribute("ovf:href"), attribute("ovf:size")) {
            let listed: u64 = size.parse().unwrap_or(u64::MAX);
            let actual = members
                .iter()
                .find(|(name, _)| name == href)
                .map(|(_, data)| data.len() as u64)
                .ok_or_else(|| OvaError::MissingMember { name: href.to_string() })?;
            if actual != listed {
                return Err(OvaError::SizeMismatch { name: href.to_string(), listed, actual });
            }
        }
    }
    Ok(members.into_iter().map(|(name, _)| name).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let disk = vec![7u8; 1000];
        let ovf = format!("<Envelope><References><File ovf:href=\"a.vmdk\" ovf:id=\"file1\" ovf:size=\"{}\"/></References></Envelope>", disk.len());
        let mf = manifest(&[("a.ovf", ovf.as_bytes()), ("a.vmdk", &disk)]);
        let mut out = Vec::new();
        write_ova(
            &mut out,
            &[("a.ovf", ovf.as_bytes()), ("a.vmdk", &disk), ("a.mf", mf.as_bytes())],
        )
        .unwrap();
        out
    }

    #[test]
    fn a_written_ova_verifies_and_tampering_is_named() {
        let ova = sample();
        assert_eq!(verify_ova(&ova).unwrap(), ["a.ovf", "a.vmdk", "a.mf"]);
        let truncated = &ova[..ova.len() - 2048];
        assert!(
            matches!(verify_ova(truncated), Err(OvaError::Truncated { .. })),
            "{:?}",
            verify_ova(truncated)
        );
        let mut flipped = ova.clone();
        flipped[1536 + 10] ^= 1; // inside a.vmdk's data
        assert!(matches!(verify_ova(&flipped), Err(OvaError::HashMismatch { .. })));
        let mut header = ova.clone();
        header[3] ^= 1;
        assert_eq!(verify_ova(&header), Err(OvaError::BadHeader { at: 0 }));
    }

    #[test]
    fn reading_arbitrary_bytes_never_panics() {
        let ova = sample();
        for cut in (0..ova.len()).step_by(97) {
            let _ = verify_ova(&ova[..cut]);
        }
        let mut state = 0x1234_5678u64;
        for _ in 0..200 {
            let mut mutated = ova.clone();
            for _ in 0..8 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let at = (state >> 33) as usize % mutated.len();
                mutated[at] = (state >> 17) as u8;
            }
            let _ = verify_ova(&mutated);
        }
    }
}
