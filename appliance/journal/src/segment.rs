//! Segment file naming.

const PREFIX: &str = "seg-";
const SUFFIX: &str = ".log";
const HEX_DIGITS: usize = 16;

/// File name of segment `index`: `seg-{index:016x}.log`.
///
/// Fixed-width hex makes lexical order equal numeric order in directory
/// listings.
pub fn segment_file_name(index: u64) -> String {
    format!("{PREFIX}{index:016x}{SUFFIX}")
}

/// Parses a name produced by [`segment_file_name`].
///
/// Strict: exactly `seg-`, 16 lowercase hex digits, `.log`. Anything else
/// (stray files, editor backups, uppercase) is not a segment.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let lower_hex = |b: &u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
    if hex.len() != HEX_DIGITS || !hex.as_bytes().iter().all(lower_hex) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_has_fixed_shape() {
        assert_eq!(segment_file_name(0), "seg-0000000000000000.log");
        assert_eq!(segment_file_name(0xabc), "seg-0000000000000abc.log");
        assert_eq!(segment_file_name(u64::MAX), "seg-ffffffffffffffff.log");
    }

    #[test]
    fn parse_round_trips() {
        for index in [0, 1, 0xabc, 1 << 40, u64::MAX] {
            assert_eq!(parse_segment_file_name(&segment_file_name(index)), Some(index));
        }
    }

    #[test]
    fn parse_rejects_other_shapes() {
        let rejected = [
            "",
            "seg-.log",
            "seg-000000000000000.log",   // 15 digits
            "seg-00000000000000000.log", // 17 digits
            "seg-000000000000000A.log",  // uppercase
            "seg-000000000000000g.log",  // not hex
            "seg-+00000000000000a.log",  // sign accepted by from_str_radix
            "SEG-0000000000000000.log",
            "seg-0000000000000000.LOG",
            "seg-0000000000000000.log~",
            "seg-0000000000000000.log.tmp",
            "xseg-0000000000000000.log",
            "seg-0000000000000000",
            "0000000000000000.log",
            "seg-00000000000000é.log",
        ];
        for name in rejected {
            assert_eq!(parse_segment_file_name(name), None, "{name:?}");
        }
    }
}
