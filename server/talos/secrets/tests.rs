use std::sync::OnceLock;
use std::time::{Duration as StdDuration, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::ParsedExtension;

use super::certs::{parse_certificate, subject_key_id};
use super::pem_format::pem_contents;
use super::yaml::yaml_scalar;
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
            ParsedExtension::AuthorityKeyIdentifier(_) | ParsedExtension::SubjectAlternativeName(_)
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
