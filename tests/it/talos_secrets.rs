//! The Talos secrets bundle checked with real tools: every generated certificate and key is
//! inspected and verified by `openssl`, and bundles written by the test in talosctl's
//! `secrets.yaml` format from keys and certificates made by `openssl` are imported, exported
//! and refused when broken.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bootplane::talos::secrets::{SecretsBundle, SecretsError};
use serde_yaml_ng::Value;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// helpers

/// Runs openssl; returns (success, stdout + stderr).
fn openssl_run(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed to run these tests");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn openssl(args: &[&str]) -> String {
    let (ok, text) = openssl_run(args);
    assert!(ok, "openssl {args:?} failed:\n{text}");
    text
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// An issue time a minute ago, for certificates whose chain `openssl verify` checks against
/// the system clock: a leaf valid from exactly now fails as "not yet valid" if the clock steps
/// back by a second (a VM's clock can) before openssl runs.
fn a_minute_ago() -> SystemTime {
    SystemTime::now() - Duration::from_secs(60)
}

fn now_secs() -> (SystemTime, i64) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (UNIX_EPOCH + Duration::from_secs(secs), secs as i64)
}

/// Seconds since the epoch of openssl's `-dateopt iso_8601` form, `2026-03-01 12:00:00Z`.
fn iso_epoch(s: &str) -> i64 {
    let s = s.trim().trim_end_matches('Z');
    let (date, time) = s.split_once(' ').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let t: Vec<i64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    // days from civil (Howard Hinnant)
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]
}

/// (notBefore, notAfter) of a certificate file, in seconds since the epoch.
fn validity(cert: &Path) -> (i64, i64) {
    let out = openssl(&[
        "x509",
        "-in",
        p(cert),
        "-noout",
        "-dateopt",
        "iso_8601",
        "-startdate",
        "-enddate",
    ]);
    let get = |k: &str| {
        let line = out.lines().find(|l| l.starts_with(k)).unwrap();
        iso_epoch(line.split_once('=').unwrap().1)
    };
    (get("notBefore="), get("notAfter="))
}

/// `subject=…` and `issuer=…` in RFC 2253 form (empty DN prints as nothing).
fn names(cert: &Path) -> (String, String) {
    let out = openssl(&[
        "x509",
        "-in",
        p(cert),
        "-noout",
        "-subject",
        "-issuer",
        "-nameopt",
        "RFC2253",
    ]);
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .to_string()
    };
    (get("subject="), get("issuer="))
}

/// The parsed `openssl x509 -text` output of one certificate.
struct CertText {
    text: String,
}

impl CertText {
    fn of(cert: &Path) -> CertText {
        CertText {
            text: openssl(&["x509", "-in", p(cert), "-noout", "-text"]),
        }
    }

    /// (critical, value line) of extension `X509v3 <name>`.
    fn ext(&self, name: &str) -> Option<(bool, String)> {
        let mut lines = self.text.lines();
        let header = format!("X509v3 {name}:");
        lines
            .by_ref()
            .find(|l| l.trim_start().starts_with(&header))
            .map(|l| l.trim_end().ends_with("critical"))
            .map(|critical| (critical, lines.next().unwrap().trim().to_string()))
    }

    fn extension_names(&self) -> Vec<String> {
        let start = self.text.find("X509v3 extensions:").unwrap();
        let end = self.text[start..].find("Signature Algorithm").unwrap() + start;
        self.text[start..end]
            .lines()
            .skip(1)
            .filter(|l| l.starts_with("            ") && !l.starts_with("                "))
            .map(|l| l.trim().split(':').next().unwrap().to_string())
            .collect()
    }

    fn signature_algorithm(&self) -> String {
        self.text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Signature Algorithm: "))
            .unwrap()
            .to_string()
    }
}

/// Writes a key for openssl; `ED25519 PRIVATE KEY` (Talos's label for PKCS#8) becomes the
/// standard `PRIVATE KEY`, which openssl reads.
fn write_key(dir: &Path, name: &str, pem: &str) -> PathBuf {
    write(
        dir,
        name,
        &pem.replace("ED25519 PRIVATE KEY", "PRIVATE KEY"),
    )
}

fn assert_key_matches_cert(key: &Path, cert: &Path) {
    let from_key = openssl(&["pkey", "-in", p(key), "-pubout"]);
    let from_cert = openssl(&["x509", "-in", p(cert), "-noout", "-pubkey"]);
    assert_eq!(from_key, from_cert, "{key:?} is not the key of {cert:?}");
}

fn generated() -> &'static (SecretsBundle, i64) {
    static BUNDLE: OnceLock<(SecretsBundle, i64)> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let (now, secs) = now_secs();
        (SecretsBundle::generate("v1.11.6", now).unwrap(), secs)
    })
}

fn decode(b64: &str) -> String {
    String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap()
}

