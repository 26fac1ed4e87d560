//! TLS termination: certificates from the `kubernetes.io/tls` Secrets named
//! in Ingress `spec.tls`, chosen by SNI (exact host, then `*.` wildcard),
//! else a default certificate (`--default-ssl-certificate`, or one made up
//! at start-up, self-signed, as ingress-nginx does). The certificate table is
//! swapped whole on every change, like the route table.
use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use arc_swap::ArcSwap;
use rustls::{
    DigitallySignedStruct, DistinguishedName, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{
        ClientHello, ResolvesServerCert,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};

use super::route::{
    RouteTable, RouteWarning,
    backend_tls::KeyProof,
    gateway::{attach::Protocol, hostnames::under},
};
use crate::cluster::{ObjectKey, Snapshot, secret_data};

#[derive(Default)]
struct Certs {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// Gateway HTTPS listeners' `*.` hostnames (any number of labels
    /// under the suffix), longest suffix first.
    listener_wildcards: Vec<(String, Arc<CertifiedKey>)>,
    /// A Gateway HTTPS listener without a hostname: every other name.
    listener_any: Option<Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

/// The resolver rustls asks on every handshake.
#[derive(Default)]
pub struct CertStore {
    certs: ArcSwap<Certs>,
    /// Hosts whose clients are asked for a certificate (`auth-tls-*`).
    client_cert_hosts: ArcSwap<BTreeSet<String>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertStore")
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        if let Some(sni) = hello.server_name() {
            let sni = sni.to_ascii_lowercase();
            if let Some(c) = certs.exact.get(&sni) {
                return Some(c.clone());
            }
            if let Some((label, suffix)) = sni.split_once('.')
                && !label.is_empty()
                && let Some(c) = certs.wildcard.get(suffix)
            {
                return Some(c.clone());
            }
            if let Some((_, c)) = certs
                .listener_wildcards
                .iter()
                .find(|(suffix, _)| under(&sni, suffix))
            {
                return Some(c.clone());
            }
        }
        certs.listener_any.clone().or_else(|| certs.default.clone())
    }
}

/// A certificate and key from PEM text.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt: no certificate in it".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("tls.key: {e}"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// A self-signed certificate for when nothing else matches.
pub fn self_signed() -> Result<Arc<CertifiedKey>, String> {
    let cert = rcgen::generate_simple_self_signed(vec!["ingress-ebpf.local".to_string()])
        .map_err(|e| e.to_string())?;
    certified_key(
        cert.cert.pem().as_bytes(),
        cert.signing_key.serialize_pem().as_bytes(),
    )
}

/// `tls.crt` and `tls.key` of a Secret.
fn secret_key_pair(snapshot: &Snapshot, key: &ObjectKey) -> Result<Arc<CertifiedKey>, String> {
    let secret = snapshot
        .secrets
        .get(key)
        .ok_or_else(|| format!("Secret {}/{} not found", key.namespace, key.name))?;
    let field = |name: &str| secret_data(secret, name);
    let (Some(cert), Some(pkey)) = (field("tls.crt"), field("tls.key")) else {
        return Err(format!(
            "Secret {}/{} has no tls.crt and tls.key",
            key.namespace, key.name
        ));
    };
    certified_key(&cert, &pkey).map_err(|e| format!("Secret {}/{}: {e}", key.namespace, key.name))
}

/// Secrets' key pairs, each read once per update; one that cannot be
/// used is reported once, by the first that names it.
#[derive(Default)]
struct Loaded(HashMap<ObjectKey, Option<Arc<CertifiedKey>>>);

impl Loaded {
    fn get(
        &mut self,
        snapshot: &Snapshot,
        secret: &ObjectKey,
        warnings: &mut Vec<RouteWarning>,
        who: &str,
        field: impl FnOnce() -> String,
    ) -> Option<Arc<CertifiedKey>> {
        self.0
            .entry(secret.clone())
            .or_insert_with(|| match secret_key_pair(snapshot, secret) {
                Ok(ck) => Some(ck),
                Err(message) => {
                    warnings.push(RouteWarning {
                        ingress: who.to_string(),
                        field: field(),
                        message,
                    });
                    None
                }
            })
            .clone()
    }
}

/// The first certificate of each HTTPS listener of our Gateways that
/// serves, by its hostname. An Ingress's certificate for the same exact
/// name keeps it (its host is routed by both, which is reported).
fn listener_certs(
    snapshot: &Snapshot,
    table: &RouteTable,
    certs: &mut Certs,
    loaded: &mut Loaded,
    warnings: &mut Vec<RouteWarning>,
) {
    let listeners = table
        .gateway
        .attachment
        .gateways
        .iter()
        .flat_map(|(key, gw)| {
            gw.listeners
                .iter()
                .filter(|l| l.serves() && l.protocol == Some(Protocol::Https))
                .map(move |l| (key, l))
        });
    for (key, l) in listeners {
        let Some(secret) = l.certificates.first() else {
            continue;
        };
        let field = || format!("spec.listeners[{}].tls.certificateRefs", l.name);
        let ck = loaded.get(
            snapshot,
            secret,
            warnings,
            &format!("(Gateway {key})"),
            field,
        );
        let Some(ck) = ck else { continue };
        match l.hostname.as_deref() {
            None => {
                certs.listener_any.get_or_insert(ck);
            }
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => certs.listener_wildcards.push((suffix.to_string(), ck)),
                None => {
                    certs.exact.entry(h.to_string()).or_insert(ck);
                }
            },
        }
    }
    certs
        .listener_wildcards
        .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
}

