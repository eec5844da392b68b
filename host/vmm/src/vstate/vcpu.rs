//! vCPUs: creation and boot configuration, one thread per vCPU running the KVM_RUN exit loop
//! (port IO → the port bus, MMIO → the MMIO bus, HLT, shutdown, system events, errors with
//! the vCPU index and guest address), and pause/resume/stop through a shared [`RunControl`]
//! plus a kick signal that sets `immediate_exit` on the target vCPU.
//!
//! Owns the vCPU fds and threads. Must never know what a device does (the buses dispatch) and
//! never decide the VM's fate: each thread reports why it stopped to an [`ExitSink`].

use std::cell::Cell;
use std::os::raw::{c_int, c_void};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_run, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::vm::Vm;
use crate::arch::x86_64::cpuid;
use crate::arch::x86_64::regs::{self, Entry};
use crate::devices::bus::Bus;

/// Offset from `SIGRTMIN` of the signal that kicks a vCPU out of KVM_RUN.
pub const KICK_SIGNAL_OFFSET: c_int = 0;

/// Why a vCPU could not be created or set up.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {vcpu}: KVM_CREATE_VCPU: {source}")]
    Create {
        vcpu: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {vcpu}: KVM_SET_CPUID2: {source}")]
    SetCpuid {
        vcpu: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Cpuid(#[from] cpuid::CpuidError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error("installing the vCPU kick signal handler (SIGRTMIN+{KICK_SIGNAL_OFFSET}): {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("vCPU {vcpu}: spawning its thread: {source}")]
    Spawn {
        vcpu: u8,
        #[source]
        source: std::io::Error,
    },
}

/// What went wrong while a vCPU ran; `rip` is the guest instruction pointer when readable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VcpuFault {
    #[error("vCPU {vcpu}: KVM_RUN failed: {source}")]
    Run {
        vcpu: u8,
        source: vmm_sys_util::errno::Error,
    },
    #[error(
        "vCPU {vcpu}: KVM could not enter the guest (hardware reason {reason:#x}) at rip {}",
        show_rip(*rip)
    )]
    FailEntry {
        vcpu: u8,
        reason: u64,
        rip: Option<u64>,
    },
    #[error("vCPU {vcpu}: KVM internal error (suberror {suberror}{}) at rip {}", if *suberror == 1 { ", emulation failure" } else { "" }, show_rip(*rip))]
    Internal {
        vcpu: u8,
        suberror: u32,
        rip: Option<u64>,
    },
    #[error("vCPU {vcpu}: the guest reported a crash (KVM system event) at rip {}", show_rip(*rip))]
    Crash { vcpu: u8, rip: Option<u64> },
    #[error("vCPU {vcpu}: its thread panicked (a device model failed on it)")]
    Panicked { vcpu: u8 },
    #[error("vCPU {vcpu}: cannot confine its thread with seccomp: {detail}")]
    Seccomp { vcpu: u8, detail: String },
    #[error("vCPU {vcpu}: unsupported KVM exit {reason} at rip {}", show_rip(*rip))]
    Unsupported {
        vcpu: u8,
        reason: u32,
        rip: Option<u64>,
    },
}

/// The guest instruction pointer for messages (`unknown` when the registers were unreadable).
fn show_rip(rip: Option<u64>) -> String {
    rip.map_or_else(|| "unknown".to_string(), |r| format!("{r:#x}"))
}

/// Why a vCPU thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// KVM_EXIT_HLT (only without an in-kernel irqchip; with one, HLT waits in the kernel).
    Halted,
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault,
    /// The guest asked for a reset (KVM system event).
    Reset,
    /// The guest powered off (KVM system event).
    PowerOff,
    /// The owner asked the vCPUs to stop.
    Stopped,
    Fault(VcpuFault),
}

/// Where vCPU threads report why they stopped; `event` becomes readable on each report.
#[derive(Debug)]
pub struct ExitSink {
    reports: Mutex<Vec<(u8, VcpuStop)>>,
    event: EventFd,
}

impl ExitSink {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reports: Mutex::new(Vec::new()),
            event: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Readable when a report is waiting.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    fn report(&self, vcpu: u8, why: VcpuStop) {
        lock(&self.reports).push((vcpu, why));
        if let Err(e) = self.event.write(1) {
            tracing::warn!(vcpu, error = %e, "vCPU exit report: signalling the eventfd failed");
        }
    }

