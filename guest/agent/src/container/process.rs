//! One process of a container, its init or an exec'd one: its stdio (pipes, or a terminal)
//! made when it is created, the copies between them and its vsock streams once it starts, its
//! exit status, signals, stdin and window size.
//!
//! Owns the guarantee that the exit status is published only after every byte of the
//! process's output was written to its streams. Must never block the async runtime (the wait
//! for the child runs on the blocking pool) nor decide what the jail does (that is
//! rustjail's).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use husk_protocols::stdio::StreamKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_vsock::VsockStream;
use tracing::Instrument;

use super::tty::Pty;
use super::{io_err, ContainerError};
use rustjail::spec::ProcessPlan;

/// Pipe capacity for a process's stdio: fewer, larger reads and vsock packets.
const PIPE_SIZE: libc::c_int = 1 << 20;
/// Copy buffer for output: large writes keep vsock packets full (8 KiB ones cost ~8× more).
const COPY_BUF: usize = 256 * 1024;

/// An attached stdio stream and its span (open → close; inert when untraced).
pub type Attached = (VsockStream, tracing::Span);

#[derive(Default)]
struct Streams {
    stdin: Option<Attached>,
    stdout: Option<Attached>,
    stderr: Option<Attached>,
}

/// The pipes of a process without a terminal: the child's ends go to the jail, the agent's
/// are copied to and from the streams once the process starts.
struct Pipes {
    child: Option<[OwnedFd; 3]>,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

#[derive(Default)]
struct State {
    streams: Streams,
    pid: Option<u32>,
    started: bool,
    exited: bool,
    copies: Vec<JoinHandle<()>>,
}

/// A process, before and after it runs.
pub struct Process {
    container_id: String,
    exec_id: String,
    plan: ProcessPlan,
    pty: Option<Pty>,
    pipes: Mutex<Option<Pipes>>,
    state: Mutex<State>,
    exit: watch::Sender<Option<i32>>,
    close_stdin: Arc<Notify>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("container_id", &self.container_id)
            .field("exec_id", &self.exec_id)
            .finish_non_exhaustive()
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io_err("creating a pipe")(e.into()))?;
    // Best effort: the default 64 KiB still works, only slower.
    let _ = nix::fcntl::fcntl(r.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    Ok((r, w))
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Copies a process's output to its stream (or drops it when none is attached: a terminal must
/// still be drained), then closes the stream: the host's end of output.
async fn copy_out(from: Reader, to: Option<Attached>) {
    match to {
        Some((stream, span)) => copy_out_to(from, Some(stream)).instrument(span).await,
        None => copy_out_to(from, None).await,
    }
}

async fn copy_out_to(mut from: Reader, mut to: Option<VsockStream>) {
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if let Some(s) = to.as_mut() {
                    if let Err(e) = s.write_all(&buf[..n]).await {
                        tracing::warn!(error = %e, "output stream broken");
                        to = None;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading process output");
                break;
            }
        }
    }
    if let Some(mut s) = to {
        let _ = s.flush().await;
    }
}

/// Copies the stdin stream to the process until the stream ends or CloseStdin.
async fn copy_in(from: Attached, to: Writer, close: Arc<Notify>) {
    let (from, span) = from;
    copy_in_from(from, to, close).instrument(span).await
}

async fn copy_in_from(mut from: VsockStream, mut to: Writer, close: Arc<Notify>) {
    tokio::select! {
        r = tokio::io::copy(&mut from, &mut to) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "stdin stream ended");
            }
        }
        () = close.notified() => {}
    }
    // Dropping the pipe's write end is the process's end of input.
}

