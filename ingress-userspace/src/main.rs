//! `ingressd`: eBPF L4 service load balancer and Ingress controller proxy for one node.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, Subcommand};
use hyper::StatusCode;
use ingressd::{
    cluster::{ClassConfig, ObjectKey, Rules},
    daemon::{KubeConfig, RunConfig, run},
    kernel::{self, LbMaps, XdpAttachMode},
    l4::{model::show_backend, render::render_state},
    l7::{
        Limits,
        pipeline::{
            log::{Destination, Format},
            trust::Trust,
        },
        route::{
            annotations::{self, Cidr, PREFIX},
            compile, render_routes,
        },
    },
    source::files::ManifestSource,
    status::PublishConfig,
};

#[derive(Parser)]
#[command(
    name = "ingressd",
    version = ingressd::daemon::VERSION_LINE,
    about = "eBPF-accelerated Kubernetes service load balancer and Ingress controller for one node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The daemon's own log lines: text, or one JSON object a line (for log pipelines). The access log has its own --access-log-format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "INGRESSD_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once at start-up: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Attach the data path and keep its maps and routes in step with the
    /// cluster (kube-rs watches) or with manifest files (--manifests).
    Run {
        /// Seconds in-flight requests get to finish after SIGTERM (no new connections are taken).
        #[arg(long, default_value_t = 25, env = "INGRESSD_SHUTDOWN_GRACE_PERIOD")]
        shutdown_grace_period: u64,
        /// Run the proxy alone: no BPF, no privileges needed.
        #[arg(long, conflicts_with = "no_l7", env = "INGRESSD_NO_L4")]
        no_l4: bool,
        /// Run the L4 data path alone: no proxy.
        #[arg(long, env = "INGRESSD_NO_L7")]
        no_l7: bool,
        /// Threads serving the proxy and the sync loop [default: one per CPU, like nginx's worker_processes auto].
        #[arg(long, env = "INGRESSD_WORKERS")]
        workers: Option<usize>,
        #[command(flatten)]
        source: SourceFlags,
        #[command(flatten)]
        listen: ListenFlags,
        #[command(flatten)]
        limits: LimitFlags,
        #[command(flatten)]
        proxy: ProxyFlags,
        #[command(flatten)]
        l4: L4Flags,
    },
    /// Detach and unpin everything under --pin-path.
    Cleanup {
        #[arg(long, default_value = "/sys/fs/bpf/ingressd")]
        pin_path: PathBuf,
        /// Accepted for symmetry with `run`; every pinned link is removed.
        #[arg(long, num_args = 1..)]
        interface: Vec<String>,
    },
    /// Print the proxy's route table in the order requests are matched:
    /// the running ingressd's (from its --metrics-addr, on this machine),
    /// or compiled from --manifests without one.
    Routes {
        #[arg(long, default_value = "127.0.0.1:10254")]
        metrics_addr: SocketAddr,
        /// Compile these files or directories instead of asking ingressd.
        #[arg(long, num_args = 1.., value_delimiter = ',')]
        manifests: Vec<PathBuf>,
        #[arg(long, default_value = "ebpf")]
        ingress_class: String,
        #[arg(long, default_value = "ingress-ebpf/controller")]
        controller_class: String,
        /// With --manifests: accept endpoints on loopback addresses (as `run` does with it).
        #[arg(long)]
        allow_loopback_endpoints: bool,
        /// With --manifests: honour ssl-passthrough (as `run` does with it).
        #[arg(long)]
        enable_ssl_passthrough: bool,
        /// With --manifests: as `run`'s.
        #[arg(long, value_delimiter = ',', value_parser = header_name)]
        global_allowed_response_headers: Vec<String>,
        /// With --manifests: as `run`'s.
        #[arg(long, default_value = GATEWAY_CONTROLLER)]
        gateway_controller_name: String,
    },
    /// One screen of what the running ingressd is doing (from its
    /// --metrics-addr, on this machine): synced, status writer, route rules
    /// and what is wrong with Ingresses, the L4 tables' fill.
    Status {
        #[arg(long, default_value = "127.0.0.1:10254", env = "INGRESSD_METRICS_ADDR")]
        metrics_addr: SocketAddr,
    },
    /// Report what Ingresses written for ingress-nginx keep and lose here:
    /// each nginx.ingress.kubernetes.io/ annotation (and each key of the
    /// controller ConfigMap) as honoured, honoured with a difference, not
    /// supported, refused by design, or an invalid value. Exit code 0 when
    /// nothing is lost, 1 when something is (or on error).
    Migrate {
        #[command(flatten)]
        objects: ObjectSource,
        /// ingress-nginx's controller ConfigMap (namespace/name, as its --configmap flag), reported key by key.
        #[arg(long)]
        configmap: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: ReportFormat,
    },
    /// Print the live services, backends and flows as a table.
    Maps {
        #[arg(long, default_value = "/sys/fs/bpf/ingressd")]
        pin_path: PathBuf,
        /// At most this many flows.
        #[arg(long, default_value_t = 50)]
        flows: usize,
    },
}

