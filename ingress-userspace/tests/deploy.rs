//! deploy/: every manifest validates against the Kubernetes OpenAPI
//! schemas (kubernetes-validate, strict, at the oldest Kubernetes we
//! support), every kustomization names files that exist, and every
//! INGRESSD_* setting is a flag `ingressd run` has.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

const BIN: &str = env!("CARGO_BIN_EXE_ingressd");
/// The oldest Kubernetes the controller promises to work with (k8s-openapi
/// is built with `v1_33`).
const KUBERNETES: &str = "1.33.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn manifests() -> Vec<PathBuf> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect()
}

/// The manifests of Kubernetes' own kinds (the Gateway API's are CRDs the
/// schemas do not know: `gateway_class_is_ours` reads them).
fn core_manifests() -> Vec<PathBuf> {
    manifests()
        .into_iter()
        .filter(|f| !f.starts_with(deploy_dir().join("gateway-api")))
        .collect()
}

#[test]
fn gateway_class_is_ours() {
    let path = deploy_dir().join("gateway-api/gatewayclass.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (objects, errors, _) = ingressd::source::files::parse_file(&path, &text);
    assert!(errors.is_empty(), "{errors:?}");
    let [ingressd::cluster::Object::GatewayClass(class)] = &objects[..] else {
        panic!("one GatewayClass: {objects:?}");
    };
    // The flag's default, as `ingressd run --help` shows it.
    let help = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let default = format!("[default: {}]", class.spec.controller_name);
    assert!(help.contains(&default), "{default} not in:\n{help}");
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let validator = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools/kubernetes-validate/bin/kubernetes-validate");
    assert!(
        validator.exists(),
        "{} is missing: run `cargo xtask setup` (it installs kubernetes-validate from PyPI)",
        validator.display()
    );
    let files = core_manifests();
    assert!(files.len() >= 10, "{files:?}");
    let out = Command::new(&validator)
        .args(["--strict", "--quiet", "--kubernetes-version", KUBERNETES])
        .args(&files)
        .output()
        .expect("running kubernetes-validate");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("ERROR") && !text.contains("WARN"), "{text}");
}

#[test]
fn kustomizations_name_only_what_exists_and_leave_nothing_out() {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    let kustomizations: Vec<&PathBuf> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "kustomization.yaml"))
        .collect();
    assert_eq!(kustomizations.len(), 6, "{kustomizations:?}");
    let mut listed = Vec::new();
    for k in &kustomizations {
        let dir = k.parent().unwrap();
        let doc: serde_json::Value =
            serde_norway::from_str(&std::fs::read_to_string(k).unwrap()).unwrap();
        assert_eq!(doc["kind"], "Kustomization", "{}", k.display());
        for r in doc["resources"].as_array().unwrap() {
            let path = dir.join(r.as_str().unwrap());
            assert!(
                path.is_file() || path.join("kustomization.yaml").is_file(),
                "{}: {} does not exist",
                k.display(),
                path.display()
            );
            if path.is_file() {
                listed.push(path.canonicalize().unwrap());
            }
        }
    }
    for f in manifests() {
        assert!(
            listed.contains(&f.canonicalize().unwrap()),
            "{} is in no kustomization",
            f.display()
        );
    }
}

#[test]
fn every_ingressd_setting_in_deploy_is_a_flag() {
    let help = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let mut seen = 0;
    for f in manifests() {
        let text = std::fs::read_to_string(&f).unwrap();
        // Settings, not comments.
        let text: String = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("INGRESSD_") {
                seen += 1;
                assert!(
                    help.contains(&format!("[env: {word}=")),
                    "{}: {word} is no flag of `ingressd run`",
                    f.display()
                );
            }
        }
    }
    assert!(seen >= 10, "{seen}");
}

#[test]
fn overlays_render_with_kustomize_and_validate() {
    // kubectl's kustomize where it is installed; the files themselves are
    // validated above either way.
    let have = Command::new("kubectl")
        .args(["kustomize", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("SKIPPED: kubectl is not installed (the overlays are checked file by file)");
        return;
    }
    let validator = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools/kubernetes-validate/bin/kubernetes-validate");
    let dir = std::env::temp_dir().join(format!("ingressd-kustomize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (overlay, workload) in [
        ("daemonset-hostnetwork", "kind: DaemonSet"),
        ("deployment-nodeport", "kind: Deployment"),
        ("deployment-loadbalancer", "kind: Deployment"),
    ] {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(deploy_dir().join("overlays").join(overlay))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{overlay}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(workload) && text.contains("kind: ClusterRole"),
            "{overlay}:\n{text}"
        );
        let file = dir.join(format!("{overlay}.yaml"));
        std::fs::write(&file, &text).unwrap();
        let check = Command::new(&validator)
            .args(["--strict", "--quiet", "--kubernetes-version", KUBERNETES])
            .arg(&file)
            .output()
            .expect("kubernetes-validate (cargo xtask setup installs it)");
        assert!(
            check.status.success(),
            "{overlay}: {}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every workload upgrades with the new pod beside the old one (`maxSurge:
/// 1, maxUnavailable: 0`): the hand-over of tests/upgrade.rs. A pod on the
/// host network declares no ports: they would be host ports, which the
/// surge pod could not share on its node, so it would never be scheduled.
#[test]
fn workloads_upgrade_with_a_surge_pod_and_host_network_pods_declare_no_ports() {
    let mut checked = 0;
    for file in manifests() {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v: serde_json::Value = match serde::Deserialize::deserialize(doc) {
                Ok(v) => v,
                Err(_) => continue,
            };
            let kind = v["kind"].as_str().unwrap_or_default();
            let rolling = match kind {
                "DaemonSet" => &v["spec"]["updateStrategy"]["rollingUpdate"],
                "Deployment" => &v["spec"]["strategy"]["rollingUpdate"],
                _ => continue,
            };
            let name = format!("{} {kind}", file.display());
            assert_eq!(rolling["maxSurge"], 1, "{name}");
            assert_eq!(rolling["maxUnavailable"], 0, "{name}");
            let pod = &v["spec"]["template"]["spec"];
            if pod["hostNetwork"] == true {
                for c in pod["containers"].as_array().unwrap() {
                    assert!(c.get("ports").is_none(), "{name}: declares host ports");
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked} workloads");
}

/// The ClusterRole lets ingressd write the Events it writes (create, and
/// patch for kube-rs's series of a recurring one), and nothing more on them.
#[test]
fn the_cluster_role_allows_writing_events() {
    let text = std::fs::read_to_string(deploy_dir().join("base/rbac.yaml")).unwrap();
    let role = serde_norway::Deserializer::from_str(&text)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .find(|v: &serde_json::Value| v["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let rules = role["rules"].as_array().expect("rules");
    let events: Vec<&serde_json::Value> = rules
        .iter()
        .filter(|r| {
            r["resources"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "events"))
        })
        .collect();
    assert_eq!(events.len(), 1, "{rules:?}");
    assert_eq!(events[0]["apiGroups"], serde_json::json!(["events.k8s.io"]));
    assert_eq!(events[0]["verbs"], serde_json::json!(["create", "patch"]));
}
