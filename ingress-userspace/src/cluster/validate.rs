//! What an object must hold to be used: an invalid one is refused whole,
//! with the field named, and its last good version stays.

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::Object;

/// A semantic problem found by validation: field path and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

pub(crate) fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks what the API server would have refused, so the model only sees
/// objects that make sense.
pub fn validate(object: &Object) -> Result<(), FieldError> {
    validate_with(object, Rules::default())
}

/// What validation lets through beyond the API server's rules.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rules {
    /// Endpoints on loopback addresses (`--allow-loopback-endpoints`: a
    /// proxy tried on one machine without namespaces; no cluster has them).
    pub loopback_endpoints: bool,
}

pub fn validate_with(object: &Object, rules: Rules) -> Result<(), FieldError> {
    match object {
        Object::Service(s) => validate_service(s),
        Object::EndpointSlice(s) => validate_endpoint_slice(s, rules),
        _ => Ok(()),
    }
}

fn valid_port(p: i32) -> bool {
    (1..=65535).contains(&p)
}

fn validate_service(svc: &Service) -> Result<(), FieldError> {
    let Some(spec) = &svc.spec else { return Ok(()) };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(field_error(
            "spec.type",
            format!("unsupported value {ty:?}"),
        ));
    }
    if let Some(p) = spec.external_traffic_policy.as_deref()
        && !matches!(p, "Cluster" | "Local")
    {
        return Err(field_error(
            "spec.externalTrafficPolicy",
            format!("unsupported value {p:?} (Cluster or Local)"),
        ));
    }
    if let Some(a) = spec.session_affinity.as_deref()
        && !matches!(a, "None" | "ClientIP")
    {
        return Err(field_error(
            "spec.sessionAffinity",
            format!("unsupported value {a:?}"),
        ));
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(field_error(
                format!("spec.externalIPs[{i}]"),
                format!("{ip:?} is not an IP address"),
            ));
        }
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    let mut names = std::collections::HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        if !valid_port(port.port) {
            return Err(field_error(
                at("port"),
                format!("{} is not in 1-65535", port.port),
            ));
        }
        if let Some(np) = port.node_port
            && !valid_port(np)
        {
            return Err(field_error(
                at("nodePort"),
                format!("{np} is not in 1-65535"),
            ));
        }
        let proto = port.protocol.as_deref().unwrap_or("TCP");
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            return Err(field_error(
                at("protocol"),
                format!("unsupported value {proto:?}"),
            ));
        }
        if ports.len() > 1 && port.name.as_deref().unwrap_or("").is_empty() {
            return Err(field_error(
                at("name"),
                "required when a Service has more than one port",
            ));
        }
        if !names.insert((port.name.clone().unwrap_or_default(), proto.to_string())) {
            return Err(field_error(at("name"), "duplicate port name"));
        }
        if ty == "NodePort" && port.node_port.is_none() {
            return Err(field_error(
                at("nodePort"),
                "required in manifest files for type NodePort (the API server would allocate one)",
            ));
        }
    }
    Ok(())
}

fn validate_endpoint_slice(slice: &EndpointSlice, rules: Rules) -> Result<(), FieldError> {
    let family = slice.address_type.as_str();
    if !matches!(family, "IPv4" | "IPv6" | "FQDN") {
        return Err(field_error(
            "addressType",
            format!("unsupported value {family:?}"),
        ));
    }
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        if let Some(p) = port.port
            && !valid_port(p)
        {
            return Err(field_error(
                format!("ports[{i}].port"),
                format!("{p} is not in 1-65535"),
            ));
        }
    }
    if family == "FQDN" {
        return Ok(());
    }
    for (i, ep) in slice.endpoints.iter().enumerate() {
        for (j, addr) in ep.addresses.iter().enumerate() {
            let at = || format!("endpoints[{i}].addresses[{j}]");
            let ip: std::net::IpAddr = match family {
                "IPv4" => addr.parse::<std::net::Ipv4Addr>().map(Into::into),
                _ => addr.parse::<std::net::Ipv6Addr>().map(Into::into),
            }
            .map_err(|_| field_error(at(), format!("{addr:?} is not an {family} address")))?;
            if rules.loopback_endpoints && ip.is_loopback() {
                continue;
            }
            if let Some(why) = special_endpoint_ip(ip) {
                return Err(field_error(at(), format!("{addr}: {why}")));
            }
        }
    }
    Ok(())
}

/// What the API server refuses as an endpoint address (its
/// `ValidateEndpointIP`), so a manifest file cannot describe an endpoint a
/// cluster could not have.
fn special_endpoint_ip(ip: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    if ip.is_unspecified() {
        return Some("may not be unspecified (0.0.0.0, ::)");
    }
    if ip.is_loopback() {
        return Some("may not be in the loopback range (127.0.0.0/8, ::1/128)");
    }
    let (link_local, link_local_multicast) = match ip {
        IpAddr::V4(v4) => (v4.is_link_local(), v4.octets()[..3] == [224, 0, 0]),
        IpAddr::V6(v6) => (
            v6.segments()[0] & 0xffc0 == 0xfe80,
            v6.segments()[0] == 0xff02,
        ),
    };
    if link_local {
        return Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)");
    }
    if link_local_multicast {
        return Some("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)");
    }
    None
}