/// Where the objects come from: files, or the API server (`run` and
/// `migrate` alike).
#[derive(clap::Args)]
struct ObjectSource {
    /// YAML/JSON files or directories (multi-document) instead of the
    /// Kubernetes API (`run` watches them for changes).
    #[arg(long, num_args = 1.., env = "INGRESSD_MANIFESTS", value_delimiter = ',')]
    manifests: Vec<PathBuf>,
    /// Kubeconfig for the API server [default: in-cluster config in a pod, else $KUBECONFIG, else ~/.kube/config].
    #[arg(long, conflicts_with = "manifests", env = "INGRESSD_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Read Services, EndpointSlices and Ingresses of this namespace only [default: all].
    #[arg(long, env = "INGRESSD_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
}

/// Where the cluster comes from, and what is written back to it.
#[derive(clap::Args)]
struct SourceFlags {
    #[command(flatten)]
    objects: ObjectSource,
    /// The controller's own Service (namespace/name): its LoadBalancer address goes into Ingress status, and its LoadBalancer IPs are Ingress VIPs (as --ingress-vip).
    #[arg(long, env = "INGRESSD_PUBLISH_SERVICE")]
    publish_service: Option<String>,
    /// Addresses (IPs or host names) written into Ingress status, instead of --publish-service or the node's.
    #[arg(long, value_delimiter = ',', env = "INGRESSD_PUBLISH_STATUS_ADDRESS")]
    publish_status_address: Vec<String>,
    /// Write status.loadBalancer of the Ingresses served (one elected replica writes).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "INGRESSD_UPDATE_STATUS")]
    update_status: bool,
    /// The last replica to leave clears the address it wrote into Ingress status (hostNetwork mode; not with --publish-service or --publish-status-address), as ingress-nginx's flag.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "INGRESSD_UPDATE_STATUS_ON_SHUTDOWN")]
    update_status_on_shutdown: bool,
    /// Name of the Lease that elects the replica writing Ingress status.
    #[arg(
        long,
        default_value = "ingress-ebpf-leader",
        env = "INGRESSD_ELECTION_ID"
    )]
    election_id: String,
    /// Namespace of that Lease [default: $POD_NAMESPACE, else the ServiceAccount's, else default].
    #[arg(long, env = "INGRESSD_ELECTION_NAMESPACE")]
    election_namespace: Option<String>,
    /// Accept endpoints on loopback addresses, which the API server refuses: for trying the proxy on one machine without network namespaces (manifest files, or a test API server).
    #[arg(long, env = "INGRESSD_ALLOW_LOOPBACK_ENDPOINTS")]
    allow_loopback_endpoints: bool,
}

/// Where the proxy and the metrics listen, and which Ingresses are ours.
#[derive(clap::Args)]
struct ListenFlags {
    /// /metrics, /healthz, /readyz.
    #[arg(long, default_value = "127.0.0.1:10254", env = "INGRESSD_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// Where the proxy serves HTTP (HTTP/1.1, and HTTP/2 with prior knowledge).
    #[arg(long, default_value = "0.0.0.0:80", env = "INGRESSD_HTTP_ADDR")]
    http_addr: SocketAddr,
    /// Ingress VIPs: connections to any of them on :80/:443 are steered to the proxy (sk_lookup).
    #[arg(long, num_args = 1.., env = "INGRESSD_INGRESS_VIP", value_delimiter = ',')]
    ingress_vip: Vec<Ipv4Addr>,
    /// Where the proxy serves HTTPS (TLS by SNI from Ingress spec.tls Secrets).
    #[arg(long, default_value = "0.0.0.0:443", env = "INGRESSD_HTTPS_ADDR")]
    https_addr: SocketAddr,
    /// Secret (namespace/name) for TLS hosts without a certificate of their own [default: a self-signed one].
    #[arg(long, env = "INGRESSD_DEFAULT_SSL_CERTIFICATE")]
    default_ssl_certificate: Option<String>,
    /// Service (namespace/name) that answers what no rule routes, on its first port [default: the built-in 404].
    #[arg(long, env = "INGRESSD_DEFAULT_BACKEND_SERVICE")]
    default_backend_service: Option<String>,
    /// The default backend on its own port (404 for everything, /healthz).
    #[arg(
        long,
        default_value = "0.0.0.0:8181",
        env = "INGRESSD_DEFAULT_BACKEND_ADDR"
    )]
    default_backend_addr: SocketAddr,
    /// The IngressClass name served.
    #[arg(long, default_value = "ebpf", env = "INGRESSD_INGRESS_CLASS")]
    ingress_class: String,
    /// IngressClasses whose spec.controller is this are ours.
    #[arg(
        long,
        default_value = "ingress-ebpf/controller",
        env = "INGRESSD_CONTROLLER_CLASS"
    )]
    controller_class: String,
    /// Honour the ssl-passthrough annotation: TLS for those hosts is spliced by SNI to their
    /// endpoints, unterminated (off by default, as in ingress-nginx).
    #[arg(long, env = "INGRESSD_ENABLE_SSL_PASSTHROUGH")]
    enable_ssl_passthrough: bool,
    /// GatewayClasses whose spec.controllerName is this are ours (Gateway API).
    #[arg(
        long,
        default_value = GATEWAY_CONTROLLER,
        env = "INGRESSD_GATEWAY_CONTROLLER_NAME"
    )]
    gateway_controller_name: String,
}

