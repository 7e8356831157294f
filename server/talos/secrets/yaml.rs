//! Reading and writing `secrets.yaml` (talosctl's layout): every problem found while reading,
//! each naming its field.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde_yaml_ng::{Mapping, Value};
use zeroize::Zeroizing;

use super::certs::{key_matches_certificate, parse_certificate};
use super::keys::{parse_private_key, ParsedKey};
use super::pem_format::pem_contents;
use super::{
    is_bootstrap_token, CertAndKey, EncryptionSecret, FieldError, SecretsBundle, SecretsError,
    PEM_CERTIFICATE, RANDOM_SECRET_BYTES, REDACTED,
};

impl SecretsBundle {
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
pub(super) fn yaml_scalar(s: &str) -> String {
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
