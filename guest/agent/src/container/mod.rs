//! Containers in the sandbox: their state, and the lifecycle the RPC handlers drive (create,
//! attach stdio, start, wait, signal, close stdin, remove).
//!
//! Owns container state and the ordering guarantee that WaitProcess answers only after all of
//! a process's output has been written to its streams. Must never block the async runtime
//! (waits run on the blocking pool) or trust an id, tag, path or signal from a request.

pub mod jail;
pub mod spec;
pub mod stdio;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use husk_protocols::agent::valid_id;
use husk_protocols::stdio::StreamKind;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio_vsock::VsockStream;

use self::spec::ProcessPlan;

/// Where container directories live in the guest.
pub const CONTAINERS_DIR: &str = "/run/husk/containers";
/// The PATH used to find `args[0]` when the spec's environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long RemoveContainer waits for a killed process.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Why a container operation failed; each maps to a ttrpc status code.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid {what} {value:?}: use 1-64 of [A-Za-z0-9_.-], not starting with '.'")]
    BadId { what: &'static str, value: String },
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("no container {0:?}")]
    NotFound(String),
    #[error("container {id:?}: {what}")]
    State { id: String, what: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError {
    let context = context.into();
    move |source| ContainerError::Io { context, source }
}

impl ContainerError {
    /// The ttrpc status code for this error.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            ContainerError::BadId { .. } | ContainerError::Spec(_) | ContainerError::Invalid(_) => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            ContainerError::Exists(_) => ttrpc::Code::ALREADY_EXISTS,
            ContainerError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            ContainerError::State { .. } => ttrpc::Code::FAILED_PRECONDITION,
            ContainerError::Io { .. } => ttrpc::Code::INTERNAL,
        }
    }
}

/// Checks a virtio-fs tag (1-36 of `[A-Za-z0-9_-]`).
fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 36
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
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

/// One container.
pub struct Container {
    id: String,
    rootfs: PathBuf,
    plan: ProcessPlan,
    state: Mutex<State>,
    exit: watch::Sender<Option<i32>>,
    close_stdin: Arc<Notify>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Container {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// All containers of this sandbox.
#[derive(Debug)]
pub struct Containers {
    dir: PathBuf,
    all: Mutex<HashMap<String, Arc<Container>>>,
}

fn check_id(what: &'static str, id: &str) -> Result<(), ContainerError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(ContainerError::BadId {
            what,
            value: id.chars().take(80).collect(),
        })
    }
}

/// Refuses a mount destination whose path inside the rootfs goes through a symlink: mounts are
/// made before `pivot_root`, where a symlink would point into the guest's own filesystem.
fn check_no_symlinks(rootfs: &Path, dest: &Path) -> Result<(), ContainerError> {
    let mut p = rootfs.to_path_buf();
    for c in dest.components().skip(1) {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ContainerError::Invalid(format!(
                    "mount destination {} goes through a symlink in the image; it is refused",
                    dest.display()
                )))
            }
            Ok(_) => {}
            Err(_) => break, // created below, as a directory
        }
    }
    Ok(())
}

/// `args[0]` as a path inside the container: absolute as given, or found on the spec's PATH.
fn resolve_program(rootfs: &Path, plan: &ProcessPlan) -> Result<PathBuf, ContainerError> {
    let prog = &plan.args[0];
    if prog.contains('/') {
        return spec::clean_absolute("process.args[0]", Path::new(prog)).map_err(Into::into);
    }
    let path = plan
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let candidate = Path::new(dir).join(prog);
        if let Ok(clean) = spec::clean_absolute("PATH entry", &candidate) {
            if std::fs::symlink_metadata(rootfs.join(clean.strip_prefix("/").unwrap_or(&clean)))
                .is_ok()
            {
                return Ok(clean);
            }
        }
    }
    Err(ContainerError::Invalid(format!(
        "executable {prog:?} not found in $PATH ({path}) of the container"
    )))
}

