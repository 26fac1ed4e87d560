//! What `ingressd` does with each `nginx.ingress.kubernetes.io/` annotation
//! and each key of ingress-nginx's controller ConfigMap: the one table that
//! `run`'s warnings and `ingressd migrate`'s report both read, so the two
//! never disagree.

/// How an ingress-nginx setting fares here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// With ingress-nginx's meaning and defaults.
    Honoured,
    /// Honoured, with the difference named.
    Differs(&'static str),
    /// Not implemented: ignored, and what it did is lost.
    NotSupported,
    /// Never, for the reason given.
    Refused(&'static str),
    /// Not one of ingress-nginx's either (a typo, another controller's):
    /// ingress-nginx ignores it too, so nothing is lost.
    Unknown,
}

impl Verdict {
    /// Whether an Ingress moved here loses what the setting did.
    pub fn lost(self) -> bool {
        matches!(self, Verdict::NotSupported | Verdict::Refused(_))
    }

    pub fn note(self) -> Option<&'static str> {
        match self {
            Verdict::Differs(n) | Verdict::Refused(n) => Some(n),
            Verdict::Unknown => Some("not an ingress-nginx annotation; ignored there too"),
            _ => None,
        }
    }

    /// The line `run` logs for a setting it does not honour, if any.
    pub fn warning(self) -> Option<String> {
        match self {
            Verdict::NotSupported => Some("not supported by ingress-ebpf; ignored".into()),
            Verdict::Refused(why) => Some(format!("refused by design: {why}; ignored")),
            Verdict::Unknown => Some("not an ingress-nginx annotation; ignored".into()),
            _ => None,
        }
    }
}

const SNIPPETS: &str = "no configuration is ever templated from user input \
     (the IngressNightmare class of bugs); say what the snippet does with an annotation or a flag";
const STREAMING: &str = "ingressd streams bodies both ways and never spools to disk; \
     the value is checked and has nothing to size";
const REWRITE_LOG: &str = "no rewrite log; rewrites are visible in the access log";

use Verdict::*;

