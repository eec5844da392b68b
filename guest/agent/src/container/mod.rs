//! Containers in the sandbox: their registry, and the lifecycle the RPC handlers drive
//! (create, exec, attach stdio, start, wait, signal, stdin, terminal size, processes, stats,
//! pause, resume, update, OOM events, remove).
//!
//! Owns container state: the rootfs mounts, the cgroup, the init process and the exec'd ones.
//! Must never block the async runtime (waits run on the blocking pool) or trust an id, tag,
//! path, size or signal from a request.

pub mod process;
pub mod ps;
pub mod stdio;
pub mod tty;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use husk_protocols::agent::{valid_id, ContainerStats, OOMEvent, ProcessInfo};
use husk_protocols::stdio::StreamKind;
use tokio::sync::mpsc;
use tokio_vsock::VsockStream;

use self::process::Process;
use rustjail::cgroups::{self as cgroup, Cgroup};
use rustjail::hooks::{self, State as OciState};
use rustjail::launch::Created;
use rustjail::spec::{self, ContainerPlan, ProcessPlan};
use rustjail::spec::{Namespace, NamespaceMode};
use rustjail::sync::{JailConfig, Mode};

/// Where container directories live in the guest (each holds its mounts and the record the
/// console reads, [`husk_protocols::container_record`]).
pub const CONTAINERS_DIR: &str = husk_protocols::container_record::DIR;
/// The PATH used to find `args[0]` when the spec's environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long RemoveContainer waits for killed processes.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long Pause and Resume wait for the cgroup to (un)freeze.
const FREEZE_WAIT: Duration = Duration::from_secs(10);
/// Most exec'd processes a container holds at once (each costs memory in the agent).
pub const MAX_EXECS: usize = 256;
/// OOM events kept for GetOOMEvent before new ones are dropped.
const OOM_QUEUE: usize = 64;

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
    #[error("container {id:?}: {source}")]
    Cgroup {
        id: String,
        source: cgroup::CgroupError,
    },
    #[error("container {id:?}: {message}")]
    Jail { id: String, message: String },
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

fn cgroup_err(id: &str) -> impl FnOnce(cgroup::CgroupError) -> ContainerError + '_ {
    move |source| ContainerError::Cgroup {
        id: id.to_owned(),
        source,
    }
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
            ContainerError::State { .. } | ContainerError::Jail { .. } => {
                ttrpc::Code::FAILED_PRECONDITION
            }
            ContainerError::Cgroup {
                source: cgroup::CgroupError::Invalid { .. },
                ..
            } => ttrpc::Code::INVALID_ARGUMENT,
            ContainerError::Cgroup { .. } | ContainerError::Io { .. } => ttrpc::Code::INTERNAL,
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

