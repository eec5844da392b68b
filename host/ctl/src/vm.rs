//! `husk vm boot`: boot one VM, wait for husk-init's readiness, print the boot report and shut
//! the VM down cleanly.
//!
//! Owns turning [`BootArgs`] over husk's configuration into a VM configuration and presenting the result. Must never
//! leave the VM running: the [`husk_hypervisor::Vm`] is dropped (killed, reaped, cleaned) on
//! every path.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use husk_hypervisor::{
    artifacts, BackendChoice, BootReport, ExitReport, HostPaths, Hypervisor, VmConfig,
};
use serde::Serialize;

use crate::table::{ms, Table};
use crate::BootArgs;

/// How long a guest gets to leave after a shutdown request.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// A boot's settings: the arguments over husk's configuration.
#[derive(Debug)]
pub struct Resolved {
    pub vm: VmConfig,
    pub backend: BackendChoice,
    /// How long to wait for the guest, and for the agent.
    pub timeout: Duration,
    /// Where running sandboxes are recorded (`runtime.state_dir`).
    pub state_dir: std::path::PathBuf,
}

/// Resolves these arguments against husk's configuration (`--config`, `$HUSK_CONFIG`,
/// `/etc/husk/config.toml` and its drop-ins).
pub fn resolve(args: &BootArgs) -> anyhow::Result<Resolved> {
    let config = husk_config::Config::load(args.config.as_deref())?;
    Ok(resolve_with(args, &config))
}

/// As [`resolve`], with a loaded configuration.
pub fn resolve_with(args: &BootArgs, config: &husk_config::Config) -> Resolved {
    let hv = &config.hypervisor;
    let image = match (&args.image, args.debug) {
        (Some(image), _) => image.clone(),
        (None, true) => artifacts::image("debug"),
        (None, false) => hv.image.clone(),
    };
    let mut vm = VmConfig::new(
        args.kernel.clone().unwrap_or_else(|| hv.kernel.clone()),
        image,
    );
    vm.memory_mib = args.memory.unwrap_or(hv.memory_mib);
    vm.vcpus = args.vcpus.unwrap_or(hv.vcpus);
    vm.extra_cmdline = config.kernel_params();
    vm.extra_cmdline.extend(args.append.iter().cloned());
    vm.run_root = config.runtime.run_root.clone();
    vm.log_root = config.runtime.log_root.clone();
    Resolved {
        vm,
        backend: args.backend.unwrap_or(hv.backend.into()),
        timeout: Duration::from_secs(args.timeout.unwrap_or(config.agent.ready_timeout_secs)),
        state_dir: config.runtime.state_dir.clone(),
    }
}

/// The hypervisor for a resolved boot.
pub fn hypervisor(r: &Resolved) -> anyhow::Result<Box<dyn Hypervisor>> {
    Ok(husk_hypervisor::for_host(r.backend, &HostPaths::system())?)
}

/// The agent's answer and when it came.
pub struct AgentReady {
    /// Launch → handshake done and health check serving.
    pub ready: Duration,
    pub handshake: husk_protocols::agent::HandshakeResponse,
}

/// Connects to the agent, handshakes and checks its health.
pub fn agent_ready(vm: &husk_hypervisor::Vm, timeout: Duration) -> anyhow::Result<AgentReady> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = husk_agent_client::AgentClient::connect(vm.vsock_path(), timeout)
            .await
            .context("connecting to the guest agent")?;
        client
            .check()
            .await
            .context("checking the agent's health")?;
        Ok(AgentReady {
            ready: vm.launched_at().elapsed(),
            handshake: client.handshake().clone(),
        })
    })
}

#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    id: &'a str,
    backend: String,
    first_serial_ms: Option<f64>,
    ready_ms: f64,
    guest_uptime_ms: f64,
    /// VM build → husk-init's boot-timer write (builtin back end only).
    boot_timer_ms: Option<f64>,
    build_id: &'a str,
    flavour: &'a str,
    init_version: &'a str,
    kernel_release: &'a str,
    protocol: &'a str,
    services: &'a [String],
    entropy_seeded: bool,
    agent_ready_ms: f64,
    agent_version: &'a str,
    agent_protocol: String,
    agent_capabilities: &'a [String],
    shutdown_ms: f64,
    exit_status: &'a str,
    logs: String,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn boot(args: &BootArgs, json: bool) -> anyhow::Result<ExitCode> {
    let resolved = resolve(args)?;
    let hv = hypervisor(&resolved)?;
    let mut vm = hv.boot(&resolved.vm).context("booting the VM")?;
    let report: BootReport = vm
        .wait_ready(resolved.timeout)
        .context("waiting for the guest")?;
    let agent = agent_ready(&vm, resolved.timeout)?;
    let exit: ExitReport = vm
        .shutdown(SHUTDOWN_TIMEOUT)
        .context("shutting the VM down")?;
    let logs = vm.log_dir().display().to_string();
    if json {
        let j = JsonReport {
            id: vm.id(),
            backend: hv.describe(),
            first_serial_ms: report.first_serial.map(millis),
            ready_ms: millis(report.ready),
            guest_uptime_ms: millis(report.guest_uptime),
            boot_timer_ms: report.boot_timer.map(millis),
            build_id: &report.init.build_id,
            flavour: &report.init.flavour,
            init_version: &report.init.init_version,
            kernel_release: &report.init.kernel_release,
            protocol: &report.init.protocol,
            services: &report.init.services,
            entropy_seeded: report.init.entropy_seeded,
            agent_ready_ms: millis(agent.ready),
            agent_version: &agent.handshake.agent_version,
            agent_protocol: format!("{}.{}", agent.handshake.protocol, agent.handshake.minor),
            agent_capabilities: &agent.handshake.capabilities,
            shutdown_ms: millis(exit.took),
            exit_status: &exit.status,
            logs,
        };
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        let mut t = Table::default();
        t.row("back end", hv.describe())
            .row(
                "launch → first serial byte",
                report
                    .first_serial
                    .map(ms)
                    .unwrap_or_else(|| "no serial output".into()),
            )
            .row("launch → init ready", ms(report.ready))
            .row("guest uptime at ready", ms(report.guest_uptime))
            .row(
                "boot timer (VM build → init)",
                report
                    .boot_timer
                    .map(ms)
                    .unwrap_or_else(|| "none (the builtin VMM has one; QEMU has not)".into()),
            )
            .row("launch → agent ready", ms(agent.ready))
            .row(
                "agent",
                format!(
                    "husk-agent {} ({}.{}; {})",
                    agent.handshake.agent_version,
                    agent.handshake.protocol,
                    agent.handshake.minor,
                    agent.handshake.capabilities.join(", ")
                ),
            )
            .row("build id", &report.init.build_id)
            .row(
                "image",
                format!(
                    "{} (husk-init {}, {})",
                    report.init.flavour, report.init.init_version, report.init.protocol
                ),
            )
            .row("guest kernel", &report.init.kernel_release)
            .row(
                "services",
                if report.init.services.is_empty() {
                    "none".into()
                } else {
                    report.init.services.join(", ")
                },
            )
            .row(
                "entropy seeded",
                if report.init.entropy_seeded {
                    "yes (virtio-rng)"
                } else {
                    "no"
                },
            )
            .row("shutdown", format!("{} ({})", ms(exit.took), exit.status))
            .row("logs", logs);
        print!("VM {} booted and shut down\n{}", vm.id(), t.render());
    }
    Ok(ExitCode::SUCCESS)
}