/// The proxy's timeouts and sizes, nginx's names and defaults.
#[derive(clap::Args)]
struct LimitFlags {
    /// Seconds to wait for a TCP connection to an endpoint.
    #[arg(long, default_value_t = 5, env = "INGRESSD_UPSTREAM_CONNECT_TIMEOUT")]
    upstream_connect_timeout: u64,
    /// Seconds to wait for an endpoint's response headers (504 after),
    /// and between two reads of its body (the response is cut off after),
    /// as nginx's proxy_read_timeout.
    #[arg(long, default_value_t = 60, env = "INGRESSD_UPSTREAM_RESPONSE_TIMEOUT")]
    upstream_response_timeout: u64,
    /// Seconds an endpoint may take none of a request body the client is
    /// sending (504 after), as nginx's proxy_send_timeout.
    #[arg(long, default_value_t = 60, env = "INGRESSD_UPSTREAM_SEND_TIMEOUT")]
    upstream_send_timeout: u64,
    /// Seconds a client has to send a request head (408 after);
    /// also how long a response write may wait for the client to read
    /// (nginx's send_timeout; HTTP/1 requests without a body).
    #[arg(long, default_value_t = 60, env = "INGRESSD_CLIENT_HEADER_TIMEOUT")]
    client_header_timeout: u64,
    /// Seconds an idle HTTP/1 client connection is kept between requests, then closed
    /// (ingress-nginx's keep-alive, 75); 0 closes after each response.
    #[arg(long, default_value_t = 75, env = "INGRESSD_KEEP_ALIVE_TIMEOUT")]
    keep_alive_timeout: u64,
    /// Seconds an idle connection to an endpoint is kept for reuse
    /// (ingress-nginx's upstream-keepalive-timeout, 60).
    #[arg(
        long,
        default_value_t = 60,
        env = "INGRESSD_UPSTREAM_KEEPALIVE_TIMEOUT"
    )]
    upstream_keepalive_timeout: u64,
    /// Seconds a client may pause while sending a request body (408 after).
    #[arg(long, default_value_t = 60, env = "INGRESSD_CLIENT_BODY_TIMEOUT")]
    client_body_timeout: u64,
    /// Largest request head (431 above), e.g. 32k.
    #[arg(long, default_value = "32k", value_parser = parse_size, env = "INGRESSD_MAX_HEADER_SIZE")]
    max_header_size: u64,
    /// Most request headers (431 above).
    #[arg(long, default_value_t = 100, env = "INGRESSD_MAX_HEADERS")]
    max_headers: usize,
    /// Largest request body (413 above), e.g. 1m; 0 for no limit (ingress-nginx's proxy-body-size).
    #[arg(long, default_value = "1m", value_parser = parse_size, env = "INGRESSD_MAX_BODY_SIZE")]
    max_body_size: u64,
    /// Client connections served at once per listener.
    #[arg(long, default_value_t = 16384, env = "INGRESSD_MAX_CONNECTIONS")]
    max_connections: usize,
    /// Status for a request over an Ingress's limit-rps or limit-rpm (ingress-nginx's
    /// limit-req-status-code).
    #[arg(long, default_value_t = 503, value_parser = parse_error_status, env = "INGRESSD_LIMIT_REQ_STATUS_CODE")]
    limit_req_status_code: u16,
    /// Status for a request over an Ingress's limit-connections (ingress-nginx's
    /// limit-conn-status-code).
    #[arg(long, default_value_t = 503, value_parser = parse_error_status, env = "INGRESSD_LIMIT_CONN_STATUS_CODE")]
    limit_conn_status_code: u16,
}

/// An error status, 400 to 599, as nginx's limit_req_status takes.
fn parse_error_status(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if (400..=599).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a status code from 400 to 599")),
    }
}

impl LimitFlags {
    fn limits(&self) -> Limits {
        Limits {
            upstream_connect_timeout: Duration::from_secs(self.upstream_connect_timeout),
            upstream_response_timeout: Duration::from_secs(self.upstream_response_timeout),
            upstream_send_timeout: Duration::from_secs(self.upstream_send_timeout.max(1)),
            client_header_timeout: Duration::from_secs(self.client_header_timeout.max(1)),
            client_keepalive: Duration::from_secs(self.keep_alive_timeout),
            idle_keepalive: Duration::from_secs(self.upstream_keepalive_timeout),
            client_body_timeout: Duration::from_secs(self.client_body_timeout.max(1)),
            max_header_bytes: self.max_header_size as usize,
            max_headers: self.max_headers,
            max_body_bytes: self.max_body_size,
            max_connections: self.max_connections,
            limit_req_status: StatusCode::from_u16(self.limit_req_status_code)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            limit_conn_status: StatusCode::from_u16(self.limit_conn_status_code)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        }
    }
}

impl L4Flags {
    fn timeouts(&self) -> kernel::Timeouts {
        kernel::Timeouts {
            tcp_syn: self.conntrack_tcp_timeout_syn,
            tcp_established: self.conntrack_tcp_timeout_established,
            tcp_close: self.conntrack_tcp_timeout_close,
            udp: self.conntrack_udp_timeout,
        }
    }
}

