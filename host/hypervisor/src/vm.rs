//! A running VM, whatever back end started it: its serial console, its hybrid vsock socket,
//! husk-init's control channel, boot timing, shutdown, and cleanup.
//!
//! Owns everything a VM holds on the host. Dropping a [`Vm`] kills and reaps every process the
//! back end started and removes the VM's socket directory, so nothing outlives it. Must never
//! trust the guest: frames are bounded, the protocol version is checked, and a guest that never
//! answers is a timeout with its last serial lines, not a hang.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use husk_protocols::frame::{read_frame, write_frame, FrameError};
use husk_protocols::init::{self, GuestMessage, HostMessage, Ready};
use husk_protocols::ports;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::VmError;
use crate::run_dir::RunDir;
use crate::serial::Serial;

/// Lines of serial output quoted in errors.
pub const ERROR_LINES: usize = 15;

/// What a back end runs a VM with: processes (QEMU and its helpers) or in-process threads (the
/// builtin VMM).
pub trait Machine: std::fmt::Debug + Send {
    /// Becomes readable once the VM has ended (QEMU's pidfd, the builtin VMM's exit eventfd).
    fn exit_fd(&self) -> BorrowedFd<'_>;
    /// How the VM ended, if it has.
    fn try_exit(&mut self) -> Option<String>;
    /// Waits up to `timeout` for the VM to end; how it ended.
    fn wait_exit(&mut self, timeout: Duration) -> Option<String>;
    /// Pauses the vCPUs.
    fn pause(&mut self) -> Result<(), VmError>;
    /// Resumes the vCPUs.
    fn resume(&mut self) -> Result<(), VmError>;
    /// Kills and reaps every process of the VM.
    fn kill(&mut self);
    /// Pids of every process the back end started for this VM (none for the builtin VMM).
    fn pids(&self) -> Vec<u32>;
    /// The tail of the back end's own log, if it wrote anything (for error reports).
    fn diagnostics(&self) -> Option<String>;
    /// VM build → the guest's write to the boot timer, where the back end has one (builtin).
    fn boot_timer(&self) -> Option<Duration> {
        None
    }
}

/// Timings and facts from one boot.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// Launch → first byte on the serial console.
    pub first_serial: Option<Duration>,
    /// Launch → husk-init's readiness message.
    pub ready: Duration,
    /// The guest's own uptime when it sent readiness.
    pub guest_uptime: Duration,
    /// VM build → husk-init's write to the boot timer, measured by the VMM (builtin only).
    pub boot_timer: Option<Duration>,
    /// The host's wall clock minus the guest's when readiness arrived, in nanoseconds (none
    /// from an init that does not report its clock). Guest spans are shifted by it.
    pub clock_offset_ns: Option<i64>,
    pub init: Ready,
}

/// How a VM ended.
#[derive(Debug, Clone)]
pub struct ExitReport {
    pub status: String,
    /// Request → VM gone.
    pub took: Duration,
}

/// A running VM.
#[derive(Debug)]
pub struct Vm {
    id: String,
    machine: Box<dyn Machine>,
    serial: Serial,
    vsock_path: PathBuf,
    log_dir: PathBuf,
    launched_at: Instant,
    init_listener: Option<UnixListener>,
    trace_listener: Option<UnixListener>,
    control: Option<UnixStream>,
    events: Option<JoinHandle<()>>,
    ready: Option<BootReport>,
    // Dropped last: sockets go only after every process using them is gone.
    _run_dir: RunDir,
}

/// The pieces a back end hands over once its processes run.
#[derive(Debug)]
pub struct VmParts {
    pub id: String,
    pub machine: Box<dyn Machine>,
    pub serial: Serial,
    pub run_dir: RunDir,
    pub vsock_path: PathBuf,
    pub log_dir: PathBuf,
    pub launched_at: Instant,
    /// Bound before launch at `<vsock_path>_<INIT_PORT>`.
    pub init_listener: UnixListener,
    /// Bound before launch at `<vsock_path>_<TRACE_PORT>` when the VM traces.
    pub trace_listener: Option<UnixListener>,
}

