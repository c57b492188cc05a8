//! Sans-I/O framing of one connection: bytes in, frames out. The event
//! loops own the sockets; TLS can later sit between the socket and this buffer unchanged.

use crate::error::WireError;
use crate::frame::{split_frame, RawFrame};

/// Reassembles frames from a byte stream. Memory is bounded by one maximal frame plus one read.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame and its length; call `consume` with that length once handled.
    pub fn peek(&self) -> Result<Option<(RawFrame<'_>, usize)>, WireError> {
        split_frame(&self.buf[self.start..])
    }

    pub fn consume(&mut self, len: usize) {
        assert!(self.start + len <= self.buf.len(), "consume past buffered bytes");
        self.start += len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.start
    }

    fn compact(&mut self) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}
