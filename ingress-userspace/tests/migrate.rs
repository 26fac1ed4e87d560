//! `ingressd migrate` as a user runs it: on manifest files and against an
//! API server (the fake one), text and JSON, and its exit code. The text
//! report of `migratedata/cluster.yaml` is `migratedata/expected.txt`;
//! `UPDATE_GOLDEN=1` rewrites it.
use std::{path::Path, process::Command};

use testkit::fakeapi::{FakeApi, temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_ingressd");
const CONFIGMAP: &str = "ingress-nginx/ingress-nginx-controller";

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/migratedata")
        .join(name)
}

/// (exit code, stdout, stderr)
fn migrate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("migrate")
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("running ingressd migrate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_report_on_real_looking_ingresses_matches_the_expected_one() {
    let file = data("cluster.yaml");
    let (code, text, err) = migrate(&[
        "--manifests",
        file.to_str().unwrap(),
        "--configmap",
        CONFIGMAP,
    ]);
    let expected = data("expected.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected, &text).unwrap();
    }
    assert_eq!(
        text,
        std::fs::read_to_string(&expected).unwrap(),
        "stderr: {err}"
    );
    // A mirror, a snippet and a bad value are lost.
    assert_eq!(code, 1, "{err}");

    // One namespace, nothing lost there: exit code 0.
    let (code, text, err) = migrate(&[
        "--manifests",
        file.to_str().unwrap(),
        "--watch-namespace",
        "web",
    ]);
    assert_eq!(code, 0, "{text}{err}");
    assert!(
        text.contains("Ingress web/docs") && !text.contains("shop/api"),
        "{text}"
    );
    assert!(text.contains("(nothing is lost)"), "{text}");

    let (code, _, err) = migrate(&[
        "--manifests",
        file.to_str().unwrap(),
        "--configmap",
        "x/none",
    ]);
    assert!(code == 1 && err.contains("ConfigMap x/none"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_gives_the_same_report_as_its_files() {
    let yaml = std::fs::read_to_string(data("cluster.yaml")).unwrap();
    let api = FakeApi::start().await;
    api.apply_yaml(&yaml);
    let dir = temp_dir("migrate");
    let kubeconfig = api.kubeconfig(&dir);
    let file = data("cluster.yaml");
    let from_files = tokio::task::spawn_blocking(move || {
        migrate(&[
            "--manifests",
            file.to_str().unwrap(),
            "--configmap",
            CONFIGMAP,
            "--output",
            "json",
        ])
    });
    let kc = kubeconfig.clone();
    let from_cluster = tokio::task::spawn_blocking(move || {
        migrate(&[
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--configmap",
            CONFIGMAP,
            "--output",
            "json",
        ])
    });
    let (files, cluster) = (from_files.await.unwrap(), from_cluster.await.unwrap());
    assert_eq!(cluster.0, 1, "{}", cluster.2);
    let parse = |s: &str| -> serde_json::Value { serde_json::from_str(s).expect("JSON report") };
    let (f, c) = (parse(&files.1), parse(&cluster.1));
    assert_eq!(f, c, "the cluster's report differs from its files'");
    assert_eq!(c["summary"]["ingresses"], 4);
    assert_eq!(c["summary"]["lost"], 5);
    let admin = &c["ingresses"][0];
    assert_eq!(admin["name"], "admin");
    let snippet = admin["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "configuration-snippet")
        .expect("the snippet is reported");
    assert_eq!(snippet["verdict"], "refused");
    let _ = std::fs::remove_dir_all(&dir);
}