impl Vm {
    pub fn from_parts(p: VmParts) -> Self {
        Self {
            id: p.id,
            machine: p.machine,
            serial: p.serial,
            vsock_path: p.vsock_path,
            log_dir: p.log_dir,
            launched_at: p.launched_at,
            init_listener: Some(p.init_listener),
            trace_listener: p.trace_listener,
            control: None,
            events: None,
            ready: None,
            _run_dir: p.run_dir,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The hybrid vsock socket (`CONNECT <port>`).
    pub fn vsock_path(&self) -> &Path {
        &self.vsock_path
    }

    /// Where this VM's logs (serial, back end) are kept.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The VM's socket directory (removed when the VM is dropped).
    pub fn run_dir(&self) -> &Path {
        self._run_dir.path()
    }

    /// Pids of the VM's host processes (for leak checks and diagnostics).
    pub fn pids(&self) -> Vec<u32> {
        self.machine.pids()
    }

    /// When the back end launched the VM's process.
    pub fn launched_at(&self) -> Instant {
        self.launched_at
    }

    pub fn serial(&self) -> &Serial {
        &self.serial
    }

    /// The listener husk-tracer's connections arrive on (once; none unless the VM traces).
    pub fn take_trace_listener(&mut self) -> Option<UnixListener> {
        self.trace_listener.take()
    }

    /// Opens a stream to a guest vsock port.
    pub fn connect(&self, port: u32, timeout: Duration) -> Result<UnixStream, VmError> {
        Ok(crate::vsock::connect(&self.vsock_path, port, timeout)?)
    }

    /// The error that explains an ended VM: a panic, or an exit.
    fn ended(&mut self) -> VmError {
        let status = self.machine.try_exit();
        // The console closes when the process exits; give the reader a moment to drain it.
        self.serial.wait_closed(Duration::from_secs(2));
        let last_lines = self.serial.last_lines(ERROR_LINES);
        match self.serial.panic_line() {
            Some(message) => VmError::GuestPanicked {
                message,
                last_lines,
            },
            None => VmError::GuestExited {
                status: status.unwrap_or_else(|| "unknown status".into()),
                backend_log: self.machine.diagnostics(),
                last_lines,
            },
        }
    }

    /// Waits for husk-init's readiness message, the VM's exit, or the timeout.
    ///
    /// Traced, it records the guest's boot phases from the readiness message, under the
    /// caller's span: `guest kernel` (the guest's clock starting → husk-init starting) and
    /// `guest init` (→ readiness), placed on the host's clock.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<BootReport, VmError> {
        if let Some(r) = &self.ready {
            return Ok(r.clone());
        }
        let caller = tracing::Span::current();
        let span = tracing::info_span!(
            "vm.wait_ready",
            otel.name = "vm wait ready",
            vm = %self.id,
            otel.status_code = tracing::field::Empty,
        );
        let _entered = span.enter();
        let report = self.wait_ready_inner(timeout);
        match &report {
            Ok(r) => record_guest_boot(&caller, r),
            Err(_) => {
                span.record("otel.status_code", "error");
            }
        }
        report
    }

    fn wait_ready_inner(&mut self, timeout: Duration) -> Result<BootReport, VmError> {
        let deadline = Instant::now() + timeout;
        let listener = self.init_listener.take().ok_or_else(|| VmError::Protocol {
            detail: "the init channel was already consumed".into(),
        })?;
        let stream = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VmError::NotReady {
                    timeout,
                    last_lines: self.serial.last_lines(ERROR_LINES),
                });
            }
            let (conn_ready, exited) = {
                let mut fds = [
                    PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.machine.exit_fd(), PollFlags::POLLIN),
                ];
                match poll(
                    &mut fds,
                    PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
                ) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(VmError::io("waiting for the guest")(e.into())),
                }
                let has = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                (has(&fds[0]), has(&fds[1]))
            };
            if conn_ready {
                let (s, _) = listener
                    .accept()
                    .map_err(VmError::io("accepting the guest's init connection"))?;
                break s;
            }
            if exited {
                return Err(self.ended());
            }
        };
        // The listener is no longer needed: later connections to the init port are refused.
        drop(listener);
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream
            .set_read_timeout(Some(left))
            .map_err(VmError::io("init channel"))?;
        let mut reader = &stream;
        let ready = loop {
            match read_frame::<_, GuestMessage>(&mut reader) {
                Ok(GuestMessage::Ready(r)) => break r,
                Ok(other) => tracing::debug!(vm = %self.id, ?other, "init message before ready"),
                Err(FrameError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(VmError::NotReady {
                        timeout,
                        last_lines: self.serial.last_lines(ERROR_LINES),
                    })
                }
                Err(FrameError::Closed) => {
                    if self.machine.wait_exit(Duration::from_secs(2)).is_some() {
                        return Err(self.ended());
                    }
                    return Err(VmError::Protocol {
                        detail: "the guest closed the init channel before ready".into(),
                    });
                }
                Err(e) => {
                    return Err(VmError::Protocol {
                        detail: format!("bad readiness message: {e}"),
                    })
                }
            }
        };
        let ready_at = Instant::now();
        let ready_wall = SystemTime::now();
        if init::major_of(&ready.protocol) != Some(init::MAJOR) {
            return Err(VmError::VersionMismatch {
                guest: ready.protocol,
                host: init::PROTOCOL.into(),
            });
        }
        stream
            .set_read_timeout(None)
            .map_err(VmError::io("init channel"))?;
        self.events = Some(spawn_event_reader(&self.id, &stream)?);
        self.control = Some(stream);
        let report = BootReport {
            first_serial: self
                .serial
                .first_byte_at()
                .map(|t| t.saturating_duration_since(self.launched_at)),
            ready: ready_at.saturating_duration_since(self.launched_at),
            guest_uptime: Duration::from_nanos(ready.uptime_ns),
            // husk-init writes the timer just before it sends readiness.
            boot_timer: self.machine.boot_timer(),
            clock_offset_ns: clock_offset(ready_wall, ready.realtime_ns),
            init: ready,
        };
        self.ready = Some(report.clone());
        Ok(report)
    }

    /// Asks husk-init to stop everything and leave; waits up to `timeout` for the VM to end.
    /// A guest that does not leave in time is killed and reported as such.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<ExitReport, VmError> {
        let start = Instant::now();
        let Some(control) = self.control.as_mut() else {
            self.machine.kill();
            return Err(VmError::Protocol {
                detail: "the guest never reported ready; the VM was killed".into(),
            });
        };
        let _span =
            tracing::info_span!("vm.shutdown", otel.name = "vm shutdown", vm = %self.id).entered();
        let msg = HostMessage::Shutdown {
            reason: "requested by the host".into(),
            traceparent: husk_telemetry::propagation::current_traceparent(),
        };
        if let Err(e) = write_frame(control, &msg) {
            tracing::warn!(vm = %self.id, error = %e, "cannot send shutdown; killing the VM");
        }
        match self.machine.wait_exit(timeout) {
            Some(status) => {
                self.machine.kill();
                Ok(ExitReport {
                    status,
                    took: start.elapsed(),
                })
            }
            None => {
                self.machine.kill();
                Err(VmError::ShutdownTimeout {
                    timeout,
                    last_lines: self.serial.last_lines(ERROR_LINES),
                })
            }
        }
    }

    /// Waits up to `timeout` for the VM to end by itself; returns how it ended.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<String> {
        self.machine.wait_exit(timeout)
    }

    /// A descriptor that becomes readable once the VM has ended, for callers that watch it
    /// from an event loop (the shim).
    pub fn exit_watch(&self) -> Result<OwnedFd, VmError> {
        self.machine
            .exit_fd()
            .try_clone_to_owned()
            .map_err(VmError::io("duplicating the VM's exit descriptor"))
    }

    /// The error describing why the VM ended, once it has (panic or exit, with serial lines).
    pub fn exit_error(&mut self) -> VmError {
        self.ended()
    }

    pub fn pause(&mut self) -> Result<(), VmError> {
        self.machine.pause()
    }

    pub fn resume(&mut self) -> Result<(), VmError> {
        self.machine.resume()
    }

    /// Kills the VM at once.
    pub fn kill(&mut self) {
        self.machine.kill();
    }
}