/// Where the L4 data path attaches and what it serves.
#[derive(clap::Args)]
struct L4Flags {
    /// Attach XDP (ingress) and TC (egress) here.
    #[arg(long, num_args = 1.., required_unless_present = "no_l4", env = "INGRESSD_INTERFACE", value_delimiter = ',')]
    interface: Vec<String>,
    /// Addresses NodePorts answer on [default: the addresses of --interface].
    #[arg(long, num_args = 1.., env = "INGRESSD_NODE_IP", value_delimiter = ',')]
    node_ip: Vec<Ipv4Addr>,
    /// This node's name, matched against EndpointSlice nodeName [default: $NODE_NAME, else the hostname].
    #[arg(long, env = "INGRESSD_NODE_NAME")]
    node_name: Option<String>,
    #[arg(
        long,
        default_value = "/sys/fs/bpf/ingressd",
        env = "INGRESSD_PIN_PATH"
    )]
    pin_path: PathBuf,
    #[arg(long, value_enum, default_value = "auto", env = "INGRESSD_XDP_MODE")]
    xdp_mode: XdpAttachMode,
    /// Serve cluster IPs (and every other frontend, for the node's own
    /// processes and its pods) at the socket with cgroup v2 programs;
    /// false: cluster IPs are not served (for meshes or VM runtimes that
    /// need to see the original address).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "INGRESSD_SOCKET_LB")]
    socket_lb: bool,
    /// The cgroup v2 directory the socket programs attach to: every process in it and below
    /// [default: the cgroup2 mount's root, from /proc/mounts].
    #[arg(long, env = "INGRESSD_CGROUP")]
    cgroup: Option<PathBuf>,
    /// Serve only Services labelled service.kubernetes.io/service-proxy-name with this value
    /// [default: only Services without that label, as kube-proxy].
    #[arg(long, env = "INGRESSD_SERVICE_PROXY_NAME")]
    service_proxy_name: Option<String>,
    /// kube-proxy's health endpoints, /healthz (503 while a change waits unapplied for
    /// over 60 s, or this Node is being removed) and /livez, with the L4 data path.
    #[arg(long, default_value = "0.0.0.0:10256", env = "INGRESSD_HEALTHZ_ADDR")]
    healthz_addr: SocketAddr,
    /// An idle TCP flow past its handshake is forgotten after this long (24h, 90m, 3600s).
    #[arg(long, default_value = "24h", value_parser = parse_duration, env = "INGRESSD_CONNTRACK_TCP_TIMEOUT_ESTABLISHED")]
    conntrack_tcp_timeout_established: Duration,
    /// A TCP flow whose client sent FIN or RST is forgotten after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "INGRESSD_CONNTRACK_TCP_TIMEOUT_CLOSE")]
    conntrack_tcp_timeout_close: Duration,
    /// A TCP flow that never got past its SYN is forgotten after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration, env = "INGRESSD_CONNTRACK_TCP_TIMEOUT_SYN")]
    conntrack_tcp_timeout_syn: Duration,
    /// An idle UDP flow is forgotten after this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "INGRESSD_CONNTRACK_UDP_TIMEOUT")]
    conntrack_udp_timeout: Duration,
}

