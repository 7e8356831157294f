//! Private keys: fresh ones with Talos's PEM encodings, and the ones read from a bundle.

use rand::rngs::OsRng;
use rcgen::{KeyPair, SignatureAlgorithm};
use zeroize::Zeroizing;

use super::pem_format::pem_encode;
use super::{
    crypto_error, random_bytes, SecretsError, ED25519_PKCS8_V1_PREFIX, PEM_EC_PRIVATE_KEY,
    PEM_ED25519_PRIVATE_KEY, PEM_PRIVATE_KEY, PEM_RSA_PRIVATE_KEY, RSA_BITS,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyAlg {
    EcdsaP256,
    Ed25519,
    Rsa,
}

impl KeyAlg {
    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlg::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlg::Ed25519 => &rcgen::PKCS_ED25519,
            KeyAlg::Rsa => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

/// A private key: its PEM text as Talos writes it, and the same key loaded for signing.
pub(super) struct NewKey {
    pub(super) pem: Zeroizing<String>,
    pub(super) signer: KeyPair,
}

pub(super) fn signer(alg: KeyAlg, pkcs8: &[u8]) -> Result<KeyPair, String> {
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.into(), alg.signature_algorithm())
        .map_err(|e| format!("key cannot be used for signing: {e}"))
}

/// A fresh key of `alg` with Talos's PEM encoding: SEC1 `EC PRIVATE KEY` (curve OID and
/// public key included), PKCS#8 v1 `ED25519 PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY`.
pub(super) fn new_key(alg: KeyAlg) -> Result<NewKey, SecretsError> {
    match alg {
        KeyAlg::EcdsaP256 => {
            use p256::pkcs8::EncodePrivateKey as _;
            let key = p256::SecretKey::random(&mut OsRng);
            let sec1 = ec_sec1_der(&key);
            let pkcs8 = key
                .to_pkcs8_der()
                .map_err(|e| crypto_error("encoding an ECDSA key", e))?;
            Ok(NewKey {
                pem: Zeroizing::new(pem_encode(PEM_EC_PRIVATE_KEY, &sec1)),
                signer: signer(alg, pkcs8.as_bytes()).map_err(SecretsError::Crypto)?,
            })
        }
        KeyAlg::Ed25519 => {
            let seed = random_bytes(32);
            let mut pkcs8 = Zeroizing::new(ED25519_PKCS8_V1_PREFIX.to_vec());
            pkcs8.extend_from_slice(&seed);
            Ok(NewKey {
                pem: Zeroizing::new(pem_encode(PEM_ED25519_PRIVATE_KEY, &pkcs8)),
                signer: signer(alg, &pkcs8).map_err(SecretsError::Crypto)?,
            })
        }
        KeyAlg::Rsa => {
            use rsa::pkcs8::EncodePrivateKey as _;
            let key = rsa::RsaPrivateKey::new(&mut OsRng, RSA_BITS)
                .map_err(|e| crypto_error("generating an RSA key", e))?;
            let pkcs8 = key
                .to_pkcs8_der()
                .map_err(|e| crypto_error("encoding an RSA key", e))?;
            Ok(NewKey {
                pem: rsa_pkcs1_pem(&key)?,
                signer: signer(alg, pkcs8.as_bytes()).map_err(SecretsError::Crypto)?,
            })
        }
    }
}

/// SEC1 `ECPrivateKey` as Go's `x509.MarshalECPrivateKey` writes it: version 1, the 32-byte
/// scalar, `[0]` the prime256v1 OID and `[1]` the uncompressed public point (121 bytes). The
/// RustCrypto encoder leaves the curve OID out, which Go's `ParseECPrivateKey` then refuses.
fn ec_sec1_der(key: &p256::SecretKey) -> Zeroizing<Vec<u8>> {
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    const HEAD: [u8; 7] = [0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20];
    const CURVE: [u8; 12] = [
        0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    const POINT_HEAD: [u8; 5] = [0xa1, 0x44, 0x03, 0x42, 0x00];
    let point = key.public_key().to_encoded_point(false);
    let mut der = Zeroizing::new(Vec::with_capacity(121));
    der.extend_from_slice(&HEAD);
    der.extend_from_slice(&key.to_bytes());
    der.extend_from_slice(&CURVE);
    der.extend_from_slice(&POINT_HEAD);
    der.extend_from_slice(point.as_bytes());
    der
}

fn rsa_pkcs1_pem(key: &rsa::RsaPrivateKey) -> Result<Zeroizing<String>, SecretsError> {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    let der = key
        .to_pkcs1_der()
        .map_err(|e| crypto_error("encoding an RSA key", e))?;
    Ok(Zeroizing::new(pem_encode(
        PEM_RSA_PRIVATE_KEY,
        der.as_bytes(),
    )))
}

/// A private key read from a bundle, normalised to PKCS#8 for signing.
pub(super) struct ParsedKey {
    pub(super) alg: KeyAlg,
    pub(super) pkcs8: Zeroizing<Vec<u8>>,
}

/// Parses a private key PEM the way `crypto:x509.PEMEncodedKey.GetKey` does: `RSA PRIVATE
/// KEY` (PKCS#1), `EC PRIVATE KEY` (SEC1), `ED25519 PRIVATE KEY` and `PRIVATE KEY` (PKCS#8).
pub(super) fn parse_private_key(pem_text: &str) -> Result<ParsedKey, String> {
    let block = pem::parse(pem_text).map_err(|_| "no PEM block found".to_string())?;
    let der = Zeroizing::new(block.contents().to_vec());
    match block.tag() {
        PEM_RSA_PRIVATE_KEY => {
            use rsa::pkcs1::DecodeRsaPrivateKey as _;
            let key = rsa::RsaPrivateKey::from_pkcs1_der(&der)
                .map_err(|e| format!("not a PKCS#1 RSA private key: {e}"))?;
            rsa_to_parsed(&key)
        }
        PEM_EC_PRIVATE_KEY => {
            let key = p256::SecretKey::from_sec1_der(&der).map_err(|_| {
                "not a SEC1 ECDSA P-256 private key (bootplane supports P-256 EC keys)".to_string()
            })?;
            ec_to_parsed(&key)
        }
        PEM_ED25519_PRIVATE_KEY | PEM_PRIVATE_KEY => parse_pkcs8(&der, block.tag()),
        other => Err(format!("unsupported key type: {other:?}")),
    }
}

fn parse_pkcs8(der: &[u8], label: &str) -> Result<ParsedKey, String> {
    use p256::pkcs8::der::Decode as _;
    let info = p256::pkcs8::PrivateKeyInfo::from_der(der)
        .map_err(|e| format!("not a PKCS#8 private key: {e}"))?;
    let oid = info.algorithm.oid.to_string();
    match (oid.as_str(), label) {
        ("1.3.101.112", _) => {
            // The private key is an OCTET STRING holding the 32-byte seed (RFC 8410).
            match info.private_key {
                [0x04, 0x20, seed @ ..] if seed.len() == 32 => {
                    let mut pkcs8 = Zeroizing::new(ED25519_PKCS8_V1_PREFIX.to_vec());
                    pkcs8.extend_from_slice(seed);
                    Ok(ParsedKey {
                        alg: KeyAlg::Ed25519,
                        pkcs8,
                    })
                }
                _ => Err("malformed Ed25519 PKCS#8 private key".to_string()),
            }
        }
        (_, PEM_ED25519_PRIVATE_KEY) => Err(format!(
            "an {PEM_ED25519_PRIVATE_KEY} block holds a non-Ed25519 key (algorithm {oid})"
        )),
        ("1.2.840.10045.2.1", _) => {
            use p256::pkcs8::DecodePrivateKey as _;
            let key = p256::SecretKey::from_pkcs8_der(der).map_err(|_| {
                "not an ECDSA P-256 private key (bootplane supports P-256 EC keys)".to_string()
            })?;
            ec_to_parsed(&key)
        }
        ("1.2.840.113549.1.1.1", _) => {
            use rsa::pkcs8::DecodePrivateKey as _;
            let key = rsa::RsaPrivateKey::from_pkcs8_der(der)
                .map_err(|e| format!("not an RSA private key: {e}"))?;
            rsa_to_parsed(&key)
        }
        _ => Err(format!("unsupported private key algorithm {oid}")),
    }
}

fn ec_to_parsed(key: &p256::SecretKey) -> Result<ParsedKey, String> {
    use p256::pkcs8::EncodePrivateKey as _;
    let pkcs8 = key
        .to_pkcs8_der()
        .map_err(|e| format!("cannot re-encode ECDSA key: {e}"))?;
    Ok(ParsedKey {
        alg: KeyAlg::EcdsaP256,
        pkcs8: Zeroizing::new(pkcs8.as_bytes().to_vec()),
    })
}

fn rsa_to_parsed(key: &rsa::RsaPrivateKey) -> Result<ParsedKey, String> {
    use rsa::pkcs8::EncodePrivateKey as _;
    key.validate()
        .map_err(|e| format!("inconsistent RSA private key: {e}"))?;
    let pkcs8 = key
        .to_pkcs8_der()
        .map_err(|e| format!("cannot re-encode RSA key: {e}"))?;
    Ok(ParsedKey {
        alg: KeyAlg::Rsa,
        pkcs8: Zeroizing::new(pkcs8.as_bytes().to_vec()),
    })
}
