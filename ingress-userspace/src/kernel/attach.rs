//! Loading the BPF object and attaching its programs, links pinned so a
//! restart swaps them in place.
use std::path::Path;

use anyhow::Context as _;
use aya::{
    EbpfLoader,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use ingress_common::{map_names, program_names};

use super::{
    XdpAttached,
    cgroup::{attach_socket_lb, detach_socket_lb},
    check_bpffs, interface_driver, interface_index, links_dir, prepare_interface, xdp_attached,
};

/// The BPF object, built by `build.rs` from `ingress-ebpf`.
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ingress-ebpf"));

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttachMode {
    /// Native (driver) mode, falling back to generic when the driver has none.
    Auto,
    Native,
    Generic,
}

/// Loads the object with every map pinned under `pin_path` (adopted when a
/// pin is there): the legacy maps by their own pinning, the BTF-defined
/// socket storage by name here.
fn load_pinned(pin_path: &Path) -> anyhow::Result<aya::Ebpf> {
    let revnat_pin = pin_path.join(map_names::SOCK_REVNAT);
    EbpfLoader::new()
        .default_map_pin_directory(pin_path)
        .map_pin_path(map_names::SOCK_REVNAT, revnat_pin.as_path())
        .load(BPF_OBJECT)
        .context("loading the BPF object (an incompatible older map pinned under --pin-path? run `ingressd cleanup`)")
}

/// Maps of earlier versions nothing reads any more.
const STALE_PINS: [&str; 1] = ["LB4_COUNTERS"];

fn remove_stale_pins(pin_path: &Path) {
    for name in STALE_PINS {
        let _ = std::fs::remove_file(pin_path.join(name));
    }
}

/// Loads the programs, adopting pinned maps when present, and attaches them
/// to each interface (and, with `socket_lb`, to that cgroup): a pinned link
/// from an earlier run is updated in place (atomic program swap, no gap),
/// otherwise a new link is made and pinned.
pub fn load_and_attach(
    pin_path: &Path,
    interfaces: &[String],
    mode: XdpAttachMode,
    steer_vips: bool,
    socket_lb: Option<&Path>,
) -> anyhow::Result<()> {
    check_bpffs(pin_path)?;
    std::fs::create_dir_all(links_dir(pin_path))
        .with_context(|| format!("creating {}", pin_path.display()))?;
    let mut ebpf = load_pinned(pin_path)?;
    // Flows an older version tracked, into the new table before its
    // programs run (and again after, for the ones made meanwhile).
    let migrated = super::conntrack::migrate_v1(pin_path, false)?;
    remove_stale_pins(pin_path);
    let xdp: &mut Xdp = ebpf
        .program_mut(program_names::XDP_INGRESS)
        .context("program xdp_lb_ingress missing from the object")?
        .try_into()?;
    xdp.load().context("verifier rejected xdp_lb_ingress")?;
    for iface in interfaces {
        prepare_interface(iface)?;
        attach_xdp(xdp, iface, pin_path, mode)
            .with_context(|| format!("attaching XDP to {iface}"))?;
    }
    let tc: &mut SchedClassifier = ebpf
        .program_mut(program_names::TC_EGRESS)
        .context("program tc_revnat_egress missing from the object")?
        .try_into()?;
    tc.load().context("verifier rejected tc_revnat_egress")?;
    for iface in interfaces {
        attach_tc(tc, iface, pin_path)
            .with_context(|| format!("attaching TC egress to {iface}"))?;
    }
    let migrated = migrated + super::conntrack::migrate_v1(pin_path, true)?;
    if migrated > 0 {
        tracing::info!(
            flows = migrated,
            "flows of the earlier conntrack table carried over"
        );
    }
    if steer_vips {
        attach_sk_lookup(&mut ebpf, pin_path)?;
    }
    match socket_lb {
        Some(cgroup) => attach_socket_lb(&mut ebpf, pin_path, cgroup)?,
        None => detach_socket_lb(pin_path)?,
    }
    Ok(())
}

/// Puts the loaded program into the link pinned at `pin` by an earlier run
/// (one atomic `bpf_link_update`: no packet sees a gap). False when there is
/// no usable pinned link; a stale pin is removed so a new link can take it.
fn swap_pinned_link<T>(
    pin: &Path,
    iface: &str,
    hook: &str,
    update: impl FnOnce(FdLink) -> anyhow::Result<T>,
) -> bool {
    if !pin.exists() {
        return false;
    }
    match PinnedLink::from_pin(pin)
        .map_err(anyhow::Error::from)
        .and_then(|p| update(FdLink::from(p)))
    {
        Ok(_) => {
            tracing::info!(
                interface = iface,
                "{hook} program replaced in the pinned link"
            );
            true
        }
        Err(e) => {
            tracing::warn!(interface = iface, error = %e, "pinned {hook} link unusable; attaching anew");
            let _ = std::fs::remove_file(pin);
            false
        }
    }
}

fn attach_xdp(
    prog: &mut Xdp,
    iface: &str,
    pin_path: &Path,
    mode: XdpAttachMode,
) -> anyhow::Result<()> {
    let pin = links_dir(pin_path).join(format!("xdp-{iface}"));
    let veth = interface_driver(iface).as_deref() == Some("veth");
    replace_if_other_mode(&pin, iface, wanted_mode(mode, veth));
    if swap_pinned_link(&pin, iface, "XDP", |fd| {
        Ok(prog.attach_to_link(XdpLink::try_from(fd)?)?)
    }) {
        return Ok(());
    }
    let id = match mode {
        XdpAttachMode::Native => prog.attach(iface, XdpMode::Driver)?,
        XdpAttachMode::Generic => prog.attach(iface, XdpMode::Skb)?,
        // A veth (a kind or container node) delivers what native XDP sends
        // back out of it (XDP_TX, a refusal) or into it (a redirect) only
        // when its peer runs XDP too, which is not ours to decide: generic
        // XDP sends those as ordinary packets, so they arrive whatever the
        // peer runs (Linux 6.18 veth_xdp_xmit).
        XdpAttachMode::Auto if veth => {
            tracing::info!(
                interface = iface,
                "a veth: generic XDP, so refusals and forwarded flows reach its peer (--xdp-mode native if the peer runs XDP)"
            );
            prog.attach(iface, XdpMode::Skb)?
        }
        XdpAttachMode::Auto => match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => id,
            Err(e) => {
                tracing::info!(interface = iface, error = %e, "native XDP unavailable, using generic");
                prog.attach(iface, XdpMode::Skb)?
            }
        },
    };
    let link = prog.take_link(id)?;
    match FdLink::try_from(link) {
        Ok(fd) => {
            fd.pin(&pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
        }
        // Old kernels attach through netlink: the attachment outlives us anyway.
        Err(e) => {
            tracing::warn!(interface = iface, error = %e, "XDP attached without a link; not pinned")
        }
    }
    tracing::info!(interface = iface, "XDP attached");
    Ok(())
}

/// The XDP mode `--xdp-mode` asks of this interface; None: whichever
/// works (`auto` off a veth: native, else generic).
fn wanted_mode(mode: XdpAttachMode, veth: bool) -> Option<XdpAttached> {
    match mode {
        XdpAttachMode::Native => Some(XdpAttached::Driver),
        XdpAttachMode::Generic => Some(XdpAttached::Generic),
        XdpAttachMode::Auto if veth => Some(XdpAttached::Generic),
        // A link an earlier run pinned in generic mode stays: it may be
        // there because native failed, and trying again means a gap.
        XdpAttachMode::Auto => None,
    }
}

/// An XDP link pinned by an earlier run in another mode than the one asked
/// for now is detached and its pin removed, for a new one in
/// the right mode: the two modes cannot be on one interface together, so
/// this costs the interface a moment without XDP, once.
fn replace_if_other_mode(pin: &Path, iface: &str, wanted: Option<XdpAttached>) {
    let Some(wanted) = wanted else { return };
    if !pin.exists() {
        return;
    }
    match xdp_attached(interface_index(iface)) {
        Ok(current) if current != wanted && current != XdpAttached::None => {
            tracing::warn!(
                interface = iface,
                current = ?current,
                wanted = ?wanted,
                "the pinned XDP link is in another mode than --xdp-mode asks: attaching anew (a moment without XDP)"
            );
            if let Err(e) = super::link::detach_pinned(pin) {
                tracing::warn!(interface = iface, error = %format!("{e:#}"), "detaching the old XDP link");
            }
            let _ = std::fs::remove_file(pin);
        }
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(interface = iface, error = %format!("{e:#}"), "XDP mode unreadable; keeping the pinned link")
        }
    }
}