/// Pipe capacity for a process's stdio: fewer, larger reads and vsock packets.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Mounts the container's root: the image share read-only at `dir/image`, a tmpfs at
/// `dir/cow` for its writes, and an overlay of both at `dir/rootfs`, so a container never
/// changes the image on the host and its writes vanish with it.
fn mount_rootfs(dir: &Path, tag: &str) -> Result<PathBuf, ContainerError> {
    use nix::mount::{mount, MsFlags};
    let (image, cow, rootfs) = (dir.join("image"), dir.join("cow"), dir.join("rootfs"));
    for d in [&image, &cow, &rootfs] {
        std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
    }
    let mount_err = |what: String| {
        move |e: nix::errno::Errno| ContainerError::Io {
            context: what,
            source: e.into(),
        }
    };
    mount(
        Some(tag),
        &image,
        Some("virtiofs"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(mount_err(format!(
        "mounting virtio-fs share {tag:?} (is it attached to the VM?)"
    )))?;
    mount(
        Some("cow"),
        &cow,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(mount_err("mounting the container's scratch tmpfs".into()))?;
    let (upper, work) = (cow.join("upper"), cow.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        image.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(mount_err("mounting the container's overlay root".into()))?;
    Ok(rootfs)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io_err("creating a pipe")(e.into()))?;
    // Best effort: the default 64 KiB still works, only slower.
    let _ = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&r),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE),
    );
    Ok((r, w))
}
/// Copy buffer for output: large writes keep vsock packets full (8 KiB ones cost ~8× more).
const COPY_BUF: usize = 256 * 1024;

