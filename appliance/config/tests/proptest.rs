//! Property tests: the parsers never panic, whatever the input, and byte
//! sizes survive a format/parse round trip.

use config::{format_byte_size, parse_byte_size, Config, DEFAULT_TOML};
use proptest::prelude::*;

const UNITS: [(&str, u64); 9] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

/// Strings close to valid sizes reach deeper into the parser than
/// arbitrary text does.
fn size_like() -> impl Strategy<Value = String> {
    "[ +.-]?[0-9]{0,24}[.]?[0-9]{0,3} ?(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|kib|x|)[ ]?"
}

/// The default file with a random edit, to exercise errors in every section.
fn mutated_default() -> impl Strategy<Value = String> {
    (0..DEFAULT_TOML.len(), 0usize..40, ".{0,8}").prop_map(|(at, cut, insert)| {
        let at = floor_char_boundary(DEFAULT_TOML, at);
        let end = floor_char_boundary(DEFAULT_TOML, (at + cut).min(DEFAULT_TOML.len()));
        format!("{}{insert}{}", &DEFAULT_TOML[..at], &DEFAULT_TOML[end..])
    })
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

proptest! {
    #[test]
    fn parse_byte_size_never_panics(text in any::<String>()) {
        let _ = parse_byte_size(&text);
    }

    #[test]
    fn parse_byte_size_never_panics_on_size_like(text in size_like()) {
        let _ = parse_byte_size(&text);
    }

    #[test]
    fn unit_multiples_round_trip(count in 0u64..=1 << 24, unit in 0..UNITS.len()) {
        let (name, multiplier) = UNITS[unit];
        let bytes = count * multiplier;
        prop_assert_eq!(parse_byte_size(&format_byte_size(bytes)), Ok(bytes));
        prop_assert_eq!(parse_byte_size(&format!("{count}{name}")), Ok(bytes));
        prop_assert_eq!(parse_byte_size(&format!("{count} {name}")), Ok(bytes));
    }

    #[test]
    fn any_u64_round_trips(bytes in any::<u64>()) {
        prop_assert_eq!(parse_byte_size(&format_byte_size(bytes)), Ok(bytes));
    }

    #[test]
    fn from_toml_never_panics(text in any::<String>()) {
        let _ = Config::from_toml(&text);
    }

    #[test]
    fn from_toml_never_panics_on_mutated_default(text in mutated_default()) {
        if let Err(error) = Config::from_toml(&text) {
            // Every error must render to something a person can read.
            prop_assert!(!error.to_string().is_empty());
        }
    }
}