fn yaml_str<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for k in path {
        cur = match k.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[*k],
        };
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string: {cur:?}"))
}

// ---------------------------------------------------------------------------------------------
// generated certificates and keys, checked by openssl

#[test]
fn generated_cas_are_talos_shaped_self_signed_cas() {
    let (bundle, now) = generated();
    let dir = TempDir::new().unwrap();
    let cases = [
        ("etcd", bundle.etcd_ca(), "O=etcd", "ecdsa-with-SHA256"),
        ("k8s", bundle.k8s_ca(), "O=kubernetes", "ecdsa-with-SHA256"),
        (
            "k8saggregator",
            bundle.k8s_aggregator_ca(),
            "",
            "ecdsa-with-SHA256",
        ),
        ("os", bundle.os_ca(), "O=talos", "ED25519"),
    ];
    let mut serials = Vec::new();
    for (name, ca, subject, sig) in cases {
        let crt = write(dir.path(), &format!("{name}.crt"), ca.crt_pem());
        let text = CertText::of(&crt);
        assert!(text.text.contains("Version: 3 (0x2)"), "{name}");
        assert_eq!(text.signature_algorithm(), sig, "{name}");
        assert_eq!(
            names(&crt),
            (subject.to_string(), subject.to_string()),
            "{name}"
        );

        let (not_before, not_after) = validity(&crt);
        assert_eq!(not_before, *now, "{name}: NotBefore is the generation time");
        assert_eq!(not_after - not_before, 3650 * 86_400, "{name}: 87600h");

        assert_eq!(
            text.ext("Key Usage"),
            Some((true, "Digital Signature, Certificate Sign".to_string())),
            "{name}"
        );
        assert_eq!(
            text.ext("Extended Key Usage"),
            Some((
                false,
                "TLS Web Server Authentication, TLS Web Client Authentication".to_string()
            )),
            "{name}"
        );
        assert_eq!(
            text.ext("Basic Constraints"),
            Some((true, "CA:TRUE".to_string())),
            "{name}"
        );
        let (ski_critical, ski) = text.ext("Subject Key Identifier").unwrap();
        assert!(!ski_critical);
        assert_eq!(ski.split(':').count(), 20, "{name}: 20-byte SKI");
        assert!(
            text.ext("Authority Key Identifier").is_none(),
            "{name}: no AKI"
        );
        assert!(
            text.ext("Subject Alternative Name").is_none(),
            "{name}: no SANs"
        );
        assert_eq!(
            text.extension_names().len(),
            4,
            "{name}: {:?}",
            text.extension_names()
        );

        let serial = openssl(&["x509", "-in", p(&crt), "-noout", "-serial"]);
        let serial = serial.trim().strip_prefix("serial=").unwrap().to_string();
        assert!(
            !serial.is_empty() && serial.len() <= 32,
            "{name}: 128-bit serial {serial}"
        );
        serials.push(serial);

        let verify = openssl(&["verify", "-CAfile", p(&crt), p(&crt)]);
        assert!(verify.trim().ends_with(": OK"), "{name}: {verify}");

        let key = write_key(dir.path(), &format!("{name}.key"), ca.key_pem());
        assert_key_matches_cert(&key, &crt);
    }
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 4, "serials are random");
}

