//! `auth-tls-*` at run time, as ingress-nginx's `ssl_verify_client`: the
//! certificate the client gave in its handshake is checked against the
//! route's CA; without one (`on`) or with a bad one (`on`, `optional`)
//! the answer is 400, or a redirect to `auth-tls-error-page`; a subject
//! `auth-tls-match-cn` does not match gets 403. The endpoints are told
//! with nginx's headers (`ssl-client-verify`, `ssl-client-subject-dn`,
//! `ssl-client-issuer-dn`, and with `auth-tls-pass-certificate-to-upstream`
//! `ssl-client-cert`), a client's own headers of those names replaced.
use std::sync::Arc;

use base64::Engine as _;
use hyper::{
    Response, StatusCode,
    header::{self, HeaderName, HeaderValue},
};
use rustls::pki_types::CertificateDer;
use x509_parser::{prelude::FromDer as _, x509::X509Name};

use super::forwarding::percent_encoded;
use crate::l7::{
    body::{Body, text},
    route::{annotations::client_certs::Verify, client_certs::ClientAuth},
};

/// The certificates a TLS client gave (its own first): in each request's
/// extensions.
#[derive(Clone, Debug)]
pub struct PeerCerts(pub Arc<[CertificateDer<'static>]>);

/// What the check made of the request.
pub(super) enum Checked {
    /// Through, with these headers set (or removed) on its way on.
    Through(Vec<(HeaderName, Option<HeaderValue>)>),
    /// Answered here.
    Answer(Response<Body>),
}

const VERIFY: HeaderName = HeaderName::from_static("ssl-client-verify");
const SUBJECT: HeaderName = HeaderName::from_static("ssl-client-subject-dn");
const ISSUER: HeaderName = HeaderName::from_static("ssl-client-issuer-dn");
const CERT: HeaderName = HeaderName::from_static("ssl-client-cert");

pub(super) fn check(auth: &ClientAuth, peer: Option<&PeerCerts>) -> Checked {
    let s = &auth.settings;
    let chain = peer.map(|p| &p.0[..]).filter(|c| !c.is_empty());
    let verified = chain.map(|c| auth.verify(c));
    let refusal = match (&verified, s.verify) {
        (None, Verify::On) => Some("No required SSL certificate was sent\n"),
        (Some(Err(_)), Verify::On | Verify::Optional) => Some("The SSL certificate error\n"),
        _ => None,
    };
    if let Some(why) = refusal {
        if let Some(e) = &verified {
            tracing::debug!(error = ?e, "client certificate refused");
        }
        return Checked::Answer(match &s.error_page {
            Some(page) => {
                let mut r = text(StatusCode::FOUND, "");
                if let Ok(v) = HeaderValue::from_str(page) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            None => text(StatusCode::BAD_REQUEST, why),
        });
    }
    let names = chain.and_then(|c| names(&c[0]));
    let subject = names.as_ref().map_or("", |(s, _)| s.as_str());
    if let Some(cn) = &auth.match_cn
        && !cn.is_match_bytes(subject.as_bytes())
    {
        return Checked::Answer(text(
            StatusCode::FORBIDDEN,
            "client certificate unauthorized\n",
        ));
    }
    let verify = match &verified {
        None => "NONE".to_string(),
        Some(Ok(())) => "SUCCESS".to_string(),
        Some(Err(e)) => format!("FAILED:{e}"),
    };
    let value = |v: &str| HeaderValue::from_str(v).ok();
    let mut headers = vec![
        (VERIFY, value(&verify)),
        (SUBJECT, names.as_ref().and_then(|(s, _)| value(s))),
        (ISSUER, names.as_ref().and_then(|(_, i)| value(i))),
    ];
    let pem = chain.filter(|_| s.pass_certificate).map(|c| pem(&c[0]));
    headers.push((CERT, pem.and_then(|p| value(&percent_encoded(&p)))));
    Checked::Through(headers)
}

/// Subject and issuer, as nginx's `$ssl_client_s_dn` (RFC 2253).
fn names(cert: &CertificateDer<'_>) -> Option<(String, String)> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    Some((rfc2253(cert.subject()), rfc2253(cert.issuer())))
}

/// Most significant last, as RFC 2253 writes a name.
fn rfc2253(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|a| {
                    let oid = a.attr_type().to_id_string();
                    let key = match oid.as_str() {
                        "2.5.4.3" => "CN",
                        "2.5.4.6" => "C",
                        "2.5.4.7" => "L",
                        "2.5.4.8" => "ST",
                        "2.5.4.9" => "street",
                        "2.5.4.10" => "O",
                        "2.5.4.11" => "OU",
                        "2.5.4.5" => "serialNumber",
                        "1.2.840.113549.1.9.1" => "emailAddress",
                        "0.9.2342.19200300.100.1.25" => "DC",
                        "0.9.2342.19200300.100.1.1" => "UID",
                        other => other,
                    };
                    let value = a.as_str().map_or_else(|_| "#".into(), escape);
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RFC 2253 §2.4: the characters that would end or reshape a value.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i + 1 == v.chars().count() && c == ' ');
        if edge || ",+\"\\<>;".contains(c) {
            out.push('\\');
        }
        if c.is_control() {
            out.push_str(&format!("\\{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn pem(cert: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_nginx_prints_them() {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CountryName, "DE");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Shop, Inc.");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let cert = p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        let (subject, issuer) = names(cert.der()).unwrap();
        assert_eq!(subject, "CN=alice,O=Shop\\, Inc.,C=DE");
        assert_eq!(issuer, subject);
        assert!(pem(cert.der()).starts_with("-----BEGIN CERTIFICATE-----\nMII"));
    }
}
