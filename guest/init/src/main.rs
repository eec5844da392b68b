//! husk-init: PID 1 of every husk guest.
//!
//! Moves the root off the initramfs, mounts the base filesystems, loads the SELinux policy and
//! enforces it, sets the hostname, seeds entropy, starts and restarts the services the image
//! manifest lists, reaps orphans, tells the host it is ready over vsock, and on a shutdown
//! request (or a fatal error) stops everything, syncs and leaves the VM with
//! `reboot(2)` (the VM has no ACPI power-off). Logs go to the serial console.
//!
//! This file owns the start-up order and the event loop. It must never exit: PID 1 leaving
//! panics the guest kernel, so every path ends in [`leave`].

mod boot_timer;
mod control;
mod entropy;
mod identity;
mod mounts;
mod selinux;
mod shutdown;
mod spawn;
mod supervisor;
mod switch_root;
mod syscalls;

use std::convert::Infallible;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use husk_protocols::cmdline;
use husk_protocols::init::{GuestMessage, Ready, PROTOCOL};
use husk_protocols::manifest::{ImageManifest, MANIFEST_PATH};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::control::Control;
use crate::spawn::ProcessSpawner;
use crate::supervisor::Supervisor;

/// How long the boot's spans may wait for husk-tracer to listen.
const BOOT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("husk-init {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    // Checked before anything else: run on a host, the mounts below would shadow its /proc.
    if std::process::id() != 1 {
        eprintln!(
            "husk-init: must run as PID 1 (it is the guest's init), not as pid {}",
            std::process::id()
        );
        std::process::exit(2);
    }
    let started = uptime();
    // Signals arrive through a signalfd; block them before any thread exists (the tracing
    // batch thread included), so that no thread takes a SIGCHLD the event loop is owed.
    if let Err(e) = handled_signals().thread_block() {
        eprintln!("husk-init: blocking signals: {e}");
    }
    // First, while nothing is mounted on the initramfs yet: leave it for a tmpfs root.
    let switched = switch_root::leave_initramfs();
    let mounted = mounts::mount_base(&mut syscalls::RealSyscalls);
    let cmdline_text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    // Logs to the serial console; with `husk.tracing=1`, spans to husk-tracer as well.
    let telemetry =
        husk_telemetry::init_guest_logging(&cmdline_text, Some(husk_telemetry::service::INIT));
    tracing::info!(
        uptime_ms = uptime().as_millis() as u64,
        "husk-init {} starting",
        env!("CARGO_PKG_VERSION")
    );
    match &switched {
        Ok(true) => tracing::info!("root moved from the initramfs to a tmpfs"),
        Ok(false) => tracing::info!("root is not an initramfs: kept"),
        Err(_) => {}
    }
    let mounted = switched
        .context("moving the root from the initramfs to a tmpfs")
        .and_then(|_| mounted.context("mounting base filesystems"));
    let err = match mounted {
        Ok(()) => match run(&cmdline_text, started, telemetry.as_ref()) {
            Ok(never) => match never {},
            Err(e) => e,
        },
        Err(e) => e,
    };
    tracing::error!("fatal: {err:#}");
    leave(&format!("fatal error: {err:#}"));
}

/// The signals the event loop takes through its signalfd.
fn handled_signals() -> SigSet {
    let mut mask = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        mask.add(s);
    }
    mask
}

fn uptime() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default()
}

fn read_manifest() -> anyhow::Result<ImageManifest> {
    let text = std::fs::read_to_string(MANIFEST_PATH)
        .with_context(|| format!("reading the image manifest {MANIFEST_PATH}"))?;
    serde_json::from_str(&text)
        .with_context(|| format!("parsing the image manifest {MANIFEST_PATH}"))
}