/// The host's wall clock minus the guest's (`guest_realtime_ns`, 0: not reported), both read at
/// readiness.
fn clock_offset(host: SystemTime, guest_realtime_ns: u64) -> Option<i64> {
    if guest_realtime_ns == 0 {
        return None;
    }
    let host = host.duration_since(UNIX_EPOCH).ok()?.as_nanos();
    i64::try_from(host as i128 - i128::from(guest_realtime_ns)).ok()
}

/// The guest's boot phases as spans under `parent`, on the host's clock: the guest's
/// `CLOCK_BOOTTIME` began `guest_uptime` before readiness arrived.
fn record_guest_boot(parent: &tracing::Span, r: &BootReport) {
    // Called as soon as readiness was read: now is when it arrived, to within microseconds.
    let ready = SystemTime::now();
    let booted = ready.checked_sub(r.guest_uptime).unwrap_or(ready);
    let init_started = booted + Duration::from_nanos(r.init.init_started_ns);
    let kernel_attrs = [
        ("guest.kernel_release", r.init.kernel_release.clone()),
        (
            "vm.first_serial_ms",
            r.first_serial
                .map_or_else(String::new, |d| d.as_millis().to_string()),
        ),
    ];
    if r.init.init_started_ns > 0 {
        husk_telemetry::record_span(parent, "guest kernel", booted, init_started, &kernel_attrs);
    }
    let init_attrs = [
        ("guest.selinux", r.init.selinux.clone()),
        ("guest.services", r.init.services.join(",")),
        (
            "vm.boot_timer_ms",
            r.boot_timer
                .map_or_else(String::new, |d| d.as_millis().to_string()),
        ),
    ];
    husk_telemetry::record_span(
        parent,
        "guest init",
        init_started.max(booted),
        ready,
        &init_attrs,
    );
}

