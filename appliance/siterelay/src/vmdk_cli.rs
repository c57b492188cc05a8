//! `siterelay vmdk formats | info | convert`: what the VMDK reader supports, what a VMDK or
//! snapshot chain holds, and its view as a raw image (also what the benchmark times).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::args::Args;

const CHUNK_BYTES: usize = 4 << 20;

pub(crate) fn run(rest: &[String]) -> Result<(), String> {
    let Some((sub, rest)) = rest.split_first() else {
        return Err("vmdk: expected formats, info FILE or convert FILE OUT".into());
    };
    match sub.as_str() {
        "formats" => {
            Args::parse("vmdk formats", rest, &[])?;
            print!("{}", vmdk::support_catalogue());
            Ok(())
        }
        "info" => info(rest),
        "convert" => convert(rest),
        other => {
            Err(format!("vmdk: unknown subcommand {other:?} (expected formats, info, convert)"))
        }
    }
}

fn open(path: &str) -> Result<vmdk::Disk, String> {
    vmdk::fs::open(Path::new(path)).map_err(|error| error.to_string())
}

fn info(rest: &[String]) -> Result<(), String> {
    let Some((path, rest)) = rest.split_first() else {
        return Err("vmdk info: expected FILE".into());
    };
    Args::parse("vmdk info", rest, &[])?;
    let disk = open(path)?;
    println!("capacity {} bytes", disk.capacity_bytes());
    for (depth, link) in disk.chain().iter().enumerate() {
        let cid = link.cid.map_or_else(|| "-".to_string(), |cid| format!("{cid:08x}"));
        println!("  link {depth}: {} ({}, CID {cid})", link.file, link.create_type);
    }
    let allocated: u64 = disk
        .allocated_extents()
        .map_err(|error| error.to_string())?
        .iter()
        .map(|range| range.len)
        .sum();
    println!("top link holds {allocated} bytes");
    Ok(())
}

/// The chain's view as a raw image: zero chunks are left as holes.
fn convert(rest: &[String]) -> Result<(), String> {
    let [input, output] = rest else {
        return Err("vmdk convert: expected FILE OUT.raw".into());
    };
    let disk = open(input)?;
    let fail = |error: std::io::Error| format!("{output}: {error}");
    let mut file = std::fs::File::create(output).map_err(fail)?;
    let capacity = disk.capacity_bytes();
    file.set_len(capacity).map_err(fail)?;
    let mut chunk = vec![0u8; CHUNK_BYTES];
    let mut offset = 0u64;
    while offset < capacity {
        let len = (capacity - offset).min(CHUNK_BYTES as u64) as usize;
        disk.read_at(&mut chunk[..len], offset).map_err(|error| error.to_string())?;
        if !wire::is_zero(&chunk[..len]) {
            file.write_all_at(&chunk[..len], offset).map_err(fail)?;
        }
        offset += len as u64;
    }
    file.flush().map_err(fail)
}
