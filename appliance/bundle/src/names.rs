//! Rules for the strings a manifest carries: identifiers (product, rollup id, component
//! names), version numbers, and payload names (which become paths).

use std::cmp::Ordering;

use crate::{BundleError, IDENT_MAX, NAME_MAX, VERSION_MAX, VERSION_SEGMENTS_MAX};

/// Why `text` is not an identifier: 1 to [`IDENT_MAX`] bytes of `A-Z a-z 0-9 . _ -`, and, if
/// `spaces`, single inner spaces too (component names such as "Unified Setup").
pub(crate) fn ident_problem(text: &str, spaces: bool) -> Option<&'static str> {
    if text.is_empty() {
        return Some("it is empty");
    }
    if text.len() > IDENT_MAX {
        return Some("it is longer than 64 bytes");
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if spaces {
        if text.starts_with(' ') || text.ends_with(' ') || text.contains("  ") {
            return Some("it starts or ends with a space, or has two in a row");
        }
        if !text.chars().all(|c| plain(c) || c == ' ') {
            return Some("only A-Z a-z 0-9 . _ - and single inner spaces are allowed");
        }
    } else if !text.chars().all(plain) {
        return Some("only A-Z a-z 0-9 . _ - are allowed");
    }
    None
}

/// Parses a version: 1 to [`VERSION_SEGMENTS_MAX`] dot-separated decimal numbers below 2^64,
/// without leading zeros ("9.55.6812.1", "1.4.0"), at most [`VERSION_MAX`] bytes (the rule of
/// the `rollup` crate's matrix, so every matrix version fits a manifest).
pub fn parse_version(text: &str) -> Result<Vec<u64>, &'static str> {
    if text.is_empty() {
        return Err("it is empty");
    }
    if text.len() > VERSION_MAX {
        return Err("it is longer than 64 bytes");
    }
    let mut segments = Vec::new();
    for segment in text.split('.') {
        if segment.is_empty() || !segment.bytes().all(|b| b.is_ascii_digit()) {
            return Err("it must be numbers separated by single dots, like 9.55.6812.1");
        }
        if segment.len() > 1 && segment.starts_with('0') {
            return Err("a number has a leading zero");
        }
        if segments.len() == VERSION_SEGMENTS_MAX {
            return Err("it has more than 8 numbers");
        }
        segments.push(segment.parse::<u64>().map_err(|_| "a number is 2^64 or more")?);
    }
    Ok(segments)
}

/// Orders two versions number by number, a missing number counting as 0 (so "1.4" equals
/// "1.4.0"); `None` if either is not a valid version.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (parse_version(a).ok()?, parse_version(b).ok()?);
    let len = a.len().max(b.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    Some((0..len).map(|i| at(&a, i).cmp(&at(&b, i))).find(|o| o.is_ne()).unwrap_or(Ordering::Equal))
}

/// A payload name is a relative path of `/`-separated components of `A-Z a-z 0-9 . _ + -`,
/// 1 to [`NAME_MAX`] bytes, with no empty, `.` or `..` component. It is joined under the
/// bundle's payload directory, so it must not be able to leave it, or to mean different files
/// on different systems (backslash, NUL).
pub(crate) fn check_payload_name(name: &str) -> Result<(), BundleError> {
    let owned = || name.to_string();
    if name.is_empty() {
        return Err(BundleError::PayloadNameEmpty);
    }
    if name.len() > NAME_MAX {
        let shown: String = name.chars().take(32).collect::<String>() + "…";
        return Err(BundleError::PayloadNameTooLong { name: shown, len: name.len() });
    }
    if name.contains('\0') {
        return Err(BundleError::PayloadNameNul { name: owned() });
    }
    if name.starts_with('/') {
        return Err(BundleError::PayloadNameAbsolute { name: owned() });
    }
    if name.contains('\\') {
        return Err(BundleError::PayloadNameBackslash { name: owned() });
    }
    let components: Vec<&str> = name.split('/').collect();
    if components.contains(&"..") {
        return Err(BundleError::PayloadNameTraversal { name: owned() });
    }
    if components.contains(&".") {
        return Err(BundleError::PayloadNameDotComponent { name: owned() });
    }
    if components.contains(&"") {
        return Err(BundleError::PayloadNameEmptyComponent { name: owned() });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-' | '/');
    if let Some(character) = name.chars().find(|&c| !allowed(c)) {
        return Err(BundleError::PayloadNameCharacter { name: owned(), character });
    }
    Ok(())
}
