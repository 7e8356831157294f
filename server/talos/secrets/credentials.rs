//! Operator credentials signed by the bundle's CAs: the talosconfig and the admin kubeconfig
//! with their client certificates.

use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rcgen::{DistinguishedName, DnType, KeyUsagePurpose};
use zeroize::Zeroizing;

use super::certs::{issue_client_cert, printable, ClientCert};
use super::yaml::yaml_scalar;
use super::{to_datetime, SecretsBundle, SecretsError, CLIENT_CERT_VALIDITY, KUBECONFIG_BACKDATE};

impl SecretsBundle {
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
