//! The key that signs chatpool's notifications (SPEC §4, "Several instances").
//!
//! Any role that can connect to the database can `NOTIFY` on chatpool's
//! channel, so a notification is believed only if it carries an HMAC-SHA256
//! tag made with a key stored in `notify_key`, a table only chatpool's own
//! role (its owner) can read. The first instance to start creates the key;
//! every instance on the database reads the same one. A payload is
//! `HEX_TAG.JSON`; one whose tag does not verify is dropped. A role that may
//! read every table can read the key too: the listener also checks the
//! sender's role (`listener::senders`).
//!
//! Replaying a genuine payload seen by another role changes nothing: every
//! event is idempotent (a message's seq is already delivered, a revoked
//! token stays revoked, an access re-check finds what it found).

use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Length of the hex tag in front of a payload (32 bytes).
pub const TAG_CHARS: usize = 64;

/// The shared signing key; cheap to clone.
#[derive(Clone)]
pub struct ChannelKey(Arc<[u8; 32]>);

impl ChannelKey {
    /// A fresh random key (for the first instance, and for tests).
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self(Arc::new(key))
    }

    /// The key stored in the database; `None` unless exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(Self(Arc::new(bytes.try_into().ok()?)))
    }

    /// The raw key, to store it.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0[..]).expect("HMAC takes a key of any length")
    }

    /// `body` with its tag in front.
    pub fn sign(&self, body: &str) -> String {
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let tag = hex::encode(mac.finalize().into_bytes());
        format!("{tag}.{body}")
    }

    /// The body of a payload whose tag verifies (in constant time), else `None`.
    pub fn open<'a>(&self, payload: &'a str) -> Option<&'a str> {
        let (tag, body) = payload.split_once('.')?;
        if tag.len() != TAG_CHARS {
            return None;
        }
        let tag = hex::decode(tag).ok()?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&tag).ok()?;
        Some(body)
    }
}

impl std::fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_payload_opens_and_anything_else_does_not() {
        let key = ChannelKey::random();
        let signed = key.sign(r#"[{"t":"r","token_id":7}]"#);
        assert_eq!(key.open(&signed), Some(r#"[{"t":"r","token_id":7}]"#));
        // Another key, a changed body, a bare body, a truncated tag.
        assert_eq!(ChannelKey::random().open(&signed), None);
        let tampered = signed.replace("7}", "8}");
        assert_eq!(key.open(&tampered), None);
        assert_eq!(key.open(r#"[{"t":"r","token_id":7}]"#), None);
        assert_eq!(key.open(&signed[1..]), None);
        let same = ChannelKey::from_bytes(key.bytes()).unwrap();
        assert_eq!(same.open(&signed), Some(r#"[{"t":"r","token_id":7}]"#));
    }
}
