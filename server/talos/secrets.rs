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

use std::fmt;
use std::time::SystemTime;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore;
use rcgen::string::{BmpString, Ia5String, PrintableString, TeletexString, UniversalString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
    SignatureAlgorithm,
};
use serde_yaml_ng::{Mapping, Value};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;
use zeroize::Zeroizing;

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

    /// Reads a `secrets.yaml` as `talosctl gen secrets` writes it (any valid YAML layout).
    ///
    /// Refused, with every problem listed and each naming its field: what Talos's
    /// `Bundle.Validate` refuses (a missing or empty `cluster.id`, `cluster.secret`,
    /// `secrets.bootstraptoken`, `trustdinfo.token`; neither or both encryption secrets; a CA
    /// certificate or key, or the service-account key, that does not parse), and also a CA key
    /// that does not match its certificate, a redacted (`******`) key, an encryption secret or
    /// cluster secret that is not standard base64 of a usable key size, and a bootstrap token
    /// that is not `[a-z0-9]{6}.[a-z0-9]{16}` (Kubernetes would reject it).
    pub fn from_yaml(text: &str) -> Result<SecretsBundle, SecretsError> {
        let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(text, &e))?;
        let mut r = Reader::default();
        let empty = Mapping::new();
        let root = match &doc {
            Value::Mapping(m) => Some(m),
            Value::Null => Some(&empty),
            _ => {
                return Err(SecretsError::Invalid(vec![FieldError::new(
                    "secrets.yaml",
                    "expected a mapping at the top level",
                )]))
            }
        };

        let cluster = r.section(root, "cluster", "cluster");
        let cluster_id = r.string(cluster, "cluster.id", "id");
        let cluster_secret = r.string(cluster, "cluster.secret", "secret");
        if let Some(secret) = &cluster_secret {
            r.check_base64_key(secret, "cluster.secret", &[RANDOM_SECRET_BYTES]);
        }

        let secrets = r.section(root, "secrets", "secrets");
        let bootstrap_token = r.string(secrets, "secrets.bootstraptoken", "bootstraptoken");
        if let Some(token) = &bootstrap_token {
            if !is_bootstrap_token(token) {
                r.error(
                    "secrets.bootstraptoken",
                    "must match [a-z0-9]{6}.[a-z0-9]{16} (a kubernetes bootstrap token)",
                );
            }
        }
        let aescbc = r.optional_string(
            secrets,
            "secrets.aescbcencryptionsecret",
            "aescbcencryptionsecret",
        );
        let secretbox = r.optional_string(
            secrets,
            "secrets.secretboxencryptionsecret",
            "secretboxencryptionsecret",
        );
        let encryption = match (secrets, aescbc, secretbox) {
            (None, _, _) => None,
            (Some(_), Some(_), Some(_)) => {
                r.error(
                    "secrets",
                    "only one of [secrets.secretboxencryptionsecret, secrets.aescbcencryptionsecret] is allowed",
                );
                None
            }
            (Some(_), None, None) => {
                r.error(
                    "secrets",
                    "one of [secrets.secretboxencryptionsecret, secrets.aescbcencryptionsecret] is required",
                );
                None
            }
            (Some(_), None, Some(key)) => {
                r.check_base64_key(&key, "secrets.secretboxencryptionsecret", &[32]);
                Some(EncryptionSecret::Secretbox(Zeroizing::new(key)))
            }
            (Some(_), Some(key), None) => {
                r.check_base64_key(&key, "secrets.aescbcencryptionsecret", &[16, 24, 32]);
                Some(EncryptionSecret::AesCbc(Zeroizing::new(key)))
            }
        };

        let trustd = r.section(root, "trustdinfo", "trustdinfo");
        let trustd_token = r.string(trustd, "trustdinfo.token", "token");

        let certs = r.section(root, "certs", "certs");
        let etcd = r.ca(certs, "certs.etcd", "etcd");
        let k8s = r.ca(certs, "certs.k8s", "k8s");
        let k8s_aggregator = r.ca(certs, "certs.k8saggregator", "k8saggregator");
        let service_account = r.section(certs, "certs.k8sserviceaccount", "k8sserviceaccount");
        let k8s_service_account_key = r.key(service_account, "certs.k8sserviceaccount.key", "key");
        let os = r.ca(certs, "certs.os", "os");

        match (
            cluster_id,
            cluster_secret,
            bootstrap_token,
            encryption,
            trustd_token,
            etcd,
            k8s,
            k8s_aggregator,
            k8s_service_account_key,
            os,
        ) {
            (
                Some(cluster_id),
                Some(cluster_secret),
                Some(bootstrap_token),
                Some(encryption),
                Some(trustd_token),
                Some(etcd),
                Some(k8s),
                Some(k8s_aggregator),
                Some((k8s_service_account_key, _)),
                Some(os),
            ) if r.errors.is_empty() => Ok(SecretsBundle {
                cluster_id: Zeroizing::new(cluster_id),
                cluster_secret: Zeroizing::new(cluster_secret),
                bootstrap_token: Zeroizing::new(bootstrap_token),
                encryption,
                trustd_token: Zeroizing::new(trustd_token),
                etcd,
                k8s,
                k8s_aggregator,
                k8s_service_account_key,
                os,
            }),
            _ => Err(SecretsError::Invalid(r.errors)),
        }
    }

    /// Writes the bundle as `talosctl gen secrets` does: same keys, order and 4-space indent,
    /// certificates and keys as single-line standard base64 of their PEM text.
    pub fn to_yaml(&self) -> String {
        let mut out = String::with_capacity(8192);
        let mut line = |indent: usize, key: &str, value: Option<&str>| {
            out.push_str(&" ".repeat(indent));
            out.push_str(key);
            out.push(':');
            if let Some(value) = value {
                out.push(' ');
                out.push_str(&yaml_scalar(value));
            }
            out.push('\n');
        };
        line(0, "cluster", None);
        line(4, "id", Some(&self.cluster_id));
        line(4, "secret", Some(&self.cluster_secret));
        line(0, "secrets", None);
        line(4, "bootstraptoken", Some(&self.bootstrap_token));
        match &self.encryption {
            EncryptionSecret::AesCbc(key) => line(4, "aescbcencryptionsecret", Some(key)),
            EncryptionSecret::Secretbox(key) => line(4, "secretboxencryptionsecret", Some(key)),
        }
        line(0, "trustdinfo", None);
        line(4, "token", Some(&self.trustd_token));
        line(0, "certs", None);
        for (name, ca) in [
            ("etcd", &self.etcd),
            ("k8s", &self.k8s),
            ("k8saggregator", &self.k8s_aggregator),
        ] {
            line(4, name, None);
            line(8, "crt", Some(&ca.crt_b64()));
            line(8, "key", Some(&Zeroizing::new(ca.key_b64())));
        }
        line(4, "k8sserviceaccount", None);
        line(
            8,
            "key",
            Some(&Zeroizing::new(self.k8s_service_account_key_b64())),
        );
        line(4, "os", None);
        line(8, "crt", Some(&self.os.crt_b64()));
        line(8, "key", Some(&Zeroizing::new(self.os.key_b64())));
        out
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

    /// A Talos API client certificate and key (PEM) as `talosctl gen config` puts in
    /// talosconfig: subject `O=os:admin`, signed by the OS CA, key of the CA's type (Ed25519 for
    /// bundles bootplane generates), KeyUsage digitalSignature, EKU clientAuth only, valid one
    /// year from `now`.
    pub fn talos_client_cert(&self, now: SystemTime) -> Result<(String, String), SecretsError> {
        let now = to_datetime(now)?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, printable("os:admin")?);
        issue_client_cert(
            "certs.os",
            &self.os,
            ClientCert {
                subject,
                key_usages: vec![KeyUsagePurpose::DigitalSignature],
                not_before: now,
                not_after: now + CLIENT_CERT_VALIDITY,
            },
        )
    }

    /// An admin client certificate and key (PEM) for kubectl, as Talos's
    /// `MachineService.Kubeconfig` makes it: `O=system:masters, CN=admin`, signed by the
    /// Kubernetes CA, key of the CA's type (ECDSA P-256, `EC PRIVATE KEY`, for generated
    /// bundles), KeyUsage digitalSignature + keyEncipherment, EKU clientAuth, valid from
    /// `now - 10s` for one year.
    pub fn admin_kubeconfig_cert(&self, now: SystemTime) -> Result<(String, String), SecretsError> {
        let now = to_datetime(now)?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, printable("system:masters")?);
        subject.push(DnType::CommonName, printable("admin")?);
        issue_client_cert(
            "certs.k8s",
            &self.k8s,
            ClientCert {
                subject,
                key_usages: vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ],
                not_before: now - KUBECONFIG_BACKDATE,
                not_after: now + CLIENT_CERT_VALIDITY,
            },
        )
    }

    /// A talosconfig with one context named `cluster_name` (as `talosctl gen config` writes
    /// it; `endpoints` may be empty, as there), holding the OS CA and a fresh client
    /// certificate from [`SecretsBundle::talos_client_cert`].
    pub fn talosconfig(
        &self,
        cluster_name: &str,
        endpoints: &[String],
        now: SystemTime,
    ) -> Result<String, SecretsError> {
        let (crt, key) = self.talos_client_cert(now)?;
        let key = Zeroizing::new(key);
        let mut out = String::new();
        out.push_str(&format!("context: {}\n", yaml_scalar(cluster_name)));
        out.push_str("contexts:\n");
        out.push_str(&format!("    {}:\n", yaml_scalar(cluster_name)));
        if endpoints.is_empty() {
            out.push_str("        endpoints: []\n");
        } else {
            out.push_str("        endpoints:\n");
            for endpoint in endpoints {
                out.push_str(&format!("            - {}\n", yaml_scalar(endpoint)));
            }
        }
        out.push_str(&format!("        ca: {}\n", self.os.crt_b64()));
        out.push_str(&format!(
            "        crt: {}\n",
            STANDARD.encode(crt.as_bytes())
        ));
        out.push_str(&format!(
            "        key: {}\n",
            STANDARD.encode(key.as_bytes())
        ));
        Ok(out)
    }

    /// An admin kubeconfig for `endpoint_url` (the cluster endpoint, `https://<vip>:6443`) in
    /// the layout `kubectl`/client-go write: cluster `cluster_name`, user and context
    /// `admin@<cluster_name>` (namespace `default`), the Kubernetes CA as
    /// certificate-authority-data and a fresh [`SecretsBundle::admin_kubeconfig_cert`].
    pub fn kubeconfig(
        &self,
        cluster_name: &str,
        endpoint_url: &str,
        now: SystemTime,
    ) -> Result<String, SecretsError> {
        let (crt, key) = self.admin_kubeconfig_cert(now)?;
        let key = Zeroizing::new(key);
        let cluster = yaml_scalar(cluster_name);
        let admin = yaml_scalar(&format!("admin@{cluster_name}"));
        let mut out = String::new();
        out.push_str("apiVersion: v1\n");
        out.push_str("clusters:\n");
        out.push_str("- cluster:\n");
        out.push_str(&format!(
            "    certificate-authority-data: {}\n",
            self.k8s.crt_b64()
        ));
        out.push_str(&format!("    server: {}\n", yaml_scalar(endpoint_url)));
        out.push_str(&format!("  name: {cluster}\n"));
        out.push_str("contexts:\n");
        out.push_str("- context:\n");
        out.push_str(&format!("    cluster: {cluster}\n"));
        out.push_str("    namespace: default\n");
        out.push_str(&format!("    user: {admin}\n"));
        out.push_str(&format!("  name: {admin}\n"));
        out.push_str(&format!("current-context: {admin}\n"));
        out.push_str("kind: Config\n");
        out.push_str("preferences: {}\n");
        out.push_str("users:\n");
        out.push_str(&format!("- name: {admin}\n"));
        out.push_str("  user:\n");
        out.push_str(&format!(
            "    client-certificate-data: {}\n",
            STANDARD.encode(crt.as_bytes())
        ));
        out.push_str(&format!(
            "    client-key-data: {}\n",
            STANDARD.encode(key.as_bytes())
        ));
        Ok(out)
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

// ---------------------------------------------------------------------------------------------
// Keys

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyAlg {
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
struct NewKey {
    pem: Zeroizing<String>,
    signer: KeyPair,
}

fn signer(alg: KeyAlg, pkcs8: &[u8]) -> Result<KeyPair, String> {
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.into(), alg.signature_algorithm())
        .map_err(|e| format!("key cannot be used for signing: {e}"))
}

/// A fresh key of `alg` with Talos's PEM encoding: SEC1 `EC PRIVATE KEY` (curve OID and
/// public key included), PKCS#8 v1 `ED25519 PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY`.
fn new_key(alg: KeyAlg) -> Result<NewKey, SecretsError> {
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
struct ParsedKey {
    alg: KeyAlg,
    pkcs8: Zeroizing<Vec<u8>>,
}

/// Parses a private key PEM the way `crypto:x509.PEMEncodedKey.GetKey` does: `RSA PRIVATE
/// KEY` (PKCS#1), `EC PRIVATE KEY` (SEC1), `ED25519 PRIVATE KEY` and `PRIVATE KEY` (PKCS#8).
fn parse_private_key(pem_text: &str) -> Result<ParsedKey, String> {
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

// ---------------------------------------------------------------------------------------------
// Certificates

/// `crypto:x509.NewSelfSignedCertificateAuthority`: subject = issuer = `O=<org>` only (empty
/// DN without one), random 128-bit serial, valid 87600 h from `now`, KeyUsage critical
/// digitalSignature + keyCertSign, EKU serverAuth + clientAuth, BasicConstraints critical
/// CA:TRUE without pathlen, a random 20-byte SKI, no AKI, no SANs.
fn new_ca(
    alg: KeyAlg,
    organization: Option<&str>,
    now: OffsetDateTime,
) -> Result<CertAndKey, SecretsError> {
    let key = new_key(alg)?;
    let mut dn = DistinguishedName::new();
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, printable(org)?);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.serial_number = Some(random_serial());
    params.not_before = now;
    params.not_after = now + CA_VALIDITY;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_identifier_method = KeyIdMethod::PreSpecified(random_bytes(SKI_BYTES).to_vec());
    params.use_authority_key_identifier_extension = false;
    let cert = params
        .self_signed(&key.signer)
        .map_err(|e| crypto_error("signing a CA certificate", e))?;
    Ok(CertAndKey {
        crt: pem_encode(PEM_CERTIFICATE, cert.der()),
        key: key.pem,
    })
}

fn random_serial() -> SerialNumber {
    SerialNumber::from_slice(&random_bytes(SERIAL_BYTES))
}

fn printable(s: &str) -> Result<DnValue, SecretsError> {
    PrintableString::try_from(s)
        .map(DnValue::PrintableString)
        .map_err(|e| crypto_error("encoding a subject name", e))
}

struct ClientCert {
    subject: DistinguishedName,
    key_usages: Vec<KeyUsagePurpose>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// `crypto:x509.NewKeyPair` + `NewCertificateFromCSR`: a key of the CA's type, a leaf
/// certificate with the given subject and usages, EKU clientAuth, no BasicConstraints, no
/// SKI, AKI = the CA's SKI, issuer = the CA's subject byte for byte.
fn issue_client_cert(
    field: &str,
    ca: &CertAndKey,
    leaf: ClientCert,
) -> Result<(String, String), SecretsError> {
    let invalid = |reason: String| SecretsError::Invalid(vec![FieldError::new(field, reason)]);
    let ca_der = pem_contents(&ca.crt, PEM_CERTIFICATE).map_err(invalid)?;
    let ca_cert = parse_certificate(&ca_der).map_err(invalid)?;
    let ca_key = parse_private_key(&ca.key).map_err(invalid)?;
    let ca_signer = signer(ca_key.alg, &ca_key.pkcs8).map_err(invalid)?;
    let issuer_dn = distinguished_name(ca_cert.subject()).map_err(invalid)?;
    let ca_ski = subject_key_id(&ca_cert);

    let key = new_key(ca_key.alg)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = leaf.subject;
    params.serial_number = Some(random_serial());
    params.not_before = leaf.not_before;
    params.not_after = leaf.not_after;
    params.is_ca = IsCa::NoCa;
    params.key_usages = leaf.key_usages;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = ca_ski.is_some();

    let mut issuer_params = CertificateParams::default();
    issuer_params.distinguished_name = issuer_dn;
    issuer_params.key_identifier_method = KeyIdMethod::PreSpecified(ca_ski.unwrap_or_default());
    let issuer = Issuer::new(issuer_params, ca_signer);
    let cert = params
        .signed_by(&key.signer, &issuer)
        .map_err(|e| crypto_error("signing a client certificate", e))?;

    // Go (talosctl, apid, kube-apiserver) finds a certificate's parent by comparing the raw
    // issuer bytes with the CA's raw subject, so the re-encoded name must be identical.
    let issued = parse_certificate(cert.der()).map_err(SecretsError::Crypto)?;
    if issued.issuer().as_raw() != ca_cert.subject().as_raw() {
        return Err(invalid(
            "the CA subject cannot be reproduced byte for byte as an issuer name".to_string(),
        ));
    }
    Ok((pem_encode(PEM_CERTIFICATE, cert.der()), key.pem.to_string()))
}

/// One whole DER certificate, nothing after it (Go's `x509.ParseCertificate`).
fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing data after the certificate".to_string()),
        Err(e) => Err(format!("failed to parse certificate: {e}")),
    }
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

/// The CA's subject as rcgen's name type, keeping each attribute's string type so that the
/// issuer name re-encodes to the same bytes.
fn distinguished_name(name: &X509Name<'_>) -> Result<DistinguishedName, String> {
    let unsupported = || "the CA subject uses a name form bootplane cannot re-encode".to_string();
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(unsupported());
        };
        let oid: Vec<u64> = attr.attr_type().iter().ok_or_else(unsupported)?.collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err(unsupported());
        }
        let value = attr.attr_value();
        let data = value.data.to_vec();
        let text = || String::from_utf8(data.clone()).map_err(|_| unsupported());
        let dn_value = match value.tag() {
            Tag::PrintableString => DnValue::PrintableString(
                PrintableString::try_from(text()?).map_err(|_| unsupported())?,
            ),
            Tag::Utf8String => DnValue::Utf8String(text()?),
            Tag::Ia5String => {
                DnValue::Ia5String(Ia5String::try_from(text()?).map_err(|_| unsupported())?)
            }
            Tag::T61String => {
                DnValue::TeletexString(TeletexString::try_from(text()?).map_err(|_| unsupported())?)
            }
            Tag::BmpString => DnValue::BmpString(
                BmpString::from_utf16be(data.clone()).map_err(|_| unsupported())?,
            ),
            Tag::UniversalString => DnValue::UniversalString(
                UniversalString::from_utf32be(data.clone()).map_err(|_| unsupported())?,
            ),
            _ => return Err(unsupported()),
        };
        dn.push(ty, dn_value);
    }
    Ok(dn)
}

