//! The embedded text descriptor.

use crate::{VmdkOptions, VmdkWriteError};

/// A BIOS geometry for the descriptor's `ddb.geometry.*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders: the capacity divided by heads × sectors, rounded down, at least 1.
    pub cylinders: u64,
    /// Heads per cylinder.
    pub heads: u32,
    /// Sectors per track.
    pub sectors: u32,
}

/// The geometry VMware gives a SCSI (LSI Logic, BusLogic) disk of `capacity_sectors`:
/// 64 heads × 32 sectors under 1 GiB, 128 × 32 under 2 GiB, 255 × 63 from 2 GiB on; the
/// cylinders are what fits (rounded down, at least 1; not capped, as for SCSI disks).
pub fn geometry(capacity_sectors: u64) -> Geometry {
    const GIB_SECTORS: u64 = (1 << 30) / 512;
    let (heads, sectors) = if capacity_sectors < GIB_SECTORS {
        (64, 32)
    } else if capacity_sectors < 2 * GIB_SECTORS {
        (128, 32)
    } else {
        (255, 63)
    };
    let cylinders = (capacity_sectors / (u64::from(heads) * u64::from(sectors))).max(1);
    Geometry { cylinders, heads, sectors }
}

/// Check that `name` can stand between the quotes of an extent line.
pub(crate) fn check_file_name(name: &str) -> Result<(), VmdkWriteError> {
    let bad = |why| Err(VmdkWriteError::FileName { name: name.to_string(), why });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 255 {
        return bad("it is longer than 255 bytes");
    }
    if name.contains(['/', '\\']) {
        return bad("it contains a path separator (the extent is the file itself)");
    }
    if name.contains('"') {
        return bad("it contains a double quote");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains a control character");
    }
    Ok(())
}

/// FNV-1a, 32 bits.
fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in parts {
        for &b in *part {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// The descriptor text of an image of `capacity_sectors` and `create_type`.
pub(crate) fn descriptor(
    create_type: &str,
    capacity_sectors: u64,
    opts: &VmdkOptions,
) -> Result<String, VmdkWriteError> {
    check_file_name(&opts.file_name)?;
    let cid = opts.cid.unwrap_or_else(|| {
        let h = fnv1a(&[
            create_type.as_bytes(),
            &capacity_sectors.to_le_bytes(),
            opts.file_name.as_bytes(),
        ]);
        // ffffffff reads as "no content id" next to parentCID; keep clear of it.
        if h == u32::MAX {
            0xfffffffe
        } else {
            h
        }
    });
    let g = geometry(capacity_sectors);
    Ok(format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         encoding=\"UTF-8\"\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"{create_type}\"\n\
         \n\
         # Extent description\n\
         RW {capacity_sectors} SPARSE \"{name}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.virtualHWVersion = \"{hw}\"\n\
         ddb.geometry.cylinders = \"{c}\"\n\
         ddb.geometry.heads = \"{h}\"\n\
         ddb.geometry.sectors = \"{s}\"\n\
         ddb.adapterType = \"lsilogic\"\n",
        name = opts.file_name,
        hw = opts.virtual_hw_version,
        c = g.cylinders,
        h = g.heads,
        s = g.sectors,
    ))
}