    /// Takes every report so far, in arrival order.
    pub fn take(&self) -> Vec<(u8, VcpuStop)> {
        // Drain the counter; an empty counter is not an error.
        let _ = self.event.read();
        std::mem::take(&mut *lock(&self.reports))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const REQ_RUN: u8 = 0;
const REQ_PAUSE: u8 = 1;
const REQ_STOP: u8 = 2;

#[derive(Debug, Default)]
struct Ctl {
    parked: usize,
    alive: usize,
}

/// What the vCPUs should be doing, shared by the owner and every vCPU thread.
#[derive(Debug, Default)]
pub struct RunControl {
    request: AtomicU8,
    ctl: Mutex<Ctl>,
    cv: Condvar,
}

/// Why pausing did not complete.
#[derive(Debug, thiserror::Error)]
#[error("{parked} of {alive} vCPUs paused within {waited:?}")]
pub struct PauseTimeout {
    pub parked: usize,
    pub alive: usize,
    pub waited: Duration,
}

impl RunControl {
    fn set(&self, req: u8) {
        let _g = lock(&self.ctl);
        self.request.store(req, Ordering::SeqCst);
        self.cv.notify_all();
    }

    /// Asks every vCPU to park; the caller kicks them, then [`Self::wait_parked`].
    pub fn request_pause(&self) {
        self.set(REQ_PAUSE);
    }

    /// Lets parked vCPUs run again.
    pub fn request_run(&self) {
        self.set(REQ_RUN);
    }

    /// Asks every vCPU to end its thread; the caller kicks them and joins.
    pub fn request_stop(&self) {
        self.set(REQ_STOP);
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.request.load(Ordering::SeqCst) == REQ_STOP
    }

    /// Waits until every live vCPU is parked.
    pub fn wait_parked(&self, timeout: Duration) -> Result<(), PauseTimeout> {
        let start = Instant::now();
        let mut g = lock(&self.ctl);
        while g.parked < g.alive {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(PauseTimeout {
                    parked: g.parked,
                    alive: g.alive,
                    waited: timeout,
                });
            }
            g = self
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Called by a vCPU thread between runs: parks while paused; true when it must stop.
    fn checkpoint(&self) -> bool {
        match self.request.load(Ordering::SeqCst) {
            REQ_RUN => return false,
            REQ_STOP => return true,
            _ => {}
        }
        let mut g = lock(&self.ctl);
        if self.request.load(Ordering::SeqCst) == REQ_PAUSE {
            g.parked += 1;
            self.cv.notify_all();
            while self.request.load(Ordering::SeqCst) == REQ_PAUSE {
                g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            g.parked -= 1;
        }
        self.request.load(Ordering::SeqCst) == REQ_STOP
    }

    fn enter(&self) {
        lock(&self.ctl).alive += 1;
    }

    fn leave(&self) {
        lock(&self.ctl).alive -= 1;
        self.cv.notify_all();
    }
}

thread_local! {
    /// This thread's `kvm_run`, for the kick handler; null outside the run loop.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(null_mut()) };
}

extern "C" fn handle_kick(_: c_int, _: *mut libc::siginfo_t, _: *mut c_void) {
    let _ = KVM_RUN.try_with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's live kvm_run mapping (set by the run loop
            // before the first KVM_RUN, cleared before the vCPU fd is dropped); a volatile
            // byte store is what KVM expects for immediate_exit.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// The kick signal number.
pub fn kick_signal() -> c_int {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

/// Installs the process-wide kick handler once.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALLED: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    (*INSTALLED.get_or_init(|| register_signal_handler(kick_signal(), handle_kick)))
        .map_err(VcpuError::Signal)
}

/// One vCPU, before its thread starts.
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
}

/// What one exit asks the loop to do.
enum Step {
    Continue,
    Stop(VcpuStop),
    Internal,
    FailEntry(u64),
    Unsupported(u32),
    Crash,
}

impl Vcpu {
    /// `KVM_CREATE_VCPU` for vCPU `index`.
    pub fn new(
        vm: &Vm,
        index: u8,
        io_bus: Arc<Bus>,
        mmio_bus: Arc<Bus>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create {
                vcpu: index,
                source,
            })?;
        Ok(Self {
            index,
            fd,
            io_bus,
            mmio_bus,
        })
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    /// The vCPU fd (register access before the thread starts).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// CPUID (filtered from `supported` for this vCPU of `count`), registers for `entry`, and
    /// the LAPIC's LINT pins when the VM has an irqchip.
    pub fn configure(
        &self,
        supported: &CpuId,
        count: u8,
        entry: &Entry,
        irqchip: bool,
    ) -> Result<(), VcpuError> {
        let cpuid = cpuid::vcpu_cpuid(supported, self.index, count)?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|source| VcpuError::SetCpuid {
                vcpu: self.index,
                source,
            })?;
        regs::setup_vcpu_regs(&self.fd, self.index, entry)?;
        if irqchip {
            regs::setup_lint(&self.fd, self.index)?;
        }
        Ok(())
    }

    /// Starts the vCPU's thread. `first_run` is set when any vCPU first enters KVM_RUN.
    /// `filter` (if any) confines the thread before it first enters the guest.
    pub fn start(
        self,
        control: Arc<RunControl>,
        sink: Arc<ExitSink>,
        first_run: Arc<OnceLock<Instant>>,
        filter: Option<crate::seccomp::Filter>,
    ) -> Result<VcpuHandle, VcpuError> {
        install_kick_handler()?;
        let index = self.index;
        control.enter();
        let ctl = control.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("husk-vcpu{index}"))
            .spawn(move || {
                // Declared before the vCPU so it drops after it, also when a device panics on
                // this thread: the owner always hears why the thread ended.
                let mut guard = ThreadGuard {
                    index,
                    control: ctl,
                    sink,
                    why: None,
                };
                let mut this = self;
                let confined = match &filter {
                    Some(f) => f.install().map_err(|e| {
                        VcpuStop::Fault(VcpuFault::Seccomp {
                            vcpu: index,
                            detail: e.to_string(),
                        })
                    }),
                    None => Ok(()),
                };
                let why = match confined {
                    Ok(()) => this.run_loop(&guard.control, &first_run),
                    Err(why) => why,
                };
                match &why {
                    VcpuStop::Stopped => tracing::debug!(vcpu = index, "vCPU stopped"),
                    VcpuStop::Fault(f) => tracing::warn!(vcpu = index, "{f}"),
                    other => tracing::info!(vcpu = index, reason = ?other, "vCPU exited"),
                }
                guard.why = Some(why);
                // Drop the fd (and its kvm_run mapping) before telling anyone.
                drop(this);
            });
        match spawned {
            Ok(thread) => Ok(VcpuHandle { index, thread }),
            Err(source) => {
                control.leave();
                Err(VcpuError::Spawn {
                    vcpu: index,
                    source,
                })
            }
        }
    }

    fn rip(&self) -> Option<u64> {
        self.fd.get_regs().ok().map(|r| r.rip)
    }

    fn run_loop(&mut self, control: &RunControl, first_run: &OnceLock<Instant>) -> VcpuStop {
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|p| p.set(run_ptr));
        // Forgets the pointer on every way out of here (a panic included), before the fd goes.
        let _forget = ForgetKvmRun;
        loop {
            // Clear any kick first, then look at the request: a request made after this point
            // comes with a kick that makes the next KVM_RUN return at once.
            self.fd.set_kvm_immediate_exit(0);
            if control.checkpoint() {
                break VcpuStop::Stopped;
            }
            first_run.get_or_init(Instant::now);
            let step = match self.fd.run() {
                Ok(exit) => dispatch(self.index, &self.io_bus, &self.mmio_bus, exit),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Continue,
                Err(source) => Step::Stop(VcpuStop::Fault(VcpuFault::Run {
                    vcpu: self.index,
                    source,
                })),
            };
            let vcpu = self.index;
            match step {
                Step::Continue => {}
                Step::Stop(why) => break why,
                Step::Internal => {
                    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // active member of the exit union.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    break VcpuStop::Fault(VcpuFault::Internal {
                        vcpu,
                        suberror,
                        rip: self.rip(),
                    });
                }
                Step::FailEntry(reason) => {
                    break VcpuStop::Fault(VcpuFault::FailEntry {
                        vcpu,
                        reason,
                        rip: self.rip(),
                    })
                }
                Step::Unsupported(reason) => {
                    break VcpuStop::Fault(VcpuFault::Unsupported {
                        vcpu,
                        reason,
                        rip: self.rip(),
                    })
                }
                Step::Crash => {
                    break VcpuStop::Fault(VcpuFault::Crash {
                        vcpu,
                        rip: self.rip(),
                    })
                }
            }
        }
    }
}