#[test]
fn generated_ca_keys_are_in_talos_encodings() {
    let (bundle, _) = generated();
    let dir = TempDir::new().unwrap();
    for (name, ca) in [
        ("etcd", bundle.etcd_ca()),
        ("k8s", bundle.k8s_ca()),
        ("k8saggregator", bundle.k8s_aggregator_ca()),
    ] {
        assert!(
            ca.key_pem().starts_with("-----BEGIN EC PRIVATE KEY-----\n"),
            "{name}"
        );
        let key = write(dir.path(), &format!("{name}.key"), ca.key_pem());
        let check = openssl(&["ec", "-in", p(&key), "-check", "-noout"]);
        assert!(check.contains("EC Key valid."), "{name}: {check}");
        // SEC1 carrying the named curve and the public key, as Go's MarshalECPrivateKey.
        let asn1 = openssl(&["asn1parse", "-in", p(&key)]);
        assert!(asn1.contains(":prime256v1"), "{name}: {asn1}");
        assert!(asn1.contains("cont [ 1 ]"), "{name}: public key present");
    }

    let os_key = bundle.os_ca().key_pem();
    assert!(os_key.starts_with("-----BEGIN ED25519 PRIVATE KEY-----\n"));
    assert!(os_key.ends_with("-----END ED25519 PRIVATE KEY-----\n"));
    let key = write_key(dir.path(), "os.key", os_key);
    let text = openssl(&["pkey", "-in", p(&key), "-noout", "-text"]);
    assert!(text.contains("ED25519 Private-Key:"), "{text}");
    let asn1 = openssl(&["asn1parse", "-in", p(&key)]);
    let first = asn1.lines().next().unwrap();
    assert!(
        first.contains("l=  46 cons: SEQUENCE"),
        "48-byte PKCS#8: {asn1}"
    );
    assert!(asn1.contains("INTEGER           :00"), "PKCS#8 v1: {asn1}");
    assert!(!asn1.contains("cont [ 1 ]"), "no public key (v1): {asn1}");

    let sa = bundle.k8s_service_account_key_pem();
    assert!(sa.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
    let sa = write(dir.path(), "sa.key", sa);
    let check = openssl(&["rsa", "-in", p(&sa), "-check", "-noout"]);
    assert!(check.contains("RSA key ok"), "{check}");
    let text = openssl(&["rsa", "-in", p(&sa), "-noout", "-text"]);
    assert!(text.contains("Private-Key: (4096 bit, 2 primes)"), "{text}");
    assert!(text.contains("publicExponent: 65537"), "{text}");
}

#[test]
fn talosconfig_client_cert_chains_to_the_os_ca() {
    let (bundle, _) = generated();
    let (now, now_s) = now_secs();
    let endpoints = vec!["10.0.0.2".to_string(), "10.0.0.3".to_string()];
    let text = bundle.talosconfig("prod", &endpoints, now).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(yaml_str(&doc, &["context"]), "prod");
    let ctx = &doc["contexts"]["prod"];
    assert_eq!(
        ctx["endpoints"],
        serde_yaml_ng::to_value(&endpoints).unwrap()
    );
    assert_eq!(yaml_str(ctx, &["ca"]), bundle.os_ca().crt_b64());
    assert!(text.starts_with(
        "context: prod\ncontexts:\n    prod:\n        endpoints:\n            - 10.0.0.2\n"
    ));

    let dir = TempDir::new().unwrap();
    let ca = write(dir.path(), "os.crt", &decode(yaml_str(ctx, &["ca"])));
    let crt = write(dir.path(), "client.crt", &decode(yaml_str(ctx, &["crt"])));
    let key_pem = decode(yaml_str(ctx, &["key"]));
    assert!(key_pem.starts_with("-----BEGIN ED25519 PRIVATE KEY-----\n"));
    let key = write_key(dir.path(), "client.key", &key_pem);

    let verify = openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        p(&ca),
        p(&crt),
    ]);
    assert!(verify.trim().ends_with(": OK"), "{verify}");
    let (ok, out) = openssl_run(&[
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        p(&ca),
        p(&crt),
    ]);
    assert!(
        !ok,
        "a client-only certificate must not pass as a server: {out}"
    );

    let t = CertText::of(&crt);
    assert_eq!(names(&crt), ("O=os:admin".into(), "O=talos".into()));
    assert_eq!(t.signature_algorithm(), "ED25519");
    assert!(t.text.contains("Public Key Algorithm: ED25519"));
    assert_eq!(t.ext("Key Usage"), Some((true, "Digital Signature".into())));
    assert_eq!(
        t.ext("Extended Key Usage"),
        Some((false, "TLS Web Client Authentication".into()))
    );
    assert!(t.ext("Basic Constraints").is_none());
    assert!(t.ext("Subject Key Identifier").is_none());
    let ca_ski = CertText::of(&ca).ext("Subject Key Identifier").unwrap().1;
    let (_, aki) = t.ext("Authority Key Identifier").unwrap();
    assert_eq!(aki.trim_start_matches("keyid:"), ca_ski);
    assert_eq!(t.extension_names().len(), 3, "{:?}", t.extension_names());
    let (nb, na) = validity(&crt);
    assert_eq!(nb, now_s, "not back-dated");
    assert_eq!(na - nb, 365 * 86_400);
    assert_key_matches_cert(&key, &crt);

    let empty = bundle.talosconfig("prod", &[], now).unwrap();
    assert!(empty.contains("\n        endpoints: []\n"), "{empty}");
    let doc: Value = serde_yaml_ng::from_str(&empty).unwrap();
    assert_eq!(
        doc["contexts"]["prod"]["endpoints"]
            .as_sequence()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn kubeconfig_client_cert_chains_to_the_kubernetes_ca() {
    let (bundle, _) = generated();
    let (now, now_s) = now_secs();
    let text = bundle
        .kubeconfig("prod", "https://10.0.0.10:6443", now)
        .unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(yaml_str(&doc, &["apiVersion"]), "v1");
    assert_eq!(yaml_str(&doc, &["kind"]), "Config");
    assert_eq!(yaml_str(&doc, &["clusters", "0", "name"]), "prod");
    assert_eq!(
        yaml_str(&doc, &["clusters", "0", "cluster", "server"]),
        "https://10.0.0.10:6443"
    );
    assert_eq!(
        yaml_str(
            &doc,
            &["clusters", "0", "cluster", "certificate-authority-data"]
        ),
        bundle.k8s_ca().crt_b64()
    );
    assert_eq!(yaml_str(&doc, &["users", "0", "name"]), "admin@prod");
    assert_eq!(yaml_str(&doc, &["contexts", "0", "name"]), "admin@prod");
    assert_eq!(
        yaml_str(&doc, &["contexts", "0", "context", "cluster"]),
        "prod"
    );
    assert_eq!(
        yaml_str(&doc, &["contexts", "0", "context", "user"]),
        "admin@prod"
    );
    assert_eq!(
        yaml_str(&doc, &["contexts", "0", "context", "namespace"]),
        "default"
    );
    assert_eq!(yaml_str(&doc, &["current-context"]), "admin@prod");

    let dir = TempDir::new().unwrap();
    let ca = write(
        dir.path(),
        "k8s.crt",
        &decode(yaml_str(
            &doc,
            &["clusters", "0", "cluster", "certificate-authority-data"],
        )),
    );
    let crt = write(
        dir.path(),
        "admin.crt",
        &decode(yaml_str(
            &doc,
            &["users", "0", "user", "client-certificate-data"],
        )),
    );
    let key_pem = decode(yaml_str(&doc, &["users", "0", "user", "client-key-data"]));
    assert!(key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
    let key = write(dir.path(), "admin.key", &key_pem);
    let check = openssl(&["ec", "-in", p(&key), "-check", "-noout"]);
    assert!(check.contains("EC Key valid."), "{check}");

    let verify = openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        p(&ca),
        p(&crt),
    ]);
    assert!(verify.trim().ends_with(": OK"), "{verify}");
    let os_ca = write(dir.path(), "os.crt", bundle.os_ca().crt_pem());
    let (ok, out) = openssl_run(&["verify", "-CAfile", p(&os_ca), p(&crt)]);
    assert!(!ok, "must not chain to the OS CA: {out}");

    let t = CertText::of(&crt);
    assert_eq!(
        names(&crt),
        ("CN=admin,O=system:masters".into(), "O=kubernetes".into())
    );
    assert_eq!(t.signature_algorithm(), "ecdsa-with-SHA256");
    assert!(t.text.contains("NIST CURVE: P-256"));
    assert_eq!(
        t.ext("Key Usage"),
        Some((true, "Digital Signature, Key Encipherment".into()))
    );
    assert_eq!(
        t.ext("Extended Key Usage"),
        Some((false, "TLS Web Client Authentication".into()))
    );
    assert!(t.ext("Basic Constraints").is_none());
    let (nb, na) = validity(&crt);
    assert_eq!(nb, now_s - 10, "back-dated by 10 s");
    assert_eq!(na, now_s + 365 * 86_400);
    assert_key_matches_cert(&key, &crt);
}