/// Whether `key` is the private half of the certificate's public key.
fn key_matches_certificate(cert: &X509Certificate<'_>, key: &ParsedKey) -> Result<bool, String> {
    use rcgen::PublicKeyData as _;
    let signer = signer(key.alg, &key.pkcs8)?;
    let cert_spki = cert.public_key();
    let cert_key = cert_spki.subject_public_key.data.as_ref();
    Ok(match key.alg {
        // Compare points uncompressed, whatever form the certificate uses.
        KeyAlg::EcdsaP256 => p256::PublicKey::from_sec1_bytes(cert_key)
            .map(|pk| {
                use p256::elliptic_curve::sec1::ToEncodedPoint as _;
                pk.to_encoded_point(false).as_bytes() == signer.der_bytes()
            })
            .unwrap_or(false),
        KeyAlg::Ed25519 | KeyAlg::Rsa => cert_key == signer.der_bytes(),
    })
}

// ---------------------------------------------------------------------------------------------
// PEM, base64, YAML

/// PEM as Go's `pem.EncodeToMemory` writes it: 64-column base64 lines, LF, final newline.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside the first PEM block of `text`, which must carry `label`.
fn pem_contents(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let block = pem::parse(text).map_err(|_| "no PEM block found".to_string())?;
    if block.tag() != label {
        return Err(format!(
            "expected a {label} PEM block, found {:?}",
            block.tag()
        ));
    }
    Ok(block.contents().to_vec())
}

