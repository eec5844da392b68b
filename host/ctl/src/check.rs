//! `husk check`: one screen saying whether this host can run husk, what `auto` will use and
//! why, and what to do about anything missing.
//!
//! Owns gathering and presenting those facts. Must never start a VM or change the host.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use husk_hypervisor::{artifacts, backend, boot_files, host_probe, BackendChoice, HostPaths};
use serde::Serialize;

use crate::exit::HOST_NOT_READY;
use crate::table::Table;

#[derive(Debug, Serialize)]
struct Component {
    ok: bool,
    path: Option<PathBuf>,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Report {
    kvm: String,
    runs_stock_guests: bool,
    qemu: Component,
    vsock_backend: Component,
    /// Whether the builtin VMM can run guests here, and why not.
    builtin_vmm: String,
    /// How the VMM's threads and device back ends are confined.
    seccomp: String,
    /// How the guest confines containers (from the default image's manifest).
    containers: String,
    kernel: Component,
    image: Component,
    debug_image: Component,
    tsc_khz: Option<u64>,
    auto: Option<String>,
    problems: Vec<String>,
    can_run: bool,
}

fn qemu_version(path: &Path) -> String {
    Command::new(path)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "version unknown".into())
}

fn tool(path: Option<PathBuf>, detail: impl FnOnce(&Path) -> String, missing: &str) -> Component {
    match path {
        Some(p) => Component {
            ok: true,
            detail: detail(&p),
            path: Some(p),
        },
        None => Component {
            ok: false,
            path: None,
            detail: missing.into(),
        },
    }
}

fn kernel_component(path: PathBuf) -> Component {
    match boot_files::check_kernel(&path) {
        Ok(fmt) => {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            Component {
                ok: true,
                detail: format!("{fmt:?}, {:.1} MiB", size as f64 / 1048576.0),
                path: Some(path),
            }
        }
        Err(e) => Component {
            ok: false,
            detail: e.to_string(),
            path: Some(path),
        },
    }
}

/// What the image's manifest says of containers' confinement: SELinux and seccomp.
fn container_security(image: &Path) -> String {
    let manifest = husk_image::builder::manifest_path_for(image);
    let Some(m) = std::fs::read(&manifest)
        .ok()
        .and_then(|b| serde_json::from_slice::<husk_protocols::manifest::ImageManifest>(&b).ok())
    else {
        return "unknown: no image manifest".into();
    };
    let selinux = match &m.selinux {
        Some(p) => format!(
            "SELinux enforcing (husk's policy v{}; agent.selinux = false turns it off)",
            p.version
        ),
        None => "SELinux off (no policy in the image)".into(),
    };
    let seccomp = m
        .components
        .get("seccomp")
        .cloned()
        .unwrap_or_else(|| "seccomp: not reported by this image's agent".into());
    format!("{selinux}; {seccomp}")
}

fn image_component(path: PathBuf) -> Component {
    if let Err(e) = boot_files::check_initrd(&path) {
        return Component {
            ok: false,
            detail: e.to_string(),
            path: Some(path),
        };
    }
    let manifest = husk_image::builder::manifest_path_for(&path);
    let detail = std::fs::read(&manifest)
        .ok()
        .and_then(|b| serde_json::from_slice::<husk_protocols::manifest::ImageManifest>(&b).ok())
        .map(|m| format!("{} image, build {}", m.flavour, m.build_id))
        .unwrap_or_else(|| "no manifest beside it".into());
    Component {
        ok: true,
        detail,
        path: Some(path),
    }
}

