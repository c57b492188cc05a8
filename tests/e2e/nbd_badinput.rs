//! Placeholder: hostile NBD clients against the write tap (being written).
