//! Reads whole disks through the reader and prints the throughput (informative only):
//! `cargo run --release -p vmdk --example readspeed -- disk.vmdk [more.vmdk ...]`.

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for arg in std::env::args().skip(1) {
        let started = Instant::now();
        let disk = vmdk::fs::open(std::path::Path::new(&arg))?;
        let capacity = disk.capacity_bytes();
        let mut buf = vec![0u8; 4 << 20];
        let (mut offset, mut sum) = (0u64, 0u64);
        while offset < capacity {
            let n = (buf.len() as u64).min(capacity - offset) as usize;
            disk.read_at(&mut buf[..n], offset)?;
            sum = buf[..n].iter().step_by(4096).fold(sum, |s, &b| s.wrapping_add(u64::from(b)));
            offset += n as u64;
        }
        let secs = started.elapsed().as_secs_f64();
        let link = &disk.chain()[0];
        println!(
            "{arg}: {} {} MiB in {secs:.3} s = {:.0} MiB/s (sample sum {sum})",
            link.create_type,
            capacity >> 20,
            capacity as f64 / (1 << 20) as f64 / secs
        );
    }
    Ok(())
}
