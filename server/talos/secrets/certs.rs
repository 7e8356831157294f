//! Certificates: the self-signed CAs of a bundle, client certificates signed by them, and the
//! checks that a CA's key matches its certificate.

use rcgen::string::{BmpString, Ia5String, PrintableString, TeletexString, UniversalString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;

use super::keys::{new_key, parse_private_key, signer, KeyAlg, ParsedKey};
use super::pem_format::{pem_contents, pem_encode};
use super::{
    crypto_error, random_bytes, CertAndKey, FieldError, SecretsError, CA_VALIDITY, PEM_CERTIFICATE,
    SERIAL_BYTES, SKI_BYTES,
};

/// `crypto:x509.NewSelfSignedCertificateAuthority`: subject = issuer = `O=<org>` only (empty
/// DN without one), random 128-bit serial, valid 87600 h from `now`, KeyUsage critical
/// digitalSignature + keyCertSign, EKU serverAuth + clientAuth, BasicConstraints critical
/// CA:TRUE without pathlen, a random 20-byte SKI, no AKI, no SANs.
pub(super) fn new_ca(
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

pub(super) fn printable(s: &str) -> Result<DnValue, SecretsError> {
    PrintableString::try_from(s)
        .map(DnValue::PrintableString)
        .map_err(|e| crypto_error("encoding a subject name", e))
}

pub(super) struct ClientCert {
    pub(super) subject: DistinguishedName,
    pub(super) key_usages: Vec<KeyUsagePurpose>,
    pub(super) not_before: OffsetDateTime,
    pub(super) not_after: OffsetDateTime,
}

/// `crypto:x509.NewKeyPair` + `NewCertificateFromCSR`: a key of the CA's type, a leaf
/// certificate with the given subject and usages, EKU clientAuth, no BasicConstraints, no
/// SKI, AKI = the CA's SKI, issuer = the CA's subject byte for byte.
pub(super) fn issue_client_cert(
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
pub(super) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing data after the certificate".to_string()),
        Err(e) => Err(format!("failed to parse certificate: {e}")),
    }
}

pub(super) fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
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
pub(super) fn key_matches_certificate(
    cert: &X509Certificate<'_>,
    key: &ParsedKey,
) -> Result<bool, String> {
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