/// Every annotation ingress-nginx documents, by name without the prefix.
const ANNOTATIONS: &[(&str, Verdict)] = &[
    (
        "affinity",
        Differs(
            "the cookie's key is hashed over the endpoints by rendezvous hashing, so sessions set by ingress-nginx move once",
        ),
    ),
    ("affinity-canary-behavior", Honoured),
    ("affinity-mode", Honoured),
    ("allowlist-source-range", Honoured),
    ("app-root", Honoured),
    ("auth-always-set-cookie", NotSupported),
    ("auth-cache-duration", Honoured),
    (
        "auth-cache-key",
        Differs(
            "the variables of upstream-hash-by ($http_NAME, $cookie_NAME, $remote_user…); answers are kept in memory, at most 16,384",
        ),
    ),
    ("auth-keepalive", NotSupported),
    ("auth-keepalive-requests", NotSupported),
    ("auth-keepalive-share-vars", NotSupported),
    ("auth-keepalive-timeout", NotSupported),
    ("auth-method", Honoured),
    ("auth-proxy-set-headers", NotSupported),
    ("auth-realm", Honoured),
    ("auth-request-redirect", Honoured),
    ("auth-response-headers", Honoured),
    ("auth-secret", Honoured),
    ("auth-secret-type", Honoured),
    ("auth-signin", Honoured),
    ("auth-signin-redirect-param", Honoured),
    ("auth-tls-error-page", Honoured),
    ("auth-tls-match-cn", Honoured),
    ("auth-tls-pass-certificate-to-upstream", Honoured),
    (
        "auth-tls-secret",
        Differs(
            "checked per path of the Ingress (ingress-nginx checks the whole host); the handshake asks every client of the host for a certificate",
        ),
    ),
    ("auth-tls-verify-client", Honoured),
    (
        "auth-tls-verify-depth",
        Differs("counts the certificates the client sends above its own"),
    ),
    (
        "auth-type",
        Differs(
            "basic takes $apr1$, $1$, $5$, $6$, bcrypt, {SHA}, {SSHA} and {PLAIN} hashes, not DES or yescrypt, and refuses bcrypt cost over 12 and SHA-crypt rounds over 500,000; digest nonces last 60 s",
        ),
    ),
    (
        "auth-url",
        Differs(
            "the variables $host, $scheme, $request_uri, $escaped_request_uri and $remote_addr only; one connection per check (no auth-keepalive); an https URL is not verified, as nginx's, but gets SNI",
        ),
    ),
    (
        "backend-protocol",
        Differs(
            "HTTP, HTTPS, GRPC, GRPCS and H2C endpoints; FCGI and AJP ones answer 502 (never sent as HTTP)",
        ),
    ),
    (
        "canary",
        Differs(
            "the canary's own other annotations are ignored (the main Ingress's apply), as in ingress-nginx; its traffic split is per host and path, where ingress-nginx's also reaches other routes to the same Service",
        ),
    ),
    ("canary-by-cookie", Honoured),
    ("canary-by-header", Honoured),
    (
        "canary-by-header-pattern",
        Differs(
            "a regular expression in Rust's regex syntax (no look-around or backreferences), bounded in compiled size",
        ),
    ),
    ("canary-by-header-value", Honoured),
    ("canary-weight", Honoured),
    ("canary-weight-total", Honoured),
    ("client-body-buffer-size", Differs(STREAMING)),
    (
        "connection-proxy-header",
        Differs(
            "an upgrade (WebSocket) still sends Connection: upgrade, where nginx's sends the value",
        ),
    ),
    ("cors-allow-credentials", Honoured),
    ("cors-allow-headers", Honoured),
    ("cors-allow-methods", Honoured),
    (
        "cors-allow-origin",
        Differs(
            "an Origin must match an entry whole (ingress-nginx's pattern is anchored only at its end)",
        ),
    ),
    ("cors-expose-headers", Honoured),
    ("cors-max-age", Honoured),
    (
        "custom-headers",
        Differs(
            "the names in --global-allowed-response-headers are matched without regard to case; at most 64 headers, 16 KiB",
        ),
    ),
    (
        "custom-http-errors",
        Differs(
            "answers of the endpoints only (ingressd's own 502/503/504 are not replaced); without default-backend or --default-backend-service the endpoints' answers pass",
        ),
    ),
    ("default-backend", Honoured),
    ("denylist-source-range", Honoured),
    ("enable-access-log", Honoured),
    ("enable-cors", Honoured),
    ("enable-global-auth", NotSupported),
    ("enable-influxdb", NotSupported),
    ("enable-modsecurity", NotSupported),
    ("enable-opentelemetry", NotSupported),
    ("enable-opentracing", NotSupported),
    ("enable-owasp-core-rules", NotSupported),
    ("enable-rewrite-log", Differs(REWRITE_LOG)),
    ("force-ssl-redirect", Honoured),
    ("from-to-www-redirect", Honoured),
    ("global-rate-limit", NotSupported),
    ("global-rate-limit-ignored-cidrs", NotSupported),
    ("global-rate-limit-key", NotSupported),
    ("global-rate-limit-window", NotSupported),
    ("http2-push-preload", NotSupported),
    ("influxdb-host", NotSupported),
    ("influxdb-measurement", NotSupported),
    ("influxdb-port", NotSupported),
    ("influxdb-server-name", NotSupported),
    ("limit-allowlist", Honoured),
    ("limit-burst-multiplier", Honoured),
    ("limit-connections", Honoured),
    ("limit-rate", NotSupported),
    ("limit-rate-after", NotSupported),
    ("limit-rpm", Honoured),
    ("limit-rps", Honoured),
    (
        "limit-whitelist",
        Differs("the old name of limit-allowlist; ignored when both are set, as in ingress-nginx"),
    ),
    (
        "load-balance",
        Differs(
            "ewma as ingress-nginx's (power of two choices on response time × requests in flight); round_robin is power of two choices on requests in flight",
        ),
    ),
    ("mirror-host", NotSupported),
    ("mirror-request-body", NotSupported),
    ("mirror-target", NotSupported),
    ("modsecurity-transaction-id", NotSupported),
    ("opentelemetry-operation-name", NotSupported),
    ("opentelemetry-trust-incoming-span", NotSupported),
    ("opentracing-trust-incoming-span", NotSupported),
    ("permanent-redirect", Honoured),
    ("permanent-redirect-code", Honoured),
    ("preserve-trailing-slash", NotSupported),
    ("proxy-body-size", Honoured),
    ("proxy-buffer-size", Differs(STREAMING)),
    ("proxy-buffering", Differs(STREAMING)),
    ("proxy-buffers-number", Differs(STREAMING)),
    ("proxy-connect-timeout", Honoured),
    ("proxy-cookie-domain", NotSupported),
    ("proxy-cookie-path", NotSupported),
    (
        "proxy-http-version",
        Differs(
            "with \"1.0\", a request body of unknown length (chunked) is answered 411, where nginx buffers it first",
        ),
    ),
    ("proxy-max-temp-file-size", Differs(STREAMING)),
    (
        "proxy-next-upstream",
        Differs(
            "a request whose body has gone out is not sent again (bodies are streamed, not buffered)",
        ),
    ),
    ("proxy-next-upstream-timeout", Honoured),
    (
        "proxy-next-upstream-tries",
        Differs("at most 16 tries (0 means 16)"),
    ),
    ("proxy-read-timeout", Honoured),
    ("proxy-redirect-from", NotSupported),
    ("proxy-redirect-to", NotSupported),
    ("proxy-request-buffering", Differs(STREAMING)),
    ("proxy-send-timeout", Honoured),
    ("proxy-ssl-ciphers", NotSupported),
    (
        "proxy-ssl-name",
        Differs(
            "default: the Service's DNS name (svc.namespace.svc), where nginx's is the upstream block's",
        ),
    ),
    ("proxy-ssl-protocols", NotSupported),
    ("proxy-ssl-secret", Honoured),
    ("proxy-ssl-server-name", Honoured),
    ("proxy-ssl-verify", Honoured),
    (
        "proxy-ssl-verify-depth",
        Differs("checked; the chain is verified whole to the Secret's CA, whatever its length"),
    ),
    ("rewrite-target", Honoured),
    ("satisfy", NotSupported),
    ("server-alias", Honoured),
    ("service-upstream", Honoured),
    (
        "session-cookie-change-on-failure",
        Differs(
            "without it, a request whose endpoint fails to connect is still tried on another (the cookie stays), where ingress-nginx answers 502",
        ),
    ),
    (
        "session-cookie-conditional-samesite-none",
        Differs("SameSite=None is sent to every browser (the exception was for browsers of 2019)"),
    ),
    ("session-cookie-domain", Honoured),
    ("session-cookie-expires", Honoured),
    ("session-cookie-max-age", Honoured),
    ("session-cookie-name", Honoured),
    (
        "session-cookie-path",
        Differs("default: the rule's path, and / for a regular-expression path"),
    ),
    ("session-cookie-samesite", Honoured),
    ("session-cookie-secure", Honoured),
    ("ssl-ciphers", NotSupported),
    (
        "ssl-passthrough",
        Differs(
            "only with --enable-ssl-passthrough, as in ingress-nginx: TLS for the Ingress's hosts (`*.` ones too) is spliced by SNI to the endpoints of its \"/\" path, not its Service's cluster IP, and closed after an hour with nothing sent",
        ),
    ),
    ("ssl-prefer-server-ciphers", NotSupported),
    ("ssl-redirect", Honoured),
    ("temporal-redirect", Honoured),
    ("temporal-redirect-code", Honoured),
    (
        "upstream-hash-by",
        Differs(
            "rendezvous hashing, not ingress-nginx's ring: keys land on other endpoints than there, as stably (only an endpoint's own keys move when it leaves); $request_uri, $uri, $remote_addr, $host, $http_NAME, $cookie_NAME and $arg_NAME",
        ),
    ),
    ("upstream-hash-by-subset", NotSupported),
    ("upstream-hash-by-subset-size", NotSupported),
    ("upstream-vhost", Honoured),
    ("use-regex", Honoured),
    (
        "whitelist-source-range",
        Differs(
            "the old name of allowlist-source-range; ignored when both are set, as in ingress-nginx",
        ),
    ),
    ("x-forwarded-prefix", Honoured),
];

