//! Shared JSON plumbing: error positions, maps that refuse duplicate keys, and the document
//! type probe.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// serde_json's message without its " at line L column C" suffix, plus the position.
pub(crate) fn position(error: &serde_json::Error) -> (usize, usize, String) {
    let text = error.to_string();
    let message = match text.rfind(" at line ") {
        Some(at) if error.line() != 0 => text[..at].to_string(),
        _ => text,
    };
    (error.line(), error.column(), message)
}

/// A JSON object as a map, refusing a key that appears twice (serde's maps keep the last one
/// silently, so two readers of one signed text could disagree on what it says).
pub(crate) fn unique_map<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct UniqueMap<V>(PhantomData<V>);

    impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueMap<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = BTreeMap::new();
            while let Some((key, value)) = access.next_entry::<String, V>()? {
                if map.contains_key(&key) {
                    return Err(serde::de::Error::custom(format_args!("duplicate key {key:?}")));
                }
                map.insert(key, value);
            }
            Ok(map)
        }
    }

    deserializer.deserialize_map(UniqueMap(PhantomData))
}

/// Just the `type` field of a document, so a root offered as a manifest (or the reverse) is
/// named as such instead of failing on its first unexpected field.
#[derive(Deserialize)]
pub(crate) struct TypeProbe {
    #[serde(rename = "type")]
    pub(crate) kind: String,
}
