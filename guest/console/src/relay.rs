//! Moving bytes between a session's connection and its process: output pumps (pipes or the
//! pty master → `stdout`/`stderr` frames) and the input loop (client frames → stdin, window
//! size, signals, end of input).
//!
//! Owns the connection's writer (one lock, one whole frame per write, so frames from several
//! threads never interleave) and the session's stdin descriptor. Must never wait for or reap
//! the process; on a lost client it only asks the process to be killed.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use husk_protocols::console::{
    client_frame, data, read_frame, server, server_frame, write_frame, ClientFrame, ServerFrame,
    MAX_DATA,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::process::Process;
use crate::pty;
use crate::request::WinSize;

/// Most client input held for a process that does not read it; past this the session stops
/// reading the connection (only watching it for a hang-up) until the process reads.
const MAX_PENDING: usize = 1024 * 1024;

/// The connection's writing side, shared by the session's threads.
#[derive(Debug)]
pub struct Writer {
    stream: Mutex<UnixStream>,
    broken: AtomicBool,
}

impl Writer {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream: Mutex::new(stream),
            broken: AtomicBool::new(false),
        }
    }

    /// Sends one frame; false if the connection is (or just became) unusable.
    pub fn send(&self, frame: &ServerFrame) -> bool {
        if self.broken.load(Ordering::Relaxed) {
            return false;
        }
        let mut stream = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        match write_frame(&mut *stream, frame) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "cannot write to the client");
                self.broken.store(true, Ordering::Relaxed);
                false
            }
        }
    }
}

fn output_frame(bytes: &[u8], stderr: bool) -> ServerFrame {
    let d = data(bytes);
    server(if stderr {
        server_frame::Frame::Stderr(d)
    } else {
        server_frame::Frame::Stdout(d)
    })
}

/// Copies a pipe to `stdout` (or `stderr`) frames until end of file. If the client cannot be
/// written to, kills the process (so nothing blocks on a full pipe) and stops.
pub fn pump_pipe(pipe: OwnedFd, stderr: bool, writer: &Writer, process: &Process) {
    let mut file = std::fs::File::from(pipe);
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if !writer.send(&output_frame(&buf[..n], stderr)) {
                    process.kill_session();
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, "reading the process's output");
                return;
            }
        }
    }
}

/// Copies the pty master to `stdout` frames until `exited` (the read end of a pipe whose write
/// end the session drops once the process has ended) hangs up; then drains what the terminal
/// still holds (the kernel flushes pending terminal data on a non-blocking read before it
/// answers EAGAIN) and returns.
pub fn pump_pty(master: BorrowedFd<'_>, exited: OwnedFd, writer: &Writer, process: &Process) {
    let mut buf = vec![0u8; MAX_DATA];
    // After EIO (every slave closed) the master would poll as hung up forever: stop watching.
    let mut master_open = true;
    let mut sending = true;
    let read_once = |buf: &mut [u8], sending: &mut bool| -> Option<usize> {
        match nix::unistd::read(master.as_raw_fd(), buf) {
            Ok(0) => None,
            Ok(n) => {
                if *sending && !writer.send(&output_frame(&buf[..n], false)) {
                    *sending = false;
                    process.kill_session();
                }
                Some(n)
            }
            Err(nix::errno::Errno::EINTR) => Some(0),
            Err(_) => None, // EAGAIN: empty for now; EIO: no slave left.
        }
    };
    loop {
        let mut fds = vec![PollFd::new(exited.as_fd(), PollFlags::POLLIN)];
        if master_open {
            fds.push(PollFd::new(master, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "polling the terminal");
                return;
            }
        }
        let done = fds[0].any().unwrap_or(true);
        let readable = master_open && fds[1].any().unwrap_or(false);
        drop(fds);
        if done {
            while read_once(&mut buf, &mut sending).is_some() {}
            return;
        }
        if readable {
            match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                Ok(n) if n > 0 => {
                    if sending && !writer.send(&output_frame(&buf[..n], false)) {
                        sending = false;
                        process.kill_session();
                    }
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                _ => master_open = false,
            }
        }
    }
}

/// The peer closed its side of the connection (Linux's POLLRDHUP, absent from nix).
fn rdhup() -> PollFlags {
    PollFlags::from_bits_retain(libc::POLLRDHUP)
}

/// Where the client's input goes.
#[derive(Debug)]
pub enum Stdin {
    /// The write end of the process's stdin pipe (non-blocking); closed on `stdin_eof`.
    Pipe(OwnedFd),
    /// A handle on the pty master (non-blocking).
    Pty(OwnedFd),
}

/// Why the input loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEnd {
    /// The session ended (it sent `exit`).
    Over,
    /// The client went away or sent garbage; its process was killed.
    Disconnected,
}