fn gather() -> Report {
    let paths = HostPaths::system();
    let kvm = host_probe::kvm_kind(&paths);
    let qemu = tool(
        host_probe::find_program(&paths.qemu),
        qemu_version,
        "not installed: apt-get install qemu-system-x86",
    );
    let vsock_backend = tool(
        host_probe::find_vsock_backend(&paths),
        |_| "husk's vhost-user vsock device, for QEMU".into(),
        "not found: build it with `cargo build -p husk-vmm --bin husk-vhost-user` (scripts/setup.sh installs it)",
    );
    let builtin_vmm = if kvm.runs_stock_guests() {
        "available: hardware virtualisation runs Linux guests in-process".to_owned()
    } else {
        format!(
            "not used: it needs hardware virtualisation (kvm_intel or kvm_amd) and /dev/kvm is {}; \
             its device models still serve QEMU (husk-vhost-user)",
            kvm.describe()
        )
    };
    let seccomp = if husk_vmm::seccomp::kernel_supports_filters() {
        format!(
            "enforced: vCPU threads {} calls + KVM ioctls, device threads and husk-vhost-user {} calls; anything else kills",
            husk_vmm::seccomp::allowed_calls(husk_vmm::seccomp::ThreadKind::Vcpu).len(),
            husk_vmm::seccomp::allowed_calls(husk_vmm::seccomp::ThreadKind::Device).len(),
        )
    } else {
        "NOT available: this kernel cannot install seccomp filters (CONFIG_SECCOMP_FILTER)"
            .to_owned()
    };
    let kernel = kernel_component(artifacts::kernel());
    let containers = container_security(&artifacts::image("default"));
    let image = image_component(artifacts::image("default"));
    let debug_image = image_component(artifacts::image("debug"));
    let plan = backend::plan_for_host(BackendChoice::Auto, &paths);
    let mut problems = Vec::new();
    let auto = match &plan {
        Ok(p) => Some(format!("{} ({}): {}", p.backend, p.accel.name(), p.reason)),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    if !vsock_backend.ok {
        problems.push(format!("husk-vhost-user {}", vsock_backend.detail));
    }
    for c in [&kernel, &image] {
        if !c.ok {
            problems.push(c.detail.clone());
        }
    }
    Report {
        kvm: kvm.describe(),
        runs_stock_guests: kvm.runs_stock_guests(),
        can_run: problems.is_empty(),
        qemu,
        vsock_backend,
        builtin_vmm,
        seccomp,
        containers,
        kernel,
        image,
        debug_image,
        tsc_khz: host_probe::tsc_khz(&paths),
        auto,
        problems,
    }
}

fn show(c: &Component) -> String {
    let mark = if c.ok { "ok " } else { "NO " };
    match &c.path {
        Some(p) if c.ok => format!("{mark} {} ({})", p.display(), c.detail),
        _ => format!("{mark} {}", c.detail),
    }
}

pub fn run(json: bool) -> anyhow::Result<ExitCode> {
    let r = gather();
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let mut t = Table::default();
        t.row("/dev/kvm", &r.kvm)
            .row(
                "stock Linux guests on KVM",
                if r.runs_stock_guests { "yes" } else { "no" },
            )
            .row("QEMU", show(&r.qemu))
            .row("vsock back end", show(&r.vsock_backend))
            .row("builtin VMM", &r.builtin_vmm)
            .row("VMM seccomp", &r.seccomp)
            .row("container security", &r.containers)
            .row("guest kernel", show(&r.kernel))
            .row("guest image", show(&r.image))
            .row("debug image", show(&r.debug_image))
            .row(
                "TSC",
                r.tsc_khz
                    .map(|k| format!("{k} kHz"))
                    .unwrap_or_else(|| "unknown (no invariant TSC)".into()),
            )
            .row(
                "auto uses",
                r.auto
                    .clone()
                    .unwrap_or_else(|| "nothing: see below".into()),
            );
        print!("husk check\n{}", t.render());
        if r.can_run {
            println!("\nhusk can run VMs on this host.");
        } else {
            println!("\nhusk cannot run VMs on this host yet:");
            for p in &r.problems {
                println!("  - {p}");
            }
        }
    }
    Ok(if r.can_run {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(HOST_NOT_READY)
    })
}