/// The verdict on annotation `name` (without the prefix).
pub fn annotation(name: &str) -> Verdict {
    if name.ends_with("-snippet") {
        return Refused(SNIPPETS);
    }
    find(ANNOTATIONS, name)
}

/// Switches ingress-nginx leaves off unless asked: set to "false" (or
/// "off"), they ask for nothing, so nothing is lost.
const OFF_BY_DEFAULT: &[&str] = &[
    "allow-snippet-annotations",
    "auth-tls-pass-certificate-to-upstream",
    "enable-brotli",
    "enable-global-auth",
    "enable-influxdb",
    "enable-modsecurity",
    "enable-opentelemetry",
    "enable-opentracing",
    "enable-owasp-core-rules",
    "http2-push-preload",
    "preserve-trailing-slash",
    "ssl-passthrough",
    "upstream-hash-by-subset",
    "use-gzip",
    "use-proxy-protocol",
];

/// A setting's verdict given its value: a switch that stays off asks for
/// nothing ingressd lacks.
fn with_value(v: Verdict, name: &str, value: &str) -> Verdict {
    let off = matches!(value.trim(), "false" | "off");
    if off && v.lost() && OFF_BY_DEFAULT.contains(&name) {
        return Differs("off, as ingress-nginx leaves it by default: nothing is lost");
    }
    v
}

