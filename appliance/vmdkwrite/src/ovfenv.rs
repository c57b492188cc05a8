//! The OVF environment (DMTF DSP0243 §11): the `ovf-env.xml` a hypervisor hands the guest
//! (VMware: on a CD-ROM ISO or through `guestinfo.ovfEnv`) with the values the deployment
//! gave the descriptor's `ProductSection` properties.
//!
//! [`properties`] reads the `<Property oe:key=".." oe:value=".."/>` elements of the
//! environment's top-level `PropertySection`; [`config_toml`] turns the appliance's
//! `siterelay.*` properties into the configuration file written at first boot.
//!
//! The reader is a small scanner, not a general XML parser: it knows elements, attributes,
//! comments and processing instructions (the `<?xml ..?>` declaration), and refuses DOCTYPE
//! and CDATA markup, which an environment never carries. It still checks that tags
//! balance, so a truncated document is an error rather than a shorter list of properties.
//! Names are compared by local name (after any `prefix:`): DSP0243 binds the environment
//! namespace to whatever prefix the writer chose (`oe:` by convention, or the default
//! namespace), vendor sections use their own local names (`ve:EthernetAdapterSection`),
//! and resolving `xmlns` bindings would add code without changing what is read. Only the
//! attributes of `Property` elements are decoded; elsewhere the scanner checks syntax only.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;

/// The largest environment read. A real one is a few KiB (the properties, the platform and
/// one adapter per NIC); 1 MiB leaves room for vendor sections while bounding a first-boot
/// parse.
pub const DOCUMENT_BYTES_MAX: usize = 1 << 20;
/// The most properties read: the appliance declares four, and a deployment cannot add any.
pub const PROPERTIES_MAX: usize = 256;
/// The longest property key, decoded.
pub const KEY_BYTES_MAX: usize = 256;
/// The longest property value, decoded: room for a certificate or a key in PEM.
pub const VALUE_BYTES_MAX: usize = 64 << 10;
/// The deepest element nesting: `Environment > PropertySection > Property` is three, and
/// vendor sections add a level or two.
pub const DEPTH_MAX: usize = 32;

const _: () = assert!(KEY_BYTES_MAX < VALUE_BYTES_MAX);
const _: () = assert!(VALUE_BYTES_MAX < DOCUMENT_BYTES_MAX);
const _: () = assert!(DEPTH_MAX >= 3);

/// The most bytes of a name or value an error quotes: the document may hold megabytes.
const EXCERPT_BYTES_MAX: usize = 64;
/// The most bytes between `&` and `;` of a reference: `#x10FFFF` is 8, leading zeros aside.
const REFERENCE_BYTES_MAX: usize = 16;

/// The deployment properties `siterelay image ova` declares. Another `siterelay.` key is
/// a typo or a property of another release; either way the deployment did not get what it
/// asked for, so [`config_toml`] refuses it.
const KEYS: [&str; 4] =
    ["siterelay.role", "siterelay.listen", "siterelay.target", "siterelay.registration"];

