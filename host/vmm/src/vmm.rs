//! The running VM: vCPU threads, the devices on their buses, guest memory and the VM fd, as
//! the builder left them. [`Vmm::wait`] reports why the guest ended (reset through the i8042,
//! power-off, triple fault, HLT without an irqchip, a vCPU fault with its index and address);
//! [`Vmm::pause`], [`Vmm::resume`] and [`Vmm::stop`] control it; dropping it stops and joins
//! every thread, resets the virtio devices and closes every fd.
//!
//! Owns the VM's lifetime. Must never configure anything (the builder does) and never leave a
//! thread behind.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::Bus;
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::pseudo::boot_timer::{BootTime, BootTimeHandle};
use crate::devices::virtio::transport::mmio::MmioTransport;
use crate::devices::virtio::GuestMemoryMmap;
use crate::vstate::vcpu::{ExitSink, PauseTimeout, RunControl, VcpuFault, VcpuHandle, VcpuStop};
use crate::vstate::vm::Vm;

/// How long [`Vmm::pause`] waits for every vCPU to park.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 command 0xFE, or a KVM reset event): `reboot`.
    Reset,
    /// The guest powered off (KVM system event).
    PowerOff,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault { vcpu: u8 },
    /// A vCPU halted (KVM_EXIT_HLT, only seen without an in-kernel irqchip).
    Halted { vcpu: u8 },
    /// The owner stopped the VM.
    Stopped,
    /// A vCPU failed; the fault names the vCPU and guest address.
    Fault(VcpuFault),
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Reset => write!(f, "reset"),
            Self::PowerOff => write!(f, "power-off"),
            Self::TripleFault { vcpu } => write!(f, "triple fault on vCPU {vcpu}"),
            Self::Halted { vcpu } => write!(f, "vCPU {vcpu} halted"),
            Self::Stopped => write!(f, "stopped"),
            Self::Fault(e) => write!(f, "{e}"),
        }
    }
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("the VM has already ended ({0})")]
    Ended(ExitReason),
    #[error("pausing the VM: {0}")]
    Pause(#[from] PauseTimeout),
}

/// Everything the builder hands over.
pub(crate) struct VmmParts {
    pub vcpus: Vec<VcpuHandle>,
    pub control: Arc<RunControl>,
    pub sink: Arc<ExitSink>,
    pub reset_evt: EventFd,
    pub virtio: Vec<Arc<Mutex<MmioTransport>>>,
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub boot_timer: Option<BootTimeHandle>,
    pub build_started: Instant,
    pub first_run: Arc<OnceLock<Instant>>,
    pub vm: Vm,
    pub mem: GuestMemoryMmap,
}

const EV_RESET: u64 = 1;
const EV_VCPU: u64 = 2;
const EV_WAKE: u64 = 3;

/// A running VM.
pub struct Vmm {
    parts: VmmParts,
    epoll: Epoll,
    /// Written by [`Vmm::waker`]s: ends a [`Vmm::wait_timeout`] early.
    wake: EventFd,
    exit: Option<ExitReason>,
    paused: bool,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.parts.vcpus.len())
            .field("virtio", &self.parts.virtio.len())
            .field("exit", &self.exit)
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