/// The verdict on annotation `name` (without the prefix) set to `value`.
pub fn annotation_value(name: &str, value: &str) -> Verdict {
    with_value(annotation(name), name, value)
}

fn find(table: &[(&str, Verdict)], name: &str) -> Verdict {
    table
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .map_or(Unknown, |i| table[i].1)
}

/// Keys of ingress-nginx's controller ConfigMap people set most, and what
/// takes their place here (a flag of `ingressd run`, read once at start).
const CONFIGMAP: &[(&str, Verdict)] = &[
    (
        "add-headers",
        Differs(
            "set as the flag --add-headers (the same ConfigMap); a value with nginx variables is left out and reported",
        ),
    ),
    ("allow-snippet-annotations", Refused(SNIPPETS)),
    (
        "annotations-risk-level",
        Differs("no annotation can template configuration, so there is no risk level to set"),
    ),
    (
        "client-body-timeout",
        Differs("set as the flag --client-body-timeout"),
    ),
    (
        "client-header-timeout",
        Differs("set as the flag --client-header-timeout"),
    ),
    (
        "compute-full-forwarded-for",
        Differs("set as the flag --compute-full-forwarded-for"),
    ),
    (
        "custom-http-errors",
        Differs("set as the flag --custom-http-errors (the annotation per Ingress)"),
    ),
    ("enable-brotli", NotSupported),
    ("enable-opentelemetry", NotSupported),
    (
        "enable-real-ip",
        Differs("set as the flags --use-forwarded-headers and --proxy-real-ip-cidr"),
    ),
    ("forwarded-for-header", NotSupported),
    (
        "global-allowed-response-headers",
        Differs("set as the flag --global-allowed-response-headers"),
    ),
    ("global-auth-url", NotSupported),
    (
        "hsts",
        Differs("set as the flag --hsts (on by default, as there)"),
    ),
    (
        "hsts-include-subdomains",
        Differs("set as the flag --hsts-include-subdomains"),
    ),
    ("hsts-max-age", Differs("set as the flag --hsts-max-age")),
    ("hsts-preload", Differs("set as the flag --hsts-preload")),
    ("http-snippet", Refused(SNIPPETS)),
    (
        "keep-alive",
        Differs("set as the flag --keep-alive-timeout"),
    ),
    ("keep-alive-requests", NotSupported),
    (
        "large-client-header-buffers",
        Differs("set as the flag --max-header-size"),
    ),
    (
        "limit-conn-status-code",
        Differs("set as the flag --limit-conn-status-code"),
    ),
    (
        "limit-req-status-code",
        Differs("set as the flag --limit-req-status-code"),
    ),
    (
        "load-balance",
        Differs("set as the flag --load-balance (the annotation per Ingress)"),
    ),
    ("location-snippet", Refused(SNIPPETS)),
    (
        "log-format-escape-json",
        Differs("set as the flag --access-log-format json"),
    ),
    (
        "log-format-upstream",
        Differs("a fixed format, nginx's upstreaminfo fields (--access-log-format text|json)"),
    ),
    ("main-snippet", Refused(SNIPPETS)),
    (
        "proxy-body-size",
        Differs("set as the flag --max-body-size (the annotation of the same name per Ingress)"),
    ),
    ("proxy-buffer-size", Differs(STREAMING)),
    ("proxy-buffering", Differs(STREAMING)),
    (
        "proxy-connect-timeout",
        Differs("set as the flag --upstream-connect-timeout (the annotation per Ingress)"),
    ),
    (
        "proxy-next-upstream",
        Differs("set as the flag --proxy-next-upstream (the annotation per Ingress)"),
    ),
    (
        "proxy-next-upstream-timeout",
        Differs("set as the flag --proxy-next-upstream-timeout (the annotation per Ingress)"),
    ),
    (
        "proxy-next-upstream-tries",
        Differs("set as the flag --proxy-next-upstream-tries (the annotation per Ingress)"),
    ),
    (
        "proxy-read-timeout",
        Differs("set as the flag --upstream-response-timeout (the annotation per Ingress)"),
    ),
    (
        "proxy-real-ip-cidr",
        Differs("set as the flag --proxy-real-ip-cidr"),
    ),
    (
        "proxy-send-timeout",
        Differs("set as the flag --upstream-send-timeout (the annotation per Ingress)"),
    ),
    (
        "proxy-set-headers",
        Differs(
            "set as the flag --proxy-set-headers (the same ConfigMap); a value with nginx variables, or a header ingressd sets itself (X-Forwarded-*, Host…), is left out and reported",
        ),
    ),
    ("server-snippet", Refused(SNIPPETS)),
    (
        "server-tokens",
        Differs("no Server header naming a version is ever sent"),
    ),
    ("ssl-ciphers", NotSupported),
    (
        "ssl-protocols",
        Differs("TLS 1.2 and 1.3 (rustls); older protocols are never offered"),
    ),
    ("ssl-redirect", NotSupported),
    ("upstream-keepalive-connections", NotSupported),
    (
        "upstream-keepalive-timeout",
        Differs("set as the flag --upstream-keepalive-timeout"),
    ),
    (
        "use-forwarded-headers",
        Differs("set as the flag --use-forwarded-headers"),
    ),
    ("use-gzip", NotSupported),
    (
        "use-http2",
        Differs("HTTP/2 is always offered over TLS (ALPN)"),
    ),
    ("use-proxy-protocol", NotSupported),
    ("worker-processes", Differs("set as the flag --workers")),
    (
        "worker-shutdown-timeout",
        Differs("set as the flag --shutdown-grace-period"),
    ),
];

