//! The builtin VMM's running VM as a [`Machine`]: one monitor thread owns the
//! [`husk_vmm::vmm::Vmm`] and waits on it (like Firecracker's VMM thread); the rest of husk talks
//! to that thread through commands, a waker and an exit eventfd.
//!
//! Owns the monitor thread and the virtiofsd processes of the VM. Must never block the caller
//! for longer than a command takes: pause/resume wait for the VMM's answer with a bound, kill
//! joins the monitor (which joins every vCPU and device thread).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use husk_vmm::devices::pseudo::boot_timer::BootTimeHandle;
use husk_vmm::vmm::{ExitReason, Vmm};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::EventFd;

use crate::error::VmError;
use crate::process::ChildProcess;
use crate::vm::Machine;

/// How long a pause or resume may take before it is reported as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// What the monitor thread is asked to do.
enum Command {
    Pause(mpsc::Sender<Result<(), String>>),
    Resume(mpsc::Sender<Result<(), String>>),
    /// Queue console input; answers how many bytes the UART took.
    Serial(Vec<u8>, mpsc::Sender<usize>),
    Stop,
}

/// What the monitor thread shares with the machine.
#[derive(Debug, Default)]
struct Shared {
    exit: Mutex<Option<ExitReason>>,
}

/// Sends commands to the monitor thread.
#[derive(Debug, Clone)]
struct Remote {
    tx: mpsc::Sender<Command>,
    waker: Arc<EventFd>,
}

impl Remote {
    fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).is_ok() && self.waker.write(1).is_ok()
    }

    fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = mpsc::channel();
        if !self.send(make(tx)) {
            return None;
        }
        rx.recv_timeout(COMMAND_TIMEOUT).ok()
    }
}

/// A VM run by the builtin VMM in this process.
pub struct BuiltinMachine {
    remote: Remote,
    shared: Arc<Shared>,
    exit_evt: EventFd,
    boot_timer: Option<BootTimeHandle>,
    monitor: Option<JoinHandle<()>>,
    virtiofsd: Vec<ChildProcess>,
}

impl std::fmt::Debug for BuiltinMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinMachine")
            .field("exit", &self.shared.exit)
            .field("virtiofsd", &self.virtiofsd.len())
            .finish_non_exhaustive()
    }
}

impl BuiltinMachine {
    /// Hands `vmm` to a new monitor thread.
    pub fn start(vmm: Vmm, virtiofsd: Vec<ChildProcess>) -> Result<Self, VmError> {
        let io = |what: &'static str| move |e: std::io::Error| VmError::io(what)(e);
        let waker = Arc::new(vmm.waker().map_err(io("the VMM's waker"))?);
        let exit_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io("the VM's exit eventfd"))?;
        let signal = exit_evt.try_clone().map_err(io("the VM's exit eventfd"))?;
        let boot_timer = vmm.boot_time_handle();
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let monitor_shared = shared.clone();
        let monitor = std::thread::Builder::new()
            .name("husk-vmm".into())
            .spawn(move || monitor(vmm, &rx, &monitor_shared, &signal))
            .map_err(io("starting the VMM monitor thread"))?;
        Ok(Self {
            remote: Remote { tx, waker },
            shared,
            exit_evt,
            boot_timer,
            monitor: Some(monitor),
            virtiofsd,
        })
    }

    /// A writer that types into the guest's serial console.
    pub fn console(&self) -> Box<dyn std::io::Write + Send> {
        Box::new(Console(self.remote.clone()))
    }
}

/// The monitor thread: waits on the VM, serves commands, publishes the exit.
fn monitor(mut vmm: Vmm, rx: &mpsc::Receiver<Command>, shared: &Shared, exit_evt: &EventFd) {
    let reason = loop {
        if let Some(r) = vmm.wait_timeout(Duration::from_secs(3600)) {
            break r;
        }
        let mut stop = false;
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Pause(reply) => {
                    let _ = reply.send(vmm.pause().map_err(|e| e.to_string()));
                }
                Command::Resume(reply) => {
                    let _ = reply.send(vmm.resume().map_err(|e| e.to_string()));
                }
                Command::Serial(bytes, reply) => {
                    let _ = reply.send(vmm.serial_input(&bytes));
                }
                Command::Stop => stop = true,
            }
        }
        if stop {
            break vmm.stop();
        }
    };
    // Every vCPU and device thread is joined by now; dropping the VMM frees memory and fds.
    drop(vmm);
    *shared.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    let _ = exit_evt.write(1);
}

/// Console input for the UART: its FIFO takes what fits, the rest is offered again.
struct Console(Remote);

impl std::io::Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for _ in 0..200 {
            match self.0.ask(|tx| Command::Serial(buf.to_vec(), tx)) {
                Some(0) => std::thread::sleep(Duration::from_millis(5)),
                Some(n) => return Ok(n),
                None => return Err(std::io::ErrorKind::BrokenPipe.into()),
            }
        }
        Err(std::io::ErrorKind::TimedOut.into())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Machine for BuiltinMachine {
    fn exit_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the eventfd is owned by `self` and outlives the borrow, which is tied to
        // `self`'s lifetime.
        unsafe { BorrowedFd::borrow_raw(self.exit_evt.as_raw_fd()) }
    }

    fn try_exit(&mut self) -> Option<String> {
        self.shared
            .exit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| format!("the VM ended: {r}"))
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<String> {
        let mut fds = [PollFd::new(self.exit_fd(), PollFlags::POLLIN)];
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX),
        );
        let exit = self.try_exit();
        if exit.is_some() {
            if let Some(m) = self.monitor.take() {
                let _ = m.join();
            }
        }
        exit
    }

    fn pause(&mut self) -> Result<(), VmError> {
        self.command("pause", Command::Pause)
    }

    fn resume(&mut self) -> Result<(), VmError> {
        self.command("resume", Command::Resume)
    }

    fn kill(&mut self) {
        if let Some(m) = self.monitor.take() {
            self.remote.send(Command::Stop);
            let _ = m.join();
        }
        for d in &mut self.virtiofsd {
            d.kill();
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.virtiofsd.iter().map(ChildProcess::pid).collect()
    }

    fn diagnostics(&self) -> Option<String> {
        None
    }

    fn boot_timer(&self) -> Option<Duration> {
        self.boot_timer.as_ref()?.get().map(|t| t.wall)
    }
}

impl BuiltinMachine {
    fn command(
        &self,
        what: &'static str,
        make: fn(mpsc::Sender<Result<(), String>>) -> Command,
    ) -> Result<(), VmError> {
        match self.remote.ask(make) {
            Some(Ok(())) => Ok(()),
            Some(Err(detail)) => Err(VmError::BackendFailed { what, detail }),
            None => Err(VmError::BackendFailed {
                what,
                detail: format!("the VMM did not answer within {COMMAND_TIMEOUT:?}"),
            }),
        }
    }
}

impl Drop for BuiltinMachine {
    fn drop(&mut self) {
        self.kill();
    }
}