impl CertStore {
    /// Rebuilds the table from the Ingresses' TLS hosts; a broken Secret is
    /// reported and its hosts get the default certificate.
    pub fn update(
        &self,
        snapshot: &Snapshot,
        table: &RouteTable,
        default_secret: Option<&ObjectKey>,
        fallback: &Arc<CertifiedKey>,
    ) -> Vec<RouteWarning> {
        let mut warnings = Vec::new();
        let mut certs = Certs::default();
        let mut loaded = Loaded::default();
        for (host, secret) in &table.tls_hosts {
            let ck = loaded.get(
                snapshot,
                secret,
                &mut warnings,
                &format!("(tls host {host})"),
                || "spec.tls".into(),
            );
            let Some(ck) = ck else { continue };
            match host.strip_prefix("*.") {
                Some(suffix) => certs.wildcard.insert(suffix.to_string(), ck),
                None => certs.exact.insert(host.clone(), ck),
            };
        }
        listener_certs(snapshot, table, &mut certs, &mut loaded, &mut warnings);
        certs.default = Some(match default_secret.map(|k| secret_key_pair(snapshot, k)) {
            Some(Ok(ck)) => ck,
            Some(Err(message)) => {
                warnings.push(RouteWarning {
                    ingress: "(default certificate)".into(),
                    field: "--default-ssl-certificate".into(),
                    message,
                });
                fallback.clone()
            }
            None => fallback.clone(),
        });
        self.certs.store(Arc::new(certs));
        self.client_cert_hosts
            .store(Arc::new(table.client_cert_hosts.clone()));
        warnings
    }

    /// Whether a handshake for `sni` asks the client for a certificate.
    pub fn wants_client_cert(&self, sni: Option<&str>) -> bool {
        let Some(sni) = sni else { return false };
        let sni = sni.to_ascii_lowercase();
        let hosts = self.client_cert_hosts.load();
        hosts.contains(&sni)
            || sni.split_once('.').is_some_and(|(label, suffix)| {
                !label.is_empty() && hosts.contains(&format!("*.{suffix}"))
            })
    }
}

/// The server configurations, chosen per handshake by its SNI: one that
/// asks for a client certificate, for the hosts that want one, and one
/// that does not, for the rest (a browser asked for a certificate by every
/// site would prompt its user).
pub struct ServerConfigs {
    plain: Arc<rustls::ServerConfig>,
    asking: Arc<rustls::ServerConfig>,
    store: Arc<CertStore>,
}

impl ServerConfigs {
    pub fn for_sni(&self, sni: Option<&str>) -> Arc<rustls::ServerConfig> {
        if self.store.wants_client_cert(sni) {
            self.asking.clone()
        } else {
            self.plain.clone()
        }
    }
}

/// The server configurations: SNI through `store`, ALPN h2 and HTTP/1.1.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfigs>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = || {
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())
    };
    let mut plain = builder()?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    let mut asking = builder()?
        .with_client_cert_verifier(Arc::new(AskAny(KeyProof(provider.clone()))))
        .with_cert_resolver(store.clone());
    for cfg in [&mut plain, &mut asking] {
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    Ok(Arc::new(ServerConfigs {
        plain: Arc::new(plain),
        asking: Arc::new(asking),
        store,
    }))
}

/// Asks for a client certificate without requiring one, and takes any
/// chain whose key the client proves it holds: which CA it must lead to
/// is the route's to say, per request (`route::client_certs`).
#[derive(Debug)]
struct AskAny(KeyProof);

impl ClientCertVerifier for AskAny {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hosts_with_auth_tls_ask_for_a_certificate() {
        let store = CertStore::default();
        store.client_cert_hosts.store(Arc::new(
            ["mtls.test".to_string(), "*.corp.test".to_string()].into(),
        ));
        for (sni, asks) in [
            (Some("mtls.test"), true),
            (Some("MTLS.test"), true),
            (Some("a.corp.test"), true),
            (Some("corp.test"), false),
            (Some("a.b.corp.test"), false),
            (Some("open.test"), false),
            (None, false),
        ] {
            assert_eq!(store.wants_client_cert(sni), asks, "{sni:?}");
        }
    }
}