/// How the proxy treats what clients say about themselves, and which
/// HTTP/1 implementation reads them.
#[derive(clap::Args)]
struct ProxyFlags {
    /// Believe X-Forwarded-For (the client address, nginx's realip), -Proto, -Host and -Port from
    /// peers in --proxy-real-ip-cidr, as ingress-nginx's use-forwarded-headers; else they are replaced.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, env = "INGRESSD_USE_FORWARDED_HEADERS")]
    use_forwarded_headers: bool,
    /// Peers trusted with --use-forwarded-headers (comma-separated CIDRs).
    #[arg(long, value_delimiter = ',', default_value = "0.0.0.0/0", value_parser = parse_cidr, env = "INGRESSD_PROXY_REAL_IP_CIDR")]
    proxy_real_ip_cidr: Vec<Cidr>,
    /// Append the peer to the client's X-Forwarded-For instead of replacing it (the endpoint then
    /// picks the client by its own trusted proxies), as ingress-nginx's compute-full-forwarded-for.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, env = "INGRESSD_COMPUTE_FULL_FORWARDED_FOR")]
    compute_full_forwarded_for: bool,
    /// Read and forward HTTP/1 requests without a body with the built-in fast path; false: hyper's
    /// server and client for everything (the fallback if a fast-path bug is ever found).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "INGRESSD_HTTP1_FAST_PATH")]
    http1_fast_path: bool,
    /// Where the access log goes: stdout, false (none), or a file to append to.
    #[arg(long, default_value = "stdout", value_parser = parse_destination, env = "INGRESSD_ACCESS_LOG")]
    access_log: Destination,
    /// text (ingress-nginx's upstreaminfo) or json.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "INGRESSD_ACCESS_LOG_FORMAT"
    )]
    access_log_format: Format,
    /// Every Ingress's load-balance unless it sets its own: round_robin or ewma (ingress-nginx's
    /// ConfigMap key of that name).
    #[arg(long, value_parser = annotation_value("load-balance"), env = "INGRESSD_LOAD_BALANCE")]
    load_balance: Option<String>,
    /// Every Ingress's proxy-next-upstream unless it sets its own [default: error timeout].
    #[arg(long, value_parser = annotation_value("proxy-next-upstream"), env = "INGRESSD_PROXY_NEXT_UPSTREAM")]
    proxy_next_upstream: Option<String>,
    /// Every Ingress's proxy-next-upstream-tries unless it sets its own [default: 3].
    #[arg(long, value_parser = annotation_value("proxy-next-upstream-tries"), env = "INGRESSD_PROXY_NEXT_UPSTREAM_TRIES")]
    proxy_next_upstream_tries: Option<String>,
    /// Every Ingress's proxy-next-upstream-timeout unless it sets its own [default: 0, none].
    #[arg(long, value_parser = annotation_value("proxy-next-upstream-timeout"), env = "INGRESSD_PROXY_NEXT_UPSTREAM_TIMEOUT")]
    proxy_next_upstream_timeout: Option<String>,
    /// Every Ingress's custom-http-errors unless it sets its own (codes answered by the default
    /// backend: --default-backend-service or the Ingress's default-backend).
    #[arg(long, value_parser = annotation_value("custom-http-errors"), env = "INGRESSD_CUSTOM_HTTP_ERRORS")]
    custom_http_errors: Option<String>,
    /// Response header names the custom-headers annotation may set (ingress-nginx's ConfigMap
    /// key of that name) [default: none, so custom-headers answers 503, as there].
    #[arg(long, value_delimiter = ',', value_parser = header_name, env = "INGRESSD_GLOBAL_ALLOWED_RESPONSE_HEADERS")]
    global_allowed_response_headers: Vec<String>,
    /// ConfigMap (namespace/name) of headers set on every answer, as ingress-nginx's add-headers.
    #[arg(long, env = "INGRESSD_ADD_HEADERS")]
    add_headers: Option<String>,
    /// ConfigMap (namespace/name) of headers set on every request to the endpoints, as
    /// ingress-nginx's proxy-set-headers (values as written: nginx variables are not expanded).
    #[arg(long, env = "INGRESSD_PROXY_SET_HEADERS")]
    proxy_set_headers: Option<String>,
    /// Strict-Transport-Security on every answer over TLS, as ingress-nginx's hsts (on by default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "INGRESSD_HSTS")]
    hsts: bool,
    /// Its max-age, in seconds.
    #[arg(long, default_value_t = 31_536_000, env = "INGRESSD_HSTS_MAX_AGE")]
    hsts_max_age: u64,
    /// Its includeSubDomains.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "INGRESSD_HSTS_INCLUDE_SUBDOMAINS")]
    hsts_include_subdomains: bool,
    /// Its preload.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, env = "INGRESSD_HSTS_PRELOAD")]
    hsts_preload: bool,
}

/// A header name for --global-allowed-response-headers, lower-cased.
fn header_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    if ingressd::l7::route::headers::is_header_name(s) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "{s:?} is not a header name (letters, digits, - and _)"
        ))
    }
}

impl ProxyFlags {
    /// The Strict-Transport-Security value, as ingress-nginx writes it.
    fn hsts(&self) -> Option<String> {
        self.hsts.then(|| {
            let mut v = format!("max-age={}", self.hsts_max_age);
            if self.hsts_include_subdomains {
                v.push_str("; includeSubDomains");
            }
            if self.hsts_preload {
                v.push_str("; preload");
            }
            v
        })
    }

    /// The annotation values these flags set for every Ingress.
    fn annotation_defaults(&self) -> std::collections::BTreeMap<String, String> {
        [
            ("load-balance", &self.load_balance),
            ("proxy-next-upstream", &self.proxy_next_upstream),
            ("proxy-next-upstream-tries", &self.proxy_next_upstream_tries),
            (
                "proxy-next-upstream-timeout",
                &self.proxy_next_upstream_timeout,
            ),
            ("custom-http-errors", &self.custom_http_errors),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((format!("{PREFIX}{k}"), v.clone()?)))
        .collect()
    }
}

/// A flag whose value is read as the annotation `name` reads it: refused
/// at start where the annotation would be reported.
fn annotation_value(name: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |v: &str| {
        let mut warnings = Vec::new();
        let annotations = [(format!("{PREFIX}{name}"), v.to_string())].into();
        annotations::policy("(flag)", &annotations, &mut warnings);
        match warnings.first() {
            None => Ok(v.to_string()),
            Some(w) => Err(w.message.clone()),
        }
    }
}

fn parse_destination(s: &str) -> Result<Destination, String> {
    Ok(match s {
        "false" | "off" | "none" => Destination::Off,
        "stdout" | "true" | "-" => Destination::Stdout,
        "" => return Err("empty: stdout, false, or a file path".into()),
        path => Destination::File(path.into()),
    })
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    Cidr::parse(s).ok_or_else(|| format!("{s:?} is not a CIDR like 10.0.0.0/8 or 2001:db8::/32"))
}

/// `24h`, `1h30m`, `90s`, `500ms` or plain seconds (Go's duration syntax,
/// as kube-proxy's flags take them, without fractions).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let bad = || format!("{s:?} is not a duration like 24h, 1h30m, 90s or 500ms");
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let part = match &rest[..unit] {
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            _ => return Err(bad()),
        };
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = &rest[unit..];
    }
    Ok(total)
}

