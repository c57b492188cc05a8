//! Byte sizes written for humans: `4096`, `"64KiB"`, `"1 MiB"`, `"2GB"`.
//!
//! Only whole numbers are accepted. `"1.5GiB"` is rejected on purpose: the
//! sizes configured here end up as buffer lengths and alignment units, where
//! a silently rounded fraction would be a surprise; `"1536MiB"` says the
//! same thing exactly.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

pub(crate) const KIB: u64 = 1 << 10;
pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: u64 = 1 << 30;
pub(crate) const TIB: u64 = 1 << 40;

/// Every accepted unit suffix with its multiplier. Binary units are the
/// normal spelling; decimal ones exist because disk vendors quote them.
const UNITS: [(&str, u64); 9] = [
    ("B", 1),
    ("KiB", KIB),
    ("MiB", MIB),
    ("GiB", GIB),
    ("TiB", TIB),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

const UNIT_LIST: &str = "B, KiB, MiB, GiB, TiB, KB, MB, GB, TB";

/// Parses a byte size: ASCII digits, optional whitespace, optional unit
/// (case-sensitive; see the module docs). No unit means bytes.
///
/// Rejects negative numbers, fractions, unknown units and values that do not
/// fit in a `u64`. The error text is meant to be shown to the user as is.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, rest) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "invalid byte size `{s}`: expected a whole number of bytes, optionally followed by a unit ({UNIT_LIST})"
        ));
    }
    if rest.starts_with('.') {
        return Err(format!(
            "invalid byte size `{s}`: fractions are not supported, use a smaller unit (e.g. `1536MiB` instead of `1.5GiB`)"
        ));
    }
    let count: u64 =
        digits.parse().map_err(|_| format!("invalid byte size `{s}`: number too large"))?;
    let multiplier = unit_multiplier(rest.trim_start()).ok_or_else(|| {
        format!("invalid byte size `{s}`: unknown unit, expected one of {UNIT_LIST}")
    })?;
    count
        .checked_mul(multiplier)
        .ok_or_else(|| format!("invalid byte size `{s}`: larger than {} bytes", u64::MAX))
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    if unit.is_empty() {
        return Some(1);
    }
    UNITS.iter().find(|(name, _)| *name == unit).map(|&(_, multiplier)| multiplier)
}

/// Formats a byte count with the largest binary unit that divides it
/// exactly, e.g. `"64 MiB"`, `"1536 KiB"`, `"1000 B"`. Being exact means the
/// result always parses back to the same value with [`parse_byte_size`].
pub fn format_byte_size(bytes: u64) -> String {
    let binary_units = [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)];
    for (name, multiplier) in binary_units {
        if bytes != 0 && bytes % multiplier == 0 {
            return format!("{} {name}", bytes / multiplier);
        }
    }
    format!("{bytes} B")
}

/// Serde adapter for byte-size fields: accepts a TOML integer (bytes) or a
/// string understood by [`parse_byte_size`].
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    deserializer.deserialize_any(ByteSizeVisitor)
}

struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a byte size: an integer number of bytes or a string such as \"64MiB\"")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
        Ok(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
        u64::try_from(value)
            .map_err(|_| E::custom(format!("invalid byte size {value}: must not be negative")))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<u64, E> {
        parse_byte_size(value).map_err(E::custom)
    }
}