/// Why an OVF environment could not be read, or its properties not turned into a
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OvfEnvError {
    /// The document is over [`DOCUMENT_BYTES_MAX`].
    #[error("ovf-env: the document is {bytes} bytes, over the limit of {max} bytes (1 MiB)")]
    DocumentTooLarge { bytes: usize, max: usize },
    /// The `PropertySection` holds more than [`PROPERTIES_MAX`] properties.
    #[error("ovf-env: the property at byte {offset} is one more than the limit of {max}")]
    TooManyProperties { offset: usize, max: usize },
    /// A key is over [`KEY_BYTES_MAX`].
    #[error("ovf-env: the key at byte {offset} is {bytes} bytes, over the limit of {max}")]
    KeyTooLong { offset: usize, bytes: usize, max: usize },
    /// A value is over [`VALUE_BYTES_MAX`].
    #[error(
        "ovf-env: the value of {key:?} at byte {offset} is {bytes} bytes, over the limit of {max}"
    )]
    ValueTooLong { key: String, offset: usize, bytes: usize, max: usize },
    /// Elements nest deeper than [`DEPTH_MAX`].
    #[error("ovf-env: the element at byte {offset} nests deeper than the limit of {max}")]
    TooDeep { offset: usize, max: usize },
    /// The document ends inside a tag, comment, declaration or attribute value.
    #[error("ovf-env: the {construct} at byte {offset} is not terminated")]
    Unterminated { construct: &'static str, offset: usize },
    /// An attribute name without `=` and a quoted value.
    #[error("ovf-env: attribute {name:?} at byte {offset} has no quoted value")]
    AttributeWithoutValue { name: String, offset: usize },
    /// A `Property` with two `key` or two `value` attributes.
    #[error("ovf-env: a second {name:?} attribute on one Property, at byte {offset}")]
    DuplicateAttribute { name: String, offset: usize },
    /// A `Property` without a `key` or `value` attribute.
    #[error("ovf-env: the Property at byte {offset} has no {attribute} attribute")]
    MissingAttribute { attribute: &'static str, offset: usize },
    /// Two properties with the same key.
    #[error("ovf-env: property {key:?} is given a second time, at byte {offset}")]
    DuplicateKey { key: String, offset: usize },
    /// An `&` that does not start one of the five entities or a character reference to a
    /// character XML allows.
    #[error("ovf-env: bad entity or character reference {reference:?} at byte {offset}")]
    BadEntity { reference: String, offset: usize },
    /// A close tag that does not close the innermost open element.
    #[error("ovf-env: </{found}> at byte {offset} does not close <{expected}>")]
    MismatchedClose { expected: String, found: String, offset: usize },
    /// The document ends with an element open.
    #[error("ovf-env: <{name}> at byte {offset} is never closed")]
    Unclosed { name: String, offset: usize },
    /// The root element is not `Environment`.
    #[error("ovf-env: the root element is <{found}> at byte {offset}, not <Environment>")]
    NotAnEnvironment { found: String, offset: usize },
    /// A DOCTYPE or CDATA section: an environment has neither, and a DOCTYPE could declare
    /// entities this reader does not expand.
    #[error("ovf-env: unsupported markup (DOCTYPE or CDATA) at byte {offset}")]
    UnsupportedMarkup { offset: usize },
    /// Any other syntax error.
    #[error("ovf-env: {problem} at byte {offset}")]
    Malformed { problem: &'static str, offset: usize },
    /// The `Environment` has no `PropertySection` of its own.
    #[error("ovf-env: the Environment has no PropertySection")]
    MissingPropertySection,
    /// A `siterelay.` key the appliance does not declare.
    #[error("ovf-env: unknown property {key:?} (known: {})", KEYS.join(", "))]
    UnknownKey { key: String },
    /// `siterelay.role` is neither `relay` nor `target`.
    #[error("ovf-env: siterelay.role is {value:?}; expected \"relay\" or \"target\"")]
    BadRole { value: String },
    /// An address property that does not parse as IP:port.
    #[error("ovf-env: {key} is {value:?}, not an IP:port address (such as 0.0.0.0:7700)")]
    BadAddress { key: &'static str, value: String },
    /// A relay deployment without the target it forwards to.
    #[error("siterelay.target is required for the relay role")]
    TargetRequired,
}

/// The properties of the OVF environment `xml`: key to decoded value, from the `Property`
/// elements of the root `Environment`'s own `PropertySection` (those of nested `Entity`
/// environments belong to other virtual systems and are skipped).
///
/// A leading byte order mark is skipped. Literal tabs and line breaks in a value become
/// spaces, as XML attribute normalisation has it; `&#9;`, `&#10;` and `&#13;` keep them.
/// Errors carry the byte offset into `xml`; no input panics.
pub fn properties(xml: &str) -> Result<BTreeMap<String, String>, OvfEnvError> {
    if xml.len() > DOCUMENT_BYTES_MAX {
        return Err(OvfEnvError::DocumentTooLarge { bytes: xml.len(), max: DOCUMENT_BYTES_MAX });
    }
    let bytes = xml.as_bytes();
    let mut parse = Parse::new(xml);
    let mut at = if xml.starts_with('\u{feff}') { '\u{feff}'.len_utf8() } else { 0 };
    // Every markup step consumes at least two bytes, so the length bounds the loop.
    while at < bytes.len() {
        let Some(open_at) = find_byte(bytes, at, b'<') else {
            parse.text(at, bytes.len())?;
            break;
        };
        parse.text(at, open_at)?;
        let next = parse.markup(open_at)?;
        assert!(next > open_at && next <= bytes.len(), "markup at {open_at} ended at {next}");
        at = next;
    }
    parse.finish()
}

/// The siterelay configuration file for the deployment `properties` set:
///
/// - `siterelay.role`: `relay` (the default) or `target`, as `[appliance] role`;
/// - `siterelay.listen`: IP:port, as `[relay] listen` or `[target] listen` by role;
/// - `siterelay.target`: IP:port, as `[relay] target`; required for a relay, ignored for a
///   target (the deployment form shows it to both);
/// - `siterelay.registration`: not written. The configuration file has no key for the
///   passphrase, and a secret does not belong in a file that support bundles copy;
///   `siterelay appliance ovf-config` keeps it apart for the relay's first start.
///
/// An empty value counts as not set (deployment tools send the empty default of a field
/// left blank), so the configuration's own default applies. Keys outside `siterelay.` are
/// other software's and are skipped; an unknown `siterelay.` key is an error.
pub fn config_toml(properties: &BTreeMap<String, String>) -> Result<String, OvfEnvError> {
    if let Some(key) =
        properties.keys().find(|key| key.starts_with("siterelay.") && !KEYS.contains(&key.as_str()))
    {
        return Err(OvfEnvError::UnknownKey { key: excerpt(key) });
    }
    let given = |key: &str| properties.get(key).map(String::as_str).filter(|v| !v.is_empty());
    let role = match given("siterelay.role") {
        None | Some("relay") => "relay",
        Some("target") => "target",
        Some(other) => return Err(OvfEnvError::BadRole { value: excerpt(other) }),
    };
    let listen = given("siterelay.listen").map(|v| address("siterelay.listen", v)).transpose()?;
    let mut out = format!(
        "# Written at first boot from the OVF environment (ovf-env.xml).\n[appliance]\n\
         role = {}\n",
        toml_string(role)
    );
    if role == "relay" {
        let target = given("siterelay.target").ok_or(OvfEnvError::TargetRequired)?;
        let target = address("siterelay.target", target)?;
        out.push_str("\n[relay]\n");
        if let Some(listen) = listen {
            out.push_str(&format!("listen = {}\n", toml_string(&listen.to_string())));
        }
        out.push_str(&format!("target = {}\n", toml_string(&target.to_string())));
    } else if let Some(listen) = listen {
        out.push_str(&format!("\n[target]\nlisten = {}\n", toml_string(&listen.to_string())));
    }
    Ok(out)
}

/// `value` of `key` as a socket address. The text written is the address's canonical
/// form, so what the configuration reads is exactly what was checked here.
fn address(key: &'static str, value: &str) -> Result<SocketAddr, OvfEnvError> {
    SocketAddr::from_str(value).map_err(|_| OvfEnvError::BadAddress { key, value: excerpt(value) })
}

/// `text` as a TOML basic string: quotes and backslashes escaped, and every control
/// character (TOML allows none but tab in a basic string) as an escape.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' || c == '\u{7f}' => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The state of one scan: the open elements and what has been read.
struct Parse<'d> {
    doc: &'d str,
    /// Open elements, outermost first: qualified name and the offset of its `<`.
    open: Vec<(&'d str, usize)>,
    root_seen: bool,
    section_seen: bool,
    properties: BTreeMap<String, String>,
}

impl<'d> Parse<'d> {
    fn new(doc: &'d str) -> Self {
        Parse {
            doc,
            open: Vec::with_capacity(DEPTH_MAX),
            root_seen: false,
            section_seen: false,
            properties: BTreeMap::new(),
        }
    }

    /// Character data from `start` to `end`: anything inside the root (no property is
    /// text), only white space outside it.
    fn text(&self, start: usize, end: usize) -> Result<(), OvfEnvError> {
        if !self.open.is_empty() {
            return Ok(());
        }
        let stray = self.doc.as_bytes()[start..end].iter().position(|&b| !is_space(b));
        match stray {
            Some(n) => Err(OvfEnvError::Malformed {
                problem: "text outside the root element",
                offset: start + n,
            }),
            None => Ok(()),
        }
    }

    /// The markup starting with the `<` at `at`; returns the offset just past it.
    fn markup(&mut self, at: usize) -> Result<usize, OvfEnvError> {
        let rest = &self.doc.as_bytes()[at..];
        if rest.starts_with(b"<!--") {
            return find_bytes(self.doc.as_bytes(), at + 4, b"-->")
                .map(|end| end + 3)
                .ok_or(OvfEnvError::Unterminated { construct: "comment", offset: at });
        }
        if rest.starts_with(b"<?") {
            return find_bytes(self.doc.as_bytes(), at + 2, b"?>").map(|end| end + 2).ok_or(
                OvfEnvError::Unterminated { construct: "processing instruction", offset: at },
            );
        }
        if rest.starts_with(b"<!") {
            return Err(OvfEnvError::UnsupportedMarkup { offset: at });
        }
        if rest.starts_with(b"</") {
            let (name, next) = close_tag(self.doc, at)?;
            self.close(name, at)?;
            return Ok(next);
        }
        let tag = open_tag(self.doc, at)?;
        self.start(&tag)?;
        Ok(tag.next)
    }

    /// An open or empty-element tag: the root, the section, a property, or anything else.
    fn start(&mut self, tag: &Tag<'d>) -> Result<(), OvfEnvError> {
        if self.open.len() >= DEPTH_MAX {
            return Err(OvfEnvError::TooDeep { offset: tag.at, max: DEPTH_MAX });
        }
        let local = local_name(tag.name);
        match self.open.len() {
            0 if self.root_seen => {
                return Err(OvfEnvError::Malformed {
                    problem: "a second root element",
                    offset: tag.at,
                })
            }
            0 => {
                self.root_seen = true;
                if local != "Environment" {
                    return Err(OvfEnvError::NotAnEnvironment {
                        found: excerpt(tag.name),
                        offset: tag.at,
                    });
                }
            }
            1 if local == "PropertySection" => self.section_seen = true,
            2 if local == "Property" && local_name(self.open[1].0) == "PropertySection" => {
                self.property(tag)?;
            }
            _ => {}
        }
        if !tag.self_closing {
            self.open.push((tag.name, tag.at));
        }
        assert!(self.open.len() <= DEPTH_MAX);
        Ok(())
    }

    fn close(&mut self, name: &str, at: usize) -> Result<(), OvfEnvError> {
        match self.open.pop() {
            None => Err(OvfEnvError::Malformed {
                problem: "a close tag with no open element",
                offset: at,
            }),
            Some((open, _)) if open != name => Err(OvfEnvError::MismatchedClose {
                expected: excerpt(open),
                found: excerpt(name),
                offset: at,
            }),
            Some(_) => Ok(()),
        }
    }

    /// A `Property` of the environment's `PropertySection`: its key and value, decoded.
    fn property(&mut self, tag: &Tag<'d>) -> Result<(), OvfEnvError> {
        if self.properties.len() >= PROPERTIES_MAX {
            return Err(OvfEnvError::TooManyProperties { offset: tag.at, max: PROPERTIES_MAX });
        }
        let (mut key, mut value) = (None, None);
        let mut cursor = tag.attributes_at;
        while let AttributeStep::Attribute { name, name_at, value: raw, value_at, next } =
            attribute_step(self.doc, cursor, tag.at)?
        {
            assert!(next > cursor);
            cursor = next;
            let slot = match local_name(name) {
                "key" => &mut key,
                "value" => &mut value,
                _ => continue,
            };
            if slot.is_some() {
                return Err(OvfEnvError::DuplicateAttribute {
                    name: excerpt(name),
                    offset: name_at,
                });
            }
            *slot = Some((raw, value_at));
        }
        let missing = |attribute| OvfEnvError::MissingAttribute { attribute, offset: tag.at };
        let (raw_key, key_at) = key.ok_or_else(|| missing("key"))?;
        let (raw_value, value_at) = value.ok_or_else(|| missing("value"))?;
        let key = decode(raw_key, key_at)?;
        if key.is_empty() {
            return Err(OvfEnvError::Malformed {
                problem: "an empty property key",
                offset: key_at,
            });
        }
        if key.len() > KEY_BYTES_MAX {
            let bytes = key.len();
            return Err(OvfEnvError::KeyTooLong { offset: key_at, bytes, max: KEY_BYTES_MAX });
        }
        let value = decode(raw_value, value_at)?;
        if value.len() > VALUE_BYTES_MAX {
            return Err(OvfEnvError::ValueTooLong {
                key: excerpt(&key),
                offset: value_at,
                bytes: value.len(),
                max: VALUE_BYTES_MAX,
            });
        }
        match self.properties.entry(key) {
            Entry::Occupied(entry) => {
                Err(OvfEnvError::DuplicateKey { key: entry.key().clone(), offset: tag.at })
            }
            Entry::Vacant(entry) => {
                entry.insert(value);
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<BTreeMap<String, String>, OvfEnvError> {
        if let Some(&(name, offset)) = self.open.last() {
            return Err(OvfEnvError::Unclosed { name: excerpt(name), offset });
        }
        if !self.root_seen {
            let offset = self.doc.len();
            return Err(OvfEnvError::Malformed { problem: "no root element", offset });
        }
        if !self.section_seen {
            return Err(OvfEnvError::MissingPropertySection);
        }
        assert!(self.properties.len() <= PROPERTIES_MAX);
        Ok(self.properties)
    }
}

/// An open (`<a ..>`) or empty-element (`<a ../>`) tag, its attributes checked.
struct Tag<'d> {
    name: &'d str,
    /// The offset of its `<`.
    at: usize,
    /// Where its attributes start (just past the name), to read them again.
    attributes_at: usize,
    self_closing: bool,
    /// Just past its `>`.
    next: usize,
}

/// One step through a tag's attributes.
enum AttributeStep<'d> {
    Attribute { name: &'d str, name_at: usize, value: &'d str, value_at: usize, next: usize },
    End { self_closing: bool, next: usize },
}

/// The tag whose `<` is at `at`, which is not a close tag, comment or declaration.
fn open_tag(doc: &str, at: usize) -> Result<Tag<'_>, OvfEnvError> {
    let bytes = doc.as_bytes();
    let name_end = name_end(bytes, at + 1);
    if name_end == at + 1 {
        let problem = "a '<' not followed by an element name";
        return Err(OvfEnvError::Malformed { problem, offset: at });
    }
    let mut cursor = name_end;
    // Every attribute consumes at least four bytes (` a=""`), so the length bounds this.
    while cursor <= bytes.len() {
        match attribute_step(doc, cursor, at)? {
            AttributeStep::Attribute { next, .. } => {
                assert!(next > cursor);
                cursor = next;
            }
            AttributeStep::End { self_closing, next } => {
                let name = &doc[at + 1..name_end];
                let attributes_at = name_end;
                return Ok(Tag { name, at, attributes_at, self_closing, next });
            }
        }
    }
    // Not reached: at the end of the document, `attribute_step` reports the open tag.
    Err(OvfEnvError::Unterminated { construct: "tag", offset: at })
}

/// The attribute, or the end of the tag, at `at` inside the tag opened at `tag_at`.
fn attribute_step(doc: &str, at: usize, tag_at: usize) -> Result<AttributeStep<'_>, OvfEnvError> {
    let bytes = doc.as_bytes();
    let unterminated = OvfEnvError::Unterminated { construct: "tag", offset: tag_at };
    let at = skip_space(bytes, at);
    match (bytes.get(at), bytes.get(at + 1)) {
        // A `<` inside a tag is the next tag: this one was never closed.
        (None | Some(b'<'), _) | (Some(b'/'), None) => return Err(unterminated),
        (Some(b'>'), _) => return Ok(AttributeStep::End { self_closing: false, next: at + 1 }),
        (Some(b'/'), Some(b'>')) => {
            return Ok(AttributeStep::End { self_closing: true, next: at + 2 });
        }
        (Some(b'/'), Some(_)) => {
            let problem = "a '/' not followed by '>' in a tag";
            return Err(OvfEnvError::Malformed { problem, offset: at });
        }
        _ => {}
    }
    let name_end = name_end(bytes, at);
    if name_end == at {
        return Err(OvfEnvError::Malformed {
            problem: "an unexpected character in a tag",
            offset: at,
        });
    }
    let name = &doc[at..name_end];
    let without_value = || OvfEnvError::AttributeWithoutValue { name: excerpt(name), offset: at };
    let equals = skip_space(bytes, name_end);
    match bytes.get(equals) {
        None => return Err(unterminated),
        Some(b'=') => {}
        Some(_) => return Err(without_value()),
    }
    let open_quote = skip_space(bytes, equals + 1);
    let quote = match bytes.get(open_quote) {
        None => return Err(unterminated),
        Some(&quote @ (b'"' | b'\'')) => quote,
        Some(_) => return Err(without_value()),
    };
    let value_at = open_quote + 1;
    let Some(length) = bytes[value_at..].iter().position(|&b| b == quote || b == b'<') else {
        return Err(OvfEnvError::Unterminated { construct: "attribute value", offset: open_quote });
    };
    let close_quote = value_at + length;
    if bytes[close_quote] == b'<' {
        let problem = "a '<' in an attribute value";
        return Err(OvfEnvError::Malformed { problem, offset: close_quote });
    }
    let next = close_quote + 1;
    if bytes.get(next).is_some_and(|&b| !is_space(b) && !matches!(b, b'>' | b'/' | b'<')) {
        let problem = "no white space between attributes";
        return Err(OvfEnvError::Malformed { problem, offset: next });
    }
    let value = &doc[value_at..close_quote];
    Ok(AttributeStep::Attribute { name, name_at: at, value, value_at, next })
}

/// The close tag whose `</` is at `at`: its name and the offset past its `>`.
fn close_tag(doc: &str, at: usize) -> Result<(&str, usize), OvfEnvError> {
    let bytes = doc.as_bytes();
    let name_end = name_end(bytes, at + 2);
    if name_end == at + 2 {
        let problem = "a '</' not followed by an element name";
        return Err(OvfEnvError::Malformed { problem, offset: at });
    }
    let end = skip_space(bytes, name_end);
    match bytes.get(end) {
        Some(b'>') => Ok((&doc[at + 2..name_end], end + 1)),
        None => Err(OvfEnvError::Unterminated { construct: "tag", offset: at }),
        Some(_) => {
            let problem = "an unexpected character in a close tag";
            Err(OvfEnvError::Malformed { problem, offset: end })
        }
    }
}

/// The text of the attribute value `raw` found at `offset`: references replaced, and each
/// literal tab, line feed, carriage return or CR LF pair made one space (XML 1.0 §2.11 and
/// §3.3.3: a literal line break in a value is layout, a character reference is data).
fn decode(raw: &str, offset: usize) -> Result<String, OvfEnvError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut at = 0;
    while at < bytes.len() {
        let special = bytes[at..].iter().position(|b| matches!(b, b'&' | b'\t' | b'\n' | b'\r'));
        let Some(length) = special else {
            out.push_str(&raw[at..]);
            break;
        };
        let special_at = at + length;
        out.push_str(&raw[at..special_at]);
        at = match bytes[special_at] {
            b'&' => {
                let (c, next) = reference(raw, special_at, offset)?;
                out.push(c);
                next
            }
            b'\r' if bytes.get(special_at + 1) == Some(&b'\n') => {
                out.push(' ');
                special_at + 2
            }
            _ => {
                out.push(' ');
                special_at + 1
            }
        };
    }
    // References only shrink text, so a value that fits the document fits its raw length.
    assert!(out.len() <= raw.len());
    Ok(out)
}

/// The reference whose `&` is at `at` in `raw` (found at `offset`): its character and the
/// offset in `raw` past its `;`.
fn reference(raw: &str, at: usize, offset: usize) -> Result<(char, usize), OvfEnvError> {
    let rest = &raw[at + 1..];
    let end = rest.bytes().take(REFERENCE_BYTES_MAX + 1).position(|b| b == b';');
    let Some(end) = end else {
        let reference = format!("&{}", excerpt_bytes(rest, REFERENCE_BYTES_MAX));
        return Err(OvfEnvError::BadEntity { reference, offset: offset + at });
    };
    let name = &rest[..end];
    let c = match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => character_reference(name),
    };
    match c {
        Some(c) => Ok((c, at + 1 + end + 1)),
        None => Err(OvfEnvError::BadEntity { reference: format!("&{name};"), offset: offset + at }),
    }
}