/// One container.
pub struct Container {
    id: String,
    rootfs: PathBuf,
    plan: ContainerPlan,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    cgroup: Option<Cgroup>,
    /// The init, created and waiting for StartContainer.
    created: Mutex<Option<Created>>,
    oom_watch: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Frozen by PauseContainer: nothing may start in it (a new process would freeze before
    /// its exec, and the start with it).
    paused: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Container {
    fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cgroup(&self) -> Result<&Cgroup, ContainerError> {
        self.cgroup.as_ref().ok_or_else(|| ContainerError::State {
            id: self.id.clone(),
            what: "has no cgroup (the guest has no cgroup2 hierarchy)".into(),
        })
    }
}

/// Where the registry finds the guest's kernel interfaces (a temporary tree in tests).
#[derive(Debug, Clone)]
pub struct Paths {
    /// Container directories ([`CONTAINERS_DIR`]).
    pub containers: PathBuf,
    /// The cgroup2 root ([`cgroup::CGROUP_ROOT`]); `None`: containers get no cgroup.
    pub cgroup_root: Option<PathBuf>,
    /// procfs (`/proc`).
    pub proc: PathBuf,
    /// Where virtio-fs shares are mounted ([`husk_protocols::agent::SHARES_DIR`]).
    pub shares: PathBuf,
}

impl Paths {
    /// The guest's own.
    pub fn guest() -> Self {
        let cgroup_root = Path::new(cgroup::CGROUP_ROOT);
        Self {
            containers: CONTAINERS_DIR.into(),
            cgroup_root: cgroup_root
                .join("cgroup.controllers")
                .exists()
                .then(|| cgroup_root.to_owned()),
            proc: "/proc".into(),
            shares: husk_protocols::agent::SHARES_DIR.into(),
        }
    }
}

/// All containers of this sandbox.
#[derive(Debug)]
pub struct Containers {
    paths: Paths,
    all: Mutex<HashMap<String, Arc<Container>>>,
    /// virtio-fs shares mounted so far (tag → mount point), each once, for every container.
    shares: Mutex<HashMap<String, PathBuf>>,
    /// Ids being created, reserved so two creates never mount on one directory.
    creating: Mutex<HashSet<String>>,
    oom_tx: mpsc::Sender<OOMEvent>,
    oom_rx: tokio::sync::Mutex<mpsc::Receiver<OOMEvent>>,
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

/// Checks a path inside a share: relative, plain components only.
fn share_subpath(path: &str) -> Result<PathBuf, ContainerError> {
    let p = Path::new(path);
    let ok = path.len() <= 4096
        && !path.contains('\0')
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if ok {
        Ok(p.to_owned())
    } else {
        Err(ContainerError::Invalid(format!(
            "rootfs path {:?} must be relative inside the share, without `..`",
            path.chars().take(80).collect::<String>()
        )))
    }
}

/// Mounts the container's root: `image` (the share's `subpath`, bound read-only at
/// `dir/image`), a tmpfs at `dir/cow` for its writes, and an overlay of both at `dir/rootfs`,
/// so a container never changes the image on the host and its writes vanish with it.
fn mount_rootfs(
    dir: &Path,
    share: &Path,
    subpath: &Path,
    label: Option<&str>,
) -> Result<PathBuf, ContainerError> {
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
    let source = share.join(subpath);
    let meta = std::fs::symlink_metadata(&source).map_err(io_err(format!(
        "the container's rootfs {} in the share",
        subpath.display()
    )))?;
    if !meta.is_dir() {
        return Err(ContainerError::Invalid(format!(
            "the container's rootfs {} in the share is not a directory",
            subpath.display()
        )));
    }
    mount(
        Some(&source),
        &image,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(mount_err(format!("binding {}", source.display())))?;
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
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={}",
        image.display(),
        upper.display(),
        work.display()
    );
    if let Some(l) = label {
        // The container's files carry its mount label (SELinux), the image's included.
        options.push(',');
        options.push_str(&rustjail::selinux::mount_option(l));
    }
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

/// Removes a reservation of an id when creation ends, however it ends.
struct Reservation<'a>(&'a Containers, String);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0
            .creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl Containers {
    pub fn new(paths: Paths) -> Self {
        let (oom_tx, oom_rx) = mpsc::channel(OOM_QUEUE);
        Self {
            paths,
            all: Mutex::new(HashMap::new()),
            shares: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
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

    /// The container's init (empty `exec_id`) or one of its exec'd processes.
    fn process(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(Arc<Container>, Arc<Process>), ContainerError> {
        let c = self.get(id)?;
        if exec_id.is_empty() {
            let p = c.init.clone();
            return Ok((c, p));
        }
        check_id("exec id", exec_id)?;
        let p = c
            .execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ContainerError::State {
                id: id.into(),
                what: format!("no exec {exec_id:?}"),
            })?;
        Ok((c, p))
    }

    /// The ids of all containers.
    pub fn ids(&self) -> Vec<String> {
        self.all().keys().cloned().collect()
    }

    /// Mounts the virtio-fs share `tag` the first time; its mount point. Read-write: volumes
    /// in it may be written (as the host's virtiofsd allows); rootfs directories in it are
    /// only ever the read-only lower layer of an overlay.
    fn share(&self, tag: &str) -> Result<PathBuf, ContainerError> {
        let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = shares.get(tag) {
            return Ok(p.clone());
        }
        let at = self.paths.shares.join(tag);
        std::fs::create_dir_all(&at).map_err(io_err(format!("creating {}", at.display())))?;
        nix::mount::mount(
            Some(tag),
            &at,
            Some("virtiofs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|e| {
            io_err(format!(
                "mounting virtio-fs share {tag:?} (is it attached to the VM?)"
            ))(e.into())
        })?;
        shares.insert(tag.to_owned(), at.clone());
        Ok(at)
    }

    fn reserve(&self, id: &str) -> Result<Reservation<'_>, ContainerError> {
        let mut creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if self.all().contains_key(id) || !creating.insert(id.to_owned()) {
            return Err(ContainerError::Exists(id.to_owned()));
        }
        Ok(Reservation(self, id.to_owned()))
    }

    /// The OCI state of container `c` for its hooks.
    fn state_json(
        &self,
        c_id: &str,
        plan: &ContainerPlan,
        status: &str,
        pid: Option<u32>,
    ) -> String {
        let bundle = self.paths.containers.join(c_id);
        OciState {
            oci_version: hooks::OCI_VERSION,
            id: c_id,
            status,
            pid,
            bundle: &bundle.display().to_string(),
            annotations: &plan.annotations,
        }
        .to_json()
    }

    /// The namespaces a new container joins: its sandbox's, by /proc path.
    fn sandbox_joins(
        &self,
        id: &str,
        plan: &ContainerPlan,
    ) -> Result<Vec<(Namespace, PathBuf)>, ContainerError> {
        let Some(sandbox) = plan.sandbox.as_deref().filter(|s| *s != id) else {
            return Ok(Vec::new());
        };
        let c = self.get(sandbox)?;
        let pid = c.init.live_pid().ok_or_else(|| ContainerError::State {
            id: sandbox.into(),
            what: "is not running, so its namespaces cannot be shared".into(),
        })?;
        Ok(plan
            .namespaces
            .iter()
            .filter(|(_, m)| *m == NamespaceMode::Sandbox)
            .map(|(ns, _)| {
                (
                    *ns,
                    self.paths.proc.join(format!("{pid}/ns/{}", ns.proc_name())),
                )
            })
            .collect())
    }

    /// Mounts the rootfs share, makes the cgroup, creates the init in its jail (waiting for
    /// StartContainer) and records the container. Blocks for the jail's set-up and hooks.
    pub fn create(
        &self,
        id: &str,
        spec_json: &str,
        rootfs_tag: &str,
        rootfs_path: &str,
    ) -> Result<(), ContainerError> {
        let _span = husk_telemetry::child_span!(
            "container.create",
            otel.name = "container create",
            container.id = id,
            rootfs.tag = rootfs_tag,
        )
        .entered();
        check_id("container id", id)?;
        if !valid_tag(rootfs_tag) {
            return Err(ContainerError::Invalid(format!(
                "rootfs tag {rootfs_tag:?} must be 1-36 of [A-Za-z0-9_-]"
            )));
        }
        let subpath = share_subpath(rootfs_path)?;
        let plan = spec::parse(spec_json)?;
        let _reserved = self.reserve(id)?;
        let selinux = rustjail::selinux::is_enabled();
        let mut cgroup = None;
        let made = (|| {
            let joins = self.sandbox_joins(id, &plan)?;
            let share = self.share(rootfs_tag)?;
            let label = selinux.then(|| {
                plan.mount_label
                    .clone()
                    .unwrap_or_else(|| rustjail::selinux::DEFAULT_MOUNT_LABEL.into())
            });
            let rootfs = mount_rootfs(
                &self.paths.containers.join(id),
                &share,
                &subpath,
                label.as_deref(),
            )?;
            // Mount destinations may not leave the root through the image's symlinks.
            let targets =
                rustjail::jail::mount_targets(&plan, &rootfs).map_err(ContainerError::Invalid)?;
            let program = resolve_program(&rootfs, &plan.process)?;
            if let Some(root) = &self.paths.cgroup_root {
                let cg = cgroup.insert(Cgroup::create(root, id).map_err(cgroup_err(id))?);
                if let Some(r) = &plan.resources {
                    cg.apply(r).map_err(cgroup_err(id))?;
                }
            }
            let init = Arc::new(Process::new(id, "", plan.process.clone())?);
            let cfg = JailConfig {
                container_id: id.to_owned(),
                mode: Mode::Create {
                    plan: Box::new(plan.clone()),
                    rootfs: rootfs.clone(),
                    targets,
                    joins,
                },
                program,
                cgroup_procs: cgroup.as_ref().map(Cgroup::procs_file),
                selinux,
            };
            let stdio = init.child_stdio()?;
            let mut on_mounted = |pid: u32| {
                let state = self.state_json(id, &plan, "creating", Some(pid));
                hooks::run_all("createRuntime", &plan.hooks.create_runtime, &state)
                    .map_err(|e| e.to_string())?;
                Ok(state)
            };
            let (pid, created) =
                rustjail::launch::spawn(cfg, stdio, &mut on_mounted).map_err(|e| {
                    ContainerError::Jail {
                        id: id.to_owned(),
                        message: e.to_string(),
                    }
                })?;
            init.spawned(pid);
            self.write_record(id, pid, &plan.process);
            Ok::<_, ContainerError>((rootfs, init, created))
        })();
        let (rootfs, init, created) = match made {
            Ok(m) => m,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    let _ = cg.kill_all();
                    let _ = cg.remove();
                }
                self.unmount(id);
                return Err(e);
            }
        };
        let c = Arc::new(Container {
            id: id.to_owned(),
            rootfs,
            plan,
            init,
            execs: Mutex::new(HashMap::new()),
            cgroup,
            created: Mutex::new(created),
            oom_watch: Mutex::new(None),
            paused: std::sync::atomic::AtomicBool::new(false),
        });
        self.watch_oom(&c);
        self.all().insert(id.to_owned(), c);
        tracing::info!(container = id, "container created");
        Ok(())
    }

    /// Records the container's init for husk-console (`husk exec --container`), beside its
    /// mounts; it goes with the directory. A failure only costs the console its way in.
    fn write_record(&self, id: &str, pid: u32, process: &ProcessPlan) {
        use husk_protocols::container_record::{
            start_time_from_stat, ContainerRecord, RECORD_FILE,
        };
        let stat = std::fs::read_to_string(self.paths.proc.join(format!("{pid}/stat")));
        let Some(start_time) = stat.ok().as_deref().and_then(start_time_from_stat) else {
            tracing::warn!(
                container = id,
                pid,
                "cannot read the init's start time: no console record"
            );
            return;
        };
        let record = ContainerRecord {
            id: id.to_owned(),
            pid: pid as i32,
            start_time,
            cwd: process.cwd.to_string_lossy().into_owned(),
            env: process.env.clone(),
        };
        let dir = self.paths.containers.join(id);
        let written = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                let tmp = dir.join(format!(".{RECORD_FILE}.tmp"));
                std::fs::write(&tmp, json)?;
                std::fs::rename(&tmp, dir.join(RECORD_FILE))
            });
        if let Err(e) = written {
            tracing::warn!(container = id, error = %e, "cannot write the console record");
        }
    }

