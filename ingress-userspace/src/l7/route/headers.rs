//! Headers from ConfigMaps, as ingress-nginx sets them:
//!
//! - `custom-headers`: response headers from a ConfigMap of the Ingress's
//!   namespace, each name allowed by `--global-allowed-response-headers`
//!   (`more_set_headers`: on every response of the Ingress's paths,
//!   replacing the endpoint's of the same name). A ConfigMap that cannot
//!   be used denies the paths (503), as there.
//! - `--add-headers` and `--proxy-set-headers` (its ConfigMap keys): every
//!   response's headers, and every request's to the endpoints; a header
//!   that cannot be used is reported and left out.
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::cluster::{ObjectKey, Snapshot};

/// More than this many headers, or bytes of them, is no one's set of
/// response headers: refused rather than sent on every response.
const MAX_HEADERS: usize = 64;
const MAX_BYTES: usize = 16 << 10;

/// The headers, checked, in the ConfigMap's (sorted) order: for answers
/// (`custom-headers`, `--add-headers`) or requests (`--proxy-set-headers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderSet(Vec<(HeaderName, HeaderValue)>);

/// A header name as ingress-nginx takes one: letters, digits, `-`, `_`.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl HeaderSet {
    /// Reads ConfigMap `named` (`name` or `namespace/name`, of namespace
    /// `ns` only) and checks each header against ingress-nginx's rules and
    /// `allowed` (lower case).
    pub fn build(
        named: &str,
        ns: &str,
        snapshot: &Snapshot,
        allowed: &[String],
    ) -> Result<Self, String> {
        let (cns, name) = named.split_once('/').unwrap_or((ns, named));
        if cns != ns {
            return Err(format!(
                "ConfigMap {named} is not in the Ingress's namespace {ns}"
            ));
        }
        let key = ObjectKey::new(ns, name);
        let Some(cm) = snapshot.config_maps.get(&key) else {
            return Err(format!("ConfigMap {key} not found"));
        };
        let data = cm.data.clone().unwrap_or_default();
        if data.len() > MAX_HEADERS {
            return Err(format!(
                "ConfigMap {key} has {} headers (at most {MAX_HEADERS})",
                data.len()
            ));
        }
        let bytes: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > MAX_BYTES {
            return Err(format!(
                "ConfigMap {key} has {bytes} bytes of headers (at most {MAX_BYTES})"
            ));
        }
        let mut out = Vec::with_capacity(data.len());
        for (header, value) in &data {
            let pair = Self::checked(header, value).map_err(|e| format!("ConfigMap {key}: {e}"))?;
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(header)) {
                return Err(format!(
                    "ConfigMap {key}: header {header} is not in --global-allowed-response-headers"
                ));
            }
            out.push(pair);
        }
        Ok(Self(out))
    }

    /// `--add-headers` or `--proxy-set-headers`' ConfigMap `key` (`flag`
    /// names it in reports): each usable header; the others reported.
    /// Headers ingressd sets itself on requests (`reserved`) are left to it.
    pub fn global(
        key: &ObjectKey,
        flag: &str,
        snapshot: &Snapshot,
        reserved: &[&str],
        warn: &mut dyn FnMut(String),
    ) -> Self {
        let Some(cm) = snapshot.config_maps.get(key) else {
            warn(format!("ConfigMap {key} not found; no headers set"));
            return Self(Vec::new());
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for (header, value) in cm.data.iter().flatten() {
            let refused =
                if out.len() == MAX_HEADERS || bytes + header.len() + value.len() > MAX_BYTES {
                    Some(format!(
                        "more than {MAX_HEADERS} headers or {MAX_BYTES} bytes"
                    ))
                } else if reserved.iter().any(|r| r.eq_ignore_ascii_case(header)) {
                    Some("set by ingressd itself".to_string())
                } else if value.contains('$') {
                    // nginx would expand a variable there; sent as written it
                    // would be wrong.
                    Some("nginx variables ($name) are not expanded here".to_string())
                } else {
                    None
                };
            if let Some(why) = refused {
                warn(format!("{flag} {key}: header {header:?} left out: {why}"));
                continue;
            }
            match Self::checked(header, value) {
                Ok(pair) => {
                    bytes += header.len() + value.len();
                    out.push(pair);
                }
                Err(why) => warn(format!("{flag} {key}: header {header:?} left out: {why}")),
            }
        }
        Self(out)
    }

    /// A header as ingress-nginx takes it: a name of letters, digits, `-`
    /// and `_`, a value of printable ASCII.
    fn checked(header: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
        if !is_header_name(header) {
            return Err(format!("{header:?} is not a header name"));
        }
        let value_ok = !value.is_empty() && value.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if !value_ok {
            return Err(format!(
                "the value of {header} is empty or not printable ASCII"
            ));
        }
        match (
            HeaderName::from_bytes(header.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => Ok((n, v)),
            _ => Err(format!("{header} is not a header")),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn pairs(&self) -> &[(HeaderName, HeaderValue)] {
        &self.0
    }

    /// Sets each header on a response, replacing what it had of that name.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.0 {
            headers.insert(n.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Object;

    fn snapshot(data: &[(&str, &str)]) -> Snapshot {
        let mut s = Snapshot::default();
        let cm = k8s_openapi::api::core::v1::ConfigMap {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("hdrs".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        s.insert(Object::ConfigMap(Box::new(cm)));
        s
    }

    #[test]
    fn headers_are_checked_as_ingress_nginx_checks_them() {
        let allowed = vec!["x-frame-options".to_string(), "x_custom".to_string()];
        let s = snapshot(&[("X-Frame-Options", "DENY"), ("X_Custom", "a \"b\" {c}")]);
        let h = HeaderSet::build("hdrs", "shop", &s, &allowed).unwrap();
        let mut map = HeaderMap::new();
        map.insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
        h.apply(&mut map);
        assert_eq!(map["x-frame-options"], "DENY");
        assert_eq!(map.get_all("x-frame-options").iter().count(), 1);
        assert_eq!(map["x_custom"], "a \"b\" {c}");
        assert!(HeaderSet::build("shop/hdrs", "shop", &s, &allowed).is_ok());

        let refused = |data: &[(&str, &str)], named: &str, ns: &str| {
            HeaderSet::build(named, ns, &snapshot(data), &allowed).unwrap_err()
        };
        let ok = [("X-Frame-Options", "DENY")];
        assert!(refused(&ok, "other/hdrs", "shop").contains("not in the Ingress's namespace"));
        assert!(refused(&ok, "missing", "shop").contains("not found"));
        assert!(
            refused(&[("X-Other", "1")], "hdrs", "shop")
                .contains("--global-allowed-response-headers")
        );
        assert!(refused(&[("X Frame", "1")], "hdrs", "shop").contains("not a header name"));
        assert!(
            refused(&[("X-Frame-Options", "a\r\nSet-Cookie: x")], "hdrs", "shop")
                .contains("printable")
        );
        assert!(refused(&[("X-Frame-Options", "")], "hdrs", "shop").contains("empty"));
        let long = "v".repeat(MAX_BYTES);
        assert!(refused(&[("X-Frame-Options", &long)], "hdrs", "shop").contains("bytes"));
    }
}