/// Reads client frames until the connection ends, applying them to the process. `over` is the
/// read end of a pipe whose write end the session drops once it has sent `exit`: the loop then
/// lingers (see [`linger`]) and returns.
pub fn input(reader: UnixStream, stdin: Stdin, process: &Process, over: OwnedFd) -> InputEnd {
    let end = input_loop(reader, stdin, process, over);
    if end == InputEnd::Disconnected {
        process.kill_session();
    }
    end
}

/// How long a finished session waits for its client to close.
pub const LINGER: Duration = Duration::from_secs(2);

/// Ends a connection gracefully: no more writes (the client reads the last frame and then end
/// of file), then reads and discards what the client still sends, until it closes or `wait`
/// passes. Closing a socket with unread input would reset it, and a reset may discard frames
/// the client has not read yet.
pub fn linger(conn: &mut UnixStream, wait: Duration) {
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn input_loop(mut reader: UnixStream, stdin: Stdin, process: &Process, over: OwnedFd) -> InputEnd {
    let (mut target, pty_master) = match stdin {
        Stdin::Pipe(fd) => (Some(fd), None),
        Stdin::Pty(fd) => (fd.try_clone().ok(), Some(fd)),
    };
    let mut pending: VecDeque<u8> = VecDeque::new();
    let mut last_byte: Option<u8> = None;
    let mut eof_requested = false;
    loop {
        let want_frames = pending.len() < MAX_PENDING;
        let socket_events = if want_frames {
            PollFlags::POLLIN
        } else {
            rdhup()
        };
        let (sock_ev, stdin_ev) = {
            let mut fds = vec![
                PollFd::new(reader.as_fd(), socket_events),
                PollFd::new(over.as_fd(), PollFlags::POLLIN),
            ];
            let watch_stdin = !pending.is_empty() && target.is_some();
            if let (true, Some(t)) = (watch_stdin, target.as_ref()) {
                fds.push(PollFd::new(t.as_fd(), PollFlags::POLLOUT));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return InputEnd::Disconnected,
            }
            if fds[1].any().unwrap_or(true) {
                linger(&mut reader, LINGER);
                return InputEnd::Over;
            }
            (
                fds[0].revents().unwrap_or(PollFlags::POLLERR),
                fds.get(2).and_then(|f| f.revents()),
            )
        };
        if !want_frames && sock_ev.intersects(rdhup() | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return InputEnd::Disconnected;
        }
        if want_frames && !sock_ev.is_empty() {
            let frame = match read_frame::<_, ClientFrame>(&mut reader) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(error = %e, "the client's stream ended");
                    return InputEnd::Disconnected;
                }
            };
            match frame.frame {
                Some(client_frame::Frame::Stdin(d)) if !eof_requested && target.is_some() => {
                    pending.extend(d.data.iter());
                }
                Some(client_frame::Frame::StdinEof(_)) if !eof_requested => {
                    eof_requested = true;
                    if let Some(master) = &pty_master {
                        // A terminal has no "close": its EOF character ends the input in
                        // canonical mode (twice after a partial line: the first one only
                        // hands the partial line over). Raw mode: nothing to do.
                        if let Some(c) = pty::eof_char(master.as_fd()) {
                            let last = pending.back().copied().or(last_byte);
                            let partial =
                                last.is_some_and(|b| !matches!(b, b'\n' | b'\r') && b != c);
                            pending.push_back(c);
                            if partial {
                                pending.push_back(c);
                            }
                        }
                    }
                }
                Some(client_frame::Frame::Resize(s)) => {
                    match (&pty_master, WinSize::checked(s.rows, s.cols)) {
                        (Some(m), Some(size)) => {
                            if let Err(e) = pty::resize(m.as_fd(), size) {
                                tracing::debug!(error = %e, "resizing the terminal");
                            }
                        }
                        _ => tracing::debug!(rows = s.rows, cols = s.cols, "resize ignored"),
                    }
                }
                Some(client_frame::Frame::Signal(s)) => {
                    if let Err(e) = process.signal(s.number) {
                        tracing::debug!(error = %e, number = s.number, "signal not delivered");
                    }
                }
                other => tracing::debug!(frame = ?other.map(|_| ()), "client frame ignored"),
            }
        }
        if let (Some(ev), Some(t)) = (stdin_ev, target.as_ref()) {
            if !ev.is_empty() {
                let (front, _) = pending.as_slices();
                match nix::unistd::write(t, front) {
                    Ok(n) => {
                        last_byte = front.get(n.wrapping_sub(1)).copied().or(last_byte);
                        pending.drain(..n);
                    }
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        // The process closed its input (EPIPE) or the terminal hung up.
                        tracing::debug!(error = %e, "the process's input is closed");
                        pending.clear();
                        target = None;
                    }
                }
            }
        }
        if eof_requested && pending.is_empty() && pty_master.is_none() {
            target = None; // Closing the pipe is the process's end of file.
        }
    }
}
