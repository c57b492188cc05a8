//! The write tap's storage: `Capture` as an NBD backend (the server is `nbdserve`). Reads come
//! from the source file; writes, zeroes and flushes go through `Capture`, so a reply never
//! waits for the relay; block status comes from the source's `SEEK_DATA`/`SEEK_HOLE`.
//!
//! Every FLUSH flushes the whole source file, which every connection shares, so the export's
//! multi-conn (which `nbdserve` advertises) holds: a flush on one connection covers writes
//! completed on all.

use std::io;
use std::os::unix::fs::FileExt;

use crate::capture::Capture;

impl nbdserve::Backend for Capture {
    fn export_count(&self) -> usize {
        self.disks.len()
    }

    fn export_name(&self, export: usize) -> &str {
        &self.disks[export].name
    }

    fn export_size(&self, export: usize) -> u64 {
        self.disks[export].size_bytes
    }

    fn read(&self, export: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.disks[export].file.read_exact_at(buf, offset)
    }

    fn take_buffer(&self, len: usize) -> Vec<u8> {
        Capture::take_buffer(self, len)
    }

    fn write(&self, export: usize, offset: u64, data: Vec<u8>) -> io::Result<()> {
        Capture::write(self, export, offset, data)
    }

    fn zero(&self, export: usize, offset: u64, len: u64) -> io::Result<()> {
        Capture::zero(self, export, offset, len)
    }

    fn flush(&self, export: usize) -> io::Result<()> {
        Capture::flush(self, export)
    }

    fn sync_data(&self, export: usize) -> io::Result<()> {
        self.disks[export].file.sync_data()
    }

    fn data_ranges(
        &self,
        export: usize,
        offset: u64,
        len: u64,
        ranges_max: usize,
    ) -> io::Result<Vec<(u64, u64)>> {
        fsio::data_ranges(&self.disks[export].file, offset, len, ranges_max)
    }
}
