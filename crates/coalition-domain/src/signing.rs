//! Signed submissions. A partner signs `domain prefix || body bytes` with ed25519, and the
//! server checks that signature with `verify_strict` before it parses anything in the body.
//! Because the signed bytes are the bytes sent, no canonical re-encoding is ever needed.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Prefix of every signed transaction body. The prefix separates the signature domains, so
/// a signature made for one purpose (a query, a future message kind) never verifies for another.
pub const SUBMISSION_DOMAIN: &[u8] = b"coalition.v1.submission\0";

/// Prefix of every signed query.
pub const QUERY_DOMAIN: &[u8] = b"coalition.v1.query\0";

/// Why a public key cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    #[error("a public key is 32 bytes, this one is {len}")]
    WrongLength { len: usize },
    #[error("the bytes are not a valid ed25519 point")]
    NotAPoint,
    #[error(
        "the key is not in canonical encoding (its point encodes as {canonical}); register the canonical bytes"
    )]
    NotCanonical { canonical: String },
    #[error("the key is a weak (small-order) key, which cannot bind a signature to a message")]
    Weak,
}

/// Parses a public key for registration, refusing malformed and weak keys.
pub fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey, PublicKeyError> {
    let array: &[u8; 32] = bytes
        .try_into()
        .map_err(|_| PublicKeyError::WrongLength { len: bytes.len() })?;
    let key = VerifyingKey::from_bytes(array).map_err(|_| PublicKeyError::NotAPoint)?;
    // Decompression accepts y coordinates of p and above, and an x sign bit on x = 0: such
    // bytes name the same point as their canonical twin. One point must have one encoding,
    // or the same key could be registered twice under different bytes.
    let canonical = key.to_edwards().compress().to_bytes();
    if &canonical != array {
        return Err(PublicKeyError::NotCanonical {
            canonical: hex::encode(canonical),
        });
    }
    if key.is_weak() {
        return Err(PublicKeyError::Weak);
    }
    Ok(key)
}

