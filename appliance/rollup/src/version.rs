//! Component versions: dot-separated decimal numbers (`5.1.3800.0`, `9.21.5091.1`, `0.4.0`),
//! compared number by number. Trailing zero numbers do not change a version's value, so
//! `1.2` and `1.2.0` are the same version (equal, same hash); the text as written is kept for
//! display.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::{VERSION_PARTS_MAX, VERSION_TEXT_MAX};

/// A well-formed version. Only [`Version::parse`] makes one, so holding one means the text is
/// 1 to [`VERSION_PARTS_MAX`] numbers separated by single dots.
#[derive(Debug, Clone)]
pub struct Version {
    text: String,
    numbers: Vec<u64>,
}

/// Why a text is not a version. Displays as `malformed version "5.1.3600 .0" (expected
/// dot-separated numbers)`; the text is quoted and escaped, so a stray space or control
/// character shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed version {text:?} ({expected})")]
pub struct MalformedVersion {
    pub text: String,
    /// What a version must be, for example `expected dot-separated numbers`.
    pub expected: &'static str,
}

impl Version {
    /// Parses `text`: numbers of ASCII digits (no sign, no leading zero unless the number is
    /// `0`, each below 2^64) separated by single dots, nothing else (no spaces, no `v`
    /// prefix, no pre-release suffix).
    pub fn parse(text: &str) -> Result<Version, MalformedVersion> {
        let malformed = |expected| MalformedVersion { text: text.to_string(), expected };
        if text.len() > VERSION_TEXT_MAX {
            return Err(malformed(VERSION_TEXT_TOO_LONG));
        }
        let mut numbers = Vec::new();
        for part in text.split('.') {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed(EXPECTED_NUMBERS));
            }
            if part.len() > 1 && part.starts_with('0') {
                return Err(malformed("expected numbers without leading zeros"));
            }
            let number =
                part.parse::<u64>().map_err(|_| malformed("expected numbers below 2^64"))?;
            numbers.push(number);
            if numbers.len() > VERSION_PARTS_MAX {
                return Err(malformed(VERSION_TOO_MANY_PARTS));
            }
        }
        Ok(Version { text: text.to_string(), numbers })
    }

    /// The text as written in the matrix (or as given by the caller).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The numbers, as written (trailing zeros included).
    pub fn numbers(&self) -> &[u64] {
        &self.numbers
    }

    /// The numbers without trailing zeros: what equality, ordering and hashing look at.
    fn significant(&self) -> &[u64] {
        let end = self.numbers.iter().rposition(|&n| n != 0).map_or(0, |i| i + 1);
        &self.numbers[..end]
    }
}

const EXPECTED_NUMBERS: &str = "expected dot-separated numbers";
const VERSION_TEXT_TOO_LONG: &str = "expected at most 64 bytes";
const VERSION_TOO_MANY_PARTS: &str = "expected at most 8 numbers";
const _: () = assert!(VERSION_TEXT_MAX == 64 && VERSION_PARTS_MAX == 8);

impl PartialEq for Version {
    fn eq(&self, other: &Version) -> bool {
        self.significant() == other.significant()
    }
}

impl Eq for Version {}

impl Hash for Version {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.significant().hash(state);
    }
}

impl Ord for Version {
    /// Number by number; a missing number counts as 0 (so trailing zeros do not matter).
    /// With trailing zeros removed this is the slices' lexicographic order: `[1, 2]` is below
    /// `[1, 2, 1]` exactly as `1.2.0` is below `1.2.1`.
    fn cmp(&self, other: &Version) -> Ordering {
        self.significant().cmp(other.significant())
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