async fn copy_out(from: OwnedFd, mut to: VsockStream) {
    use tokio::io::AsyncReadExt;
    match tokio::net::unix::pipe::Receiver::from_owned_fd(from) {
        Ok(mut rx) => {
            let mut buf = vec![0u8; COPY_BUF];
            loop {
                match rx.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Err(e) = to.write_all(&buf[..n]).await {
                            tracing::warn!(error = %e, "output stream broken");
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading process output");
                        break;
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read process output"),
    }
    // Closing the stream after the last byte is the host's end of output.
    let _ = to.flush().await;
    drop(to);
}

async fn copy_in<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut from: R,
    mut to: W,
    close: Arc<Notify>,
) {
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

impl Containers {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            all: Mutex::new(HashMap::new()),
        }
    }

    fn all(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.all.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        check_id("container id", id)?;
        self.all()
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(id.to_owned()))
    }

    fn init_only(exec_id: &str) -> Result<(), ContainerError> {
        if exec_id.is_empty() {
            Ok(())
        } else {
            check_id("exec id", exec_id)?;
            Err(ContainerError::NotFound(format!(
                "exec {exec_id} (ExecProcess is not served yet)"
            )))
        }
    }

    /// Mounts the rootfs share and records the container.
    pub fn create(
        &self,
        id: &str,
        spec_json: &str,
        rootfs_tag: &str,
    ) -> Result<(), ContainerError> {
        check_id("container id", id)?;
        if !valid_tag(rootfs_tag) {
            return Err(ContainerError::Invalid(format!(
                "rootfs tag {rootfs_tag:?} must be 1-36 of [A-Za-z0-9_-]"
            )));
        }
        let plan = spec::parse(spec_json)?;
        if self.all().contains_key(id) {
            return Err(ContainerError::Exists(id.to_owned()));
        }
        let rootfs = match mount_rootfs(&self.dir.join(id), rootfs_tag) {
            Ok(r) => r,
            Err(e) => {
                self.unmount(id);
                return Err(e);
            }
        };
        let prepared = (|| {
            for m in &plan.mounts {
                check_no_symlinks(&rootfs, &m.destination)?;
                let dir = rootfs.join(m.destination.strip_prefix("/").unwrap_or(&m.destination));
                if !m.bind {
                    std::fs::create_dir_all(&dir).map_err(io_err(format!(
                        "creating mount point {}",
                        m.destination.display()
                    )))?;
                }
            }
            resolve_program(&rootfs, &plan)
        })();
        if let Err(e) = prepared {
            self.unmount(id);
            return Err(e);
        }
        let (exit, _) = watch::channel(None);
        let c = Container {
            id: id.to_owned(),
            rootfs,
            plan,
            state: Mutex::new(State::default()),
            exit,
            close_stdin: Arc::new(Notify::new()),
        };
        let mut all = self.all();
        if all.contains_key(id) {
            drop(all);
            self.unmount(id);
            return Err(ContainerError::Exists(id.to_owned()));
        }
        all.insert(id.to_owned(), Arc::new(c));
        tracing::info!(container = id, "container created");
        Ok(())
    }

    /// Detaches the container's overlay, its scratch layer and the image share, then removes
    /// its directory. Mounts that were never made are skipped.
    fn unmount(&self, id: &str) {
        let dir = self.dir.join(id);
        for m in ["rootfs", "cow", "image"] {
            match nix::mount::umount2(&dir.join(m), nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
                Err(e) => tracing::warn!(container = id, mount = m, error = %e, "unmounting"),
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Checks that a stream could attach now (answered before the stream is handed over).
    pub fn check_attach(
        &self,
        id: &str,
        exec_id: &str,
        kind: StreamKind,
    ) -> Result<(), ContainerError> {
        self.with_slot(id, exec_id, kind, |_| Ok(()))
    }

    /// Attaches a stdio stream before the process starts.
    pub fn attach(
        &self,
        id: &str,
        exec_id: &str,
        kind: StreamKind,
        stream: VsockStream,
    ) -> Result<(), ContainerError> {
        self.with_slot(id, exec_id, kind, move |slot| {
            *slot = Some(stream);
            Ok(())
        })
    }

    fn with_slot(
        &self,
        id: &str,
        exec_id: &str,
        kind: StreamKind,
        f: impl FnOnce(&mut Option<VsockStream>) -> Result<(), ContainerError>,
    ) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        Self::init_only(exec_id)?;
        let mut st = c.state();
        if st.started {
            return Err(ContainerError::State {
                id: id.into(),
                what: "already started: attach stdio before StartContainer".into(),
            });
        }
        let slot = match kind {
            StreamKind::Stdin => &mut st.streams.stdin,
            StreamKind::Stdout => &mut st.streams.stdout,
            StreamKind::Stderr => &mut st.streams.stderr,
        };
        if slot.is_some() {
            return Err(ContainerError::State {
                id: id.into(),
                what: format!("{kind:?} is already attached"),
            });
        }
        f(slot)
    }

    /// Starts the container's init process in its jail.
    pub fn start(&self, id: &str) -> Result<u32, ContainerError> {
        let c = self.get(id)?;
        let mut st = c.state();
        if st.started {
            return Err(ContainerError::State {
                id: id.into(),
                what: "already started".into(),
            });
        }
        let program = resolve_program(&c.rootfs, &c.plan)?;
        let jail = jail::JailPlan::new(&c.rootfs, &c.plan).map_err(io_err("preparing the jail"))?;
        let streams = std::mem::take(&mut st.streams);

        let mut cmd = Command::new(&program);
        cmd.arg0(&c.plan.args[0])
            .args(&c.plan.args[1..])
            .env_clear();
        for kv in &c.plan.env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        let mut parent_ends = Vec::new();
        for (kind, stream) in [
            (StreamKind::Stdout, streams.stdout),
            (StreamKind::Stderr, streams.stderr),
        ] {
            let child_end = match stream {
                Some(s) => {
                    let (r, w) = pipe()?;
                    parent_ends.push((r, s));
                    Stdio::from(w)
                }
                None => Stdio::null(),
            };
            match kind {
                StreamKind::Stdout => cmd.stdout(child_end),
                _ => cmd.stderr(child_end),
            };
        }
        let stdin_pipe = match streams.stdin {
            Some(s) => {
                let (r, w) = pipe()?;
                cmd.stdin(Stdio::from(r));
                Some((w, s))
            }
            None => {
                cmd.stdin(Stdio::null());
                None
            }
        };
        // SAFETY: `jail::enter` runs between fork and exec and allocates nothing; every string
        // it uses was prepared in `JailPlan::new`.
        unsafe {
            cmd.pre_exec(move || jail::enter(&mut jail::LibcJail, &jail));
        }
        // A new PID namespace applies to the children of the thread that unshares it: use a
        // thread of its own, so the agent itself never changes namespace.
        let spawned = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
                .map_err(std::io::Error::from)?;
            cmd.spawn()
        })
        .join()
        .map_err(|_| ContainerError::Invalid("the spawning thread panicked".into()))?;
        let mut child = spawned.map_err(io_err(format!(
            "starting {} in container {id}",
            program.display()
        )))?;
        // The child's pipe ends went with `cmd` when the thread returned: EOF comes at its exit.
        let pid = child.id();
        st.started = true;
        st.pid = Some(pid);
        drop(st);

        let mut copies = Vec::new();
        for (r, s) in parent_ends {
            copies.push(tokio::spawn(copy_out(r, s)));
        }
        if let Some((w, s)) = stdin_pipe {
            match tokio::net::unix::pipe::Sender::from_owned_fd(w) {
                Ok(tx) => {
                    tokio::spawn(copy_in(s, tx, c.close_stdin.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "cannot feed stdin"),
            }
        }
        let container = c.clone();
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
            container.state().exited = true;
            tracing::info!(container = %container.id, code, "process exited");
            container.exit.send_replace(Some(code));
        });
        tracing::info!(container = id, pid, "container started");
        Ok(pid)
    }

    /// Waits for the process's exit and the end of its output.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<i32, ContainerError> {
        let c = self.get(id)?;
        Self::init_only(exec_id)?;
        if !c.state().started {
            return Err(ContainerError::State {
                id: id.into(),
                what: "not started".into(),
            });
        }
        let mut rx = c.exit.subscribe();
        let code = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ContainerError::State {
                id: id.into(),
                what: "removed while waiting".into(),
            })?;
        Ok(code.unwrap_or(255))
    }

    /// Sends a signal to the process.
    pub fn signal(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        Self::init_only(exec_id)?;
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
            .ok_or_else(|| {
                ContainerError::Invalid(format!("signal {signal} is not a valid signal number"))
            })?;
        let st = c.state();
        match (st.pid, st.exited) {
            (Some(pid), false) => {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
                    .map_err(|e| io_err(format!("sending {sig} to {id}"))(e.into()))
            }
            (None, _) => Err(ContainerError::State {
                id: id.into(),
                what: "not started".into(),
            }),
            (Some(_), true) => Err(ContainerError::State {
                id: id.into(),
                what: "already exited".into(),
            }),
        }
    }

    /// Ends the process's stdin.
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        Self::init_only(exec_id)?;
        c.close_stdin.notify_one();
        Ok(())
    }

    /// Kills what still runs, unmounts the rootfs and forgets the container.
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let running = {
            let st = c.state();
            st.pid.filter(|_| !st.exited)
        };
        if let Some(pid) = running {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let mut rx = c.exit.subscribe();
            if tokio::time::timeout(KILL_WAIT, rx.wait_for(Option::is_some))
                .await
                .is_err()
            {
                return Err(ContainerError::State {
                    id: id.into(),
                    what: format!("did not die within {KILL_WAIT:?} of SIGKILL"),
                });
            }
        }
        self.unmount(id);
        self.all().remove(id);
        tracing::info!(container = id, "container removed");
        Ok(())
    }
}
