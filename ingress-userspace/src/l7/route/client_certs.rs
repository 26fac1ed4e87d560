//! The client-certificate check of an Ingress's `auth-tls-*`, made when the
//! route table is compiled: the CA of its `auth-tls-secret` (`ca.crt`)
//! as a verifier, and `auth-tls-match-cn` compiled. The handshake asks
//! for a certificate and proves the client holds its key; whether the
//! chain leads to this CA is asked per request (`verify`), so each
//! Ingress of a host can trust its own CA.
use std::{
    hash::{Hash, Hasher},
    sync::Arc,
};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, UnixTime, pem::PemObject},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};

use super::{
    annotations::client_certs::ClientCerts,
    pattern::{Budget, PathRegex, Patterns},
};
use crate::cluster::{ObjectKey, Snapshot, secret_data};

/// An Ingress's client-certificate check.
pub struct ClientAuth {
    pub settings: ClientCerts,
    verifier: Arc<dyn ClientCertVerifier>,
    pub match_cn: Option<PathRegex>,
    /// Changes with the settings and the CA.
    id: u64,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("settings", &self.settings)
            .field("id", &self.id)
            .finish()
    }
}

impl PartialEq for ClientAuth {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for ClientAuth {}

impl ClientAuth {
    /// Whether `chain` (the client's certificate first) leads to the CA.
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let (end, intermediates) = chain.split_first().ok_or("no certificate")?;
        // nginx's depth counts the certificates above the client's.
        if intermediates.len() > self.settings.depth as usize {
            return Err(format!(
                "a chain of {} certificates is deeper than auth-tls-verify-depth {}",
                chain.len(),
                self.settings.depth
            ));
        }
        self.verifier
            .verify_client_cert(end, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The check of `c` for an Ingress of namespace `owner`; an error (the
/// paths then answer 503) names what is missing.
pub fn build(
    c: &ClientCerts,
    owner: &str,
    snapshot: &Snapshot,
    patterns: &mut Patterns,
    budget: &mut Budget,
) -> Result<ClientAuth, String> {
    let name = format!("{}/{}", c.namespace, c.secret);
    // The Ingress's own namespace only (ingress-nginx's
    // allow-cross-namespace-resources: false).
    if c.namespace != owner {
        return Err(format!(
            "auth-tls-secret {name} is not in the Ingress's namespace {owner}"
        ));
    }
    let secret = snapshot
        .secrets
        .get(&ObjectKey::new(c.namespace.clone(), c.secret.clone()))
        .ok_or_else(|| format!("auth-tls-secret {name} not found"))?;
    let ca = secret_data(secret, "ca.crt")
        .ok_or_else(|| format!("auth-tls-secret {name} has no ca.crt"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| format!("auth-tls-secret {name} ca.crt: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("auth-tls-secret {name} ca.crt: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("auth-tls-secret {name} ca.crt has no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("auth-tls-secret {name} ca.crt: {e}"))?;
    let match_cn = c
        .match_cn
        .as_deref()
        .map(|p| patterns.header(p, budget))
        .transpose()
        .map_err(|e| format!("auth-tls-match-cn {e}"))?;
    let mut fingerprint = std::collections::hash_map::DefaultHasher::new();
    (c, &ca).hash(&mut fingerprint);
    Ok(ClientAuth {
        settings: c.clone(),
        verifier,
        match_cn,
        id: fingerprint.finish(),
    })
}