/// Handles one exit on the buses; anything else is returned to the loop.
fn dispatch(vcpu: u8, io_bus: &Bus, mmio_bus: &Bus, exit: VcpuExit<'_>) -> Step {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !io_bus.read(u64::from(port), data) {
                tracing::trace!(vcpu, port, len = data.len(), "unclaimed port read");
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !io_bus.write(u64::from(port), data) {
                tracing::trace!(vcpu, port, len = data.len(), "unclaimed port write");
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio_bus.read(addr, data) {
                tracing::debug!(vcpu, addr, len = data.len(), "unclaimed MMIO read");
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio_bus.write(addr, data) {
                tracing::debug!(vcpu, addr, len = data.len(), "unclaimed MMIO write");
            }
        }
        VcpuExit::Hlt => return Step::Stop(VcpuStop::Halted),
        VcpuExit::Shutdown => return Step::Stop(VcpuStop::TripleFault),
        VcpuExit::SystemEvent(kind, _) => {
            return match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Step::Stop(VcpuStop::PowerOff),
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => Step::Stop(VcpuStop::Reset),
                kvm_bindings::KVM_SYSTEM_EVENT_CRASH => Step::Crash,
                other => {
                    tracing::warn!(vcpu, kind = other, "ignored KVM system event");
                    Step::Continue
                }
            }
        }
        VcpuExit::Intr => {}
        VcpuExit::InternalError => return Step::Internal,
        VcpuExit::FailEntry(reason, _cpu) => return Step::FailEntry(reason),
        VcpuExit::Unsupported(reason) => return Step::Unsupported(reason),
        other => {
            tracing::warn!(vcpu, exit = ?other, "unexpected KVM exit");
            return Step::Unsupported(u32::MAX);
        }
    }
    Step::Continue
}

