//! Maps errors back to positions in the configuration text.

use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::error::ConfigError;

/// Converts a toml/serde error into `ConfigError::Syntax`, keeping only the
/// message (toml's `Display` adds a multi-line source snippet that would
/// repeat the position we already report).
pub(crate) fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    // Errors without a span are rare (whole-document problems); pointing at
    // the start of the file is the honest fallback.
    let offset = error.span().map_or(0, |span| span.start);
    let (line, column) = line_column(text, offset);
    ConfigError::Syntax { line, column, message: one_line(error.message()) }
}

/// Some toml messages span lines ("invalid string\nexpected `\"`"); callers
/// print errors on one line, so join them.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines.join("; ")
}

/// 1-based line and character column of a byte offset. Never panics: an
/// offset past the end or inside a UTF-8 sequence is clamped/rounded.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    // Count characters by counting bytes that are not UTF-8 continuations.
    let column = 1 + before[line_start..].iter().filter(|&&b| b & 0xC0 != 0x80).count();
    (line, column)
}

/// Fills in where an `Invalid` key was written: the value becomes the text
/// as written and the reason gains its line and column. Errors for keys that
/// are absent from the text (defaults) are returned unchanged.
pub(crate) fn locate_invalid(text: &str, error: ConfigError) -> ConfigError {
    let ConfigError::Invalid { key, value, reason } = error else {
        return error;
    };
    let written = value_span(text, &key).and_then(|span| Some((span.start, text.get(span)?)));
    let Some((start, written)) = written else {
        return ConfigError::Invalid { key, value, reason };
    };
    let (line, column) = line_column(text, start);
    ConfigError::Invalid {
        key,
        value: written.trim().to_string(),
        reason: format!("{reason} (line {line}, column {column})"),
    }
}

/// Message of the deliberate error raised on reaching the wanted value.
const FOUND: &str = "siterelay-config: value found";

/// Byte span of the value at a dotted key such as `agent.disk[1].name`, or
/// `None` if the text does not contain it.
///
/// Rather than building a spanned tree (toml gives implicit tables such as
/// `agent` in `[[agent.disk]]` no span), this walks the document down the
/// path and fails on purpose at the wanted value: toml attaches that value's
/// span to the error, exactly as it does for real type errors.
fn value_span(text: &str, key: &str) -> Option<Range<usize>> {
    let path = parse_key_path(key)?;
    let error = PathSeed(&path).deserialize(toml::Deserializer::new(text)).err()?;
    if error.message() != FOUND {
        return None;
    }
    error.span()
}

#[derive(Debug, PartialEq, Eq)]
enum Step<'k> {
    Key(&'k str),
    Index(usize),
}

/// `agent.disk[1].name` -> `[Key(agent), Key(disk), Index(1), Key(name)]`.
fn parse_key_path(key: &str) -> Option<Vec<Step<'_>>> {
    let mut path = Vec::new();
    for segment in key.split('.') {
        let (name, index) = match segment.split_once('[') {
            None => (segment, None),
            Some((name, rest)) => (name, Some(rest.strip_suffix(']')?.parse().ok()?)),
        };
        path.push(Step::Key(name));
        path.extend(index.map(Step::Index));
    }
    Some(path)
}

/// Follows the remaining path; the error `FOUND` means "reached it".
struct PathSeed<'p, 'k>(&'p [Step<'k>]);

impl<'de> DeserializeSeed<'de> for PathSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.0.is_empty() {
            return Err(de::Error::custom(FOUND));
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PathSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Step::Key(wanted), rest)) = self.0.split_first() else {
            return drain_map(map);
        };
        while let Some(key) = map.next_key::<String>()? {
            if key == *wanted {
                map.next_value_seed(PathSeed(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Step::Index(wanted), rest)) = self.0.split_first() else {
            return drain_seq(seq);
        };
        let mut index = 0;
        loop {
            let found = if index == *wanted {
                seq.next_element_seed(PathSeed(rest))?
            } else {
                seq.next_element::<IgnoredAny>()?.map(drop)
            };
            if found.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    // Scalars on the way down mean the path does not exist in this text.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}
