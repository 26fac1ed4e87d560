//! The incremental model (what `ingressd run` uses on every change) always
//! equals the pure `desired_state` of the same objects, and the map writes
//! it returns turn the previous state into the new one.
use std::path::Path;

use ingress_common::{FrontendKey, Ring, ServiceEntry};
use ingressd::{
    l4::{
        Diff, LbMapWriter, SourceRange, apply, diff,
        model::{DesiredState, Model, NodeContext, desired_state},
    },
    source::files::ManifestSource,
};

fn svc(name: &str, node_port: u16, ext_ip: Option<&str>) -> String {
    let ext = ext_ip
        .map(|ip| format!("  externalIPs: [\"{ip}\"]\n"))
        .unwrap_or_default();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: NodePort\n{ext}  ports:\n  - {{port: 80, nodePort: {node_port}}}\n"
    )
}

/// A LoadBalancer Service with a cluster IP, an address, and these
/// loadBalancerSourceRanges.
fn lb(name: &str, ranges: &[&str]) -> String {
    let ranges: Vec<String> = ranges.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: LoadBalancer\n  clusterIP: 198.19.3.1\n  internalTrafficPolicy: Local\n  loadBalancerSourceRanges: [{}]\n  ports:\n  - {{port: 443, nodePort: 30443}}\nstatus: {{loadBalancer: {{ingress: [{{ip: 198.19.4.1}}]}}}}\n",
        ranges.join(", ")
    )
}

fn slice(name: &str, owner: &str, ips: &[&str]) -> String {
    let eps: String = ips
        .iter()
        .map(|ip| format!("- addresses: [\"{ip}\"]\n  nodeName: node-a\n"))
        .collect();
    let eps = if eps.is_empty() {
        " []\n".to_string()
    } else {
        format!("\n{eps}")
    };
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/service-name: {owner}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:{eps}"
    )
}

/// Replays map writes on a plain state, to check the diffs compose.
#[derive(Default)]
struct Replay(DesiredState);

impl LbMapWriter for Replay {
    fn put_ring(&mut self, id: u64, ring: &Ring, name: &str) -> anyhow::Result<()> {
        let backends = ingressd::l4::maglev::ring_backends(ring);
        // Ranges are written on their own (as in the source-range map).
        let source_ranges = self
            .0
            .rings
            .get(&id)
            .map(|r| r.source_ranges.clone())
            .unwrap_or_default();
        self.0.rings.insert(
            id,
            ingressd::l4::model::RingSpec {
                name: name.into(),
                backends,
                drop_when_empty: ring.flags & ingress_common::RING_F_DROP_IF_EMPTY != 0,
                source_ranges,
            },
        );
        Ok(())
    }
    fn put_source_range(&mut self, ring: u64, range: SourceRange) -> anyhow::Result<()> {
        let spec = self
            .0
            .rings
            .get_mut(&ring)
            .expect("ranges of a missing ring");
        spec.source_ranges.push(range);
        spec.source_ranges.sort();
        Ok(())
    }
    fn delete_source_range(&mut self, ring: u64, range: SourceRange) -> anyhow::Result<()> {
        if let Some(spec) = self.0.rings.get_mut(&ring) {
            spec.source_ranges.retain(|r| *r != range);
        }
        Ok(())
    }
    fn delete_ring(&mut self, id: u64) -> anyhow::Result<()> {
        self.0.rings.remove(&id);
        Ok(())
    }
    fn put_frontend(&mut self, key: &FrontendKey, entry: &ServiceEntry) -> anyhow::Result<()> {
        self.0.frontends.insert(*key, *entry);
        Ok(())
    }
    fn delete_frontend(&mut self, key: &FrontendKey) -> anyhow::Result<()> {
        self.0.frontends.remove(key);
        Ok(())
    }
    fn put_member(&mut self, _: ingressd::l4::RingMember, _: u8) -> anyhow::Result<()> {
        Ok(())
    }
    fn delete_member(&mut self, _: ingressd::l4::RingMember) -> anyhow::Result<()> {
        Ok(())
    }
    fn forget_udp_flows(
        &mut self,
        _: &std::collections::BTreeSet<ingressd::l4::RingMember>,
    ) -> anyhow::Result<()> {
        Ok(())
    }
}

