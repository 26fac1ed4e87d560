//! The one rule for which endpoints of a Service port take traffic, used by
//! the L4 model and the proxy alike: the ready ones or, when none is ready,
//! the serving-and-terminating ones (kube-proxy's rule since KEP-1669), after
//! the caller's filter (address family, this node only) has been applied, so
//! a filtered-out ready endpoint never hides a terminating one that passes.
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::EndpointSlice;

/// One address of an endpoint, on the target port of the Service port asked for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint<'a> {
    pub addr: IpAddr,
    pub port: u16,
    /// `endpoints[].nodeName`, when the slice says.
    pub node_name: Option<&'a str>,
    /// Serving but terminating (taken only because no ready one is left).
    pub terminating: bool,
}

/// The Service port an endpoint list is for: its name (`""` for an unnamed
/// port) and protocol (`TCP` when the slice leaves it out).
#[derive(Clone, Copy, Debug)]
pub struct PortRef<'a> {
    pub name: &'a str,
    pub protocol: &'a str,
}

/// The endpoints of `port` across `slices` that traffic may go to, among
/// those `keep` accepts: ready ones, else serving-and-terminating ones.
/// Sorted and without duplicates.
pub fn usable_endpoints<'a>(
    slices: &[&'a EndpointSlice],
    port: PortRef<'_>,
    mut keep: impl FnMut(&Endpoint<'a>) -> bool,
) -> Vec<Endpoint<'a>> {
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices {
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == port.name
                    && p.protocol.as_deref().unwrap_or("TCP") == port.protocol
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let cond = ep.conditions.as_ref();
            // Unset conditions mean ready (the API's documented default).
            let is_ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let is_serving = cond.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            let set = if is_ready {
                &mut ready
            } else if is_serving && is_terminating {
                &mut terminating
            } else {
                continue;
            };
            for a in &ep.addresses {
                // FQDN slices and malformed addresses carry nothing to connect to.
                let Ok(addr) = a.parse::<IpAddr>() else {
                    continue;
                };
                let e = Endpoint {
                    addr,
                    port: target,
                    node_name: ep.node_name.as_deref(),
                    terminating: !is_ready,
                };
                if keep(&e) {
                    set.push(e);
                }
            }
        }
    }
    let mut chosen = if ready.is_empty() { terminating } else { ready };
    chosen.sort();
    chosen.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slices(yaml: &str) -> Vec<EndpointSlice> {
        serde_norway::from_str::<Vec<EndpointSlice>>(yaml).expect("test slices")
    }

    const TCP: PortRef<'static> = PortRef {
        name: "http",
        protocol: "TCP",
    };

    fn addrs(eps: &[Endpoint<'_>]) -> Vec<String> {
        eps.iter()
            .map(|e| {
                format!(
                    "{}:{}{}",
                    e.addr,
                    e.port,
                    if e.terminating { " t" } else { "" }
                )
            })
            .collect()
    }

    const MIXED: &str = r#"
- metadata: {name: a}
  addressType: IPv4
  ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
  endpoints:
  - {addresses: ["198.18.1.2"], nodeName: node-b, conditions: {ready: true}}
  - {addresses: ["198.18.1.3"], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
  - {addresses: ["198.18.1.4"], nodeName: node-a, conditions: {ready: false, serving: false, terminating: true}}
  - {addresses: ["198.18.1.5"], nodeName: node-a, conditions: {ready: false}}
"#;

    #[test]
    fn ready_endpoints_hide_terminating_ones() {
        let s = slices(MIXED);
        let refs: Vec<&EndpointSlice> = s.iter().collect();
        assert_eq!(
            addrs(&usable_endpoints(&refs, TCP, |_| true)),
            ["198.18.1.2:8080"]
        );
    }

    #[test]
    fn the_filter_applies_before_the_fallback_to_terminating() {
        // Only node-a's endpoints: its one ready endpoint is not there, so
        // its serving-and-terminating one takes the traffic.
        let s = slices(MIXED);
        let refs: Vec<&EndpointSlice> = s.iter().collect();
        let local = usable_endpoints(&refs, TCP, |e| e.node_name == Some("node-a"));
        assert_eq!(addrs(&local), ["198.18.1.3:8080 t"]);
    }

    #[test]
    fn ports_match_by_name_and_protocol() {
        let s = slices(MIXED);
        let refs: Vec<&EndpointSlice> = s.iter().collect();
        let dns = PortRef {
            name: "dns",
            protocol: "UDP",
        };
        assert_eq!(
            addrs(&usable_endpoints(&refs, dns, |_| true)),
            ["198.18.1.2:5353"]
        );
        let wrong = PortRef {
            name: "dns",
            protocol: "TCP",
        };
        assert!(usable_endpoints(&refs, wrong, |_| true).is_empty());
    }

    #[test]
    fn duplicates_across_slices_count_once_and_bad_addresses_are_skipped() {
        let s = slices(
            r#"
- metadata: {name: a}
  addressType: IPv4
  ports: [{name: http, port: 8080}]
  endpoints: [{addresses: ["198.18.1.9", "not-an-ip"]}]
- metadata: {name: b}
  addressType: IPv4
  ports: [{name: http, port: 8080}]
  endpoints: [{addresses: ["198.18.1.9"]}]
- metadata: {name: c}
  addressType: IPv4
  ports: [{name: http, port: 0}]
  endpoints: [{addresses: ["198.18.1.10"]}]
"#,
        );
        let refs: Vec<&EndpointSlice> = s.iter().collect();
        assert_eq!(
            addrs(&usable_endpoints(&refs, TCP, |_| true)),
            ["198.18.1.9:8080"]
        );
    }
}