// ---------------------------------------------------------------------------------------------
// bundles in talosctl's format, made here with openssl

const CA_CONFIG: &str = "\
[req]
distinguished_name = dn
x509_extensions = v3
prompt = no
[dn]
[v3]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyCertSign
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
";

/// Keys, certificates and random values made by openssl, and the secrets.yaml that
/// `talosctl gen secrets` would write for them.
struct Fixture {
    dir: TempDir,
    cluster_id: String,
    cluster_secret: String,
    bootstrap_token: String,
    encryption_key: &'static str,
    encryption_secret: String,
    trustd_token: String,
    /// PEM text of (crt, key) per CA in file order: etcd, k8s, k8saggregator, os.
    cas: Vec<(String, String)>,
    sa_key: String,
    yaml: String,
}

#[derive(Clone, Copy)]
enum KeyKind {
    /// `openssl ecparam -genkey`: SEC1 `EC PRIVATE KEY`, as Talos writes.
    EcSec1,
    /// `openssl genpkey -algorithm EC`: PKCS#8 `PRIVATE KEY`, which Talos also reads.
    EcPkcs8,
    /// `openssl genpkey -algorithm ed25519`, relabelled `ED25519 PRIVATE KEY` as Talos writes.
    Ed25519,
    /// `openssl genrsa -traditional`: PKCS#1 `RSA PRIVATE KEY`.
    Rsa(u32),
}

fn openssl_key(dir: &Path, name: &str, kind: KeyKind) -> PathBuf {
    let path = dir.join(name);
    match kind {
        KeyKind::EcSec1 => {
            openssl(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                p(&path),
            ]);
        }
        KeyKind::EcPkcs8 => {
            openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                p(&path),
            ]);
        }
        KeyKind::Ed25519 => {
            openssl(&["genpkey", "-algorithm", "ed25519", "-out", p(&path)]);
        }
        KeyKind::Rsa(bits) => {
            openssl(&[
                "genrsa",
                "-traditional",
                "-out",
                p(&path),
                &bits.to_string(),
            ]);
        }
    }
    path
}