/// The verdict on controller ConfigMap key `key` set to `value`: one not
/// listed is one nothing here replaces.
pub fn configmap_key(key: &str, value: &str) -> Verdict {
    let v = if key.ends_with("-snippet") {
        Refused(SNIPPETS)
    } else {
        match find(CONFIGMAP, key) {
            Unknown => NotSupported,
            v => v,
        }
    };
    with_value(v, key, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_so_lookups_find_every_entry() {
        for table in [ANNOTATIONS, CONFIGMAP] {
            assert!(table.windows(2).all(|w| w[0].0 < w[1].0), "not sorted");
            for (name, v) in table {
                assert_eq!(find(table, name), *v, "{name}");
            }
        }
    }

    #[test]
    fn snippets_are_refused_and_unknown_names_lose_nothing() {
        assert!(annotation("configuration-snippet").lost());
        assert!(matches!(annotation("stream-snippet"), Refused(_)));
        assert_eq!(annotation("rewrite-target"), Honoured);
        assert_eq!(annotation("rewrite-targett"), Unknown);
        assert!(!annotation("rewrite-targett").lost());
        assert!(annotation("mirror-target").lost());
        assert!(!annotation("canary").lost());
        assert!(!annotation("proxy-buffering").lost());
        assert!(configmap_key("some-future-key", "1").lost());
        assert!(!configmap_key("allow-snippet-annotations", "false").lost());
        assert!(configmap_key("allow-snippet-annotations", "true").lost());
        assert!(!annotation_value("enable-modsecurity", "false").lost());
        assert!(annotation_value("enable-modsecurity", "true").lost());
    }
}