fn write(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

#[test]
fn incremental_model_matches_full_recomputation_through_a_sequence_of_changes() {
    let dir = std::env::temp_dir().join(format!("ingressd-incr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let node = NodeContext {
        name: "node-a".into(),
        addrs: vec!["198.18.0.2".parse().unwrap()],
        ..Default::default()
    };
    let steps: Vec<Vec<(&str, String)>> = vec![
        // a and b fight over 30100; c is alone.
        vec![
            (
                "a.yaml",
                svc("a", 30100, None) + &slice("a-1", "a", &["198.18.1.2"]),
            ),
            (
                "b.yaml",
                svc("b", 30100, Some("198.19.0.5"))
                    + &slice("b-1", "b", &["198.18.1.3", "198.18.1.4"]),
            ),
            ("c.yaml", svc("c", 30200, None)),
        ],
        // An endpoint of b goes; c gets a slice in another file.
        vec![
            (
                "b.yaml",
                svc("b", 30100, Some("198.19.0.5")) + &slice("b-1", "b", &["198.18.1.3"]),
            ),
            ("c-slice.yaml", slice("c-1", "c", &["198.18.1.9"])),
        ],
        // a (the winner of 30100) goes away: b takes the frontend over.
        vec![("a.yaml", String::new())],
        // The slice moves from c to b (its owner label changes).
        vec![("c-slice.yaml", slice("c-1", "b", &["198.18.1.9"]))],
        // c changes its NodePort; b loses its externalIP.
        vec![
            ("c.yaml", svc("c", 30300, None)),
            (
                "b.yaml",
                svc("b", 30100, None) + &slice("b-1", "b", &["198.18.1.3"]),
            ),
        ],
        // A restricted LoadBalancer with a cluster IP arrives, then its
        // ranges change, then it loses them.
        vec![(
            "d.yaml",
            lb("d", &["198.18.0.0/24", "203.0.113.9/32"]) + &slice("d-1", "d", &["198.18.1.5"]),
        )],
        vec![(
            "d.yaml",
            lb("d", &["198.18.0.0/25", "203.0.113.9/32"]) + &slice("d-1", "d", &["198.18.1.6"]),
        )],
        vec![("d.yaml", lb("d", &[]) + &slice("d-1", "d", &["198.18.1.6"]))],
        // Everything goes.
        vec![
            ("b.yaml", String::new()),
            ("c.yaml", String::new()),
            ("c-slice.yaml", String::new()),
            ("d.yaml", String::new()),
        ],
    ];
    let mut source = ManifestSource::new(vec![dir.clone()]);
    let mut model = Model::new(node.clone());
    let mut replay = Replay::default();
    for (i, step) in steps.iter().enumerate() {
        for (file, text) in step {
            write(&dir, file, text);
        }
        let loaded = source.load();
        assert!(loaded.errors.is_empty(), "step {i}: {:?}", loaded.errors);
        let d: Diff = model.update(source.snapshot(), loaded.touched);
        let (full, full_warnings) = desired_state(source.snapshot(), &node);
        assert_eq!(
            model.state(),
            &full,
            "step {i}: incremental model differs from the full one"
        );
        assert_eq!(model.warnings(), full_warnings, "step {i}");
        // Endpoints that left a ring, and only those, are reported.
        assert_eq!(d.left, diff(&replay.0, &full).left, "step {i}");
        assert_eq!(d.joined, diff(&replay.0, &full).joined, "step {i}");
        apply(&d, &mut replay).unwrap();
        assert_eq!(
            replay.0, full,
            "step {i}: the diff does not lead to the new state"
        );
    }
    assert!(model.state().frontends.is_empty() && model.state().rings.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_proxy_services_load_balancer_ips_are_left_to_the_proxy() {
    let input = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata/loadbalancer-externalips-local/input.yaml");
    let mut source = ManifestSource::new(vec![input]);
    assert!(source.load().errors.is_empty());
    let node = NodeContext {
        name: "node-a".into(),
        addrs: vec!["198.18.0.2".parse().unwrap()],
        ..Default::default()
    };
    let addrs = |state: &DesiredState| -> std::collections::BTreeSet<std::net::Ipv4Addr> {
        state
            .frontends
            .keys()
            .map(|k| std::net::Ipv4Addr::from(u32::from_be(k.addr)))
            .collect()
    };
    let lb: std::net::Ipv4Addr = "198.19.0.10".parse().unwrap();
    let external: std::net::Ipv4Addr = "198.19.0.20".parse().unwrap();
    let nodeport = std::net::Ipv4Addr::UNSPECIFIED;
    // Any other LoadBalancer Service: XDP answers its LoadBalancer IP.
    let mut model = Model::new(node.clone());
    model.rebuild(source.snapshot());
    assert_eq!(addrs(model.state()), [nodeport, lb, external].into());
    // The proxy's own Service: its LoadBalancer IP is steered to the proxy
    // (sk_lookup); its NodePort and externalIP stay with XDP.
    let own = ingressd::cluster::ObjectKey::new("ingress", "edge");
    let mut model = Model::new(node.clone()).with_proxy_service(Some(own));
    model.rebuild(source.snapshot());
    assert_eq!(addrs(model.state()), [nodeport, external].into());
    let svc = source.snapshot().services.values().next().unwrap();
    assert_eq!(ingressd::l4::model::load_balancer_ips(svc), vec![lb]);
}