fn openssl_ca(dir: &Path, name: &str, subject: &str, kind: KeyKind) -> (String, String) {
    let config = write(dir, "ca.cnf", CA_CONFIG);
    let key = openssl_key(dir, &format!("{name}.key"), kind);
    let crt = dir.join(format!("{name}.crt"));
    let mut args = vec![
        "req",
        "-x509",
        "-new",
        "-config",
        p(&config),
        "-key",
        p(&key),
        "-days",
        "3650",
        "-subj",
        subject,
        "-out",
        p(&crt),
    ];
    if !matches!(kind, KeyKind::Ed25519) {
        args.push("-sha256");
    }
    openssl(&args);
    let mut key_pem = std::fs::read_to_string(&key).unwrap();
    if matches!(kind, KeyKind::Ed25519) {
        key_pem = key_pem.replace("PRIVATE KEY", "ED25519 PRIVATE KEY");
    }
    (std::fs::read_to_string(&crt).unwrap(), key_pem)
}

/// base64 of a file's bytes on one line, by `openssl base64 -A`.
fn b64_of(dir: &Path, contents: &str) -> String {
    let f = tempfile::NamedTempFile::new_in(dir).unwrap();
    std::fs::write(f.path(), contents).unwrap();
    openssl(&["base64", "-A", "-in", p(f.path())])
        .trim()
        .to_string()
}

fn rand_b64(bytes: u32) -> String {
    openssl(&["rand", "-base64", &bytes.to_string()])
        .trim()
        .to_string()
}

fn rand_token() -> String {
    let a = openssl(&["rand", "-hex", "3"]);
    let b = openssl(&["rand", "-hex", "8"]);
    format!("{}.{}", a.trim(), b.trim())
}

/// A Talos-1.11-like bundle: P-256 CAs, Ed25519 OS CA, RSA-4096 SA key, secretbox.
fn talos_fixture() -> Fixture {
    fixture(
        [
            KeyKind::EcSec1,
            KeyKind::EcSec1,
            KeyKind::EcSec1,
            KeyKind::Ed25519,
        ],
        KeyKind::Rsa(4096),
        "secretboxencryptionsecret",
    )
}

fn fixture(ca_kinds: [KeyKind; 4], sa: KeyKind, encryption_key: &'static str) -> Fixture {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let subjects = ["/O=etcd", "/O=kubernetes", "/", "/O=talos"];
    let names = ["etcd", "k8s", "k8saggregator", "os"];
    let cas: Vec<(String, String)> = (0..4)
        .map(|i| openssl_ca(d, names[i], subjects[i], ca_kinds[i]))
        .collect();
    let sa_key = std::fs::read_to_string(openssl_key(d, "sa.key", sa)).unwrap();
    let cluster_id = rand_b64(32).replace('+', "-").replace('/', "_");
    let cluster_secret = rand_b64(32);
    let bootstrap_token = rand_token();
    let encryption_secret = rand_b64(32);
    let trustd_token = rand_token();

    let mut yaml = format!(
        "cluster:\n    id: {cluster_id}\n    secret: {cluster_secret}\nsecrets:\n    \
         bootstraptoken: {bootstrap_token}\n    {encryption_key}: {encryption_secret}\n\
         trustdinfo:\n    token: {trustd_token}\ncerts:\n"
    );
    for (i, name) in names.iter().enumerate() {
        if *name == "os" {
            yaml.push_str(&format!(
                "    k8sserviceaccount:\n        key: {}\n",
                b64_of(d, &sa_key)
            ));
        }
        yaml.push_str(&format!(
            "    {name}:\n        crt: {}\n        key: {}\n",
            b64_of(d, &cas[i].0),
            b64_of(d, &cas[i].1)
        ));
    }
    Fixture {
        dir,
        cluster_id,
        cluster_secret,
        bootstrap_token,
        encryption_key,
        encryption_secret,
        trustd_token,
        cas,
        sa_key,
        yaml,
    }
}

fn shared_fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(talos_fixture)
}

fn assert_fixture_values(f: &Fixture, b: &SecretsBundle) {
    assert_eq!(b.cluster_id(), f.cluster_id);
    assert_eq!(b.cluster_secret(), f.cluster_secret);
    assert_eq!(b.bootstrap_token(), f.bootstrap_token);
    assert_eq!(b.trustd_token(), f.trustd_token);
    match f.encryption_key {
        "secretboxencryptionsecret" => {
            assert_eq!(b.secretbox_secret(), Some(f.encryption_secret.as_str()));
            assert_eq!(b.aescbc_secret(), None);
        }
        _ => {
            assert_eq!(b.aescbc_secret(), Some(f.encryption_secret.as_str()));
            assert_eq!(b.secretbox_secret(), None);
        }
    }
    for (ca, (crt, key)) in [b.etcd_ca(), b.k8s_ca(), b.k8s_aggregator_ca(), b.os_ca()]
        .into_iter()
        .zip(&f.cas)
    {
        assert_eq!(ca.crt_pem(), crt);
        assert_eq!(ca.key_pem(), key);
        assert_eq!(decode(&ca.crt_b64()), *crt);
        assert_eq!(decode(&ca.key_b64()), *key);
    }
    assert_eq!(b.k8s_service_account_key_pem(), f.sa_key);
}