/// `1m`, `32k`, `2g` or plain bytes (nginx's size syntax).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1024),
        Some('m') => (&s[..s.len() - 1], 1024 * 1024),
        Some('g') => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (&s[..], 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a size like 512, 32k, 1m or 1g"))
}

fn node_name_default() -> String {
    if let Ok(n) = std::env::var("NODE_NAME")
        && !n.is_empty()
    {
        return n;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// This pod's namespace: downward API, else the ServiceAccount's.
fn own_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "default".into())
}

/// This replica's name in the Lease: the pod's name, else host and pid.
fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("{}-{}", node_name_default(), std::process::id()))
}

/// The Gateway API controller name whose GatewayClasses are ours.
const GATEWAY_CONTROLLER: &str = "ingress-ebpf/gateway-controller";

fn print_routes(
    metrics_addr: SocketAddr,
    manifests: Vec<PathBuf>,
    class: &ClassConfig,
    rules: Rules,
) -> anyhow::Result<()> {
    if !manifests.is_empty() {
        let mut source = ManifestSource::new(manifests).with_rules(rules);
        let loaded = source.load();
        for e in &loaded.errors {
            eprintln!("{e}");
        }
        let (table, warnings) = compile(source.snapshot(), class);
        for w in &warnings {
            eprintln!("{w}");
        }
        print!("{}", render_routes(&table));
        // What a Lease holder would write into the Gateway API objects
        // (addresses: the Gateway's own, else where it is published).
        for s in ingressd::status::gateway::statuses(
            source.snapshot(),
            &table.gateway,
            &class.gateway_controller,
        ) {
            let yaml = serde_norway::to_string(&serde_json::json!({ "status": s.desired }))
                .unwrap_or_default();
            print!("STATUS {} {}\n{yaml}", s.kind, s.key);
        }
        return Ok(());
    }
    print!("{}", ask_running(metrics_addr, "/routes")?);
    Ok(())
}

/// GET `path` from the running ingressd's --metrics-addr: its body.
fn ask_running(metrics_addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let timeout = Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&metrics_addr, timeout).map_err(|e| {
        anyhow::anyhow!("asking the running ingressd at {metrics_addr} (--metrics-addr): {e}")
    })?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: ingressd\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    // Bounded: the answer is small, the read times out.
    s.take(16 << 20).read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        anyhow::bail!("{metrics_addr}{path} answered {status:?}: {}", body.trim());
    }
    Ok(body.to_string())
}

/// `ingressd status`: one screen of what the running ingressd is doing.
fn print_status(metrics_addr: SocketAddr) -> anyhow::Result<()> {
    let body = ask_running(metrics_addr, "/status")?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| anyhow::anyhow!("{metrics_addr}/status is not JSON: {e}"))?;
    let n = |p: &str| {
        v.pointer(p)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let text = |p: &str| {
        v.pointer(p)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?")
    };
    let yes = |p: &str| v.pointer(p).and_then(serde_json::Value::as_bool) == Some(true);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ingressd {} (commit {}) at {metrics_addr}",
        text("/version"),
        text("/commit")
    );
    let _ = writeln!(
        out,
        "  synced         {}: {} syncs, {} failed, the last took {:.1} ms{}",
        if yes("/ready") {
            "yes"
        } else {
            "NO (first sync not applied)"
        },
        n("/syncs"),
        n("/sync_errors"),
        n("/last_sync_micros") as f64 / 1000.0,
        if yes("/healthy") {
            ""
        } else {
            "; the sync loop is STUCK"
        }
    );
    let writer = match text("/status_writer") {
        "leader" => "this replica holds the Lease and writes Ingress status",
        "follower" => "another replica holds the Lease",
        "off" => "not written by this replica (--update-status=false, or manifest files)",
        _ => "?",
    };
    let _ = writeln!(out, "  status         {writer}");
    let problems: Vec<&str> = v["problems"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  routes         {} rules; {} problem{}{}",
        n("/route_rules"),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        if n("/manifest_errors") > 0 {
            format!(", {} manifest documents refused", n("/manifest_errors"))
        } else {
            String::new()
        }
    );
    for p in &problems {
        let _ = writeln!(out, "                   {p}");
    }
    let _ = writeln!(
        out,
        "  L4             {} frontends, {} rings; {} flows of {}; SNAT ports {} of {} in use",
        n("/l4/frontends"),
        n("/l4/rings"),
        n("/l4/flows"),
        ingress_common::MAX_FLOWS,
        n("/l4/snat_in_use"),
        n("/l4/snat_ports")
    );
    print!("{out}");
    Ok(())
}

