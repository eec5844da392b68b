//! A pod's VM: booted from husk's configuration with the container's rootfs shared into it and
//! its NICs joined to the pod's network namespace, held by a keeper thread for as long as the pod lives, and the connected guest agent.
//!
//! Owns the VM's life. Must never let the VM outlive the shim (its processes die with the
//! keeper thread, PR_SET_PDEATHSIG) nor boot on a thread that may exit while it runs (tokio's
//! blocking threads do, so the keeper is a plain thread of its own).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use husk_agent_client::AgentClient;
use husk_config::Config;
use tracing::Instrument;

use crate::network::{self, PodNetwork};
use husk_hypervisor::config::{NetDevice, Share};
use husk_hypervisor::{HostPaths, VmConfig};
use husk_trace::HostTracing;

/// virtio-fs tag of the pod's share, which holds every container's rootfs (`<id>/rootfs`).
pub const POD_TAG: &str = "pod";
/// How long the guest's last spans may take to arrive once the VM has gone.
const TRACE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the VM gets to shut down before it is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running pod VM and its agent.
pub struct Pod {
    pub agent: AgentClient,
    pub vsock: PathBuf,
    pub id: String,
    /// The pids of the VM's host processes (hypervisor, device back ends); none when the VM
    /// runs in this process (the builtin VMM).
    pub vm_pids: Vec<u32>,
    /// Readable once the VM has ended.
    vm_exit: std::os::fd::OwnedFd,
    /// The VM's serial console log.
    pub serial_log: PathBuf,
    /// The host directory shared into the VM as [`POD_TAG`].
    pub shared: PathBuf,
    /// The pod's network attachment, undone at shutdown.
    network: Option<network::Record>,
    /// Tells the keeper to shut the VM down, under the span that asks.
    stop: std::sync::Mutex<Option<mpsc::Sender<tracing::Span>>>,
    /// Receives the guest's spans (tracing on) until the VM has gone.
    traces: std::sync::Mutex<Option<husk_trace::GuestReceiver>>,
    keeper: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The pod's record in the state directory (`husk ps`, `husk exec`), removed at shutdown.
    record: std::sync::Mutex<Option<husk_state::Registered>>,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What the keeper thread reports once the guest is up.
struct Booted {
    id: String,
    serial_log: PathBuf,
    vsock: PathBuf,
    pids: Vec<u32>,
    exit: std::os::fd::OwnedFd,
    traces: Option<husk_trace::GuestReceiver>,
}

impl Pod {
    /// Boots a VM sharing `shared` (made a shared mount here) as [`POD_TAG`], attached to the
    /// network namespace `netns` when the spec names one, waits for its init, connects to its
    /// agent and makes the sandbox `sandbox_id`.
    pub async fn boot(
        config: &Config,
        shared: &Path,
        sandbox_id: &str,
        netns: Option<&Path>,
    ) -> anyhow::Result<Self> {
        crate::rootfs::make_shared_dir(shared)?;
        let booted = Self::attach_and_boot(config, shared, sandbox_id, netns).await;
        if booted.is_err() {
            crate::rootfs::unmount(shared);
            crate::rootfs::remove_unmounted(shared);
        }
        booted
    }

    /// Attaches the pod's network (recorded in the bundle for `delete`), then boots; a failed
    /// boot detaches it again.
    async fn attach_and_boot(
        config: &Config,
        shared: &Path,
        sandbox_id: &str,
        netns: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let net = match netns {
            Some(ns) => network::attach(ns).await?,
            None => None,
        };
        let record = net.as_ref().map(|n| n.record.clone());
        let bundle = shared.parent().unwrap_or(shared);
        let booted = async {
            if let Some(r) = &record {
                network::save(bundle, r)?;
            }
            Self::boot_on(config, shared, sandbox_id, net).await
        }
        .await;
        if let (Err(_), Some(r)) = (&booted, &record) {
            network::forget(bundle, r).await;
        }
        booted
    }