impl Process {
    /// A process not started yet, with its stdio made now: a terminal (so it can be resized at
    /// once) or three pipes.
    pub fn new(
        container_id: &str,
        exec_id: &str,
        plan: ProcessPlan,
    ) -> Result<Self, ContainerError> {
        let (pty, pipes) = if plan.terminal {
            (
                Some(Pty::open().map_err(io_err("allocating a terminal"))?),
                None,
            )
        } else {
            let (in_r, in_w) = pipe()?;
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            (
                None,
                Some(Pipes {
                    child: Some([in_r, out_w, err_w]),
                    stdin: Some(in_w),
                    stdout: Some(out_r),
                    stderr: Some(err_r),
                }),
            )
        };
        Ok(Self {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            plan,
            pty,
            pipes: Mutex::new(pipes),
            state: Mutex::new(State::default()),
            exit: watch::channel(None).0,
            close_stdin: Arc::new(Notify::new()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, what: impl Into<String>) -> ContainerError {
        let what = what.into();
        ContainerError::State {
            id: self.container_id.clone(),
            what: if self.exec_id.is_empty() {
                what
            } else {
                format!("exec {:?}: {what}", self.exec_id)
            },
        }
    }

    pub fn plan(&self) -> &ProcessPlan {
        &self.plan
    }

    /// The pid, while the process runs its program.
    pub fn running_pid(&self) -> Option<u32> {
        let st = self.state();
        st.pid.filter(|_| st.started && !st.exited)
    }

    /// The pid, from creation (a created init waits for its start) to exit.
    pub fn live_pid(&self) -> Option<u32> {
        let st = self.state();
        st.pid.filter(|_| !st.exited)
    }

    pub fn is_started(&self) -> bool {
        self.state().started
    }

    /// Attaches a stdio stream before the process starts; with `None`, only checks that one
    /// could attach now (the agent answers the stream's opening before handing it over).
    pub fn attach(&self, kind: StreamKind, stream: Option<Attached>) -> Result<(), ContainerError> {
        let mut st = self.state();
        if st.started {
            return Err(self.error("already started: attach stdio before starting it"));
        }
        if self.pty.is_some() && kind == StreamKind::Stderr {
            return Err(self.error(
                "it runs on a terminal, whose output (stdout and stderr) comes on the stdout stream",
            ));
        }
        let slot = match kind {
            StreamKind::Stdin => &mut st.streams.stdin,
            StreamKind::Stdout => &mut st.streams.stdout,
            StreamKind::Stderr => &mut st.streams.stderr,
        };
        if slot.is_some() {
            return Err(self.error(format!("{kind:?} is already attached")));
        }
        if stream.is_some() {
            *slot = stream;
        }
        Ok(())
    }

    /// The process's ends of its stdio (stdin, stdout, stderr), for the jail; once.
    pub fn child_stdio(&self) -> Result<[OwnedFd; 3], ContainerError> {
        if let Some(pty) = &self.pty {
            return pty
                .child_stdio()
                .map_err(io_err("handing the terminal over"));
        }
        self.pipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|p| p.child.take())
            .ok_or_else(|| self.error("its stdio was already handed to a process"))
    }

    /// Records the pid of the process (in the guest's pid namespace) and waits for its exit
    /// in the background; the status is published once its output is all out.
    pub fn spawned(self: &Arc<Self>, pid: u32) {
        if let Some(pty) = &self.pty {
            // The jail holds the slave now: the master reads end of file when it is gone.
            pty.release_slave();
        }
        self.state().pid = Some(pid);
        let me = self.clone();
        tokio::spawn(async move {
            let code = tokio::task::spawn_blocking(move || rustjail::launch::wait(pid))
                .await
                .unwrap_or(255);
            // Output first: the exit status is published only once every byte is out.
            let copies = std::mem::take(&mut me.state().copies);
            for t in copies {
                let _ = t.await;
            }
            me.state().exited = true;
            tracing::info!(container = %me.container_id, exec = %me.exec_id, code, "process exited");
            me.exit.send_replace(Some(code));
        });
    }

    /// Connects the process's stdio to its attached streams (output not attached is drained,
    /// stdin not attached ends at once). Called just before the program runs.
    pub fn begin_io(&self) -> Result<(), ContainerError> {
        let mut st = self.state();
        if st.started {
            return Err(self.error("already started"));
        }
        if st.exited {
            return Err(self.error("has exited before it was started"));
        }
        let streams = std::mem::take(&mut st.streams);
        let mut outputs: Vec<(Reader, Option<Attached>)> = Vec::new();
        let mut input: Option<(Writer, Attached)> = None;
        if let Some(pty) = &self.pty {
            let io = |what| pty.io().map_err(io_err(what));
            outputs.push((Box::new(io("reading the terminal")?), streams.stdout));
            if let Some(s) = streams.stdin {
                input = Some((Box::new(io("writing the terminal")?), s));
            }
        } else {
            let mut pipes = self.pipes.lock().unwrap_or_else(|p| p.into_inner());
            let p = pipes.as_mut().ok_or_else(|| self.error("has no stdio"))?;
            for (fd, stream) in [
                (p.stdout.take(), streams.stdout),
                (p.stderr.take(), streams.stderr),
            ] {
                let fd = fd.ok_or_else(|| self.error("its output was already connected"))?;
                let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                    .map_err(io_err("reading process output"))?;
                outputs.push((Box::new(rx), stream));
            }
            let w = p.stdin.take();
            if let (Some(w), Some(s)) = (w, streams.stdin) {
                let tx = tokio::net::unix::pipe::Sender::from_owned_fd(w)
                    .map_err(io_err("feeding stdin"))?;
                input = Some((Box::new(tx), s));
            }
            // Without a stdin stream the write end is dropped here: the process reads EOF.
        }
        st.copies = outputs
            .into_iter()
            .map(|(r, s)| tokio::spawn(copy_out(r, s)))
            .collect();
        if let Some((w, s)) = input {
            tokio::spawn(copy_in(s, w, self.close_stdin.clone()));
        }
        Ok(())
    }

    /// Marks the process as running its program.
    pub fn mark_started(&self) {
        self.state().started = true;
    }

    /// Waits for the exit and the end of the output; the exit code (or 128 + signal).
    pub async fn wait(&self) -> Result<i32, ContainerError> {
        if !self.is_started() {
            return Err(self.error("not started"));
        }
        let mut rx = self.exit.subscribe();
        let code = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| self.error("removed while waiting"))?;
        Ok(code.unwrap_or(255))
    }

    /// Waits up to `timeout` for the exit; whether it came.
    pub async fn exited_within(&self, timeout: Duration) -> bool {
        let mut rx = self.exit.subscribe();
        let exited = tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .is_ok();
        exited
    }

    /// Sends a signal.
    pub fn signal(&self, signal: u32) -> Result<(), ContainerError> {
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
            .ok_or_else(|| {
                ContainerError::Invalid(format!("signal {signal} is not a valid signal number"))
            })?;
        let st = self.state();
        match (st.pid, st.exited) {
            (Some(pid), false) => {
                match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig) {
                    // Reaped a moment ago, its exit not recorded yet: it is gone, as asked for.
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                    Err(e) => Err(io_err(format!(
                        "sending {sig} to container {}",
                        self.container_id
                    ))(e.into())),
                }
            }
            (None, _) => Err(self.error("not started")),
            (Some(_), true) => Err(self.error("already exited")),
        }
    }

    /// Ends stdin now.
    pub fn close_stdin(&self) {
        self.close_stdin.notify_one();
    }

    /// Sets the terminal's window size.
    pub fn resize(&self, rows: u32, columns: u32) -> Result<(), ContainerError> {
        let pty = self
            .pty
            .as_ref()
            .ok_or_else(|| self.error("has no terminal to resize (process.terminal is false)"))?;
        let (Ok(rows), Ok(columns)) = (u16::try_from(rows), u16::try_from(columns)) else {
            return Err(ContainerError::Invalid(format!(
                "terminal size {rows}x{columns} is over 65535"
            )));
        };
        pty.resize(rows, columns)
            .map_err(io_err("resizing the terminal"))
    }
}