fn print_maps(pin_path: &std::path::Path, flow_limit: usize) -> anyhow::Result<()> {
    let maps = LbMaps::open(pin_path)?;
    let state = maps.read_state()?;
    let mut out = String::new();
    let addrs: Vec<String> = maps.node_addrs().iter().map(|a| a.to_string()).collect();
    let _ = writeln!(out, "NODE ADDRESSES  {}\n", addrs.join(" "));
    out.push_str(&render_state(&state));
    let flows = maps.flows(usize::MAX);
    let now = kernel::monotonic_ns();
    let (snat_used, snat_ports) = maps.snat_ports();
    let _ = writeln!(
        out,
        "\nFLOWS ({} of {} in the table; SNAT ports in use: {snat_used} of {snat_ports})",
        flows.len(),
        ingress_common::MAX_FLOWS
    );
    let _ = writeln!(
        out,
        "{:<8} {:<22} {:<22} {:<28} {:<12} {:<7} SNAT",
        "PROTO", "CLIENT", "FRONTEND", "BACKEND", "STATE", "IDLE"
    );
    for f in flows.iter().take(flow_limit) {
        let k = f.key;
        let proto = if k.proto == ingress_common::IPPROTO_TCP {
            "TCP"
        } else {
            "UDP"
        };
        let client = format!(
            "{}:{}",
            Ipv4Addr::from(u32::from_be(k.src)),
            u16::from_be(k.sport)
        );
        let frontend = format!(
            "{}:{}",
            Ipv4Addr::from(u32::from_be(k.dst)),
            u16::from_be(k.dport)
        );
        let snat = if f.entry.snat_addr == 0 {
            "-".to_string()
        } else {
            format!(
                "{}:{}",
                Ipv4Addr::from(u32::from_be(f.entry.snat_addr)),
                u16::from_be(f.entry.snat_port)
            )
        };
        let state = match f.entry.state {
            ingress_common::CT_TCP_SYN => "syn",
            ingress_common::CT_TCP_ESTABLISHED => "established",
            ingress_common::CT_TCP_CLOSING => "closing",
            ingress_common::CT_UDP => "udp",
            _ => "?",
        };
        let idle = format!(
            "{}s",
            now.saturating_sub(f.entry.last_seen_ns) / 1_000_000_000
        );
        let _ = writeln!(
            out,
            "{proto:<8} {client:<22} {frontend:<22} {:<28} {state:<12} {idle:<7} {snat}",
            show_backend(&f.entry.backend)
        );
    }
    let counters = maps.counters()?;
    let c = |k: &str| counters.get(k).copied().unwrap_or(0);
    let evicted = c("conntrack_created")
        .saturating_sub(c("conntrack_expired") + c("conntrack_forgotten") + flows.len() as u64);
    let _ = writeln!(
        out,
        "(pushed out of the full table so far: {evicted}; expired: {}; forgotten with their endpoint: {})",
        c("conntrack_expired"),
        c("conntrack_forgotten")
    );
    out.push_str("\nCOUNTERS\n");
    for (name, v) in counters.clone() {
        if v > 0 {
            let _ = writeln!(out, "{name:<28} {v}");
        }
    }
    out.push_str("\nSOCKET COUNTERS\n");
    let sock = maps.sock_counters()?;
    for (name, v) in &sock {
        if *v > 0 {
            let _ = writeln!(out, "{name:<28} {v}");
        }
    }
    if sock.values().all(|v| *v == 0) {
        out.push_str("(no connect() or sendmsg() to a frontend yet)\n");
    }
    print!("{out}");
    Ok(())
}