fn attach_tc(prog: &mut SchedClassifier, iface: &str, pin_path: &Path) -> anyhow::Result<()> {
    let pin = links_dir(pin_path).join(format!("tc-egress-{iface}"));
    if swap_pinned_link(&pin, iface, "TC", |fd| {
        Ok(prog.attach_to_link(SchedClassifierLink::try_from(fd)?)?)
    }) {
        return Ok(());
    }
    let id = prog.attach(iface, TcAttachType::Egress)?;
    let link = prog.take_link(id)?;
    let fd = FdLink::try_from(link).context("TC needs tcx links (Linux 6.6 or later)")?;
    fd.pin(&pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    tracing::info!(interface = iface, "TC egress attached (tcx)");
    Ok(())
}

/// Loads both programs (verified, not attached) with their maps pinned
/// under `pin_dir`: for packet tests and benchmarks with BPF_PROG_TEST_RUN.
pub fn load_unattached(pin_dir: &Path) -> anyhow::Result<aya::Ebpf> {
    std::fs::create_dir_all(pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(BPF_OBJECT)?;
    for name in [program_names::XDP_INGRESS, program_names::XDP_PASS] {
        let xdp: &mut Xdp = ebpf
            .program_mut(name)
            .context("program missing")?
            .try_into()?;
        xdp.load()
            .with_context(|| format!("verifier rejected {name}"))?;
    }
    let tc: &mut SchedClassifier = ebpf
        .program_mut(program_names::TC_EGRESS)
        .context("program missing")?
        .try_into()?;
    tc.load().context("verifier rejected tc_revnat_egress")?;
    Ok(ebpf)
}

/// Attaches `xdp_pass` to `iface` (in the calling thread's network
/// namespace) in native mode and pins the link under `pin_dir` (removed
/// by [`cleanup`]). Needed on the peer of a veth whose other end runs
/// native XDP with XDP_TX.
pub fn attach_xdp_pass(iface: &str, pin_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(pin_dir)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(BPF_OBJECT)?;
    let prog: &mut Xdp = ebpf
        .program_mut(program_names::XDP_PASS)
        .context("xdp_pass missing")?
        .try_into()?;
    prog.load()?;
    let id = prog.attach(iface, XdpMode::Driver)?;
    let fd = FdLink::try_from(prog.take_link(id)?)?;
    fd.pin(pin_dir.join(format!("xdp-pass-{iface}")))?;
    Ok(())
}

/// Attaches `sk_lookup_proxy` to this process's network namespace. A new
/// link is made before the old pinned one is removed, so steering never
/// stops (two attached copies behave as one: they share the maps).
fn attach_sk_lookup(ebpf: &mut aya::Ebpf, pin_path: &Path) -> anyhow::Result<()> {
    let prog: &mut aya::programs::SkLookup = ebpf
        .program_mut(program_names::SK_LOOKUP)
        .context("program sk_lookup_proxy missing")?
        .try_into()?;
    prog.load().context("verifier rejected sk_lookup_proxy")?;
    let netns = std::fs::File::open("/proc/self/ns/net").context("opening /proc/self/ns/net")?;
    let id = prog
        .attach(&netns)
        .context("attaching sk_lookup to the network namespace")?;
    let link: FdLink = prog.take_link(id)?.into();
    let pin = links_dir(pin_path).join("sk-lookup");
    let _ = std::fs::remove_file(&pin);
    link.pin(&pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    tracing::info!("sk_lookup attached: Ingress VIPs on :80/:443 go to the proxy's sockets");
    Ok(())
}