/// The character of `#NN` (decimal) or `#xNN` (hex), if it is one XML 1.0 allows.
fn character_reference(name: &str) -> Option<char> {
    let (digits, radix) = match name.strip_prefix("#x") {
        Some(hex) => (hex, 16),
        None => (name.strip_prefix('#')?, 10),
    };
    // `from_str_radix` would also take a leading sign, which a reference may not have.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let c = char::from_u32(u32::from_str_radix(digits, radix).ok()?)?;
    let allowed = matches!(c, '\t' | '\n' | '\r' | ' '..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
        || c >= '\u{10000}';
    allowed.then_some(c)
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Past the name starting at `at`. A name ends at white space or a delimiter; the
/// delimiters are ASCII, so the end is always on a character boundary.
fn name_end(bytes: &[u8], at: usize) -> usize {
    let delimiter = |b: u8| {
        is_space(b) || matches!(b, b'<' | b'>' | b'/' | b'=' | b'"' | b'\'' | b'&' | b'?' | b'!')
    };
    bytes
        .get(at..)
        .map_or(at, |rest| rest.iter().position(|&b| delimiter(b)).map_or(bytes.len(), |n| at + n))
}

fn skip_space(bytes: &[u8], at: usize) -> usize {
    bytes
        .get(at..)
        .map_or(at, |rest| rest.iter().position(|&b| !is_space(b)).map_or(bytes.len(), |n| at + n))
}

fn find_byte(bytes: &[u8], from: usize, wanted: u8) -> Option<usize> {
    bytes.get(from..)?.iter().position(|&b| b == wanted).map(|n| from + n)
}

fn find_bytes(bytes: &[u8], from: usize, wanted: &[u8]) -> Option<usize> {
    bytes.get(from..)?.windows(wanted.len()).position(|w| w == wanted).map(|n| from + n)
}

/// `name` without its namespace prefix.
fn local_name(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(_, local)| local)
}

/// `text` as an error quotes it: at most [`EXCERPT_BYTES_MAX`] bytes.
fn excerpt(text: &str) -> String {
    if text.len() <= EXCERPT_BYTES_MAX {
        return text.to_string();
    }
    format!("{}…", excerpt_bytes(text, EXCERPT_BYTES_MAX))
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn excerpt_bytes(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an ESXi host writes to the ISO for a deployment of the appliance.
    pub(crate) const VMWARE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Environment
     xmlns="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:ve="http://www.vmware.com/schema/ovfenv"
     oe:id=""
     ve:vCenterId="vm-42">
   <PlatformSection>
      <Kind>VMware ESXi</Kind>
      <Version>7.0.3</Version>
      <Vendor>VMware, Inc.</Vendor>
      <Locale>en</Locale>
   </PlatformSection>
   <PropertySection>
      <Property oe:key="siterelay.listen" oe:value="0.0.0.0:7700"/>
      <Property oe:key="siterelay.registration" oe:value="a &amp; b &lt;c&gt; &quot;d&quot; 'e'"/>
      <Property oe:key="siterelay.role" oe:value="relay"/>
      <Property oe:key="siterelay.target" oe:value="10.0.0.5:7800"/>
   </PropertySection>
   <ve:EthernetAdapterSection>
      <ve:Adapter ve:mac="00:50:56:8f:12:34" ve:network="VM Network" ve:unitNumber="7"/>
   </ve:EthernetAdapterSection>
</Environment>
"#;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// An environment whose `PropertySection` holds `body`.
    fn env(body: &str) -> String {
        format!(
            "<Environment xmlns:oe=\"http://schemas.dmtf.org/ovf/environment/1\">\
             <PropertySection>{body}</PropertySection></Environment>"
        )
    }

    fn at(doc: &str, needle: &str) -> usize {
        doc.find(needle).unwrap()
    }

    #[test]
    fn a_vmware_environment_gives_its_properties_and_a_relay_config() {
        let read = properties(VMWARE).unwrap();
        assert_eq!(
            read,
            map(&[
                ("siterelay.listen", "0.0.0.0:7700"),
                ("siterelay.registration", "a & b <c> \"d\" 'e'"),
                ("siterelay.role", "relay"),
                ("siterelay.target", "10.0.0.5:7800"),
            ])
        );
        assert_eq!(
            config_toml(&read).unwrap(),
            "# Written at first boot from the OVF environment (ovf-env.xml).\n\
             [appliance]\n\
             role = \"relay\"\n\
             \n\
             [relay]\n\
             listen = \"0.0.0.0:7700\"\n\
             target = \"10.0.0.5:7800\"\n"
        );
    }

    #[test]
    fn a_target_config_has_its_listen_address_and_no_relay() {
        let read = map(&[
            ("siterelay.role", "target"),
            ("siterelay.listen", "[::]:7800"),
            ("siterelay.target", ""),
            ("siterelay.registration", "secret"),
            ("guestinfo.other", "whatever"),
        ]);
        assert_eq!(
            config_toml(&read).unwrap(),
            "# Written at first boot from the OVF environment (ovf-env.xml).\n\
             [appliance]\n\
             role = \"target\"\n\
             \n\
             [target]\n\
             listen = \"[::]:7800\"\n"
        );
        // A target deployment that left the listen address blank keeps the default.
        let read = map(&[("siterelay.role", "target"), ("siterelay.listen", "")]);
        assert_eq!(
            config_toml(&read).unwrap(),
            "# Written at first boot from the OVF environment (ovf-env.xml).\n\
             [appliance]\n\
             role = \"target\"\n"
        );
    }

    #[test]
    fn the_role_defaults_to_relay_and_addresses_are_written_canonically() {
        let read = map(&[("siterelay.target", "[0:0::1]:7800"), ("siterelay.role", "")]);
        assert_eq!(
            config_toml(&read).unwrap(),
            "# Written at first boot from the OVF environment (ovf-env.xml).\n\
             [appliance]\n\
             role = \"relay\"\n\
             \n\
             [relay]\n\
             target = \"[::1]:7800\"\n"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let relay_without = |pairs: &[(&str, &str)]| config_toml(&map(pairs)).unwrap_err();
        assert_eq!(relay_without(&[]), OvfEnvError::TargetRequired);
        assert_eq!(relay_without(&[("siterelay.target", "")]), OvfEnvError::TargetRequired);
        assert_eq!(
            OvfEnvError::TargetRequired.to_string(),
            "siterelay.target is required for the relay role"
        );
        let error = relay_without(&[("siterelay.target", "10.0.0.5")]);
        assert_eq!(
            error,
            OvfEnvError::BadAddress { key: "siterelay.target", value: "10.0.0.5".into() }
        );
        assert_eq!(
            error.to_string(),
            "ovf-env: siterelay.target is \"10.0.0.5\", not an IP:port address (such as \
             0.0.0.0:7700)"
        );
        let error =
            relay_without(&[("siterelay.listen", "localhost:7700"), ("siterelay.target", "x")]);
        assert_eq!(
            error,
            OvfEnvError::BadAddress { key: "siterelay.listen", value: "localhost:7700".into() }
        );
        let error = relay_without(&[("siterelay.role", "Relay")]);
        assert_eq!(error, OvfEnvError::BadRole { value: "Relay".into() });
        assert_eq!(
            error.to_string(),
            "ovf-env: siterelay.role is \"Relay\"; expected \"relay\" or \"target\""
        );
        let error = relay_without(&[("siterelay.taget", "10.0.0.5:7800")]);
        assert_eq!(error, OvfEnvError::UnknownKey { key: "siterelay.taget".into() });
        assert_eq!(
            error.to_string(),
            "ovf-env: unknown property \"siterelay.taget\" (known: siterelay.role, \
             siterelay.listen, siterelay.target, siterelay.registration)"
        );
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("plain"), "\"plain\"");
        assert_eq!(toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(toml_string("\n\r\t\u{8}\u{c}"), "\"\\n\\r\\t\\b\\f\"");
        assert_eq!(toml_string("\u{1}\u{1f}\u{7f}é"), "\"\\u0001\\u001F\\u007Fé\"");
    }

    #[test]
    fn references_quotes_prefixes_and_layout() {
        let doc = format!(
            "\u{feff}<?xml version='1.0'?>\n<!-- written by hand -->\n<Environment \
             xmlns='http://schemas.dmtf.org/ovf/environment/1'>\n<PropertySection>\n\
             <Property key='plain' value='no prefix'/>\n\
             <e:Property e:key=\"custom\" e:value=\"prefix\"></e:Property>\n\
             <Property oe:key='numeric' oe:value='&#65;&#x42;&#x1F600;&#9;&#10;&#13;'/>\n\
             <Property oe:key = 'spaced'\n oe:value\t=\n\"a{}b\r\nc\rd\"  />\n\
             <!-- <Property oe:key='commented' oe:value='out'/> -->\n\
             <Property oe:key='q' oe:value='\"&apos;\"' other='>'/>\n\
             </PropertySection>\n<Entity oe:id='other'><PropertySection>\
             <Property oe:key='nested' oe:value='skipped'/></PropertySection></Entity>\n\
             </Environment>\n<!-- trailing comment -->\n",
            "\n\t"
        );
        assert_eq!(
            properties(&doc).unwrap(),
            map(&[
                ("custom", "prefix"),
                ("numeric", "AB\u{1F600}\t\n\r"),
                ("plain", "no prefix"),
                ("q", "\"'\""),
                ("spaced", "a  b c d"),
            ])
        );
        assert_eq!(properties(&env("")).unwrap(), BTreeMap::new());
    }

    #[test]
    fn syntax_errors_name_the_problem_and_the_offset() {
        use OvfEnvError::*;
        // The error a document should give, from the document (for the offsets).
        type Expected = fn(&str) -> OvfEnvError;
        let cases: Vec<(String, Expected)> = vec![
            (env("<Property oe:key='a' oe:value='b'"), |d: &str| Unterminated {
                construct: "tag",
                offset: at(d, "<Property "),
            }),
            (
                "<Environment><PropertySection><Property oe:key='a' oe:value='b'".into(),
                |d: &str| Unterminated { construct: "tag", offset: at(d, "<Property ") },
            ),
            ("<Environment><PropertySection><Property oe:key='a".into(), |d: &str| Unterminated {
                construct: "attribute value",
                offset: at(d, "'a"),
            }),
            (env("<!-- open"), |d: &str| Unterminated {
                construct: "comment",
                offset: at(d, "<!--"),
            }),
            ("<?xml version='1.0'".into(), |_: &str| Unterminated {
                construct: "processing instruction",
                offset: 0,
            }),
            (env("<Property oe:key oe:value='b'/>"), |d: &str| AttributeWithoutValue {
                name: "oe:key".into(),
                offset: at(d, "oe:key"),
            }),
            (env("<Property oe:key=a oe:value='b'/>"), |d: &str| AttributeWithoutValue {
                name: "oe:key".into(),
                offset: at(d, "oe:key"),
            }),
            (env("<Property oe:key='a' key='b' oe:value='c'/>"), |d: &str| DuplicateAttribute {
                name: "key".into(),
                offset: at(d, " key") + 1,
            }),
            (env("<Property oe:value='b'/>"), |d: &str| MissingAttribute {
                attribute: "key",
                offset: at(d, "<Property "),
            }),
            (env("<Property oe:key='a'/>"), |d: &str| MissingAttribute {
                attribute: "value",
                offset: at(d, "<Property "),
            }),
            (
                env("<Property oe:key='a' oe:value='1'/><Property oe:key='a' oe:value='2'/>"),
                |d: &str| DuplicateKey { key: "a".into(), offset: d.rfind("<Property").unwrap() },
            ),
            (env("<Property oe:key='a' oe:value='x &nbsp; y'/>"), |d: &str| BadEntity {
                reference: "&nbsp;".into(),
                offset: at(d, "&nbsp"),
            }),
            (env("<Property oe:key='a' oe:value='x & y'/>"), |d: &str| BadEntity {
                reference: "& y".into(),
                offset: at(d, "& y"),
            }),
            (env("<Property oe:key='a' oe:value='&#0;'/>"), |d: &str| BadEntity {
                reference: "&#0;".into(),
                offset: at(d, "&#0"),
            }),
            (env("<Property oe:key='a' oe:value='&#xD800;'/>"), |d: &str| BadEntity {
                reference: "&#xD800;".into(),
                offset: at(d, "&#x"),
            }),
            (env("<Property oe:key='a' oe:value='&#+65;'/>"), |d: &str| BadEntity {
                reference: "&#+65;".into(),
                offset: at(d, "&#+"),
            }),
            (env("<Property oe:key='a' oe:value='&#99999999999;'/>"), |d: &str| BadEntity {
                reference: "&#99999999999;".into(),
                offset: at(d, "&#9"),
            }),
            (env("<Property oe:key='' oe:value='b'/>"), |d: &str| Malformed {
                problem: "an empty property key",
                offset: at(d, "''") + 1,
            }),
            (env("<Property oe:key='a<b' oe:value='b'/>"), |d: &str| Malformed {
                problem: "a '<' in an attribute value",
                offset: at(d, "<b'"),
            }),
            (env("<Property oe:key='a'oe:value='b'/>"), |d: &str| Malformed {
                problem: "no white space between attributes",
                offset: at(d, "oe:value"),
            }),
            (env("<Property oe:key='a' oe:value='b'/ >"), |d: &str| Malformed {
                problem: "a '/' not followed by '>' in a tag",
                offset: at(d, "/ >"),
            }),
            (env("< Property/>"), |d: &str| Malformed {
                problem: "a '<' not followed by an element name",
                offset: at(d, "< P"),
            }),
            (env("</>"), |d: &str| Malformed {
                problem: "a '</' not followed by an element name",
                offset: at(d, "</>"),
            }),
            (
                "<Environment><PropertySection></PropertySection x></Environment>".into(),
                |d: &str| Malformed {
                    problem: "an unexpected character in a close tag",
                    offset: at(d, "x>"),
                },
            ),
            (env("<Property oe:key='a' oe:value='b'></property>"), |d: &str| MismatchedClose {
                expected: "Property".into(),
                found: "property".into(),
                offset: at(d, "</property"),
            }),
            ("<Environment><PropertySection></PropertySection>".into(), |_: &str| Unclosed {
                name: "Environment".into(),
                offset: 0,
            }),
            ("<Environment/></Environment>".into(), |d: &str| Malformed {
                problem: "a close tag with no open element",
                offset: at(d, "</"),
            }),
            ("<Environment/><Environment/>".into(), |_: &str| Malformed {
                problem: "a second root element",
                offset: 14,
            }),
            ("<Environment/> text".into(), |_: &str| Malformed {
                problem: "text outside the root element",
                offset: 15,
            }),
            ("<!-- only a comment -->".into(), |d: &str| Malformed {
                problem: "no root element",
                offset: d.len(),
            }),
            ("<ovf:Envelope/>".into(), |_: &str| NotAnEnvironment {
                found: "ovf:Envelope".into(),
                offset: 0,
            }),
            ("<!DOCTYPE Environment [<!ENTITY x 'y'>]><Environment/>".into(), |_: &str| {
                UnsupportedMarkup { offset: 0 }
            }),
            (env("<Property oe:key='a' oe:value='b'><![CDATA[x]]></Property>"), |d: &str| {
                UnsupportedMarkup { offset: at(d, "<![") }
            }),
            ("<Environment><Entity><PropertySection/></Entity></Environment>".into(), |_: &str| {
                MissingPropertySection
            }),
        ];
        for (doc, expected) in &cases {
            assert_eq!(properties(doc), Err(expected(doc)), "{doc}");
        }
    }

    #[test]
    fn limits_are_errors_that_name_them() {
        let big = format!("{}{}", env(""), " ".repeat(DOCUMENT_BYTES_MAX));
        let error = properties(&big).unwrap_err();
        assert_eq!(error, OvfEnvError::DocumentTooLarge { bytes: big.len(), max: 1 << 20 });
        assert_eq!(
            error.to_string(),
            format!(
                "ovf-env: the document is {} bytes, over the limit of 1048576 bytes (1 MiB)",
                big.len()
            )
        );

        let many: String = (0..=PROPERTIES_MAX)
            .map(|i| format!("<Property oe:key='k{i}' oe:value=''/>"))
            .collect();
        let doc = env(&many);
        assert_eq!(
            properties(&doc),
            Err(OvfEnvError::TooManyProperties {
                offset: at(&doc, "<Property oe:key='k256'"),
                max: 256
            })
        );
        let most = env(&many[..at(&many, "<Property oe:key='k256'")]);
        assert_eq!(properties(&most).unwrap().len(), PROPERTIES_MAX);

        let key = "k".repeat(KEY_BYTES_MAX);
        let doc = env(&format!("<Property oe:key='{key}' oe:value=''/>"));
        assert_eq!(properties(&doc).unwrap().len(), 1);
        let doc = env(&format!("<Property oe:key='{key}k' oe:value=''/>"));
        let error = properties(&doc).unwrap_err();
        assert_eq!(error, OvfEnvError::KeyTooLong { offset: at(&doc, "kk"), bytes: 257, max: 256 });
        assert!(error.to_string().contains("257 bytes, over the limit of 256"), "{error}");

        // The limit is on the decoded value: five bytes of reference are one byte of value.
        let value = "&amp;".repeat(VALUE_BYTES_MAX);
        let doc = env(&format!("<Property oe:key='v' oe:value='{value}'/>"));
        assert_eq!(properties(&doc).unwrap()["v"].len(), VALUE_BYTES_MAX);
        let doc = env(&format!("<Property oe:key='v' oe:value='{value}x'/>"));
        assert_eq!(
            properties(&doc),
            Err(OvfEnvError::ValueTooLong {
                key: "v".into(),
                offset: at(&doc, "&amp;"),
                bytes: VALUE_BYTES_MAX + 1,
                max: VALUE_BYTES_MAX,
            })
        );

        let deep = |levels: usize| {
            let open: String = (0..levels).map(|_| "<a>").collect();
            let close: String = (0..levels).map(|_| "</a>").collect();
            format!("<Environment><PropertySection/>{open}{close}</Environment>")
        };
        assert!(properties(&deep(DEPTH_MAX - 1)).is_ok());
        let doc = deep(DEPTH_MAX);
        assert_eq!(
            properties(&doc),
            Err(OvfEnvError::TooDeep { offset: doc.rfind("<a>").unwrap(), max: DEPTH_MAX })
        );
    }

    #[test]
    fn long_names_are_quoted_short() {
        let name = "é".repeat(100);
        let error = properties(&format!("<{name}/>")).unwrap_err();
        let OvfEnvError::NotAnEnvironment { found, offset: 0 } = error else {
            panic!("{error:?}");
        };
        assert_eq!(found, format!("{}…", "é".repeat(EXCERPT_BYTES_MAX / 2)));
    }
}
