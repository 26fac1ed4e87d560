//! Every way a request can fail, as one type: `status()` is the only place
//! a failure becomes an HTTP status, and each failure says whether another
//! endpoint may be tried, whose fault it is, and its metric label.
use hyper::StatusCode;

pub use super::body::BoxError;
use super::{
    body::{Body, text},
    path::PathError,
};

/// Who caused a failure: the client, the endpoint, or the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    Client,
    Upstream,
    Config,
}

#[derive(Debug)]
pub enum ProxyError {
    /// A head that is not HTTP we take (400), or one nginx refuses.
    BadHead(&'static str),
    /// A path with no normal form (bad escape, NUL, `..` above the root).
    BadPath(PathError),
    /// The head did not come within the client header timeout.
    HeadTimeout,
    /// More header bytes or fields than allowed.
    HeadTooLarge,
    /// A request target longer than allowed.
    TargetTooLong,
    /// CONNECT: not proxied (405, as nginx).
    MethodNotAllowed,
    /// A transfer coding other than chunked (501, as nginx).
    NotImplemented,
    /// No rule matched and no default backend is set: the built-in 404.
    NoRoute,
    /// Outside the Ingress's allowed source ranges.
    Forbidden,
    /// Over the Ingress's `limit-rps` or `limit-rpm` (with the status
    /// `--limit-req-status-code` gives).
    RateLimited(StatusCode),
    /// Over the Ingress's `limit-connections` (`--limit-conn-status-code`).
    ConnectionLimited(StatusCode),
    /// The backend has no ready (or serving) endpoint.
    NoEndpoints,
    /// The Ingress's `auth-type` cannot be checked (a bad setting, a
    /// missing Secret): denied, as ingress-nginx's denied locations.
    AuthDenied,
    /// Another setting of the Ingress cannot be used (`custom-headers`):
    /// its paths are denied, as ingress-nginx's denied locations.
    LocationDenied,
    /// `backend-protocol` asks for what is not offered.
    UnsupportedBackend,
    /// `rewrite-target` made something that is not a path.
    InvalidRewrite,
    /// An ExternalName that does not resolve.
    NameNotResolved,
    /// The connect was refused or reset (the request never left).
    ConnectFailed(BoxError),
    /// The connect did not finish within its timeout (the request never left).
    ConnectTimedOut,
    /// No response head (or body piece) within the read timeout.
    UpstreamTimeout,
    /// The endpoint answered something that is not HTTP we accept.
    UpstreamProtocol(BoxError),
    /// The endpoint broke the exchange after the request went out.
    UpstreamFailed(BoxError),
    /// A request body over the limit.
    BodyTooLarge,
    /// A body without a length for an endpoint spoken to in HTTP/1.0
    /// (`proxy-http-version: "1.0"`), which cannot take it chunked.
    LengthRequired,
    /// The client stopped sending its body for the body timeout.
    ClientBodyTimeout,
    /// A request body that is not framed as its head said (a bad chunk).
    BadBody,
    /// The client left before the answer.
    ClientLeft,
    /// An HTTPRoute rule whose backend cannot be resolved (missing,
    /// not a Service, not permitted), or that has none: 500, as the
    /// Gateway API asks.
    BackendUnresolved,
}

/// nginx's status for a request whose client closed the connection first.
pub const CLIENT_LEFT: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            BadHead(_) | BadPath(_) | BadBody => StatusCode::BAD_REQUEST,
            HeadTimeout | ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            TargetTooLong => StatusCode::URI_TOO_LONG,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            NotImplemented => StatusCode::NOT_IMPLEMENTED,
            NoRoute => StatusCode::NOT_FOUND,
            Forbidden => StatusCode::FORBIDDEN,
            RateLimited(s) | ConnectionLimited(s) => *s,
            NoEndpoints | AuthDenied | LocationDenied => StatusCode::SERVICE_UNAVAILABLE,
            UnsupportedBackend | InvalidRewrite | NameNotResolved | ConnectFailed(_)
            | UpstreamProtocol(_) | UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            ConnectTimedOut | UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            LengthRequired => StatusCode::LENGTH_REQUIRED,
            ClientLeft => CLIENT_LEFT,
            BackendUnresolved => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the request may go to another endpoint: only when it never
    /// left (nginx's `proxy_next_upstream error timeout` before sending).
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectFailed(_) | ProxyError::ConnectTimedOut
        )
    }

    pub fn blame(&self) -> Blame {
        use ProxyError::*;
        match self {
            BadHead(_) | BadPath(_) | HeadTimeout | HeadTooLarge | TargetTooLong
            | MethodNotAllowed | NotImplemented | NoRoute | Forbidden | BodyTooLarge
            | LengthRequired | ClientBodyTimeout | BadBody | ClientLeft | RateLimited(_)
            | ConnectionLimited(_) => Blame::Client,
            NoEndpoints | UnsupportedBackend | InvalidRewrite | AuthDenied | LocationDenied
            | BackendUnresolved => Blame::Config,
            NameNotResolved | ConnectFailed(_) | ConnectTimedOut | UpstreamTimeout
            | UpstreamProtocol(_) | UpstreamFailed(_) => Blame::Upstream,
        }
    }

    /// The `error` label of `ingressd_http_requests_total`.
    pub fn label(&self) -> &'static str {
        use ProxyError::*;
        match self {
            BadHead(_) => "bad_head",
            BadPath(_) => "bad_path",
            HeadTimeout => "head_timeout",
            HeadTooLarge => "head_too_large",
            TargetTooLong => "target_too_long",
            MethodNotAllowed => "method_not_allowed",
            NotImplemented => "not_implemented",
            NoRoute => "no_route",
            Forbidden => "forbidden",
            NoEndpoints => "no_endpoints",
            UnsupportedBackend => "unsupported_backend",
            InvalidRewrite => "invalid_rewrite",
            NameNotResolved => "name_not_resolved",
            ConnectFailed(_) => "connect_failed",
            ConnectTimedOut => "connect_timeout",
            UpstreamTimeout => "upstream_timeout",
            UpstreamProtocol(_) => "upstream_protocol",
            UpstreamFailed(_) => "upstream_failed",
            BodyTooLarge => "body_too_large",
            LengthRequired => "length_required",
            ClientBodyTimeout => "body_timeout",
            BadBody => "bad_body",
            ClientLeft => "client_left",
            RateLimited(_) => "rate_limited",
            ConnectionLimited(_) => "connection_limited",
            AuthDenied => "auth_denied",
            LocationDenied => "location_denied",
            BackendUnresolved => "backend_unresolved",
        }
    }

    /// Every label, in a fixed order (the metric's slots).
    pub const LABELS: [&'static str; 28] = [
        "bad_head",
        "bad_path",
        "head_timeout",
        "head_too_large",
        "target_too_long",
        "method_not_allowed",
        "not_implemented",
        "no_route",
        "forbidden",
        "no_endpoints",
        "unsupported_backend",
        "invalid_rewrite",
        "name_not_resolved",
        "connect_failed",
        "connect_timeout",
        "upstream_timeout",
        "upstream_protocol",
        "upstream_failed",
        "body_too_large",
        "body_timeout",
        "bad_body",
        "client_left",
        "rate_limited",
        "connection_limited",
        "auth_denied",
        "location_denied",
        "length_required",
        "backend_unresolved",
    ];

    /// 1 + the label's index in `LABELS` (0 is "no error").
    pub fn code(&self) -> u8 {
        let label = self.label();
        Self::LABELS
            .iter()
            .position(|l| *l == label)
            .map_or(0, |i| i as u8 + 1)
    }

    /// The answer the client gets.
    pub fn respond(&self) -> hyper::Response<Body> {
        use ProxyError::*;
        let body = match self {
            BadHead(_) | BadPath(_) => "bad request\n",
            HeadTimeout => "request header timed out\n",
            HeadTooLarge => "request header too large\n",
            TargetTooLong => "request target too long\n",
            MethodNotAllowed => "method not allowed\n",
            NotImplemented => "not implemented\n",
            NoRoute => "default backend - 404\n",
            Forbidden => "forbidden\n",
            NoEndpoints => "no endpoints available\n",
            AuthDenied | LocationDenied => "service unavailable\n",
            UnsupportedBackend => "backend protocol not supported\n",
            InvalidRewrite => "rewrite-target made an invalid path\n",
            NameNotResolved => "upstream name does not resolve\n",
            ConnectFailed(_) => "upstream connection failed\n",
            ConnectTimedOut => "upstream connect timed out\n",
            UpstreamTimeout => "upstream timed out\n",
            UpstreamProtocol(_) | UpstreamFailed(_) => "upstream connection failed\n",
            BodyTooLarge => "request body too large\n",
            LengthRequired => "length required\n",
            ClientBodyTimeout => "request body timed out\n",
            BadBody => "bad request body\n",
            ClientLeft => "",
            RateLimited(_) | ConnectionLimited(_) => "too many requests\n",
            BackendUnresolved => "backend not resolved\n",
        };
        text(self.status(), body)
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ProxyError::*;
        match self {
            BadHead(why) => write!(f, "bad request head: {why}"),
            BadPath(e) => write!(f, "bad path: {e}"),
            ConnectFailed(e) => write!(f, "connect failed: {e}"),
            UpstreamProtocol(e) => write!(f, "endpoint protocol error: {e}"),
            UpstreamFailed(e) => write!(f, "endpoint failed: {e}"),
            other => f.write_str(other.label()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_listed_once_each() {
        let mut seen = std::collections::HashSet::new();
        for l in ProxyError::LABELS {
            assert!(seen.insert(l), "{l} twice");
        }
        assert_eq!(
            ProxyError::BackendUnresolved.code() as usize,
            ProxyError::LABELS.len()
        );
        assert_eq!(ProxyError::BadBody.status(), StatusCode::BAD_REQUEST);
        assert!(ProxyError::ConnectTimedOut.retry_safe());
        assert!(!ProxyError::UpstreamTimeout.retry_safe());
    }
}
