//! The guest's shutdown: every process stops, the trace forwarder last, then the VM is left.
//!
//! Two phases. First SIGTERM goes to every process but husk-tracer (services, containers,
//! orphans), which get [`STOP_GRACE`] to exit (the agent and console flush their spans to the
//! tracer as they go) before SIGKILL. Then husk-init hands the tracer its own spans, and only
//! then stops the tracer, which forwards what it holds to the host before it exits
//! ([`TRACER_GRACE`]). Without a tracer the second phase finds nothing to wait for.
//!
//! Owns the order of the stop. Must never return: it ends in [`crate::leave`].

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use husk_protocols::init::GuestMessage;
use husk_protocols::manifest::TRACER_SERVICE;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::control::{Control, SHUTDOWN_TRACEPARENT};
use crate::spawn::ProcessSpawner;
use crate::supervisor::Supervisor;

/// How long processes get to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long husk-tracer gets to forward its last spans.
const TRACER_GRACE: Duration = Duration::from_secs(3);
/// How long husk-init's own spans may take to reach the tracer.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// The parent pid in a `/proc/PID/stat` line: `pid (comm) state ppid …`, where comm may hold
/// spaces and parentheses.
fn ppid_of(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The pids of every user-space process but PID 1 and `keep` (kernel threads, children of
/// kthreadd, are left out: signals do not reach them).
fn user_pids(keep: Option<i32>) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid > 2 && Some(pid) != keep)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| ppid_of(&stat))
                .is_some_and(|ppid| ppid != 2)
        })
        .collect()
}

/// Reaps whatever has exited; whether `watched` was among it.
fn reap(watched: Option<i32>) -> bool {
    let mut seen = false;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return seen,
            Ok(status) => seen |= status.pid().map(Pid::as_raw) == watched,
        }
    }
}

/// Waits on SIGCHLD until `done()` or `grace` has passed; whether `done()` held.
fn wait_until(sfd: &mut SignalFd, grace: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + grace;
    loop {
        if done() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
        );
        while let Ok(Some(_)) = sfd.read_signal() {}
    }
}

/// Stops every process, the tracer last, then leaves the VM.
pub fn run(
    sup: &mut Supervisor<ProcessSpawner>,
    sfd: &mut SignalFd,
    control: Option<&Control>,
    telemetry: Option<&husk_telemetry::Telemetry>,
    reason: &str,
) -> ! {
    let span = tracing::info_span!("init.shutdown", otel.name = "husk-init shutdown", reason);
    if let Some(tp) = SHUTDOWN_TRACEPARENT.get() {
        husk_telemetry::propagation::set_parent(&span, tp);
    }
    let entered = span.enter();
    tracing::info!(reason, "shutting down");
    if let Some(c) = control {
        c.send(&GuestMessage::ShuttingDown {
            reason: reason.to_owned(),
        });
    }
    let tracer = sup.pid_of(TRACER_SERVICE);
    sup.stop_all();

    // Phase 1: everything but the tracer.
    for pid in user_pids(tracer) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let mut tracer_alive = tracer.is_some();
    let stopped = wait_until(sfd, STOP_GRACE, || {
        if reap(tracer) {
            tracer_alive = false;
        }
        user_pids(tracer).is_empty()
    });
    if !stopped {
        tracing::warn!("processes still running after {STOP_GRACE:?}, killing them");
        for pid in user_pids(tracer) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        wait_until(sfd, STOP_GRACE, || {
            if reap(tracer) {
                tracer_alive = false;
            }
            user_pids(tracer).is_empty()
        });
    }
    drop(entered);
    drop(span);

    // Phase 2: husk-init's own spans, then the tracer forwards everything it holds.
    if let Some(t) = telemetry {
        if !t.flush(FLUSH_TIMEOUT) {
            tracing::warn!("husk-init's spans did not reach husk-tracer");
        }
    }
    if let (Some(pid), true) = (tracer, tracer_alive) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        if !wait_until(sfd, TRACER_GRACE, || reap(Some(pid))) {
            tracing::warn!("husk-tracer still running after {TRACER_GRACE:?}, killing it");
        }
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while waitpid(Pid::from_raw(-1), None).is_ok() {}
    crate::leave(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_pid_is_read_past_any_command_name() {
        assert_eq!(ppid_of("42 (husk-agent) S 1 42 42 0 -1"), Some(1));
        assert_eq!(ppid_of("7 (kworker/0:0-eve) I 2 0 0 0 -1"), Some(2));
        assert_eq!(ppid_of("9 (a) b (c)) R 31 9 9"), Some(31));
        assert_eq!(ppid_of("garbage"), None);
        assert_eq!(ppid_of("1 (x)"), None);
    }
}
