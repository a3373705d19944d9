//! Standard Webhooks signatures: `v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")).
//!
//! A secret is written `whsec_` + base64 of its bytes. The message id is the idempotency
//! key: it stays the same across retries of one delivery, so a receiver can drop repeats.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";
/// How far a receiver lets a timestamp stray from its clock (the spec's suggestion).
pub const DEFAULT_TOLERANCE_SECS: u64 = 5 * 60;

#[derive(Clone)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("a webhook secret is `whsec_` followed by base64: {0}")]
    BadSecret(String),
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("the timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("the timestamp is {0} s away from now, more than the tolerance")]
    Stale(u64),
    #[error("no signature matches")]
    NoMatch,
}

impl WebhookSecret {
    /// `whsec_<base64>` (the prefix may be left out).
    pub fn parse(s: &str) -> Result<Self, SignatureError> {
        let b64 = s.trim().strip_prefix(PREFIX).unwrap_or(s.trim());
        let key = STANDARD
            .decode(b64)
            .map_err(|e| SignatureError::BadSecret(e.to_string()))?;
        if key.len() < 16 {
            return Err(SignatureError::BadSecret(format!(
                "{} bytes is too short; use 24 to 64 random bytes",
                key.len()
            )));
        }
        Ok(Self { key })
    }

    /// A new random secret of 32 bytes.
    pub fn generate() -> Self {
        Self {
            key: rand::random::<[u8; 32]>().to_vec(),
        }
    }

    /// The secret as it is configured and shared with the receiver.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// The `webhook-signature` value for one message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body)))
    }

    fn mac(&self, id: &str, timestamp: u64, body: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    /// Check a received message: `signatures` is the header's space-separated list of
    /// `v1,<base64>` entries (any one may match); the timestamp must be within `tolerance`
    /// seconds of `now`. Comparison is constant-time.
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: u64,
        tolerance: u64,
    ) -> Result<(), SignatureError> {
        let ts: u64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        let skew = now.abs_diff(ts);
        if skew > tolerance {
            return Err(SignatureError::Stale(skew));
        }
        let expected = self.mac(id, ts, body);
        for entry in signatures.split_whitespace() {
            let Some(b64) = entry.strip_prefix("v1,") else {
                continue;
            };
            let Ok(given) = STANDARD.decode(b64) else {
                continue;
            };
            let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key size");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(ts.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            if mac.verify_slice(&given).is_ok() {
                debug_assert_eq!(given, expected);
                return Ok(());
            }
        }
        Err(SignatureError::NoMatch)
    }
}

/// A message id: `msg_` and 24 random base32-ish characters. Stable across retries.
pub fn new_message_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let bytes = rand::random::<[u8; 24]>();
    let id: String = bytes
        .iter()
        .map(|b| ALPHABET[(*b % 32) as usize] as char)
        .collect();
    format!("msg_{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks specification.
    #[test]
    fn the_specifications_test_vector() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let ok = secret.verify(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            &sig,
            body,
            1614265330,
            300,
        );
        assert_eq!(ok, Ok(()));
    }

    #[test]
    fn tampering_staleness_and_bad_secrets_are_caught() {
        let secret = WebhookSecret::generate();
        let sig = secret.sign("msg_1", 1000, b"{}");
        let check = |id: &str, ts: &str, sigs: &str, body: &[u8], now: u64| {
            secret.verify(id, ts, sigs, body, now, 300)
        };
        assert_eq!(check("msg_1", "1000", &sig, b"{}", 1100), Ok(()));
        assert_eq!(
            check("msg_2", "1000", &sig, b"{}", 1000),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            check("msg_1", "1001", &sig, b"{}", 1000),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            check("msg_1", "1000", &sig, b"{ }", 1000),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            check("msg_1", "1000", &sig, b"{}", 2000),
            Err(SignatureError::Stale(1000))
        );
        assert_eq!(
            check("msg_1", "soon", &sig, b"{}", 1000),
            Err(SignatureError::BadTimestamp)
        );
        // Several signatures (key rotation): any one matching is enough.
        let both = format!("v1,AAAA {sig}");
        assert_eq!(check("msg_1", "1000", &both, b"{}", 1000), Ok(()));
        let other = WebhookSecret::generate();
        assert_eq!(
            other.verify("msg_1", "1000", &sig, b"{}", 1000, 300),
            Err(SignatureError::NoMatch)
        );
        assert!(WebhookSecret::parse("whsec_!!").is_err());
        assert!(WebhookSecret::parse("whsec_AAAA").is_err(), "too short");
        let round = WebhookSecret::parse(&secret.expose()).unwrap();
        assert_eq!(round.sign("a", 1, b"x"), secret.sign("a", 1, b"x"));
        let id = new_message_id();
        assert!(id.starts_with("msg_") && id.len() == 28, "{id}");
    }
}