impl Vmm {
    pub(crate) fn new(parts: VmmParts) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            parts.reset_evt.as_raw_fd(),
            EpollEvent::new(EventSet::IN, EV_RESET),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            parts.sink.event().as_raw_fd(),
            EpollEvent::new(EventSet::IN, EV_VCPU),
        )?;
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, EV_WAKE),
        )?;
        Ok(Self {
            parts,
            epoll,
            wake,
            exit: None,
            paused: false,
        })
    }

    /// Blocks until the guest ends; then every vCPU thread has been joined.
    pub fn wait(&mut self) -> ExitReason {
        loop {
            if let Some(r) = self.wait_timeout(Duration::from_secs(3600)) {
                return r;
            }
        }
    }

    /// An eventfd that, written, makes a [`Self::wait_timeout`] in progress (or the next one)
    /// return `None` at once: how another thread gets the attention of the thread that owns
    /// the VM and waits on it.
    pub fn waker(&self) -> std::io::Result<EventFd> {
        self.wake.try_clone()
    }

    /// Like [`Self::wait`], but gives up after `timeout` or when woken through a
    /// [`Self::waker`] (the VM keeps running).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitReason> {
        if let Some(r) = &self.exit {
            return Some(r.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.pending_exit() {
                return Some(self.finish(r));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            let mut events = [EpollEvent::default(); 3];
            match self.epoll.wait(ms, &mut events) {
                Ok(n) => {
                    if events[..n].iter().any(|e| e.data() == EV_WAKE) {
                        let _ = self.wake.read();
                        // An exit that arrived together with the wake-up still wins.
                        return self.pending_exit().map(|r| self.finish(r));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for the VM: epoll failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// A reset request or a vCPU report, if any.
    fn pending_exit(&mut self) -> Option<ExitReason> {
        if self.parts.reset_evt.read().is_ok() {
            return Some(ExitReason::Reset);
        }
        let reports = self.parts.sink.take();
        let (vcpu, why) = reports.into_iter().next()?;
        Some(match why {
            VcpuStop::Halted => ExitReason::Halted { vcpu },
            VcpuStop::TripleFault => ExitReason::TripleFault { vcpu },
            VcpuStop::Reset => ExitReason::Reset,
            VcpuStop::PowerOff => ExitReason::PowerOff,
            VcpuStop::Stopped => ExitReason::Stopped,
            VcpuStop::Fault(f) => ExitReason::Fault(f),
        })
    }

    /// Stops and joins every vCPU, resets the virtio devices, records `reason`.
    fn finish(&mut self, reason: ExitReason) -> ExitReason {
        self.parts.control.request_stop();
        for v in &self.parts.vcpus {
            v.kick();
        }
        for v in self.parts.vcpus.drain(..) {
            v.join();
        }
        for t in &self.parts.virtio {
            t.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
        }
        // Drop reports of vCPUs that stopped because we asked them to.
        let _ = self.parts.sink.take();
        tracing::info!(reason = %reason, "VM ended");
        self.exit = Some(reason.clone());
        reason
    }

    /// Parks every vCPU outside KVM_RUN (guest time stands still).
    pub fn pause(&mut self) -> Result<(), VmmError> {
        if let Some(r) = &self.exit {
            return Err(VmmError::Ended(r.clone()));
        }
        self.parts.control.request_pause();
        for v in &self.parts.vcpus {
            v.kick();
        }
        self.parts.control.wait_parked(PAUSE_TIMEOUT)?;
        self.paused = true;
        tracing::debug!("VM paused");
        Ok(())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&mut self) -> Result<(), VmmError> {
        if let Some(r) = &self.exit {
            return Err(VmmError::Ended(r.clone()));
        }
        self.parts.control.request_run();
        self.paused = false;
        tracing::debug!("VM resumed");
        Ok(())
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Ends the VM now (unless it already ended): stops and joins every vCPU and resets the
    /// devices. Returns the exit reason ([`ExitReason::Stopped`] unless the guest ended first).
    pub fn stop(&mut self) -> ExitReason {
        if let Some(r) = &self.exit {
            return r.clone();
        }
        // A guest exit that raced with us wins.
        let reason = self.pending_exit().unwrap_or(ExitReason::Stopped);
        self.finish(reason)
    }

    /// Guest RAM (shared, memfd-backed).
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.parts.mem
    }

    /// The VM fd.
    pub fn vm(&self) -> &Vm {
        &self.parts.vm
    }

    /// The virtio-mmio transports, in the order the devices were added.
    pub fn virtio_transports(&self) -> &[Arc<Mutex<MmioTransport>>] {
        &self.parts.virtio
    }

    /// The port-IO bus.
    pub fn io_bus(&self) -> &Bus {
        &self.parts.io_bus
    }

    /// The MMIO bus.
    pub fn mmio_bus(&self) -> &Bus {
        &self.parts.mmio_bus
    }

    /// Queues console input for the guest's UART (raising its interrupt when enabled); returns
    /// how many bytes fit in its FIFO.
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        self.parts
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enqueue_input(bytes)
    }

    /// The boot time the guest signalled through the boot timer, if enabled and signalled.
    pub fn boot_time(&self) -> Option<BootTime> {
        self.parts.boot_timer.as_ref().and_then(BootTimeHandle::get)
    }

    /// A handle on the boot timer's measurement that outlives borrows of the VM (other threads
    /// read it while one thread owns and waits on the VM).
    pub fn boot_time_handle(&self) -> Option<BootTimeHandle> {
        self.parts.boot_timer.clone()
    }

    /// When the build of this VM started.
    pub fn build_started(&self) -> Instant {
        self.parts.build_started
    }

    /// Time from the start of the build to the first KVM_RUN of any vCPU.
    pub fn time_to_first_run(&self) -> Option<Duration> {
        self.parts
            .first_run
            .get()
            .map(|t| t.saturating_duration_since(self.parts.build_started))
    }

    /// How many vCPU threads are still running.
    pub fn running_vcpus(&self) -> usize {
        self.parts.vcpus.len()
    }
}

// The owner (the shim, `husk vm`) may hold a running VM on any thread.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Vmm>();
};

impl Drop for Vmm {
    fn drop(&mut self) {
        self.stop();
    }
}
