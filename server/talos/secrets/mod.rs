//! The cluster secrets bundle (`secrets.yaml`, as `talosctl gen secrets` writes it) and the
//! operator credentials signed by its CAs (talosconfig, admin kubeconfig).
//!
//! What is generated follows Talos's own generator field by field
//! (`talos:pkg/machinery/config/generate/secrets`, `crypto:x509`; see
//! shared/research/talos-facts.md §1 and §6): the same random sizes and encodings, the same
//! CA subjects, algorithms, validity, extensions and private-key PEM labels. Import accepts
//! any `secrets.yaml` Talos accepts (any valid YAML, the PEM labels Talos parses) and refuses,
//! naming the field, what Talos's `Bundle.Validate` refuses, plus a few things that would only
//! fail later on a node (see [`SecretsBundle::from_yaml`]).
//!
//! Secrets never appear in `Debug` output or in error messages.
//!
//! Here: the bundle, its errors and generation. `yaml` reads and writes `secrets.yaml`, `keys`
//! and `certs` make and check keys and certificates, `pem_format` writes PEM as Go does, and
//! `credentials` issues the talosconfig and the admin kubeconfig.

use std::fmt;
use std::time::SystemTime;

use base64::engine::general_purpose::{GeneralPurpose, STANDARD, URL_SAFE};
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore;
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

mod certs;
mod credentials;
mod keys;
mod pem_format;
#[cfg(test)]
mod tests;
mod yaml;

use certs::new_ca;
use keys::{new_key, KeyAlg};

/// `secrets.CAValidityTime`: every CA is valid for 87600 h (3650 days) from generation.
const CA_VALIDITY: Duration = Duration::hours(87_600);
/// `constants.TalosAPIDefaultCertificateValidityDuration` and the default
/// `cluster.adminKubeconfig.certLifetime`: one year (8760 h).
const CLIENT_CERT_VALIDITY: Duration = Duration::hours(8_760);
/// `kubeconfig.allowedTimeSkew`: the admin kubeconfig certificate is back-dated by 10 s.
const KUBECONFIG_BACKDATE: Duration = Duration::seconds(10);
/// `constants.DefaultClusterIDSize`, `DefaultClusterSecretSize`, and the secretbox key size.
const RANDOM_SECRET_BYTES: usize = 32;
/// Serial numbers are uniform in [0, 2^128), as `crypto:x509.NewSerialNumber`.
const SERIAL_BYTES: usize = 16;
/// Subject key identifiers of CAs are 20 random bytes, as `crypto:x509.NewSubjectKeyID`.
const SKI_BYTES: usize = 20;
/// RSA key size: the service-account key (contract > 1.6) and client keys under an RSA CA
/// (`crypto:x509` default `Bits: 4096`).
const RSA_BITS: usize = 4096;
/// Kubernetes bootstrap-token alphabet (`secrets.randBootstrapTokenString`).
const TOKEN_ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// Random bytes at or above this are rejected so that `byte % 36` is unbiased (252 = 7 * 36).
const TOKEN_BYTE_LIMIT: u8 = 252;
/// Talos versions whose secrets contract this module generates (1.8 through 1.13 share it;
/// 1.14 encodes the cluster ID in standard base64 instead of URL-safe).
const OLDEST_SUPPORTED: (u32, u32) = (1, 8);
const NEWEST_SUPPORTED: (u32, u32) = (1, 14);
/// The first version whose cluster ID is standard base64.
const STANDARD_CLUSTER_ID_SINCE: (u32, u32) = (1, 14);

/// DER prefix of a version-1 PKCS#8 `PrivateKeyInfo` for Ed25519 (RFC 8410), followed by the
/// 32-byte seed: what Go's `x509.MarshalPKCS8PrivateKey` writes (48 bytes in all).
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

const PEM_CERTIFICATE: &str = "CERTIFICATE";
const PEM_EC_PRIVATE_KEY: &str = "EC PRIVATE KEY";
const PEM_ED25519_PRIVATE_KEY: &str = "ED25519 PRIVATE KEY";
const PEM_RSA_PRIVATE_KEY: &str = "RSA PRIVATE KEY";
const PEM_PRIVATE_KEY: &str = "PRIVATE KEY";
/// `crypto:x509.Redacted`: a key written as this literal is a redacted export.
const REDACTED: &str = "******";

/// Why a secrets bundle could not be generated, imported or used.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "unsupported talos version {0:?}: bootplane generates secrets for talos v1.8 to v1.13"
    )]
    UnsupportedVersion(String),
    #[error("secrets.yaml is not valid yaml: {0}")]
    Yaml(String),
    #[error("invalid secrets bundle: {}", join_errors(.0))]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    Crypto(String),
}

impl SecretsError {
    /// The fields an [`SecretsError::Invalid`] names, in the order found.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            SecretsError::Invalid(errors) => errors.iter().map(|e| e.field.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

/// One problem with one field of a bundle, e.g. `certs.os.key: key does not match certificate`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The YAML path of the field, as in `secrets.yaml` (`cluster.id`, `certs.k8s.crt`).
    pub field: String,
    pub reason: String,
}