#[test]
fn talosctl_format_bundle_imports_and_exports_byte_for_byte() {
    let f = shared_fixture();
    let bundle = SecretsBundle::from_yaml(&f.yaml).unwrap();
    assert_fixture_values(f, &bundle);
    assert_eq!(bundle.to_yaml(), f.yaml);
    assert_eq!(SecretsBundle::from_yaml(&bundle.to_yaml()).unwrap(), bundle);

    // Credentials from an adopted cluster chain to its own (openssl-made) CAs.
    let out = TempDir::new().unwrap();
    let d = out.path();
    let (crt, _) = bundle.talos_client_cert(a_minute_ago()).unwrap();
    let crt = write(d, "talos-client.crt", &crt);
    let os_ca = write(d, "os-ca.crt", bundle.os_ca().crt_pem());
    let verify = openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        p(&os_ca),
        p(&crt),
    ]);
    assert!(verify.trim().ends_with(": OK"), "{verify}");
    let (crt, _) = bundle.admin_kubeconfig_cert(a_minute_ago()).unwrap();
    let crt = write(d, "admin.crt", &crt);
    let k8s_ca = write(d, "k8s-ca.crt", bundle.k8s_ca().crt_pem());
    let verify = openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        p(&k8s_ca),
        p(&crt),
    ]);
    assert!(verify.trim().ends_with(": OK"), "{verify}");
}

#[test]
fn older_and_kubeadm_style_bundles_import_and_sign_with_their_own_key_types() {
    // aescbc (Talos <= 1.2), an RSA Kubernetes CA (as from --from-kubernetes-pki), a PKCS#8
    // `PRIVATE KEY` etcd key, an ECDSA service-account key (contract <= 1.6).
    let f = fixture(
        [
            KeyKind::EcPkcs8,
            KeyKind::Rsa(2048),
            KeyKind::EcSec1,
            KeyKind::Ed25519,
        ],
        KeyKind::EcSec1,
        "aescbcencryptionsecret",
    );
    let bundle = SecretsBundle::from_yaml(&f.yaml).unwrap();
    assert_fixture_values(&f, &bundle);
    assert_eq!(bundle.to_yaml(), f.yaml);

    let d = f.dir.path();
    let (crt, key) = bundle.admin_kubeconfig_cert(a_minute_ago()).unwrap();
    assert!(
        key.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"),
        "key follows the CA type"
    );
    let crt = write(d, "admin.crt", &crt);
    let key = write(d, "admin.key", &key);
    let check = openssl(&["rsa", "-in", p(&key), "-check", "-noout"]);
    assert!(check.contains("RSA key ok"), "{check}");
    assert_key_matches_cert(&key, &crt);
    let k8s_ca = write(d, "k8s-ca.crt", bundle.k8s_ca().crt_pem());
    let verify = openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        p(&k8s_ca),
        p(&crt),
    ]);
    assert!(verify.trim().ends_with(": OK"), "{verify}");
    assert_eq!(
        CertText::of(&crt).signature_algorithm(),
        "sha256WithRSAEncryption"
    );
    assert_eq!(names(&crt).0, "CN=admin,O=system:masters");
}

#[test]
fn any_yaml_layout_of_the_same_values_imports_equal() {
    let f = shared_fixture();
    let reference = SecretsBundle::from_yaml(&f.yaml).unwrap();
    let d = f.dir.path();
    let b = |s: &str| b64_of(d, s);
    // 2-space indent, quoted scalars, a flow mapping, comments, keys in another order.
    let yaml = format!(
        "---\n# adopted from talosctl\ncerts:\n  os: {{crt: \"{}\", key: '{}'}}\n  etcd:\n    key: {}\n    crt: {}\n  \
         k8s:\n    crt: {}\n    key: {}\n  k8saggregator:\n    crt: {}\n    key: {}\n  \
         k8sserviceaccount:\n    key: >-\n      {}\ntrustdinfo: {{token: \"{}\"}}\nsecrets:\n  \
         secretboxencryptionsecret: \"{}\"\n  bootstraptoken: {}\ncluster:\n  secret: {}\n  id: \"{}\"\n",
        b(&f.cas[3].0),
        b(&f.cas[3].1),
        b(&f.cas[0].1),
        b(&f.cas[0].0),
        b(&f.cas[1].0),
        b(&f.cas[1].1),
        b(&f.cas[2].0),
        b(&f.cas[2].1),
        b(&f.sa_key),
        f.trustd_token,
        f.encryption_secret,
        f.bootstrap_token,
        f.cluster_secret,
        f.cluster_id,
    );
    let bundle = SecretsBundle::from_yaml(&yaml).unwrap();
    assert_eq!(bundle, reference);
    assert_eq!(
        bundle.to_yaml(),
        f.yaml,
        "export is always talosctl's layout"
    );
}