/// The proxy allocates a few small buffers per request; mimalloc's
/// per-thread free lists cost a fraction of glibc malloc's there (~20%
/// more requests per second in `cargo xtask bench l7`). Built without
/// transparent huge pages, which would double the resident set.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// SIGTERM and SIGINT reach this process whatever mask it was started
/// with: a parent that blocked them (a supervisor, a shell's job control, a
/// test harness waiting for them in a thread) would otherwise leave it
/// deaf to a graceful stop until it is killed. Before any thread exists,
/// so every thread inherits it.
fn unblock_stop_signals() {
    // SAFETY: plain libc calls on a local signal set, before threads start.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

fn main() -> std::process::ExitCode {
    unblock_stop_signals();
    // Logs (the access log too: a line per request) are written by a thread
    // of their own, so a slow stderr never stalls the proxy; the guard
    // flushes what is left on exit.
    let cli = Cli::parse();
    let (writer, _log_guard) = tracing_appender::non_blocking(std::io::stderr());
    // kube-rs logs every failed request and retry; ingressd says each
    // problem once, with what to fix (kube_source, publish).
    // RUST_LOG=info,kube_client=debug brings them back.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube_runtime::watcher=off,kube_client=off".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let result = match cli.command {
        Command::Run {
            shutdown_grace_period,
            no_l4,
            no_l7,
            workers,
            proxy,
            l4,
            source,
            listen,
            limits,
        } => {
            let conntrack = l4.timeouts();
            let node_name = l4.node_name.unwrap_or_else(node_name_default);
            let object_key = |s: String| ObjectKey::parse(&s);
            let proxy_service = source.publish_service.clone().map(object_key);
            let hsts = proxy.hsts();
            let add_headers = proxy.add_headers.clone().map(object_key);
            let proxy_set_headers = proxy.proxy_set_headers.clone().map(object_key);
            let cfg = RunConfig {
                manifests: source.objects.manifests,
                rules: Rules {
                    loopback_endpoints: source.allow_loopback_endpoints,
                },
                kube: KubeConfig {
                    kubeconfig: source.objects.kubeconfig,
                    namespace: source.objects.watch_namespace,
                    publish: PublishConfig {
                        addresses: source.publish_status_address,
                        service: source.publish_service.map(object_key),
                        node_name: node_name.clone(),
                        pod: std::env::var("POD_NAME")
                            .ok()
                            .filter(|n| !n.is_empty())
                            .map(|name| ObjectKey::new(own_namespace(), name)),
                    },
                    update_status: source.update_status,
                    update_status_on_shutdown: source.update_status_on_shutdown,
                    election_id: source.election_id,
                    lease_namespace: source.election_namespace.unwrap_or_else(own_namespace),
                    identity: identity(),
                },
                shutdown_grace: Duration::from_secs(shutdown_grace_period),
                interfaces: l4.interface,
                node_ips: l4.node_ip,
                node_name,
                pin_path: l4.pin_path,
                metrics_addr: listen.metrics_addr,
                xdp_mode: l4.xdp_mode,
                socket_lb: l4.socket_lb,
                cgroup: l4.cgroup,
                service_proxy_name: l4.service_proxy_name.filter(|n| !n.is_empty()),
                healthz_addr: l4.healthz_addr,
                conntrack,
                no_l4,
                no_l7,
                http_addr: listen.http_addr,
                https_addr: listen.https_addr,
                default_ssl_certificate: listen.default_ssl_certificate.map(object_key),
                default_backend_addr: listen.default_backend_addr,
                ingress_vips: listen.ingress_vip,
                proxy_service,
                class: ClassConfig {
                    class_name: listen.ingress_class,
                    controller: listen.controller_class,
                    default_backend: listen.default_backend_service.map(object_key),
                    annotation_defaults: proxy.annotation_defaults(),
                    ssl_passthrough: listen.enable_ssl_passthrough,
                    allowed_response_headers: proxy.global_allowed_response_headers.clone(),
                    add_headers,
                    proxy_set_headers,
                    gateway_controller: listen.gateway_controller_name,
                    proxy_ports: (listen.http_addr.port(), listen.https_addr.port()),
                },
                limits: limits.limits(),
                trust: Trust {
                    use_forwarded_headers: proxy.use_forwarded_headers,
                    real_ip_from: proxy.proxy_real_ip_cidr,
                    compute_full_forwarded_for: proxy.compute_full_forwarded_for,
                },
                fast_path: proxy.http1_fast_path,
                hsts,
                access_log: proxy.access_log,
                access_log_format: proxy.access_log_format,
            };
            let workers = workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
                .max(1);
            let mut rt = if workers == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(workers);
                b
            };
            rt.enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(run(cfg)))
        }
        Command::Cleanup {
            pin_path,
            interface: _,
        } => kernel::cleanup(&pin_path).map(|removed| {
            for p in &removed {
                println!("removed {}", p.display());
            }
            println!(
                "cleaned up {} pins under {}",
                removed.len(),
                pin_path.display()
            );
        }),
        Command::Maps { pin_path, flows } => print_maps(&pin_path, flows),
        Command::Migrate {
            objects,
            configmap,
            output,
        } => {
            let configmap = configmap.as_deref().map(ObjectKey::parse);
            match print_migration(objects, configmap, output) {
                Ok(true) => Ok(()),
                Ok(false) => return std::process::ExitCode::FAILURE,
                Err(e) => Err(e),
            }
        }
        Command::Status { metrics_addr } => print_status(metrics_addr),
        Command::Routes {
            metrics_addr,
            manifests,
            ingress_class,
            controller_class,
            allow_loopback_endpoints,
            enable_ssl_passthrough,
            global_allowed_response_headers,
            gateway_controller_name,
        } => {
            let class = ClassConfig {
                class_name: ingress_class,
                controller: controller_class,
                default_backend: None,
                annotation_defaults: Default::default(),
                ssl_passthrough: enable_ssl_passthrough,
                allowed_response_headers: global_allowed_response_headers,
                add_headers: None,
                proxy_set_headers: None,
                gateway_controller: gateway_controller_name,
                proxy_ports: (80, 443),
            };
            let rules = Rules {
                loopback_endpoints: allow_loopback_endpoints,
            };
            print_routes(metrics_addr, manifests, &class, rules)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingressd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `ingressd migrate`; true when nothing is lost.
fn print_migration(
    objects: ObjectSource,
    configmap: Option<ObjectKey>,
    output: ReportFormat,
) -> anyhow::Result<bool> {
    use ingressd::migrate;
    let ObjectSource {
        manifests,
        kubeconfig,
        watch_namespace: namespace,
    } = objects;
    let loaded = if manifests.is_empty() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(migrate::load::from_cluster(
                kubeconfig.as_ref(),
                namespace.as_deref(),
                configmap.as_ref(),
            ))?
    } else {
        let mut l = migrate::load::from_files(&manifests, configmap.as_ref())?;
        if let Some(ns) = &namespace {
            l.ingresses
                .retain(|i| i.metadata.namespace.as_deref().unwrap_or("default") == ns);
        }
        l
    };
    let cm = loaded
        .configmap
        .as_ref()
        .map(|(key, data)| migrate::configmap(&key.namespace, &key.name, data));
    let report = migrate::report(&loaded.ingresses, cm);
    match output {
        ReportFormat::Text => print!("{}", migrate::render_text(&report)),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(report.summary.lost == 0)
}