/// The exact bytes that are signed: the domain prefix followed by the body.
pub fn signed_message(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + body.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(body);
    message
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureFault {
    /// Not 64 bytes.
    Malformed,
    /// 64 bytes that do not verify strictly.
    Invalid,
}

/// Parses a 64-byte signature.
pub fn parse_signature(bytes: &[u8]) -> Result<Signature, SignatureFault> {
    let array: &[u8; 64] = bytes.try_into().map_err(|_| SignatureFault::Malformed)?;
    Ok(Signature::from_bytes(array))
}

/// Verifies `signature` over `domain || body` with the strict rules (no malleable signatures,
/// no small-order components).
pub fn verify(
    key: &VerifyingKey,
    domain: &[u8],
    body: &[u8],
    signature: &Signature,
) -> Result<(), SignatureFault> {
    key.verify_strict(&signed_message(domain, body), signature)
        .map_err(|_| SignatureFault::Invalid)
}

/// Signs `domain || body`: what a partner's signer does. Used by the client helpers, the
/// demo, the benchmark and the tests.
pub fn sign(key: &SigningKey, domain: &[u8], body: &[u8]) -> [u8; 64] {
    key.sign(&signed_message(domain, body)).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signature_verifies_only_for_its_domain_body_and_key() {
        let signer = key(7);
        let body = b"transaction body";
        let signature = parse_signature(&sign(&signer, SUBMISSION_DOMAIN, body)).unwrap();
        let public = signer.verifying_key();
        assert_eq!(verify(&public, SUBMISSION_DOMAIN, body, &signature), Ok(()));
        assert_eq!(
            verify(&public, QUERY_DOMAIN, body, &signature),
            Err(SignatureFault::Invalid)
        );
        assert_eq!(
            verify(&public, SUBMISSION_DOMAIN, b"transaction bodY", &signature),
            Err(SignatureFault::Invalid)
        );
        assert_eq!(
            verify(&key(8).verifying_key(), SUBMISSION_DOMAIN, body, &signature),
            Err(SignatureFault::Invalid)
        );
        assert_eq!(
            parse_signature(&[0; 63]).err(),
            Some(SignatureFault::Malformed)
        );
    }

    /// A signature whose R carries a torsion component, made by the key's holder for that R:
    /// the strict rule refuses it, while the term a batch equation would weigh by a random
    /// multiplier is torsion alone, cancelled by any multiplier that is a multiple of 8. Why
    /// batch verification would not give the same answers (docs/design/throughput.md).
    #[test]
    fn a_signature_whose_r_has_a_torsion_component_is_refused() {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
        use curve25519_dalek::edwards::EdwardsPoint;
        use curve25519_dalek::scalar::Scalar;
        use curve25519_dalek::traits::{Identity, IsIdentity};
        use sha2::{Digest, Sha512};
        let base = ED25519_BASEPOINT_POINT;
        let secret = Scalar::from_bytes_mod_order([3; 32]);
        let public_point = base * secret;
        let public = VerifyingKey::from_bytes(&public_point.compress().to_bytes()).unwrap();
        let body = b"transaction body";
        let message = signed_message(SUBMISSION_DOMAIN, body);
        let nonce = Scalar::from_bytes_mod_order([5; 32]);
        let sign_with = |torsion: EdwardsPoint| {
            let commitment = base * nonce + torsion;
            let commitment_bytes = commitment.compress().to_bytes();
            let hash: [u8; 64] = Sha512::new()
                .chain_update(commitment_bytes)
                .chain_update(public.as_bytes())
                .chain_update(&message)
                .finalize()
                .into();
            let challenge = Scalar::from_bytes_mod_order_wide(&hash);
            let s = nonce + challenge * secret;
            let mut bytes = [0u8; 64];
            bytes[..32].copy_from_slice(&commitment_bytes);
            bytes[32..].copy_from_slice(s.as_bytes());
            let term = base * s - commitment - public_point * challenge;
            (Signature::from_bytes(&bytes), term)
        };
        // The construction makes real signatures: without torsion it verifies.
        let (clean, term) = sign_with(EdwardsPoint::identity());
        assert_eq!(verify(&public, SUBMISSION_DOMAIN, body, &clean), Ok(()));
        assert!(term.is_identity());
        for torsion in &EIGHT_TORSION[1..] {
            let (signature, term) = sign_with(*torsion);
            assert_eq!(
                verify(&public, SUBMISSION_DOMAIN, body, &signature),
                Err(SignatureFault::Invalid)
            );
            assert!(!term.is_identity());
            assert!(term.mul_by_cofactor().is_identity());
        }
    }

    #[test]
    fn weak_and_malformed_keys_are_refused() {
        // The identity point is of small order: a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(parse_public_key(&identity), Err(PublicKeyError::Weak));
        assert_eq!(
            parse_public_key(&[1; 31]),
            Err(PublicKeyError::WrongLength { len: 31 })
        );
        let good = key(3).verifying_key();
        assert_eq!(parse_public_key(good.as_bytes()), Ok(good));
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        // y = p + 3 (p = 2^255 - 19): f0ff..ff7f decodes to the point with y = 3, whose
        // canonical encoding is 03 00..00. Whether that point is on the curve decides which
        // error comes first, so take a y whose point exists: search upwards from 2.
        let p_plus = |offset: u8| {
            let mut bytes = [0xffu8; 32];
            bytes[0] = 0xed + offset;
            bytes[31] = 0x7f;
            bytes
        };
        let mut found = false;
        for offset in 0..18u8 {
            let non_canonical = p_plus(offset);
            let mut canonical = [0u8; 32];
            canonical[0] = offset;
            match (
                parse_public_key(&non_canonical),
                parse_public_key(&canonical),
            ) {
                (Err(PublicKeyError::NotAPoint), Err(PublicKeyError::NotAPoint)) => {}
                (Err(PublicKeyError::NotCanonical { canonical: named }), canonical_result) => {
                    assert_eq!(named, hex::encode(canonical), "offset {offset}");
                    // The canonical twin is refused only if it is weak, never for encoding.
                    assert!(
                        !matches!(canonical_result, Err(PublicKeyError::NotCanonical { .. })),
                        "offset {offset}"
                    );
                    found = true;
                }
                other => panic!("offset {offset}: {other:?}"),
            }
        }
        assert!(found, "no y from 0 to 17 gave a point");
        // The example from outside: f0ff..ff7f is y = p + 3.
        let mut y_p_plus_3 = [0xffu8; 32];
        y_p_plus_3[0] = 0xf0;
        y_p_plus_3[31] = 0x7f;
        let mut y_3 = [0u8; 32];
        y_3[0] = 3;
        assert_eq!(
            parse_public_key(&y_p_plus_3),
            Err(PublicKeyError::NotCanonical {
                canonical: hex::encode(y_3)
            })
        );
        assert!(parse_public_key(&y_3).is_ok());
        // The sign bit set on a point with x = 0 (y = 1, the identity) is not canonical either.
        let mut negative_zero = [0u8; 32];
        negative_zero[0] = 1;
        negative_zero[31] = 0x80;
        assert!(parse_public_key(&negative_zero).is_err());
    }
}
