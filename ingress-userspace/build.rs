//! Builds the BPF object (`ingress-ebpf`, nightly + bpf-linker) and embeds it.
//! `cargo xtask setup` installs what this needs; `AYA_BUILD_SKIP=1` skips it
//! and embeds an empty object (the proxy alone, as the fuzz targets build
//! it: loading the data path then fails with a clear error).
fn main() -> anyhow::Result<()> {
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip && let Some(out) = std::env::var_os("OUT_DIR") {
        std::fs::write(std::path::Path::new(&out).join("ingress-ebpf"), [])?;
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ingress-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ingress-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