    /// Forwards the container's OOM kills to GetOOMEvent until it is removed.
    fn watch_oom(&self, c: &Arc<Container>) {
        let Some(cg) = c.cgroup.clone() else { return };
        let (tx, id) = (self.oom_tx.clone(), c.id.clone());
        let task = tokio::spawn(async move {
            let mut seen = cg.oom_kills().unwrap_or(0);
            while let Ok(n) = cg.wait_oom(seen).await {
                seen = n;
                tracing::warn!(container = %id, oom_kills = n, "OOM kill");
                let event = OOMEvent {
                    container_id: id.clone(),
                    oom_kills: n,
                    ..Default::default()
                };
                if tx.try_send(event).is_err() {
                    tracing::warn!(container = %id, "OOM event dropped: nobody collects them");
                }
            }
        });
        *c.oom_watch.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// Waits for the next OOM kill in any container (GetOOMEvent).
    pub async fn next_oom(&self) -> Option<OOMEvent> {
        self.oom_rx.lock().await.recv().await
    }

    /// Detaches the container's overlay, its scratch layer and the image share, then removes
    /// its directory. Mounts that were never made are skipped.
    fn unmount(&self, id: &str) {
        let dir = self.paths.containers.join(id);
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
        self.process(id, exec_id)?.1.attach(kind, None)
    }

    /// Attaches a stdio stream before the process starts.
    pub fn attach(
        &self,
        id: &str,
        exec_id: &str,
        kind: StreamKind,
        stream: VsockStream,
        span: tracing::Span,
    ) -> Result<(), ContainerError> {
        self.process(id, exec_id)?
            .1
            .attach(kind, Some((stream, span)))
    }

    /// Records a process to run in a running container; it starts with [`Self::start`].
    pub fn exec(&self, id: &str, exec_id: &str, process_json: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        check_id("exec id", exec_id)?;
        let plan = spec::parse_process(process_json)?;
        if c.init.running_pid().is_none() {
            return Err(ContainerError::State {
                id: id.into(),
                what: "is not running: exec needs a started container whose init still runs".into(),
            });
        }
        resolve_program(&c.rootfs, &plan)?;
        let mut execs = c.execs();
        if execs.contains_key(exec_id) {
            return Err(ContainerError::State {
                id: id.into(),
                what: format!("exec {exec_id:?} already exists"),
            });
        }
        if execs.len() >= MAX_EXECS {
            return Err(ContainerError::State {
                id: id.into(),
                what: format!(
                    "has {MAX_EXECS} exec'd processes, the most it may hold; wait for some"
                ),
            });
        }
        execs.insert(
            exec_id.to_owned(),
            Arc::new(Process::new(id, exec_id, plan)?),
        );
        Ok(())
    }

    /// The namespaces of the running init `pid` that differ from the agent's, in the order an
    /// exec'd process joins them (user first, mount last).
    fn init_namespaces(
        &self,
        id: &str,
        pid: u32,
    ) -> Result<Vec<(Namespace, PathBuf)>, ContainerError> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        for ns in [
            Namespace::User,
            Namespace::Cgroup,
            Namespace::Ipc,
            Namespace::Uts,
            Namespace::Network,
            Namespace::Pid,
            Namespace::Mount,
        ] {
            let theirs = self.paths.proc.join(format!("{pid}/ns/{}", ns.proc_name()));
            let ours = self.paths.proc.join(format!("self/ns/{}", ns.proc_name()));
            let (Ok(t), Ok(o)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
                return Err(ContainerError::State {
                    id: id.into(),
                    what: format!("its init's {} namespace is gone", ns.proc_name()),
                });
            };
            if (t.dev(), t.ino()) != (o.dev(), o.ino()) {
                out.push((ns, theirs));
            }
        }
        Ok(out)
    }

