//! Test certificates signed by a bundle's CA.

use std::net::IpAddr;
use std::time::SystemTime;

use rand::RngCore;
use rcgen::{
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};

use crate::talos::api::{pem_certificates, pem_private_key};
use crate::talos::secrets::CertAndKey;

use super::DoubleError;

/// A certificate for [`issue_cert`] to make.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub common_name: Option<String>,
    /// Subject O values (Talos roles for client certificates).
    pub organizations: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    pub dns_sans: Vec<String>,
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Issues a leaf certificate from `ca` (KeyUsage digitalSignature, the key type of the CA:
/// Ed25519 for an OS CA); returns (certificate PEM, key PEM). The key is PKCS#8, labelled
/// `ED25519 PRIVATE KEY` for Ed25519 as Talos does.
pub fn issue_cert(ca: &CertAndKey, spec: &LeafSpec) -> Result<(String, String), DoubleError> {
    let cert_err = |e: &dyn std::fmt::Display| DoubleError::Cert(e.to_string());
    let ca_der = pem_certificates(ca.crt_pem())
        .map_err(|e| cert_err(&e))?
        .into_iter()
        .next()
        .ok_or_else(|| DoubleError::Cert("no CA certificate".to_string()))?;
    let ca_key = match pem_private_key(ca.key_pem()).map_err(|e| cert_err(&e))? {
        rustls::pki_types::PrivateKeyDer::Pkcs8(der) => {
            KeyPair::try_from(der.secret_pkcs8_der()).map_err(|e| cert_err(&e))?
        }
        _ => return Err(DoubleError::Cert("CA key is not PKCS#8".to_string())),
    };
    let ed25519 = ca_key.algorithm() == &PKCS_ED25519;
    let key = KeyPair::generate_for(if ed25519 {
        &PKCS_ED25519
    } else {
        &PKCS_ECDSA_P256_SHA256
    })
    .map_err(|e| cert_err(&e))?;
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(|e| cert_err(&e))?;

    let mut params = rcgen::CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for o in &spec.organizations {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    if let Some(cn) = &spec.common_name {
        dn.push(DnType::CommonName, cn.as_str());
    }
    params.distinguished_name = dn;
    let mut serial = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = spec.not_before.into();
    params.not_after = spec.not_after.into();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = spec.extended_key_usages.clone();
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = spec
        .ip_sans
        .iter()
        .map(|ip| SanType::IpAddress(*ip))
        .collect();
    for name in &spec.dns_sans {
        if let Ok(name) = name.as_str().try_into() {
            params.subject_alt_names.push(SanType::DnsName(name));
        }
    }
    let cert = params.signed_by(&key, &issuer).map_err(|e| cert_err(&e))?;
    let label = if ed25519 {
        "ED25519 PRIVATE KEY"
    } else {
        "PRIVATE KEY"
    };
    let key_pem = pem::encode(&pem::Pem::new(label, key.serialize_der()));
    Ok((cert.pem(), key_pem))
}
