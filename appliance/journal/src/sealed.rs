//! Records encrypted at rest: AES-256-GCM over each record's body, with the record kind as
//! associated data. The sealed body is `ciphertext || nonce (12) || tag (16)`, so a body built
//! in place is encrypted in place and only grows at its end. Nonces are random (96 bits): a
//! key stays far below the 2^32 records after which random nonces could repeat (that is 4 PiB
//! of 1 MiB records). The CRC of the record header covers the sealed body as before, so a torn
//! write is still told apart from a wrong key: a record whose CRC is good but whose tag does
//! not verify was written with another key, or changed on purpose.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::limits::RECORD_HEADER_BYTES;

/// What sealing adds to a body.
pub const SEAL_OVERHEAD_BYTES: usize = NONCE_LEN + 16;

/// A record key, named by an id that does not reveal it.
pub struct RecordKey {
    key: LessSafeKey,
    id: String,
    random: SystemRandom,
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordKey").field("id", &self.id).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the record is shorter than its nonce and tag ({len} bytes)")]
    TooShort { len: usize },
    #[error(
        "the record does not authenticate with key {key_id}: it was written with another key, \
         or changed"
    )]
    WrongKey { key_id: String },
}

/// Records kept under the key id `recorded` (`None`: in the clear) cannot be read with `key`:
/// what they hold and how this start is keyed, for the caller's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMismatch {
    /// "records encrypted with key …" or "unencrypted records".
    pub held: String,
    /// "with key …" or "without encryption at rest".
    pub started: String,
}

/// `Ok` when records kept under `recorded` are read with `key`, else what differs.
pub fn check_key(recorded: Option<&str>, key: Option<&RecordKey>) -> Result<(), KeyMismatch> {
    if recorded == key.map(RecordKey::id) {
        return Ok(());
    }
    Err(KeyMismatch {
        held: recorded
            .map_or("unencrypted records".into(), |id| format!("records encrypted with key {id}")),
        started: key
            .map_or("without encryption at rest".into(), |key| format!("with key {}", key.id())),
    })
}

impl RecordKey {
    pub fn new(bytes: &[u8; 32]) -> RecordKey {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let id = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte key"));
        RecordKey { key, id, random: SystemRandom::new() }
    }

    /// 16 hex digits derived from the key (SHA-256), to tell keys apart in messages.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts the body of the record begun at `start` (with `begin_record`) in place; call it
    /// right before `seal_record`.
    pub fn encrypt_body(&self, out: &mut Vec<u8>, start: usize) {
        let body_start = start + RECORD_HEADER_BYTES;
        assert!(body_start <= out.len(), "encrypt_body needs a record from begin_record");
        let kind = out[start + 4];
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).expect("the system's random source works");
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([kind]),
                &mut out[body_start..],
            )
            .expect("record bodies are far below AES-GCM's length limit");
        out.extend_from_slice(&nonce);
        out.extend_from_slice(tag.as_ref());
    }

    /// The plaintext of a sealed record body, decrypted into `scratch`.
    pub fn decrypt_body<'s>(
        &self,
        kind: u8,
        body: &[u8],
        scratch: &'s mut Vec<u8>,
    ) -> Result<&'s [u8], SealError> {
        let Some(text_len) = body.len().checked_sub(SEAL_OVERHEAD_BYTES) else {
            return Err(SealError::TooShort { len: body.len() });
        };
        let nonce: [u8; NONCE_LEN] =
            body[text_len..text_len + NONCE_LEN].try_into().expect("sliced to NONCE_LEN");
        scratch.clear();
        scratch.extend_from_slice(&body[..text_len]);
        scratch.extend_from_slice(&body[text_len + NONCE_LEN..]);
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from([kind]), scratch)
            .map_err(|_| SealError::WrongKey { key_id: self.id.clone() })?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealed(key: &RecordKey, kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let start = crate::begin_record(kind, &mut out);
        out.extend_from_slice(body);
        key.encrypt_body(&mut out, start);
        crate::seal_record(&mut out, start).unwrap();
        out
    }

    #[test]
    fn a_sealed_record_opens_only_with_its_key_and_kind() {
        let key = RecordKey::new(&[7; 32]);
        let record = sealed(&key, 2, b"SECRET-PATTERN-SECRET-PATTERN");
        assert!(!record.windows(6).any(|w| w == b"SECRET"), "plaintext left in the record");
        let (decoded, used) = crate::decode_record(&record, 0).unwrap().unwrap();
        assert_eq!(used, record.len());
        let mut scratch = Vec::new();
        assert_eq!(
            key.decrypt_body(2, decoded.body, &mut scratch).unwrap(),
            b"SECRET-PATTERN-SECRET-PATTERN"
        );
        let other = RecordKey::new(&[8; 32]);
        assert_eq!(
            other.decrypt_body(2, decoded.body, &mut scratch).unwrap_err(),
            SealError::WrongKey { key_id: other.id().to_string() }
        );
        // The kind is authenticated too: a record relabelled as another kind fails.
        assert!(key.decrypt_body(3, decoded.body, &mut scratch).is_err());
        assert_eq!(key.id().len(), 16);
        assert_ne!(key.id(), other.id());
    }

    proptest! {
        #[test]
        fn round_trip_and_hostile_bodies(body in proptest::collection::vec(any::<u8>(), 0..4096), kind in any::<u8>(), flip in any::<usize>()) {
            let key = RecordKey::new(&[1; 32]);
            let record = sealed(&key, kind, &body);
            let (decoded, _) = crate::decode_record(&record, 0).unwrap().unwrap();
            let mut scratch = Vec::new();
            prop_assert_eq!(key.decrypt_body(kind, decoded.body, &mut scratch).unwrap(), &body[..]);
            // Any changed byte of the sealed body is an error, never other plaintext.
            let mut changed = decoded.body.to_vec();
            let at = flip % changed.len();
            changed[at] ^= 1;
            prop_assert!(key.decrypt_body(kind, &changed, &mut scratch).is_err());
            // Arbitrary bytes as a sealed body: an error, never a panic.
            let _ = key.decrypt_body(kind, &body, &mut scratch);
        }
    }
}
