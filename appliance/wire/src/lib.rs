//! siterelay wire protocol v1 (design.md §3): frames, limits, batch helpers and sans-I/O
//! framing. No sockets, files or clocks here.
#![forbid(unsafe_code)] // pure crate: parsing and encoding only, no unsafe

mod batch;
mod codec;
mod conn;
mod error;
mod frame;
pub mod limits;

pub use batch::{append_writes_data, block_checksum, is_zero, BatchCompressor};
pub use conn::FrameReader;
pub use error::WireError;
pub use frame::*;

#[cfg(test)]
mod tests;