impl FieldError {
    fn new(field: &str, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn crypto_error(what: &str, err: impl fmt::Display) -> SecretsError {
    SecretsError::Crypto(format!("{what}: {err}"))
}

/// The Kubernetes secrets-at-rest encryption key; a bundle has exactly one.
#[derive(Clone, PartialEq, Eq)]
enum EncryptionSecret {
    /// `secrets.secretboxencryptionsecret` (contract > 1.2, what bootplane generates).
    Secretbox(Zeroizing<String>),
    /// `secrets.aescbcencryptionsecret` (bundles made by Talos ≤ 1.2, accepted on import).
    AesCbc(Zeroizing<String>),
}

/// A CA certificate and its private key, both PEM text (as decoded from `secrets.yaml`).
#[derive(Clone, PartialEq, Eq)]
pub struct CertAndKey {
    crt: String,
    key: Zeroizing<String>,
}

impl CertAndKey {
    /// The certificate PEM text.
    pub fn crt_pem(&self) -> &str {
        &self.crt
    }

    /// The private key PEM text.
    pub fn key_pem(&self) -> &str {
        &self.key
    }

    /// Standard base64 of the certificate PEM, as it goes in machine configs and `secrets.yaml`.
    pub fn crt_b64(&self) -> String {
        STANDARD.encode(self.crt.as_bytes())
    }

    /// Standard base64 of the key PEM, as it goes in machine configs and `secrets.yaml`.
    pub fn key_b64(&self) -> String {
        STANDARD.encode(self.key.as_bytes())
    }
}

impl fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAndKey")
            .field("crt", &format_args!("<{} bytes of PEM>", self.crt.len()))
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

/// Every field of Talos's `secrets.yaml`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretsBundle {
    cluster_id: Zeroizing<String>,
    cluster_secret: Zeroizing<String>,
    bootstrap_token: Zeroizing<String>,
    encryption: EncryptionSecret,
    trustd_token: Zeroizing<String>,
    etcd: CertAndKey,
    k8s: CertAndKey,
    k8s_aggregator: CertAndKey,
    k8s_service_account_key: Zeroizing<String>,
    os: CertAndKey,
}

impl fmt::Debug for SecretsBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = format_args!("<redacted>");
        let encryption = match self.encryption {
            EncryptionSecret::Secretbox(_) => "secretbox <redacted>",
            EncryptionSecret::AesCbc(_) => "aescbc <redacted>",
        };
        f.debug_struct("SecretsBundle")
            .field("cluster_id", &redacted)
            .field("cluster_secret", &redacted)
            .field("bootstrap_token", &redacted)
            .field("encryption", &format_args!("{encryption}"))
            .field("trustd_token", &redacted)
            .field("etcd", &self.etcd)
            .field("k8s", &self.k8s)
            .field("k8s_aggregator", &self.k8s_aggregator)
            .field("k8s_service_account_key", &redacted)
            .field("os", &self.os)
            .finish()
    }
}

impl SecretsBundle {
    /// Generates a new bundle as `talosctl gen secrets --talos-version <talos_version>` does, with
    /// `now` as the CAs' NotBefore. Versions 1.8 to 1.14 (`v1.11`, `v1.11.6`, `1.12.0-beta.1`…)
    /// share one contract: secretbox encryption secret, RSA-4096 service-account key, ECDSA
    /// P-256 etcd/Kubernetes/aggregator CAs and an Ed25519 OS CA; from 1.14 the cluster ID is
    /// standard base64 (URL-safe before). Other versions are refused.
    pub fn generate(talos_version: &str, now: SystemTime) -> Result<SecretsBundle, SecretsError> {
        check_version(talos_version)?;
        let id_engine = cluster_id_encoding(talos_version);
        let now = to_datetime(now)?;
        let etcd = new_ca(KeyAlg::EcdsaP256, Some("etcd"), now)?;
        let k8s = new_ca(KeyAlg::EcdsaP256, Some("kubernetes"), now)?;
        let k8s_aggregator = new_ca(KeyAlg::EcdsaP256, None, now)?;
        let os = new_ca(KeyAlg::Ed25519, Some("talos"), now)?;
        let service_account = new_key(KeyAlg::Rsa)?;
        Ok(SecretsBundle {
            cluster_id: Zeroizing::new(id_engine.encode(random_bytes(RANDOM_SECRET_BYTES))),
            cluster_secret: Zeroizing::new(STANDARD.encode(random_bytes(RANDOM_SECRET_BYTES))),
            bootstrap_token: Zeroizing::new(new_token()),
            encryption: EncryptionSecret::Secretbox(Zeroizing::new(
                STANDARD.encode(random_bytes(RANDOM_SECRET_BYTES)),
            )),
            trustd_token: Zeroizing::new(new_token()),
            etcd,
            k8s,
            k8s_aggregator,
            k8s_service_account_key: service_account.pem,
            os,
        })
    }

    /// `cluster.id`: 32 random bytes, URL-safe base64 with padding (Talos 1.8 – 1.13).
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// `cluster.secret`: 32 random bytes, standard base64.
    pub fn cluster_secret(&self) -> &str {
        &self.cluster_secret
    }