// ---------------------------------------------------------------------------------------------
// refusals

/// The fixture text with the line at `path` (e.g. `certs.os.key`) replaced by `replacement`
/// lines (none to delete it).
fn edit(yaml: &str, path: &str, replacement: Option<&str>) -> String {
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut out = Vec::new();
    let mut found = false;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        let key = line.trim().split(':').next().unwrap().to_string();
        stack.retain(|(i, _)| *i < indent);
        stack.push((indent, key));
        let here = stack
            .iter()
            .map(|(_, k)| k.as_str())
            .collect::<Vec<_>>()
            .join(".");
        if here == path {
            found = true;
            if let Some(r) = replacement {
                out.push(format!("{}{}", " ".repeat(indent), r));
            }
        } else if !here.starts_with(&format!("{path}.")) || replacement.is_some() {
            out.push(line.to_string());
        }
    }
    assert!(found, "{path} not in fixture");
    out.join("\n") + "\n"
}

fn refused(yaml: &str) -> SecretsError {
    match SecretsBundle::from_yaml(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e,
    }
}

const FIELDS: [&str; 15] = [
    "cluster.id",
    "cluster.secret",
    "secrets.bootstraptoken",
    "trustdinfo.token",
    "certs.etcd.crt",
    "certs.etcd.key",
    "certs.k8s.crt",
    "certs.k8s.key",
    "certs.k8saggregator.crt",
    "certs.k8saggregator.key",
    "certs.k8sserviceaccount.key",
    "certs.os.crt",
    "certs.os.key",
    "certs.k8sserviceaccount",
    "certs.os",
];

#[test]
fn each_missing_or_empty_required_field_is_named() {
    let f = shared_fixture();
    for field in FIELDS {
        let err = refused(&edit(&f.yaml, field, None));
        assert_eq!(err.fields(), [field], "{err}");
        assert!(
            err.to_string().contains(&format!("{field}: is required")),
            "{err}"
        );
        if field.matches('.').count() == 2
            || field.starts_with("cluster")
            || field.ends_with("token")
        {
            let last = field.rsplit('.').next().unwrap();
            let err = refused(&edit(&f.yaml, field, Some(&format!("{last}: \"\""))));
            assert_eq!(err.fields(), [field], "empty {field}: {err}");
        }
    }
    for section in ["cluster", "secrets", "trustdinfo", "certs"] {
        let err = refused(&edit(&f.yaml, section, None));
        assert_eq!(err.fields(), [section], "{err}");
        assert!(
            err.to_string().contains(&format!("{section}: is required")),
            "{err}"
        );
    }
    // Several problems are all reported.
    let two = edit(&edit(&f.yaml, "cluster.id", None), "certs.os.key", None);
    assert_eq!(refused(&two).fields(), ["cluster.id", "certs.os.key"]);
}

#[test]
fn neither_or_both_encryption_secrets_are_refused() {
    let f = shared_fixture();
    let neither = edit(&f.yaml, "secrets.secretboxencryptionsecret", None);
    let err = refused(&neither);
    assert!(
        err.to_string().contains(
            "one of [secrets.secretboxencryptionsecret, secrets.aescbcencryptionsecret] is required"
        ),
        "{err}"
    );
    let both = f.yaml.replace(
        "    secretboxencryptionsecret:",
        &format!(
            "    aescbcencryptionsecret: {}\n    secretboxencryptionsecret:",
            rand_b64(32)
        ),
    );
    let err = refused(&both);
    assert!(
        err.to_string().contains(
            "only one of [secrets.secretboxencryptionsecret, secrets.aescbcencryptionsecret] is allowed"
        ),
        "{err}"
    );
    let short = f.yaml.replace(&f.encryption_secret, &rand_b64(16));
    let err = refused(&short);
    assert_eq!(err.fields(), ["secrets.secretboxencryptionsecret"], "{err}");
}