/// Clears this thread's `kvm_run` pointer for the kick handler when dropped.
struct ForgetKvmRun;

impl Drop for ForgetKvmRun {
    fn drop(&mut self) {
        let _ = KVM_RUN.try_with(|p| p.set(null_mut()));
    }
}

/// Leaves the [`RunControl`] and reports to the [`ExitSink`] when a vCPU thread ends, with
/// [`VcpuFault::Panicked`] if it ends by a panic.
struct ThreadGuard {
    index: u8,
    control: Arc<RunControl>,
    sink: Arc<ExitSink>,
    why: Option<VcpuStop>,
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        let why = self.why.take().unwrap_or_else(|| {
            tracing::error!(vcpu = self.index, "vCPU thread panicked");
            VcpuStop::Fault(VcpuFault::Panicked { vcpu: self.index })
        });
        self.control.leave();
        self.sink.report(self.index, why);
    }
}

/// A running vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    index: u8,
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Interrupts KVM_RUN on this vCPU so it looks at the [`RunControl`] again.
    pub fn kick(&self) {
        if self.thread.is_finished() {
            return;
        }
        if let Err(e) = self.thread.kill(kick_signal()) {
            tracing::debug!(vcpu = self.index, error = %e, "kicking the vCPU");
        }
    }

    /// Waits for the thread to end.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!(vcpu = self.index, "vCPU thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_name_the_vcpu_and_the_guest_address() {
        let f = VcpuFault::Internal {
            vcpu: 3,
            suberror: 1,
            rip: Some(0xffff_ffff_8100_0000),
        };
        let s = f.to_string();
        assert!(
            s.contains("vCPU 3") && s.contains("emulation failure"),
            "{s}"
        );
        assert!(s.contains("0xffffffff81000000"), "{s}");
        let s = VcpuFault::FailEntry {
            vcpu: 0,
            reason: 0x21,
            rip: None,
        }
        .to_string();
        assert!(
            s.contains("vCPU 0") && s.contains("0x21") && s.ends_with("at rip unknown"),
            "{s}"
        );
    }

    #[test]
    fn parked_vcpus_are_counted_and_released() {
        let c = Arc::new(RunControl::default());
        c.enter();
        assert!(!c.checkpoint(), "running: carry on");
        c.request_pause();
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.checkpoint());
        c.wait_parked(Duration::from_secs(5)).unwrap();
        c.request_run();
        assert!(!t.join().unwrap(), "resumed, not stopped");
        c.request_pause();
        let c3 = c.clone();
        let t = std::thread::spawn(move || c3.checkpoint());
        c.wait_parked(Duration::from_secs(5)).unwrap();
        c.request_stop();
        assert!(t.join().unwrap(), "a parked vCPU sees the stop");
        c.leave();
        c.wait_parked(Duration::from_millis(1)).unwrap();
    }

    #[test]
    fn pausing_times_out_when_a_vcpu_never_parks() {
        let c = RunControl::default();
        c.enter();
        c.request_pause();
        let e = c.wait_parked(Duration::from_millis(20)).unwrap_err();
        assert_eq!((e.parked, e.alive), (0, 1));
    }
}
