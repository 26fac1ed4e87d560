//! Builds the BPF object (`ingress-ebpf`, nightly + bpf-linker) and embeds it.
//! `cargo xtask setup` installs what this needs; `AYA_BUILD_SKIP=1` skips it.
fn main() -> anyhow::Result<()> {
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