fn run(
    cmdline_text: &str,
    started: Duration,
    telemetry: Option<&husk_telemetry::Telemetry>,
) -> anyhow::Result<Infallible> {
    let mask = handled_signals();
    mask.thread_block().context("blocking signals")?;
    let mut sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("creating signalfd")?;

    // The guest's boot, in the host's trace when the command line names one.
    let boot = tracing::info_span!("init.boot", otel.name = "husk-init boot");
    if let Some(tp) = cmdline::lookup(cmdline_text, cmdline::TRACEPARENT) {
        husk_telemetry::propagation::set_parent(&boot, tp);
    }
    let entered = boot.enter();
    let manifest = read_manifest()?;
    // Before any service starts, so that every one runs under the policy.
    let selinux = tracing::info_span!("init.selinux", otel.name = "selinux policy")
        .in_scope(|| setup_selinux(cmdline_text, &manifest))?;
    let hostname = identity::set_hostname(&mut syscalls::RealSyscalls, cmdline_text)
        .context("setting the hostname")?;
    let entropy_seeded = tracing::info_span!("init.entropy", otel.name = "entropy seed")
        .in_scope(entropy::seed_from_hwrng);
    let services = manifest
        .services
        .iter()
        .filter(|s| match s.validate() {
            Ok(()) if s.enabled(cmdline_text) => true,
            Ok(()) => {
                tracing::info!(service = %s.name, key = ?s.enabled_by, "service not enabled on the kernel command line");
                false
            }
            Err(e) => {
                tracing::error!("skipping service: {e}");
                false
            }
        })
        .cloned()
        .collect();
    let mut sup = Supervisor::new(ProcessSpawner, services);
    let services_started = tracing::info_span!("init.services", otel.name = "start services")
        .in_scope(|| sup.start_all(Instant::now()));

    let control = match Control::connect() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot reach the host on vsock port {}", husk_protocols::ports::INIT_PORT);
            None
        }
    };
    let up = uptime();
    let ready = Ready {
        protocol: PROTOCOL.to_owned(),
        init_version: env!("CARGO_PKG_VERSION").to_owned(),
        build_id: manifest.build_id.clone(),
        flavour: manifest.flavour.clone(),
        uptime_ns: up.as_nanos() as u64,
        init_started_ns: started.as_nanos() as u64,
        realtime_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default(),
        kernel_release: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        services: services_started,
        entropy_seeded,
        selinux: selinux.mode().name().to_owned(),
    };
    match boot_timer::signal_booted(cmdline_text) {
        Ok(true) => tracing::debug!("boot timer signalled"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot signal the boot timer"),
    }
    if let Some(c) = &control {
        c.send(&GuestMessage::Ready(ready));
        c.spawn_reader().context("starting the control reader")?;
    }
    tracing::info!(
        hostname,
        build_id = %manifest.build_id,
        uptime_ms = up.as_millis() as u64,
        "husk-init ready"
    );
    drop(entered);
    drop(boot);
    if let Some(t) = telemetry {
        // The boot's spans go to the tracer as soon as it listens (it has just been started),
        // off the event loop.
        let t = t.clone();
        let _ = std::thread::Builder::new()
            .name("trace-flush".into())
            .spawn(move || t.flush(BOOT_FLUSH_TIMEOUT));
    }

    loop {
        let timeout = match sup.next_deadline() {
            Some(d) => PollTimeout::try_from(d.saturating_duration_since(Instant::now()))
                .unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("polling the signalfd"),
        }
        while let Some(info) = sfd.read_signal().context("reading the signalfd")? {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => reap(&mut sup, control.as_ref()),
                Ok(Signal::SIGTERM | Signal::SIGINT) => {
                    let reason = control::SHUTDOWN_REASON
                        .get()
                        .cloned()
                        .unwrap_or_else(|| format!("signal {}", info.ssi_signo));
                    shutdown::run(&mut sup, &mut sfd, control.as_ref(), telemetry, &reason);
                }
                _ => {}
            }
        }
        sup.restart_due(Instant::now());
    }
}

/// Loads and enforces the image's SELinux policy unless the command line turns it off; logs the
/// mode. A policy the image promised but that cannot be enforced is fatal.
fn setup_selinux(cmdline_text: &str, manifest: &ImageManifest) -> anyhow::Result<selinux::Outcome> {
    let wanted = cmdline::selinux_mode(cmdline_text).unwrap_or_else(|value| {
        tracing::warn!(
            "unknown {}={value:?} on the kernel command line (0, 1 or permissive): enforcing",
            cmdline::SELINUX
        );
        cmdline::SelinuxMode::Enforcing
    });
    let policy = manifest.selinux.as_ref();
    let outcome = selinux::setup(&mut syscalls::RealSyscalls, wanted, policy)
        .context("setting up SELinux")?;
    match (outcome, policy) {
        (selinux::Outcome::Loaded(mode), Some(p)) => tracing::info!(
            policy = %p.path,
            version = p.version,
            sha256 = %p.sha256,
            "SELinux {}",
            mode.name()
        ),
        (selinux::Outcome::TurnedOff, _) => tracing::info!(
            "SELinux off ({}={} on the kernel command line)",
            cmdline::SELINUX,
            cmdline::SELINUX_OFF
        ),
        _ => tracing::warn!("SELinux off: the image carries no policy"),
    }
    Ok(outcome)
}

/// Reaps every exited child: services are reported and scheduled for restart, orphans logged.
fn reap(sup: &mut Supervisor<ProcessSpawner>, control: Option<&Control>) {
    loop {
        let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, format!("exit code {code}")),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, format!("killed by {sig}")),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        match sup.on_exit(pid.as_raw(), Instant::now()) {
            Some(exit) => {
                tracing::warn!(service = %exit.name, %status, restart_in_ms = exit.restart_in.as_millis() as u64, "service exited");
                if let Some(c) = control {
                    c.send(&GuestMessage::ServiceExited {
                        name: exit.name,
                        status,
                        restart_in_ms: exit.restart_in.as_millis() as u64,
                    });
                }
            }
            None => tracing::debug!(pid = pid.as_raw(), %status, "reaped orphan"),
        }
    }
}

/// Syncs and leaves the VM through `reboot(2)`; the VMM treats the reset as the VM's exit.
pub(crate) fn leave(reason: &str) -> ! {
    tracing::info!(reason, "syncing and leaving the VM");
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Only reached if reboot(2) failed; exiting panics the kernel, which also ends the VM.
    eprintln!("husk-init: reboot failed: {err:?}");
    std::process::exit(1)
}