    /// `secrets.bootstraptoken`, `[a-z0-9]{6}.[a-z0-9]{16}` (machine config `cluster.token`).
    pub fn bootstrap_token(&self) -> &str {
        &self.bootstrap_token
    }

    /// `secrets.secretboxencryptionsecret`, set on every generated bundle.
    pub fn secretbox_secret(&self) -> Option<&str> {
        match &self.encryption {
            EncryptionSecret::Secretbox(key) => Some(key),
            EncryptionSecret::AesCbc(_) => None,
        }
    }

    /// `secrets.aescbcencryptionsecret`, only in bundles imported from Talos ≤ 1.2.
    pub fn aescbc_secret(&self) -> Option<&str> {
        match &self.encryption {
            EncryptionSecret::AesCbc(key) => Some(key),
            EncryptionSecret::Secretbox(_) => None,
        }
    }

    /// `trustdinfo.token` (machine config `machine.token`).
    pub fn trustd_token(&self) -> &str {
        &self.trustd_token
    }

    /// `certs.etcd` (machine config `cluster.etcd.ca`).
    pub fn etcd_ca(&self) -> &CertAndKey {
        &self.etcd
    }

    /// `certs.k8s` (machine config `cluster.ca`).
    pub fn k8s_ca(&self) -> &CertAndKey {
        &self.k8s
    }

    /// `certs.k8saggregator` (machine config `cluster.aggregatorCA`).
    pub fn k8s_aggregator_ca(&self) -> &CertAndKey {
        &self.k8s_aggregator
    }

    /// `certs.os` (machine config `machine.ca`).
    pub fn os_ca(&self) -> &CertAndKey {
        &self.os
    }

    /// `certs.k8sserviceaccount.key` as PEM text.
    pub fn k8s_service_account_key_pem(&self) -> &str {
        &self.k8s_service_account_key
    }

    /// `certs.k8sserviceaccount.key` as standard base64 of the PEM (machine config
    /// `cluster.serviceAccount.key`).
    pub fn k8s_service_account_key_b64(&self) -> String {
        STANDARD.encode(self.k8s_service_account_key.as_bytes())
    }
}

// ---------------------------------------------------------------------------------------------
// Versions, time, randomness

/// The base64 flavour of a new cluster ID for `version`.
fn cluster_id_encoding(version: &str) -> GeneralPurpose {
    match parse_minor(version) {
        Some(v) if v >= STANDARD_CLUSTER_ID_SINCE => STANDARD,
        _ => URL_SAFE,
    }
}

/// `(major, minor)` of `v1.11`, `1.11.6`, `v1.12.0-beta.1`.
fn parse_minor(version: &str) -> Option<(u32, u32)> {
    let rest = version.trim().strip_prefix('v').unwrap_or(version.trim());
    let mut parts = rest.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn check_version(version: &str) -> Result<(), SecretsError> {
    match parse_minor(version) {
        Some(v) if (OLDEST_SUPPORTED..=NEWEST_SUPPORTED).contains(&v) => Ok(()),
        _ => Err(SecretsError::UnsupportedVersion(version.to_string())),
    }
}

/// `now` in whole seconds (certificates carry whole seconds; Go's encoder truncates the same
/// way), refused before 1970 or when `now + 10 years` cannot be written in a certificate.
fn to_datetime(now: SystemTime) -> Result<OffsetDateTime, SecretsError> {
    let out_of_range =
        || SecretsError::Crypto("the clock is outside what certificates can carry".into());
    let t = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(out_of_range)?;
    // GeneralizedTime ends at year 9999; leave room for the longest validity.
    match t.checked_add(CA_VALIDITY) {
        Some(end) if end.year() <= 9999 => Ok(t),
        _ => Err(out_of_range()),
    }
}

fn random_bytes(n: usize) -> Zeroizing<Vec<u8>> {
    let mut buf = Zeroizing::new(vec![0u8; n]);
    OsRng.fill_bytes(&mut buf);
    buf
}

/// `[a-z0-9]{6}.[a-z0-9]{16}`, as `secrets.genToken(6, 16)`.
fn new_token() -> String {
    let mut bytes = std::iter::repeat_with(|| {
        let mut b = [0u8; 1];
        OsRng.fill_bytes(&mut b);
        b[0]
    });
    let first = token_chars(&mut bytes, 6);
    let second = token_chars(&mut bytes, 16);
    format!("{first}.{second}")
}

/// `len` characters from the token alphabet, one per random byte below 252 (others are
/// skipped, so each character is uniform).
fn token_chars(bytes: &mut impl Iterator<Item = u8>, len: usize) -> String {
    bytes
        .filter(|b| *b < TOKEN_BYTE_LIMIT)
        .take(len)
        .map(|b| char::from(TOKEN_ALPHABET[usize::from(b) % TOKEN_ALPHABET.len()]))
        .collect()
}

fn is_bootstrap_token(token: &str) -> bool {
    let ok = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    matches!(token.split_once('.'), Some((id, secret)) if ok(id, 6) && ok(secret, 16))
}
