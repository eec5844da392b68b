//! One process of a container, its init or an exec'd one: its stdio slots (pipes, or a
//! terminal), its launch into the jail, its exit status, signals, stdin and window size.
//!
//! Owns the guarantee that the exit status is published only after every byte of the
//! process's output was written to its streams. Must never block the async runtime (the wait
//! for the child runs on the blocking pool) nor decide what the jail does (that is
//! [`super::jail`]'s).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use husk_protocols::stdio::StreamKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio_vsock::VsockStream;

use super::tty::Pty;
use super::{io_err, ContainerError};
use rustjail::jail::{self, JailPlan};
use rustjail::spec::ProcessPlan;

/// Pipe capacity for a process's stdio: fewer, larger reads and vsock packets.
const PIPE_SIZE: libc::c_int = 1 << 20;
/// Copy buffer for output: large writes keep vsock packets full (8 KiB ones cost ~8× more).
const COPY_BUF: usize = 256 * 1024;

/// The PID namespace a process starts in.
#[derive(Debug)]
pub enum PidNamespace {
    /// A new one, of which the process is init (a container's init).
    New,
    /// The one open as this fd (an exec'd process joins its container's).
    Join(OwnedFd),
}

#[derive(Default)]
struct Streams {
    stdin: Option<VsockStream>,
    stdout: Option<VsockStream>,
    stderr: Option<VsockStream>,
}

#[derive(Default)]
struct State {
    streams: Streams,
    pid: Option<u32>,
    started: bool,
    exited: bool,
}

/// A process, before and after it runs.
pub struct Process {
    container_id: String,
    exec_id: String,
    plan: ProcessPlan,
    pty: Option<Pty>,
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
async fn copy_out(mut from: Reader, mut to: Option<VsockStream>) {
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
async fn copy_in(mut from: VsockStream, mut to: Writer, close: Arc<Notify>) {
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
    /// A process not started yet; a terminal is allocated now, so it can be resized at once.
    pub fn new(
        container_id: &str,
        exec_id: &str,
        plan: ProcessPlan,
    ) -> Result<Self, ContainerError> {
        let pty = if plan.terminal {
            Some(Pty::open().map_err(io_err("allocating a terminal"))?)
        } else {
            None
        };
        Ok(Self {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            plan,
            pty,
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

    /// The pid, while the process runs.
    pub fn running_pid(&self) -> Option<u32> {
        let st = self.state();
        st.pid.filter(|_| !st.exited)
    }

    pub fn is_started(&self) -> bool {
        self.state().started
    }

    /// Attaches a stdio stream before the process starts; with `None`, only checks that one
    /// could attach now (the agent answers the stream's opening before handing it over).
    pub fn attach(
        &self,
        kind: StreamKind,
        stream: Option<VsockStream>,
    ) -> Result<(), ContainerError> {
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

    /// Starts `program` (a path inside the container) in `jail` and `pidns`; returns its pid in
    /// the guest's root PID namespace.
    pub fn launch(
        self: &Arc<Self>,
        program: &Path,
        jail: JailPlan,
        pidns: PidNamespace,
    ) -> Result<u32, ContainerError> {
        let mut st = self.state();
        if st.started {
            return Err(self.error("already started"));
        }
        let streams = std::mem::take(&mut st.streams);
        let mut cmd = Command::new(program);
        cmd.arg0(&self.plan.args[0])
            .args(&self.plan.args[1..])
            .env_clear();
        for kv in &self.plan.env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        let mut outputs: Vec<(Reader, Option<VsockStream>)> = Vec::new();
        let mut input: Option<(Writer, VsockStream)> = None;
        if let Some(pty) = &self.pty {
            let [i, o, e] = pty
                .child_stdio()
                .map_err(io_err("handing the terminal over"))?;
            cmd.stdin(i).stdout(o).stderr(e);
            let io = |what| pty.io().map_err(io_err(what));
            outputs.push((Box::new(io("reading the terminal")?), streams.stdout));
            if let Some(s) = streams.stdin {
                input = Some((Box::new(io("writing the terminal")?), s));
            }
        } else {
            for (kind, stream) in [
                (StreamKind::Stdout, streams.stdout),
                (StreamKind::Stderr, streams.stderr),
            ] {
                let child_end = match stream {
                    Some(s) => {
                        let (r, w) = pipe()?;
                        let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(r)
                            .map_err(io_err("reading process output"))?;
                        outputs.push((Box::new(rx), Some(s)));
                        Stdio::from(w)
                    }
                    None => Stdio::null(),
                };
                match kind {
                    StreamKind::Stdout => cmd.stdout(child_end),
                    _ => cmd.stderr(child_end),
                };
            }
            match streams.stdin {
                Some(s) => {
                    let (r, w) = pipe()?;
                    let tx = tokio::net::unix::pipe::Sender::from_owned_fd(w)
                        .map_err(io_err("feeding stdin"))?;
                    cmd.stdin(Stdio::from(r));
                    input = Some((Box::new(tx), s));
                }
                None => {
                    cmd.stdin(Stdio::null());
                }
            }
        }
        // SAFETY: `jail::enter` runs between fork and exec and allocates nothing; every string
        // and file it uses was prepared in the `JailPlan` beforehand.
        unsafe {
            cmd.pre_exec(move || jail::enter(&mut jail::LibcJail, &jail));
        }
        // A PID namespace applies to the children of the thread that enters it: use a thread
        // of its own, so the agent itself never changes namespace.
        let spawned = std::thread::spawn(move || {
            match &pidns {
                PidNamespace::New => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID),
                PidNamespace::Join(fd) => {
                    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWPID)
                }
            }
            .map_err(std::io::Error::from)?;
            cmd.spawn()
        })
        .join()
        .map_err(|_| ContainerError::Invalid("the spawning thread panicked".into()))?;
        let mut child = spawned.map_err(io_err(format!(
            "starting {} in container {}",
            program.display(),
            self.container_id
        )))?;
        // The child's ends went with `cmd` when the thread returned: EOF comes at its exit.
        if let Some(pty) = &self.pty {
            pty.release_slave();
        }
        let pid = child.id();
        st.started = true;
        st.pid = Some(pid);
        drop(st);

        let copies: Vec<_> = outputs
            .into_iter()
            .map(|(r, s)| tokio::spawn(copy_out(r, s)))
            .collect();
        if let Some((w, s)) = input {
            tokio::spawn(copy_in(s, w, self.close_stdin.clone()));
        }
        let me = self.clone();
        tokio::spawn(async move {
            let status = tokio::task::spawn_blocking(move || child.wait()).await;
            // Output first: the exit status is published only once every byte is out.
            for t in copies {
                let _ = t.await;
            }
            let code = match status {
                Ok(Ok(s)) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                _ => 255,
            };
            me.state().exited = true;
            tracing::info!(container = %me.container_id, exec = %me.exec_id, code, "process exited");
            me.exit.send_replace(Some(code));
        });
        Ok(pid)
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
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).map_err(|e| {
                    io_err(format!("sending {sig} to container {}", self.container_id))(e.into())
                })
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
