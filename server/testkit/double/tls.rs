//! Mutual TLS as apid does it: the server certificate, the client certificate checks, and
//! the accept loop that records refused handshakes.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rcgen::ExtendedKeyUsagePurpose;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;
use x509_parser::extensions::ParsedExtension;

use crate::talos::api::{pem_certificates, pem_private_key};
use crate::talos::secrets::CertAndKey;

use super::certs::{issue_cert, LeafSpec};
use super::{unix_ms, DoubleConfig, DoubleError, Node, TlsRejection, MAX_CALLS};

/// What the double knows about a client from its certificate.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    pub addr: SocketAddr,
    /// Subject Organization values (trimmed, empty ones dropped), i.e. Talos roles.
    pub roles: Vec<String>,
}

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted, verified client connection.
pub(super) struct PeerConn {
    pub(super) tls: tokio_rustls::server::TlsStream<TcpStream>,
    pub(super) identity: PeerIdentity,
}

impl Connected for PeerConn {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.identity.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

pub(super) fn async_stream_from(
    rx: &mut mpsc::Receiver<io::Result<PeerConn>>,
) -> impl futures::Stream<Item = io::Result<PeerConn>> + '_ {
    futures::stream::unfold(rx, |rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<io::Result<PeerConn>>,
    node: Arc<Node>,
) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "talos double: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let node = node.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return reject(&node, addr, e.to_string()),
                Err(_) => return reject(&node, addr, "handshake timed out".to_string()),
            };
            let roles = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| subject_organizations(leaf))
                .unwrap_or_default();
            let identity = PeerIdentity { addr, roles };
            let _ = tx.send(Ok(PeerConn { tls, identity })).await;
        });
    }
}

fn reject(node: &Node, addr: SocketAddr, error: String) {
    tracing::debug!(peer = %addr, %error, "talos double: TLS handshake refused");
    let mut st = node.lock();
    if st.tls_rejections.len() >= MAX_CALLS {
        st.tls_rejections.remove(0);
    }
    st.tls_rejections.push(TlsRejection {
        at_ms: unix_ms(),
        peer: addr.to_string(),
        error,
    });
    node.persist(&st);
}

fn subject_organizations(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    cert.subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(|o| o.trim().to_string())
        .filter(|o| !o.is_empty())
        .collect()
}

pub(super) fn server_tls_config(
    os_ca: &CertAndKey,
    config: &DoubleConfig,
) -> Result<rustls::ServerConfig, DoubleError> {
    let tls = |e: &dyn std::fmt::Display| DoubleError::Tls(e.to_string());
    let ip_sans = if config.listen.ip().is_unspecified() {
        let mut ips: BTreeSet<IpAddr> = if_addrs::get_if_addrs()
            .map(|ifs| ifs.into_iter().map(|i| i.ip()).collect())
            .unwrap_or_default();
        ips.insert(IpAddr::from([127, 0, 0, 1]));
        ips.into_iter().collect()
    } else {
        vec![config.listen.ip()]
    };
    let now = SystemTime::now();
    let (crt, key) = issue_cert(
        os_ca,
        &LeafSpec {
            common_name: Some(config.hostname.clone()),
            organizations: Vec::new(),
            ip_sans,
            dns_sans: vec![config.hostname.clone()],
            extended_key_usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(24 * 3600),
        },
    )?;
    let chain = pem_certificates(&crt).map_err(|e| tls(&e))?;
    let key = pem_private_key(&key).map_err(|e| tls(&e))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in pem_certificates(os_ca.crt_pem()).map_err(|e| tls(&e))? {
        roots.add(ca).map_err(|e| tls(&e))?;
    }
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls(&e))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(Arc::new(TalosClientVerifier { webpki }))
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(server)
}

/// apid's client check: RequireAndVerifyClientCert against the OS CA, then every non-CA
/// certificate of the chain must have ExtKeyUsage exactly `[clientAuth]`.
#[derive(Debug)]
struct TalosClientVerifier {
    pub(super) webpki: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for TalosClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        for cert in std::iter::once(end_entity).chain(intermediates) {
            if !eku_is_exactly_client_auth(cert) {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::InvalidPurpose,
                ));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Go's `slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})`
/// for a non-CA certificate (true for a CA). Go's `ExtKeyUsage` holds only the usages Go
/// knows; OIDs it does not know go elsewhere and do not count.
fn eku_is_exactly_client_auth(der: &CertificateDer<'_>) -> bool {
    const GO_KNOWN_OTHER_EKUS: [&str; 7] = [
        "1.3.6.1.5.5.7.3.5",      // IPSECEndSystem
        "1.3.6.1.5.5.7.3.6",      // IPSECTunnel
        "1.3.6.1.5.5.7.3.7",      // IPSECUser
        "1.3.6.1.4.1.311.10.3.3", // MicrosoftServerGatedCrypto
        "2.16.840.1.113730.4.1",  // NetscapeServerGatedCrypto
        "1.3.6.1.4.1.311.2.1.22", // MicrosoftCommercialCodeSigning
        "1.3.6.1.4.1.311.61.1.1", // MicrosoftKernelCodeSigning
    ];
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    if cert.is_ca() {
        return true;
    }
    let eku = cert
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(eku) => Some(eku),
            _ => None,
        });
    let Some(eku) = eku else { return false };
    eku.client_auth
        && !eku.any
        && !eku.server_auth
        && !eku.code_signing
        && !eku.email_protection
        && !eku.time_stamping
        && !eku.ocsp_signing
        && !eku
            .other
            .iter()
            .any(|oid| GO_KNOWN_OTHER_EKUS.contains(&oid.to_id_string().as_str()))
}