#[test]
fn bad_certificates_and_keys_are_refused_naming_the_field() {
    let f = shared_fixture();
    let d = f.dir.path();
    let k8s_crt_b64 = b64_of(d, &f.cas[1].0);
    let with = |path: &str, value: &str| {
        let last = path.rsplit('.').next().unwrap();
        edit(&f.yaml, path, Some(&format!("{last}: {value}")))
    };
    let garbage_der = b64_of(
        d,
        &format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            rand_b64(300).replace('\n', "")
        ),
    );
    // A valid certificate cut short: the DER no longer parses.
    let mut lines: Vec<&str> = f.cas[1].0.lines().collect();
    lines.remove(3);
    let cut_cert = b64_of(d, &(lines.join("\n") + "\n"));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "certs.k8s.crt",
            with("certs.k8s.crt", "not*base64"),
            "not standard base64",
        ),
        (
            "certs.k8s.crt",
            with("certs.k8s.crt", &b64_of(d, "hello\n")),
            "no PEM block",
        ),
        (
            "certs.k8s.crt",
            with("certs.k8s.crt", &garbage_der),
            "failed to parse certificate",
        ),
        (
            "certs.k8s.crt",
            with("certs.k8s.crt", &cut_cert),
            "certificate",
        ),
        (
            "certs.k8s.crt",
            with("certs.k8s.crt", &b64_of(d, &f.cas[1].1)),
            "expected a CERTIFICATE PEM block",
        ),
        (
            "certs.k8s.key",
            with("certs.k8s.crt", &b64_of(d, &f.cas[0].0)),
            "key does not match the certificate in certs.k8s.crt",
        ),
        (
            "certs.os.key",
            with("certs.os.key", &b64_of(d, &f.cas[0].1)),
            "key does not match",
        ),
        (
            "certs.os.key",
            with("certs.os.key", "\"******\""),
            "redacted",
        ),
        (
            "certs.etcd.key",
            with(
                "certs.etcd.key",
                &b64_of(d, &f.cas[0].1.replace("EC PRIVATE", "DSA PRIVATE")),
            ),
            "unsupported key type",
        ),
        (
            "certs.k8sserviceaccount.key",
            with("certs.k8sserviceaccount.key", &k8s_crt_b64),
            "unsupported key type",
        ),
        (
            "certs.os.key",
            with(
                "certs.os.key",
                &b64_of(d, &f.cas[3].1.replace("ED25519 PRIVATE", "EC PRIVATE")),
            ),
            "not a SEC1",
        ),
        (
            "certs.os.crt",
            with("certs.os.crt", "[1, 2]"),
            "expected a string",
        ),
        (
            "secrets.bootstraptoken",
            with("secrets.bootstraptoken", "abc.def"),
            "[a-z0-9]{6}",
        ),
        (
            "cluster.secret",
            with("cluster.secret", &rand_b64(16)),
            "32 bytes",
        ),
    ];
    for (field, yaml, reason) in cases {
        let err = refused(&yaml);
        assert_eq!(err.fields(), [field], "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("{field}: ")) && text.contains(reason),
            "{text}"
        );
        // Never echo a secret back.
        for (_, key) in &f.cas {
            assert!(!text.contains(key.lines().nth(1).unwrap()), "{text}");
        }
        assert!(!text.contains(&f.cluster_secret) && !text.contains(&f.trustd_token));
    }
}

#[test]
fn truncated_files_are_refused_naming_where() {
    let f = shared_fixture();
    let yaml = &f.yaml;
    // Every line boundary, the middle of every line, and a spread of other cut points; only
    // dropping the final newline leaves a complete file.
    let mut cuts: Vec<usize> = Vec::new();
    let mut pos = 0;
    for line in yaml.split_inclusive('\n') {
        cuts.extend([pos, pos + line.len() / 2, pos + line.len() - 1]);
        pos += line.len();
    }
    cuts.extend((0..yaml.len() - 1).step_by(97));
    cuts.sort();
    cuts.dedup();
    let known = ["cluster", "secrets", "trustdinfo", "certs", "secrets.yaml"];
    for cut in cuts.into_iter().filter(|c| *c < yaml.len() - 1) {
        let text = &yaml[..cut];
        let err = refused(text);
        let message = err.to_string();
        let names_where = match &err {
            SecretsError::Invalid(_) => err
                .fields()
                .iter()
                .all(|f| known.iter().any(|k| f.starts_with(k))),
            SecretsError::Yaml(m) => {
                m.contains("line")
                    && (m.contains("(at the top level)")
                        || known.iter().any(|k| m.contains(&format!("(in {k}"))))
            }
            _ => false,
        };
        assert!(names_where, "cut at {cut}: {message}");
    }
}

#[test]
fn generated_bundle_round_trips_through_the_talosctl_format() {
    let (bundle, _) = generated();
    let yaml = bundle.to_yaml();
    let back = SecretsBundle::from_yaml(&yaml).unwrap();
    assert_eq!(&back, bundle);
    assert_eq!(back.to_yaml(), yaml);
    // The export is what a talosctl user would see: 4-space indent, single-line base64 PEM.
    let doc: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    let key = decode(yaml_str(&doc, &["certs", "os", "key"]));
    assert!(key.starts_with("-----BEGIN ED25519 PRIVATE KEY-----\n"));
    assert!(yaml.contains(
        "\n    k8sserviceaccount:\n        key: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQ"
    ));
}