/// Standard base64 as Go's `base64.StdEncoding.DecodeString` reads it: padding required, line
/// breaks ignored, stray trailing bits tolerated.
const GO_STD_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

fn decode_go_base64(s: &str) -> Option<Zeroizing<Vec<u8>>> {
    let compact: Zeroizing<String> =
        Zeroizing::new(s.chars().filter(|c| *c != '\r' && *c != '\n').collect());
    GO_STD_BASE64
        .decode(compact.as_bytes())
        .ok()
        .map(Zeroizing::new)
}

/// `s` as a YAML scalar: plain when YAML reads it back as the same string, else double-quoted.
fn yaml_scalar(s: &str) -> String {
    let plain_ok = !s.is_empty()
        && !s.contains(['\n', '\r', '\t', '"', '\''])
        && matches!(serde_yaml_ng::from_str::<Value>(s), Ok(Value::String(ref v)) if v == s);
    if plain_ok {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

/// A YAML syntax error with the section it occurred in (`… (in certs.os)`), so that a
/// truncated or hand-edited file points at the field. Only key names are quoted, never values.
fn yaml_error(text: &str, err: &serde_yaml_ng::Error) -> SecretsError {
    match err.location().map(|loc| yaml_section_at(text, loc.line())) {
        Some(Some(section)) => SecretsError::Yaml(format!("{err} (in {section})")),
        Some(None) => SecretsError::Yaml(format!("{err} (at the top level)")),
        None => SecretsError::Yaml(err.to_string()),
    }
}

/// The block-mapping path (`certs.os`) enclosing 1-based `line`, from indentation alone.
fn yaml_section_at(text: &str, line: usize) -> Option<String> {
    let indent_of = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let mut stack: Vec<(usize, &str)> = Vec::new();
    let mut lines = text.lines();
    for l in lines.by_ref().take(line.saturating_sub(1)) {
        let trimmed = l.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
            continue;
        }
        let indent = indent_of(l);
        stack.retain(|(i, _)| *i < indent);
        if let Some(key) = trimmed.strip_suffix(':') {
            if !key.contains([' ', ':', '"', '\'']) {
                stack.push((indent, key));
            }
        }
    }
    if let Some(l) = lines.next().filter(|l| !l.trim().is_empty()) {
        let indent = indent_of(l);
        stack.retain(|(i, _)| *i < indent);
    }
    (!stack.is_empty()).then(|| stack.iter().map(|(_, k)| *k).collect::<Vec<_>>().join("."))
}

/// Walks the YAML document, collecting every problem instead of stopping at the first.
#[derive(Default)]
struct Reader {
    errors: Vec<FieldError>,
}

impl Reader {
    fn error(&mut self, field: &str, reason: impl Into<String>) {
        self.errors.push(FieldError::new(field, reason));
    }

    /// A required mapping `key` of `parent`; `None` (and an error) when missing. A missing
    /// parent was already reported.
    fn section<'a>(
        &mut self,
        parent: Option<&'a Mapping>,
        field: &str,
        key: &str,
    ) -> Option<&'a Mapping> {
        static EMPTY: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
        match parent?.get(key) {
            None => {
                self.error(field, "is required");
                None
            }
            // `trustdinfo:` with nothing under it: report the fields it lacks.
            Some(Value::Null) => Some(EMPTY.get_or_init(Mapping::new)),
            Some(Value::Mapping(m)) => Some(m),
            Some(_) => {
                self.error(field, "expected a mapping");
                None
            }
        }
    }

    fn optional_string(
        &mut self,
        parent: Option<&Mapping>,
        field: &str,
        key: &str,
    ) -> Option<String> {
        match parent?.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.error(field, "expected a string");
                None
            }
        }
    }

    fn string(&mut self, parent: Option<&Mapping>, field: &str, key: &str) -> Option<String> {
        let parent = parent?;
        let value = self.optional_string(Some(parent), field, key);
        if value.is_none()
            && matches!(
                parent.get(key),
                None | Some(Value::Null) | Some(Value::String(_))
            )
        {
            self.error(field, "is required");
        }
        value
    }

    fn check_base64_key(&mut self, value: &str, field: &str, sizes: &[usize]) {
        match decode_go_base64(value) {
            Some(bytes) if sizes.contains(&bytes.len()) => {}
            Some(bytes) => self.error(
                field,
                format!(
                    "must be standard base64 of {} bytes, is {} bytes",
                    sizes
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" or "),
                    bytes.len()
                ),
            ),
            None => self.error(field, "is not standard base64"),
        }
    }

    /// A base64-of-PEM field decoded to PEM text.
    fn pem_field(&mut self, parent: Option<&Mapping>, field: &str, key: &str) -> Option<String> {
        let encoded = Zeroizing::new(self.string(parent, field, key)?);
        if encoded.as_str() == REDACTED {
            self.error(
                field,
                "is redacted (******); import the unredacted secrets.yaml",
            );
            return None;
        }
        let Some(bytes) = decode_go_base64(&encoded) else {
            self.error(field, "is not standard base64");
            return None;
        };
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) => Some(text),
            Err(e) => {
                drop(Zeroizing::new(e.into_bytes()));
                self.error(field, "does not decode to PEM text");
                None
            }
        }
    }

    /// A private key field: PEM text and the parsed key.
    fn key(
        &mut self,
        parent: Option<&Mapping>,
        field: &str,
        key: &str,
    ) -> Option<(Zeroizing<String>, ParsedKey)> {
        let pem_text = Zeroizing::new(self.pem_field(parent, field, key)?);
        match parse_private_key(&pem_text) {
            Ok(parsed) => Some((pem_text, parsed)),
            Err(reason) => {
                self.error(field, reason);
                None
            }
        }
    }

    /// A CA: `<field>.crt` must be one certificate, `<field>.key` a key that matches it.
    fn ca(&mut self, certs: Option<&Mapping>, field: &str, key: &str) -> Option<CertAndKey> {
        let section = self.section(certs, field, key)?;
        let crt_field = format!("{field}.crt");
        let key_field = format!("{field}.key");
        let crt = self.pem_field(Some(section), &crt_field, "crt");
        let private = self.key(Some(section), &key_field, "key");
        let crt = crt?;
        let der = match pem_contents(&crt, PEM_CERTIFICATE) {
            Ok(der) => der,
            Err(reason) => {
                self.error(&crt_field, reason);
                return None;
            }
        };
        let cert = match parse_certificate(&der) {
            Ok(cert) => cert,
            Err(reason) => {
                self.error(&crt_field, reason);
                return None;
            }
        };
        let (key_pem, parsed) = private?;
        match key_matches_certificate(&cert, &parsed) {
            Ok(true) => Some(CertAndKey { crt, key: key_pem }),
            Ok(false) => {
                self.error(
                    &key_field,
                    format!("key does not match the certificate in {crt_field}"),
                );
                None
            }
            Err(reason) => {
                self.error(&key_field, reason);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;
    use std::time::{Duration as StdDuration, UNIX_EPOCH};

    use sha2::{Digest as _, Sha256};

    use super::*;

    /// 2026-03-01T12:00:00Z
    fn t0() -> SystemTime {
        UNIX_EPOCH + StdDuration::from_secs(1_772_366_400)
    }

    /// One generated bundle shared by the tests (RSA-4096 generation is the slow part).
    fn bundle() -> &'static SecretsBundle {
        static BUNDLE: OnceLock<SecretsBundle> = OnceLock::new();
        BUNDLE.get_or_init(|| SecretsBundle::generate("v1.11.6", t0()).unwrap())
    }

    fn cert_der(pem_text: &str) -> Vec<u8> {
        pem_contents(pem_text, PEM_CERTIFICATE).unwrap()
    }

    fn key_block(pem_text: &str) -> (String, Vec<u8>) {
        let block = pem::parse(pem_text).unwrap();
        (block.tag().to_string(), block.contents().to_vec())
    }

    #[test]
    fn tokens_have_the_kubeadm_shape() {
        for _ in 0..200 {
            let token = new_token();
            assert!(is_bootstrap_token(&token), "{token}");
        }
        let b = bundle();
        assert!(is_bootstrap_token(b.bootstrap_token()));
        assert!(is_bootstrap_token(b.trustd_token()));
        assert_ne!(b.bootstrap_token(), b.trustd_token());
    }

    #[test]
    fn token_characters_skip_bytes_at_or_above_252_and_map_modulo_36() {
        // 252..=255 would map to '0'..='3' a 8th time and bias the alphabet: they are skipped.
        // 0 -> '0', 35 -> 'z', 36 -> '0', 251 (= 6*36+35) -> 'z', 10 -> 'a'
        let mut bytes = [252u8, 253, 254, 255, 0, 35, 36, 251, 10, 7].into_iter();
        assert_eq!(token_chars(&mut bytes, 5), "0z0za");
        assert_eq!(bytes.next(), Some(7), "stops after len characters");
    }

    #[test]
    fn bootstrap_token_check_rejects_wrong_shapes() {
        for bad in [
            "",
            "abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdef0",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdefg",
            "abcdef-0123456789abcdef",
            "abcdef.0123456789abcde_",
        ] {
            assert!(!is_bootstrap_token(bad), "{bad:?}");
        }
        assert!(is_bootstrap_token("abcdef.0123456789abcdef"));
    }

    #[test]
    fn cluster_id_is_url_safe_base64_of_32_bytes_with_padding() {
        let id = bundle().cluster_id();
        assert_eq!(id.len(), 44);
        assert!(id.ends_with('='));
        assert!(!id.contains(['+', '/']));
        assert_eq!(URL_SAFE.decode(id).unwrap().len(), 32);
    }

    #[test]
    fn cluster_secret_and_secretbox_are_standard_base64_of_32_bytes() {
        let b = bundle();
        for value in [b.cluster_secret(), b.secretbox_secret().unwrap()] {
            assert_eq!(value.len(), 44);
            assert!(!value.contains(['-', '_']));
            assert_eq!(STANDARD.decode(value).unwrap().len(), 32);
        }
        assert_eq!(b.aescbc_secret(), None);
    }

    #[test]
    fn random_values_differ_between_bundles() {
        let a = bundle();
        let b = SecretsBundle::generate("1.13", t0()).unwrap();
        assert_ne!(a.cluster_id(), b.cluster_id());
        assert_ne!(a.cluster_secret(), b.cluster_secret());
        assert_ne!(a.secretbox_secret(), b.secretbox_secret());
        assert_ne!(a.os_ca().key_pem(), b.os_ca().key_pem());
        assert_ne!(
            a.k8s_service_account_key_pem(),
            b.k8s_service_account_key_pem()
        );
    }

    #[test]
    fn key_pem_labels_are_the_ones_talos_writes() {
        let b = bundle();
        for ca in [b.etcd_ca(), b.k8s_ca(), b.k8s_aggregator_ca()] {
            assert_eq!(key_block(ca.key_pem()).0, "EC PRIVATE KEY");
        }
        assert_eq!(key_block(b.os_ca().key_pem()).0, "ED25519 PRIVATE KEY");
        assert_eq!(
            key_block(b.k8s_service_account_key_pem()).0,
            "RSA PRIVATE KEY"
        );
        for ca in [b.etcd_ca(), b.k8s_ca(), b.k8s_aggregator_ca(), b.os_ca()] {
            assert_eq!(key_block(ca.crt_pem()).0, "CERTIFICATE");
        }
    }

    #[test]
    fn ed25519_key_is_a_48_byte_pkcs8_v1_document() {
        let (_, der) = key_block(bundle().os_ca().key_pem());
        assert_eq!(der.len(), 48);
        assert_eq!(
            der[..16],
            [
                0x30, 0x2e, // SEQUENCE, 46 bytes
                0x02, 0x01, 0x00, // INTEGER 0: version v1, no public key
                0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, // AlgorithmIdentifier id-Ed25519
                0x04, 0x22, 0x04, 0x20, // OCTET STRING { OCTET STRING (32-byte seed) }
            ]
        );
    }

    #[test]
    fn ec_keys_are_sec1_with_curve_oid_and_public_key() {
        let (_, der) = key_block(bundle().etcd_ca().key_pem());
        // SEQUENCE { INTEGER 1, OCTET STRING (32), [0] { prime256v1 }, [1] { BIT STRING (65) } }
        assert_eq!(der.len(), 121);
        assert_eq!(der[..7], [0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20]);
        assert_eq!(
            der[39..51],
            [0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        );
        assert_eq!(der[51..56], [0xa1, 0x44, 0x03, 0x42, 0x00]);
        assert_eq!(der[56], 0x04, "uncompressed point");
    }

    #[test]
    fn service_account_key_is_pkcs1_rsa_4096() {
        use rsa::pkcs1::DecodeRsaPrivateKey as _;
        use rsa::traits::PublicKeyParts as _;
        let (_, der) = key_block(bundle().k8s_service_account_key_pem());
        let key = rsa::RsaPrivateKey::from_pkcs1_der(&der).unwrap();
        assert_eq!(key.n().bits(), 4096);
        assert_eq!(key.e(), &rsa::BigUint::from(65_537u32));
    }

    #[test]
    fn pem_text_is_go_shaped() {
        let pem_text = bundle().k8s_ca().crt_pem();
        assert!(pem_text.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem_text.ends_with("\n-----END CERTIFICATE-----\n"));
        for line in pem_text.lines() {
            assert!(line.len() <= 64);
        }
        assert!(!pem_text.contains('\r'));
    }

    #[test]
    fn base64_accessors_are_standard_base64_of_the_pem_text() {
        let b = bundle();
        let ca = b.os_ca();
        assert_eq!(
            STANDARD.decode(ca.crt_b64()).unwrap(),
            ca.crt_pem().as_bytes()
        );
        assert_eq!(
            STANDARD.decode(ca.key_b64()).unwrap(),
            ca.key_pem().as_bytes()
        );
        assert_eq!(
            STANDARD.decode(b.k8s_service_account_key_b64()).unwrap(),
            b.k8s_service_account_key_pem().as_bytes()
        );
        assert!(ca
            .crt_b64()
            .starts_with("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk"));
    }

    #[test]
    fn ca_certificates_have_talos_subjects_and_extensions() {
        let b = bundle();
        for (ca, subject, alg) in [
            (b.etcd_ca(), "O=etcd", "1.2.840.10045.4.3.2"),
            (b.k8s_ca(), "O=kubernetes", "1.2.840.10045.4.3.2"),
            (b.k8s_aggregator_ca(), "", "1.2.840.10045.4.3.2"),
            (b.os_ca(), "O=talos", "1.3.101.112"),
        ] {
            let der = cert_der(ca.crt_pem());
            let cert = parse_certificate(&der).unwrap();
            assert_eq!(cert.version().0, 2, "v3");
            assert_eq!(cert.subject().to_string(), subject);
            assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw());
            assert_eq!(cert.signature_algorithm.algorithm.to_string(), alg);
            let nb = cert.validity().not_before.timestamp();
            let na = cert.validity().not_after.timestamp();
            assert_eq!(nb, 1_772_366_400);
            assert_eq!(na - nb, 87_600 * 3600);
            assert!(cert.raw_serial().len() <= 17);
            let ku = cert.key_usage().unwrap().unwrap();
            assert!(ku.critical);
            assert!(ku.value.digital_signature() && ku.value.key_cert_sign());
            assert_eq!(ku.value.flags, 0b100001);
            let eku = cert.extended_key_usage().unwrap().unwrap();
            assert!(!eku.critical);
            assert!(eku.value.server_auth && eku.value.client_auth);
            assert!(eku.value.other.is_empty() && !eku.value.any);
            let bc = cert.basic_constraints().unwrap().unwrap();
            assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint.is_none());
            let ski = subject_key_id(&cert).unwrap();
            assert_eq!(ski.len(), 20);
            // Random, not derived from the key (as crypto >= v0.6).
            let spki_hash = Sha256::digest(cert.public_key().raw);
            assert_ne!(ski, spki_hash[..20].to_vec());
            assert!(cert.extensions().iter().all(|e| !matches!(
                e.parsed_extension(),
                ParsedExtension::AuthorityKeyIdentifier(_)
                    | ParsedExtension::SubjectAlternativeName(_)
            )));
            assert_eq!(cert.extensions().len(), 4);
        }
    }

    #[test]
    fn subject_organisations_are_printable_strings_like_go() {
        let der = cert_der(bundle().os_ca().crt_pem());
        let cert = parse_certificate(&der).unwrap();
        let attr = cert.subject().iter_organization().next().unwrap();
        assert_eq!(attr.attr_value().tag(), Tag::PrintableString);
    }

    #[test]
    fn yaml_round_trip_keeps_every_field() {
        let b = bundle();
        let text = b.to_yaml();
        let back = SecretsBundle::from_yaml(&text).unwrap();
        assert_eq!(&back, b);
        assert_eq!(back.cluster_id(), b.cluster_id());
        assert_eq!(back.cluster_secret(), b.cluster_secret());
        assert_eq!(back.bootstrap_token(), b.bootstrap_token());
        assert_eq!(back.secretbox_secret(), b.secretbox_secret());
        assert_eq!(back.aescbc_secret(), b.aescbc_secret());
        assert_eq!(back.trustd_token(), b.trustd_token());
        for (x, y) in [
            (back.etcd_ca(), b.etcd_ca()),
            (back.k8s_ca(), b.k8s_ca()),
            (back.k8s_aggregator_ca(), b.k8s_aggregator_ca()),
            (back.os_ca(), b.os_ca()),
        ] {
            assert_eq!(x.crt_pem(), y.crt_pem());
            assert_eq!(x.key_pem(), y.key_pem());
        }
        assert_eq!(
            back.k8s_service_account_key_pem(),
            b.k8s_service_account_key_pem()
        );
        assert_eq!(back.to_yaml(), text);
    }

    #[test]
    fn to_yaml_has_talosctl_layout() {
        let b = bundle();
        let text = b.to_yaml();
        let keys: Vec<&str> = text.lines().map(|l| l.split_once(':').unwrap().0).collect();
        assert_eq!(
            keys,
            [
                "cluster",
                "    id",
                "    secret",
                "secrets",
                "    bootstraptoken",
                "    secretboxencryptionsecret",
                "trustdinfo",
                "    token",
                "certs",
                "    etcd",
                "        crt",
                "        key",
                "    k8s",
                "        crt",
                "        key",
                "    k8saggregator",
                "        crt",
                "        key",
                "    k8sserviceaccount",
                "        key",
                "    os",
                "        crt",
                "        key",
            ]
        );
        assert!(text.contains(&format!("\n    id: {}\n", b.cluster_id())));
        assert!(text.contains(&format!("\n        key: {}\n", b.os_ca().key_b64())));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn values_that_yaml_would_retype_are_quoted_and_round_trip() {
        // An all-digit token is a float to YAML; Go's encoder quotes it, so must we.
        let text = bundle()
            .to_yaml()
            .replace(bundle().bootstrap_token(), "\"123456.1234567890123456\"");
        let b = SecretsBundle::from_yaml(&text).unwrap();
        assert_eq!(b.bootstrap_token(), "123456.1234567890123456");
        let out = b.to_yaml();
        assert!(out.contains("    bootstraptoken: \"123456.1234567890123456\"\n"));
        assert_eq!(SecretsBundle::from_yaml(&out).unwrap(), b);
    }

    #[test]
    fn yaml_scalar_quotes_only_when_needed() {
        assert_eq!(yaml_scalar("talos-default"), "talos-default");
        assert_eq!(
            yaml_scalar("https://10.0.0.1:6443"),
            "https://10.0.0.1:6443"
        );
        assert_eq!(yaml_scalar("admin@prod"), "admin@prod");
        assert_eq!(yaml_scalar("10.0.0.1"), "10.0.0.1");
        assert_eq!(yaml_scalar("true"), "\"true\"");
        assert_eq!(yaml_scalar("123"), "\"123\"");
        assert_eq!(yaml_scalar("a: b"), "\"a: b\"");
        assert_eq!(yaml_scalar("@x"), "\"@x\"");
        assert_eq!(yaml_scalar(""), "\"\"");
        assert_eq!(yaml_scalar("- x"), "\"- x\"");
        assert_eq!(yaml_scalar("x #y"), "\"x #y\"");
    }

    #[test]
    fn debug_output_redacts_every_secret() {
        let b = bundle();
        let debug = format!("{b:?} {:?}", b.os_ca());
        for secret in [
            b.cluster_id(),
            b.cluster_secret(),
            b.bootstrap_token(),
            b.secretbox_secret().unwrap(),
            b.trustd_token(),
        ] {
            assert!(!debug.contains(secret), "{debug}");
        }
        for ca in [b.etcd_ca(), b.k8s_ca(), b.k8s_aggregator_ca(), b.os_ca()] {
            let key_body = ca.key_pem().lines().nth(1).unwrap();
            assert!(!debug.contains(key_body));
            assert!(!debug.contains(&ca.key_b64()[40..80]));
        }
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn clocks_certificates_cannot_carry_are_refused_not_panicked_on() {
        let before_epoch = UNIX_EPOCH - StdDuration::from_secs(1);
        let year_9995 = UNIX_EPOCH + StdDuration::from_secs(253_250_000_000);
        for t in [before_epoch, year_9995] {
            assert!(matches!(to_datetime(t), Err(SecretsError::Crypto(_))));
            assert!(bundle().talos_client_cert(t).is_err());
        }
        assert_eq!(
            to_datetime(t0() + StdDuration::from_millis(999)).unwrap(),
            to_datetime(t0()).unwrap(),
            "sub-second part dropped"
        );
    }

    #[test]
    fn versions_outside_1_8_to_1_14_are_refused() {
        for bad in [
            "v1.7.6", "1.7", "v1.15.0", "v2.0.0", "", "latest", "v1", "1.x",
        ] {
            assert!(
                matches!(check_version(bad), Err(SecretsError::UnsupportedVersion(_))),
                "{bad:?}"
            );
        }
        for good in [
            "v1.8.0",
            "1.8",
            "v1.11",
            "v1.11.6",
            "1.12.0-beta.1",
            "v1.13.9",
            "v1.14.0-rc.1",
        ] {
            assert!(check_version(good).is_ok(), "{good:?}");
        }
        assert!(SecretsBundle::generate("v1.15.0", t0()).is_err());
    }

    #[test]
    fn from_1_14_the_cluster_id_is_standard_base64() {
        let bytes = [0xfb, 0xff, 0xfe];
        assert_eq!(cluster_id_encoding("v1.14.0-rc.1").encode(bytes), "+//+");
        assert_eq!(cluster_id_encoding("v1.13.9").encode(bytes), "-__-");
        let new = SecretsBundle::generate("v1.14.0-rc.1", t0()).unwrap();
        assert_eq!(STANDARD.decode(new.cluster_id()).unwrap().len(), 32);
    }

    #[test]
    fn client_certificate_issuer_is_the_ca_subject_byte_for_byte() {
        let b = bundle();
        for (ca, (crt, _)) in [
            (b.os_ca(), b.talos_client_cert(t0()).unwrap()),
            (b.k8s_ca(), b.admin_kubeconfig_cert(t0()).unwrap()),
        ] {
            let ca_der = cert_der(ca.crt_pem());
            let ca_cert = parse_certificate(&ca_der).unwrap();
            let der = cert_der(&crt);
            let leaf = parse_certificate(&der).unwrap();
            assert_eq!(leaf.issuer().as_raw(), ca_cert.subject().as_raw());
        }
    }

    #[test]
    fn talos_client_cert_matches_talosctl() {
        let b = bundle();
        let (crt, key) = b.talos_client_cert(t0()).unwrap();
        assert_eq!(key_block(&key).0, "ED25519 PRIVATE KEY");
        assert_eq!(key_block(&key).1.len(), 48);
        let der = cert_der(&crt);
        let cert = parse_certificate(&der).unwrap();
        assert_eq!(cert.subject().to_string(), "O=os:admin");
        assert_eq!(cert.issuer().to_string(), "O=talos");
        assert_eq!(cert.validity().not_before.timestamp(), 1_772_366_400);
        assert_eq!(
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp(),
            8_760 * 3600
        );
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert_eq!(ku.value.flags, 1, "digitalSignature only");
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.client_auth && !eku.value.server_auth && eku.value.other.is_empty());
        assert!(cert.basic_constraints().unwrap().is_none());
        assert!(subject_key_id(&cert).is_none());
        let ca_der = cert_der(b.os_ca().crt_pem());
        let ca_ski = subject_key_id(&parse_certificate(&ca_der).unwrap()).unwrap();
        let aki = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(aki, ca_ski);
        assert_eq!(cert.extensions().len(), 3);
    }

    #[test]
    fn admin_kubeconfig_cert_matches_talos() {
        let b = bundle();
        let (crt, key) = b.admin_kubeconfig_cert(t0()).unwrap();
        assert_eq!(key_block(&key).0, "EC PRIVATE KEY");
        let der = cert_der(&crt);
        let cert = parse_certificate(&der).unwrap();
        assert_eq!(cert.subject().to_string(), "O=system:masters, CN=admin");
        assert_eq!(cert.issuer().to_string(), "O=kubernetes");
        assert_eq!(cert.validity().not_before.timestamp(), 1_772_366_400 - 10);
        assert_eq!(
            cert.validity().not_after.timestamp(),
            1_772_366_400 + 8_760 * 3600
        );
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.value.digital_signature() && ku.value.key_encipherment());
        assert_eq!(ku.value.flags, 0b101);
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.client_auth && !eku.value.server_auth);
        assert_eq!(
            cert.signature_algorithm.algorithm.to_string(),
            "1.2.840.10045.4.3.2"
        );
    }

    #[test]
    fn empty_document_names_every_section() {
        let err = SecretsBundle::from_yaml("").unwrap_err();
        assert_eq!(err.fields(), ["cluster", "secrets", "trustdinfo", "certs"]);
        let err = SecretsBundle::from_yaml("- a\n- b\n").unwrap_err();
        assert!(err.to_string().contains("mapping"), "{err}");
    }

    #[test]
    fn error_messages_never_contain_secret_values() {
        let b = bundle();
        let text = b
            .to_yaml()
            .replace(b.cluster_secret(), "c2hvcnQ=")
            .replace(b.os_ca().key_b64().as_str(), &b.etcd_ca().key_b64());
        let err = SecretsBundle::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("cluster.secret"), "{err}");
        assert!(err.contains("certs.os.key"), "{err}");
        assert!(!err.contains(b.etcd_ca().key_pem().lines().nth(1).unwrap()));
        assert!(!err.contains("c2hvcnQ="));
    }
}
