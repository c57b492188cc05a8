//! VMDK parsing: the sparse header, the text descriptor, and opening the bytes as a disk
//! (header, embedded descriptor, grain directory and tables) with a few reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmdk::SparseHeader::parse("fuzz.vmdk", data);
    let _ = vmdk::Descriptor::parse("fuzz.vmdk", data);
    let mut opener = vmdk::mem::MemOpener::new();
    opener.insert("fuzz.vmdk", data.to_vec());
    if let Ok(disk) = vmdk::Disk::open(&opener, "fuzz.vmdk") {
        let mut buf = vec![0u8; 4096];
        for offset in [0u64, 65536, 1 << 20] {
            let _ = disk.read_at(&mut buf, offset);
        }
    }
});
