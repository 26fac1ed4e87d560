//! BPF programs of the L4 data path.
//!
//! `xdp_lb_ingress` (XDP, node interface ingress): service DNAT, conntrack,
//! SNAT for remote backends, reverse NAT of SNATed replies, refusal of
//! services without endpoints. `tc_revnat_egress` (TC egress, node
//! interface): reverse NAT of replies from local backends.
//! `cgroup_connect4`, `cgroup_sendmsg4`, `cgroup_recvmsg4`,
//! `cgroup_getpeername4` (cgroup v2): ClusterIP and every other frontend
//! at the socket, for the node's own processes and its pods.
//!
//! Each entry is a thin shim over a chain of small steps returning
//! `Result<_, verdict>` so that `?` ends the chain with a verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod headers;
#[cfg(target_arch = "bpf")]
mod lb;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod refuse;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod steer;
#[cfg(target_arch = "bpf")]
mod tc;
#[cfg(target_arch = "bpf")]
mod xdp;

/// Host builds (clippy, `cargo build --workspace`) get an empty binary; the
/// real object is built for `bpfel-unknown-none` by `ingress-userspace`'s
/// build script.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