    async fn boot_on(
        config: &Config,
        shared: &Path,
        sandbox_id: &str,
        net: Option<PodNetwork>,
    ) -> anyhow::Result<Self> {
        let span = tracing::info_span!(
            "pod.boot",
            otel.name = "vm boot",
            sandbox.id = sandbox_id,
            vm.backend = config.hypervisor.backend.name(),
            vm.image = %config.hypervisor.image.display(),
        );
        Self::boot_traced(config, shared, sandbox_id, net)
            .instrument(span)
            .await
    }

    async fn boot_traced(
        config: &Config,
        shared: &Path,
        sandbox_id: &str,
        net: Option<PodNetwork>,
    ) -> anyhow::Result<Self> {
        let hv = husk_hypervisor::for_host(config.hypervisor.backend.into(), &HostPaths::system())
            .context("choosing the hypervisor")?;
        let mut cfg = VmConfig::new(&config.hypervisor.kernel, &config.hypervisor.image);
        cfg.memory_mib = config.hypervisor.memory_mib;
        cfg.vcpus = config.hypervisor.vcpus;
        cfg.extra_cmdline = config.kernel_params();
        let sink = crate::telemetry::get().map(HostTracing::sink);
        cfg.trace = sink.is_some();
        // husk-init's spans join this trace.
        cfg.traceparent = husk_telemetry::propagation::current_traceparent();
        cfg.run_root = config.runtime.run_root.clone();
        cfg.log_root = config.runtime.log_root.clone();
        cfg.shares.push(Share {
            tag: POD_TAG.into(),
            host_dir: shared.to_owned(),
            // Writable for volumes; rootfs directories are only an overlay's lower layer.
            read_only: false,
        });
        if let Some(net) = &net {
            cfg.nics = net
                .taps
                .iter()
                .zip(&net.record.joined)
                .map(|(tap, j)| NetDevice {
                    tap: tap.clone(),
                    mac: j.mac.clone(),
                })
                .collect();
        }
        let ready_timeout = config.agent.ready_timeout();
        let (booted_tx, booted_rx) = tokio::sync::oneshot::channel::<anyhow::Result<Booted>>();
        let (stop_tx, stop_rx) = mpsc::channel::<tracing::Span>();
        let boot_span = tracing::Span::current();
        let keeper = std::thread::Builder::new()
            .name("vm-keeper".into())
            .spawn(move || {
                let entered = boot_span.enter();
                let mut vm = match hv.boot(&cfg).context("booting the pod VM") {
                    Ok(vm) => vm,
                    Err(e) => {
                        let _ = booted_tx.send(Err(e));
                        return;
                    }
                };
                let report = match vm.wait_ready(ready_timeout) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = booted_tx
                            .send(Err(anyhow::Error::new(e).context("waiting for the guest")));
                        return;
                    }
                };
                let traces = husk_trace::receive_guest_spans(
                    vm.take_trace_listener(),
                    report.clock_offset_ns,
                    sink,
                );
                let exit = match vm.exit_watch() {
                    Ok(fd) => fd,
                    Err(e) => {
                        let _ = booted_tx.send(Err(e.into()));
                        return;
                    }
                };
                let booted = Booted {
                    id: cfg.id.clone(),
                    serial_log: cfg.log_dir().join("serial.log"),
                    vsock: vm.vsock_path().to_owned(),
                    pids: vm.pids(),
                    exit,
                    traces,
                };
                // The boot is over: its span ends here, not with the VM (a span held open would
                // hold its parents, the Task API call, open too).
                drop(entered);
                drop(boot_span);
                if booted_tx.send(Ok(booted)).is_err() {
                    return;
                }
                // Held until the pod ends (or the shim dies, and the VM with it).
                let asker = stop_rx.recv().unwrap_or_else(|_| tracing::Span::none());
                let _asked = asker.enter();
                if let Err(e) = vm.shutdown(SHUTDOWN_TIMEOUT) {
                    tracing::warn!(error = %e, "the pod VM did not shut down cleanly");
                }
            })
            .context("starting the VM keeper thread")?;
        let mut booted = booted_rx.await.context("the VM keeper thread ended")??;
        let traces = booted.traces.take();
        let agent = AgentClient::connect(&booted.vsock, config.agent.dial_timeout())
            .instrument(tracing::info_span!(
                "agent.connect",
                otel.name = "agent connect"
            ))
            .await
            .context("connecting to the guest agent")?;
        let (interfaces, routes) = net
            .as_ref()
            .map(|n| (n.interfaces.clone(), n.routes.clone()))
            .unwrap_or_default();
        agent
            .create_sandbox_on(sandbox_id, "", &[], &interfaces, &routes)
            .await
            .context("creating the sandbox in the guest")?;
        tracing::info!(vm = %booted.id, sandbox = sandbox_id, "pod VM ready");
        let record = husk_state::register(
            &config.runtime.state_dir,
            &husk_state::Record {
                id: sandbox_id.to_owned(),
                name: sandbox_id.to_owned(),
                image: "(containerd pod)".into(),
                command: Vec::new(),
                pid: std::process::id(),
                created: husk_state::epoch_secs(),
                backend: config.hypervisor.backend.name().to_owned(),
                origin: husk_state::Origin::Shim,
                vsock: Some(booted.vsock.clone()),
                console: husk_state::console_enabled(
                    &config.hypervisor.image,
                    &config.kernel_params(),
                ),
                guest_image: config.hypervisor.image.clone(),
                containers: Vec::new(),
            },
        )
        .map_err(|e| tracing::warn!(error = %e, "the pod is not in the state directory"))
        .ok();
        Ok(Self {
            agent,
            vsock: booted.vsock,
            id: booted.id,
            vm_pids: booted.pids,
            vm_exit: booted.exit,
            serial_log: booted.serial_log,
            shared: shared.to_owned(),
            network: net.map(|n| n.record),
            stop: std::sync::Mutex::new(Some(stop_tx)),
            traces: std::sync::Mutex::new(traces),
            keeper: std::sync::Mutex::new(Some(keeper)),
            record: std::sync::Mutex::new(record),
        })
    }

    /// The last `n` lines of the VM's serial console (for logs when the guest fails).
    pub fn serial_tail(&self, n: usize) -> Vec<String> {
        let text = std::fs::read_to_string(&self.serial_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| (*l).to_owned())
            .collect()
    }

    /// Whether the VM still runs.
    pub fn vm_running(&self) -> bool {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            self.vm_exit.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        !matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// Resolves when the VM has ended (its exit descriptor becomes readable), at once if it
    /// cannot be watched.
    pub async fn vm_exited(&self) {
        let fd = match self.vm_exit.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the VM");
                return;
            }
        };
        // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which alone closes it.
        match unsafe { tokio::io::unix::AsyncFd::register(fd) } {
            Ok(afd) => {
                let _ = afd.readable().await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the VM"),
        }
    }

    /// Adds (`present`) or removes a container id in the pod's record.
    pub fn note_container(&self, id: &str, present: bool) {
        if let Some(r) = self
            .record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let updated = r.update(|rec| {
                rec.containers.retain(|c| c != id);
                if present {
                    rec.containers.push(id.to_owned());
                }
            });
            if let Err(e) = updated {
                tracing::warn!(error = %e, "updating the pod's record");
            }
        }
    }

    /// Shuts the VM down and waits for it (its run directory removed), then for the guest's
    /// last spans; a second call waits for nothing.
    pub async fn shutdown(&self) {
        // Not reachable any more from here on.
        drop(self.record.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(stop) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = stop.send(tracing::Span::current());
        }
        let keeper = self.keeper.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(keeper) = keeper {
            let _ = tokio::task::spawn_blocking(move || keeper.join()).await;
            if let Some(record) = &self.network {
                network::forget(self.shared.parent().unwrap_or(&self.shared), record).await;
            }
            crate::rootfs::unmount(&self.shared);
            crate::rootfs::remove_unmounted(&self.shared);
        }
        // The VM is gone: its tracer's connection has ended, after its last spans.
        let traces = self.traces.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(traces) = traces {
            let stats =
                tokio::task::spawn_blocking(move || traces.finish(TRACE_DRAIN_TIMEOUT)).await;
            if let Ok(stats) = stats {
                tracing::debug!(?stats, "guest spans received");
            }
        }
    }
}