    /// Starts the container's init (empty `exec_id`), created and waiting, or an exec'd
    /// process in the init's namespaces, cgroup and root. Blocks for the jail and the hooks.
    pub fn start(&self, id: &str, exec_id: &str) -> Result<u32, ContainerError> {
        let _span = husk_telemetry::child_span!(
            "container.start",
            otel.name = "container start",
            container.id = id,
            exec.id = exec_id,
        )
        .entered();
        let (c, p) = self.process(id, exec_id)?;
        if c.paused.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ContainerError::State {
                id: id.into(),
                what: "is paused: resume it first".into(),
            });
        }
        let jail_err = |e: rustjail::launch::LaunchError| ContainerError::Jail {
            id: id.to_owned(),
            message: e.to_string(),
        };
        if exec_id.is_empty() {
            let created = c
                .created
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .ok_or_else(|| ContainerError::State {
                    id: id.into(),
                    what: "already started".into(),
                })?;
            let pid = created.pid();
            p.begin_io()?;
            let state = self.state_json(id, &c.plan, "created", Some(pid));
            let secs = c
                .plan
                .hooks
                .start_container
                .iter()
                .map(|h| h.timeout_secs)
                .sum();
            created.start(state, secs).map_err(jail_err)?;
            p.mark_started();
            tracing::info!(container = id, pid, "container started");
            let state = self.state_json(id, &c.plan, "running", Some(pid));
            if let Err(e) = hooks::run_all("poststart", &c.plan.hooks.poststart, &state) {
                tracing::warn!(container = id, error = %e, "poststart hook");
            }
            return Ok(pid);
        }
        let init = c.init.running_pid().ok_or_else(|| ContainerError::State {
            id: id.into(),
            what: "is not running any more".into(),
        })?;
        let program = resolve_program(&c.rootfs, p.plan())?;
        let joins = self.init_namespaces(id, init)?;
        let cfg = JailConfig {
            container_id: id.to_owned(),
            mode: Mode::Exec {
                process: Box::new(p.plan().clone()),
                joins,
                seccomp: c.plan.seccomp.clone(),
            },
            program,
            cgroup_procs: c.cgroup.as_ref().map(Cgroup::procs_file),
            selinux: rustjail::selinux::is_enabled(),
        };
        let stdio = p.child_stdio()?;
        p.begin_io()?;
        let (pid, _) =
            rustjail::launch::spawn(cfg, stdio, &mut |_| Ok(String::new())).map_err(jail_err)?;
        p.spawned(pid);
        p.mark_started();
        tracing::info!(container = id, exec = exec_id, pid, "process started");
        Ok(pid)
    }

    /// Waits for a process's exit and the end of its output. An exec'd process is forgotten
    /// once its status has been delivered.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<i32, ContainerError> {
        let (c, p) = self.process(id, exec_id)?;
        let code = p.wait().await?;
        if !exec_id.is_empty() {
            c.execs().remove(exec_id);
        }
        Ok(code)
    }

    /// Sends a signal to a process.
    pub fn signal(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), ContainerError> {
        self.process(id, exec_id)?.1.signal(signal)
    }

    /// Ends a process's stdin at once.
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        self.process(id, exec_id)?.1.close_stdin();
        Ok(())
    }

    /// Sets a process's terminal size.
    pub fn resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<(), ContainerError> {
        self.process(id, exec_id)?.1.resize(rows, columns)
    }

    /// The processes in the container's cgroup.
    pub fn list_processes(&self, id: &str) -> Result<Vec<ProcessInfo>, ContainerError> {
        let c = self.get(id)?;
        let pids = c.cgroup()?.pids().map_err(cgroup_err(id))?;
        Ok(pids
            .into_iter()
            .filter_map(|pid| ps::process_info(&self.paths.proc, pid))
            .collect())
    }

    /// The container's cgroup statistics.
    pub fn stats(&self, id: &str) -> Result<ContainerStats, ContainerError> {
        let c = self.get(id)?;
        let s = c.cgroup()?.stats().map_err(cgroup_err(id))?;
        Ok(ContainerStats {
            memory_usage_bytes: s.memory_current,
            memory_limit_bytes: s.memory_max.unwrap_or(0),
            memory_anon_bytes: s.memory_anon,
            memory_file_bytes: s.memory_file,
            oom_kills: s.oom_kills,
            cpu_usage_usec: s.cpu_usage_usec,
            cpu_user_usec: s.cpu_user_usec,
            cpu_system_usec: s.cpu_system_usec,
            cpu_throttled_periods: s.cpu_nr_throttled,
            cpu_throttled_usec: s.cpu_throttled_usec,
            pids_current: s.pids_current,
            pids_limit: s.pids_max.unwrap_or(0),
            ..Default::default()
        })
    }

    /// Freezes (`true`) or thaws every process of the container.
    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        if !c.init.is_started() {
            return Err(ContainerError::State {
                id: id.into(),
                what: "not started".into(),
            });
        }
        let cg = c.cgroup()?;
        if paused {
            c.paused.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let frozen = cg.set_frozen(paused, FREEZE_WAIT).await;
        if !paused || frozen.is_err() {
            c.paused.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        frozen.map_err(cgroup_err(id))?;
        tracing::info!(container = id, paused, "container (un)frozen");
        Ok(())
    }

    /// Applies new resource limits (an OCI `linux.resources` object as JSON).
    pub fn update(&self, id: &str, resources_json: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let r = spec::parse_resources(resources_json)?;
        c.cgroup()?.apply(&r).map_err(cgroup_err(id))
    }

    /// Kills what still runs, unmounts the rootfs, removes the cgroup and forgets the
    /// container.
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let execs: Vec<Arc<Process>> = c.execs().values().cloned().collect();
        let procs: Vec<&Arc<Process>> = std::iter::once(&c.init).chain(execs.iter()).collect();
        if let Some(cg) = &c.cgroup {
            // Thawed first: a frozen process cannot die.
            let _ = cg.set_frozen(false, FREEZE_WAIT).await;
            if let Err(e) = cg.kill_all() {
                tracing::warn!(container = id, error = %e, "killing the cgroup");
            }
        }
        // A created init that never started is still waiting in its jail: it goes too.
        c.created.lock().unwrap_or_else(|p| p.into_inner()).take();
        for p in &procs {
            if p.live_pid().is_some() {
                let _ = p.signal(libc::SIGKILL as u32);
                if !p.exited_within(KILL_WAIT).await {
                    return Err(ContainerError::State {
                        id: id.into(),
                        what: format!("did not die within {KILL_WAIT:?} of SIGKILL"),
                    });
                }
            }
        }
        if let Some(task) = c.oom_watch.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        if let Some(cg) = c.cgroup.clone() {
            // It may wait a moment for the killed processes to leave it: off the runtime.
            match tokio::task::spawn_blocking(move || cg.remove()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(container = id, error = %e, "removing the cgroup"),
                Err(e) => tracing::warn!(container = id, error = %e, "removing the cgroup"),
            }
        }
        self.unmount(id);
        self.all().remove(id);
        tracing::info!(container = id, "container removed");
        let state = self.state_json(id, &c.plan, "stopped", None);
        let poststop = c.plan.hooks.poststop.clone();
        let result =
            tokio::task::spawn_blocking(move || hooks::run_all("poststop", &poststop, &state))
                .await;
        if let Ok(Err(e)) = result {
            tracing::warn!(container = id, error = %e, "poststop hook");
        }
        Ok(())
    }

    /// Removes every container (DestroySandbox); the first error, after trying them all.
    pub async fn remove_all(&self) -> Result<(), ContainerError> {
        let mut first = None;
        for id in self.ids() {
            if let Err(e) = self.remove(&id).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
