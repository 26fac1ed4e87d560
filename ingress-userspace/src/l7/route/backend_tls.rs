//! TLS to endpoints (`backend-protocol: HTTPS|GRPCS`), made when the
//! route table is compiled: the rustls client configuration an Ingress's
//! `proxy-ssl-*` annotations and its `proxy-ssl-secret` ask for. Nothing
//! here connects; `upstream` does, with connections pooled by `id`.
use std::{
    hash::{Hash as _, Hasher as _},
    sync::Arc,
};

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

use super::annotations::backend_tls::TlsToBackend;
use crate::cluster::{ObjectKey, Snapshot, secret_data};

/// How a route's endpoints are spoken to over TLS.
pub struct BackendTls {
    /// Same settings, same id: what pooled connections are keyed by.
    pub id: u64,
    pub config: Arc<rustls::ClientConfig>,
    /// Verified against, and sent as SNI when asked.
    pub name: ServerName<'static>,
}

impl PartialEq for BackendTls {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for BackendTls {}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackendTls({:?}, {:x})", self.name, self.id)
    }
}

/// The handshake signatures of `provider`: what a verifier that takes any
/// chain still checks, so the peer proves it holds the key its
/// certificate names (the client side's `Unverified`, the server side's
/// `tls::AskAny`).
#[derive(Debug)]
pub(in crate::l7) struct KeyProof(pub Arc<CryptoProvider>);

impl KeyProof {
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// nginx's `proxy_ssl_verify off`: any certificate, the handshake's own
/// signatures still checked (the session is still encrypted to whoever
/// holds the key the certificate names).
#[derive(Debug)]
struct Unverified(KeyProof);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// TLS as nginx's `proxy_pass https://` has it by default (no verification)
/// but with SNI: for `auth-url`, often a public host behind SNI routing.
pub fn unverified() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap_or_else(|_| unreachable!("ring offers the default versions"))
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(KeyProof(provider))))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

/// The client configuration for `t`, for a Service whose DNS name is
/// `service_dns` (the default name); `h2` offers ALPN h2 (GRPCS), else
/// http/1.1. An error names what is wrong (the routes then answer 502).
pub fn build(
    t: &TlsToBackend,
    service_dns: &str,
    h2: bool,
    snapshot: &Snapshot,
) -> Result<BackendTls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let secret = match &t.secret {
        None => None,
        Some((ns, name)) => Some(
            snapshot
                .secrets
                .get(&ObjectKey::new(ns.clone(), name.clone()))
                .ok_or_else(|| format!("proxy-ssl-secret {ns}/{name} not found"))?,
        ),
    };
    let field = |name: &str| secret.and_then(|s| secret_data(s, name));
    let ca = field("ca.crt");
    let (cert, key) = (field("tls.crt"), field("tls.key"));
    let name_text = t.name.clone().unwrap_or_else(|| service_dns.to_string());
    let name = ServerName::try_from(name_text.clone())
        .map_err(|e| format!("{name_text:?} is not a server name: {e}"))?;
    let mut fingerprint = std::collections::hash_map::DefaultHasher::new();
    (t, &name_text, h2, &ca, &cert, &key).hash(&mut fingerprint);

    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if t.verify {
        let mut roots = rustls::RootCertStore::empty();
        let Some(ca) = &ca else {
            return Err(
                "proxy-ssl-verify is on but proxy-ssl-secret has no ca.crt to verify with".into(),
            );
        };
        for c in CertificateDer::pem_slice_iter(ca) {
            let c = c.map_err(|e| format!("ca.crt: {e}"))?;
            roots.add(c).map_err(|e| format!("ca.crt: {e}"))?;
        }
        if roots.is_empty() {
            return Err("ca.crt: no certificate in it".into());
        }
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("ca.crt: {e}"))?;
        builder.with_webpki_verifier(verifier)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(KeyProof(provider))))
    };
    let mut config = match (&cert, &key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("tls.crt: {e}"))?;
            if chain.is_empty() {
                return Err("tls.crt: no certificate in it".into());
            }
            builder
                .with_client_auth_cert(chain, key_der(key)?)
                .map_err(|e| format!("tls.crt/tls.key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.enable_sni = t.server_name;
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(BackendTls {
        id: fingerprint.finish(),
        config: Arc::new(config),
        name,
    })
}

fn key_der(pem: &[u8]) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("tls.key: {e}"))
}