/// Drains guest events (service exits, shutdown notices) into the log until the stream ends,
/// so the guest never blocks on a full channel.
fn spawn_event_reader(id: &str, stream: &UnixStream) -> Result<JoinHandle<()>, VmError> {
    let mut reader = stream.try_clone().map_err(VmError::io("init channel"))?;
    let id = id.to_owned();
    std::thread::Builder::new()
        .name("init-events".into())
        .spawn(move || loop {
            match read_frame::<_, GuestMessage>(&mut reader) {
                Ok(GuestMessage::ServiceExited { name, status, restart_in_ms }) => {
                    tracing::warn!(vm = %id, service = %name, %status, restart_in_ms, "guest service exited")
                }
                Ok(GuestMessage::ShuttingDown { reason }) => {
                    tracing::info!(vm = %id, %reason, "guest shutting down")
                }
                Ok(other) => tracing::debug!(vm = %id, ?other, "guest event"),
                Err(FrameError::Closed) => return,
                Err(e) => {
                    tracing::warn!(vm = %id, error = %e, "init channel broken");
                    return;
                }
            }
        })
        .map_err(VmError::io("starting the init event reader"))
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.machine.kill();
        if let Some(c) = self.control.take() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.events.take() {
            let _ = t.join();
        }
    }
}

/// The host listener path for guest connections to `port`.
pub fn listener_path(vsock_path: &Path, port: u32) -> PathBuf {
    ports::host_listener_path(vsock_path, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_offset_is_host_minus_guest_and_absent_when_not_reported() {
        let host = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let guest_behind = 1_700_000_000_000_000_000 - 1_500_000_000;
        assert_eq!(clock_offset(host, guest_behind), Some(1_500_000_000));
        let guest_ahead = 1_700_000_000_000_000_000 + 250;
        assert_eq!(clock_offset(host, guest_ahead), Some(-250));
        assert_eq!(clock_offset(host, 0), None);
        // A guest whose clock starts at the epoch (no RTC) is decades behind: still an i64.
        assert_eq!(clock_offset(host, 1), Some(1_699_999_999_999_999_999));
    }
}
