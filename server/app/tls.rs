//! The HTTPS listener's certificate: the operator's (`--tls-cert`, `--tls-key`), or one
//! bootplane made on its first start with rcgen and keeps in the data directory (mode 0600),
//! reused at every later start.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::config::TLS_GENERATED_DIR as GENERATED_DIR;
const GENERATED_CERT: &str = "cert.pem";
const GENERATED_KEY: &str = "key.pem";
/// How long a generated certificate is valid.
const GENERATED_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("cannot generate the https certificate: {0}")]
    Generate(String),
    #[error("the https certificate and key do not make a server configuration: {0}")]
    Config(String),
}

pub use crate::config::TlsCert as CertSource;

/// The TLS server configuration for the HTTPS listener (HTTP/1.1 by ALPN).
pub fn server_config(source: &CertSource) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (cert_path, key_path) = match source {
        CertSource::Files { cert, key } => (cert.clone(), key.clone()),
        CertSource::Generated { dir, ips, names } => ensure_generated(dir, ips, names)?,
    };
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let pem_err = |path: &Path, message: String| TlsError::Pem {
        path: path.to_path_buf(),
        message,
    };
    let chain = crate::talos::api::pem_certificates(&read(&cert_path)?)
        .map_err(|m| pem_err(&cert_path, m))?;
    let key =
        crate::talos::api::pem_private_key(&read(&key_path)?).map_err(|m| pem_err(&key_path, m))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The generated certificate's files, made now if they are not there yet.
fn ensure_generated(
    dir: &Path,
    ips: &[IpAddr],
    names: &[String],
) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = dir.join(GENERATED_CERT);
    let key = dir.join(GENERATED_KEY);
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let generate = |e: &dyn std::fmt::Display| TlsError::Generate(e.to_string());
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| generate(&e))?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bootplane");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + GENERATED_VALIDITY;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let pair =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| generate(&e))?;
    let issued = params.self_signed(&pair).map_err(|e| generate(&e))?;
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    write_private(&key, pair.serialize_pem().as_bytes()).map_err(write_err(&key))?;
    write_private(&cert, issued.pem().as_bytes()).map_err(write_err(&cert))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed certificate for https");
    Ok((cert, key))
}

/// Writes `bytes` to a new file of mode 0600, then moves it into place.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let part = path.with_extension("part");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&part)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&part, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let source = CertSource::Generated {
            dir: dir.path().join(GENERATED_DIR),
            ips: vec!["192.0.2.1".parse().unwrap()],
            names: vec!["bootplane".into()],
        };
        server_config(&source).unwrap();
        let cert = dir.path().join(GENERATED_DIR).join(GENERATED_CERT);
        let key = dir.path().join(GENERATED_DIR).join(GENERATED_KEY);
        let first = std::fs::read(&cert).unwrap();
        for file in [&cert, &key] {
            let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
        server_config(&source).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), first, "made again");
    }
}
