//! Reads an OCI runtime spec into the plans the jail carries out, refusing what it cannot
//! honour before anything starts.
//!
//! Owns validation of everything in the spec the jail acts on: process (arguments, environment,
//! cwd, user, umask, capabilities, rlimits, no_new_privileges, oom_score_adj, labels), hostname
//! and domainname, namespaces, id mappings, mounts and propagation, masked and read-only paths,
//! devices, sysctls, seccomp, hooks. Must never touch the system; every path, name and number
//! from the spec is hostile (paths absolute, no `..`, no NUL; names from closed lists; numbers
//! in range).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    Hook, LinuxDeviceType, LinuxNamespaceType, LinuxResources, LinuxSeccomp, Process, Spec,
};
use serde::{Deserialize, Serialize};

use crate::capabilities::{self, CapSets};

/// The annotation with which the CRI plugin names a container's pod sandbox.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// Largest spec accepted.
pub const MAX_SPEC: usize = 1 << 20;
/// Most entries accepted in each list of the spec (mounts, devices, hooks, paths, ...).
pub const MAX_ENTRIES: usize = 1024;
/// The longest a hook may run when the spec gives no timeout, seconds.
pub const DEFAULT_HOOK_TIMEOUT: u64 = 30;

/// A mount the jail performs, destination relative to the container root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    pub destination: PathBuf,
    pub fstype: String,
    pub source: String,
    pub flags: libc::c_ulong,
    /// Propagation changes applied after the mount (`MS_SHARED`, `MS_SLAVE`, ... `| MS_REC`).
    pub propagation: Vec<libc::c_ulong>,
    pub data: String,
    pub bind: bool,
}

/// One resource limit (`setrlimit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RlimitPlan {
    /// The `RLIMIT_*` name, for messages.
    pub name: String,
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// One process to run: from the spec's `process`, or an ExecProcess request's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    /// Runs on a terminal (one pty carries its stdin, stdout and stderr).
    pub terminal: bool,
    /// The five capability sets; `None` when the spec has no `capabilities` (all dropped).
    pub capabilities: CapSets,
    pub rlimits: Vec<RlimitPlan>,
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<i32>,
    /// `process.selinuxLabel`; the jail applies the default container label when `None`.
    pub selinux_label: Option<String>,
}

/// A namespace of the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Namespace {
    Mount,
    Pid,
    Network,
    Ipc,
    Uts,
    User,
    Cgroup,
}

impl Namespace {
    /// The `CLONE_NEW*` flag.
    pub fn flag(self) -> libc::c_int {
        match self {
            Self::Mount => libc::CLONE_NEWNS,
            Self::Pid => libc::CLONE_NEWPID,
            Self::Network => libc::CLONE_NEWNET,
            Self::Ipc => libc::CLONE_NEWIPC,
            Self::Uts => libc::CLONE_NEWUTS,
            Self::User => libc::CLONE_NEWUSER,
            Self::Cgroup => libc::CLONE_NEWCGROUP,
        }
    }

    /// The name under /proc/PID/ns.
    pub fn proc_name(self) -> &'static str {
        match self {
            Self::Mount => "mnt",
            Self::Pid => "pid",
            Self::Network => "net",
            Self::Ipc => "ipc",
            Self::Uts => "uts",
            Self::User => "user",
            Self::Cgroup => "cgroup",
        }
    }
}

/// What the container does about one kind of namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceMode {
    /// A new one (listed without a path).
    New,
    /// Its pod sandbox's (listed with a path, which names a namespace of the host's: in a pod
    /// that is its sandbox's, found through [`SANDBOX_ID_ANNOTATION`]).
    Sandbox,
    /// The guest's own (the network namespace by path: the VM's network is the pod's).
    Guest,
}

/// One uid or gid mapping of a user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// A device node to create in the container's /dev.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePlan {
    pub path: PathBuf,
    /// `S_IFCHR`, `S_IFBLK` or `S_IFIFO`.
    pub kind: u32,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One hook (a program run at a point of the container's life, with its state on stdin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookPlan {
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout_secs: u64,
}

/// The spec's hooks, by the point they run at (`prestart` runs with `createRuntime`, first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HooksPlan {
    pub create_runtime: Vec<HookPlan>,
    pub create_container: Vec<HookPlan>,
    pub start_container: Vec<HookPlan>,
    pub poststart: Vec<HookPlan>,
    pub poststop: Vec<HookPlan>,
}

/// The container: its init process and what the jail sets up around it, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerPlan {
    pub process: ProcessPlan,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub mounts: Vec<MountPlan>,
    /// `linux.resources`, applied to the container's cgroup.
    pub resources: Option<LinuxResources>,
    /// The namespaces the spec lists; a kind not listed is the guest's (the agent's).
    pub namespaces: Vec<(Namespace, NamespaceMode)>,
    /// The container of the same sandbox whose namespaces this one joins (the annotation
    /// [`SANDBOX_ID_ANNOTATION`]), when any is listed by path.
    pub sandbox: Option<String>,
    pub uid_mappings: Vec<IdMap>,
    pub gid_mappings: Vec<IdMap>,
    pub readonly_root: bool,
    /// `linux.rootfsPropagation` as mount flags (`MS_PRIVATE | MS_REC` when unset).
    pub root_propagation: libc::c_ulong,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    pub devices: Vec<DevicePlan>,
    /// `linux.sysctl`, each checked to belong to a namespace the container has.
    pub sysctl: BTreeMap<String, String>,
    /// `linux.seccomp`; the default profile applies when `None`.
    pub seccomp: Option<LinuxSeccomp>,
    pub mount_label: Option<String>,
    pub hooks: HooksPlan,
    pub annotations: BTreeMap<String, String>,
}

impl ContainerPlan {
    /// How the container has namespace `ns`, `None` when it shares the guest's.
    pub fn namespace(&self, ns: Namespace) -> Option<NamespaceMode> {
        self.namespaces
            .iter()
            .find(|(n, _)| *n == ns)
            .map(|(_, m)| *m)
    }
}

/// Why a spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("the OCI spec is {0} bytes, over the {MAX_SPEC}-byte limit")]
    TooLarge(usize),
    #[error("the OCI spec is not valid JSON for the runtime spec: {0}")]
    Malformed(String),
    #[error("the OCI spec has no process")]
    NoProcess,
    #[error("the OCI spec's process.args is empty: give the command to run")]
    NoArgs,
    #[error("{what} {path:?} must be an absolute path without `..` (OCI runtime spec)")]
    BadPath { what: &'static str, path: String },
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("mount option {0:?} is not supported")]
    MountOption(String),
    #[error("mount type {typ:?} at {destination:?} is not supported by this agent")]
    MountType { typ: String, destination: String },
    #[error("the spec asks for a {0} namespace by path, which in a pod means its sandbox's: add the annotation {SANDBOX_ID_ANNOTATION} naming the sandbox container")]
    NamespacePath(&'static str),
    #[error("the spec lists the {0} namespace twice")]
    DuplicateNamespace(&'static str),
    #[error("hostname {0:?} is not a valid hostname")]
    Hostname(String),
    #[error("{field} needs a new {namespace} namespace: add {{\"type\": \"{namespace}\"}} to linux.namespaces")]
    NeedsNamespace {
        field: String,
        namespace: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> SpecError {
    SpecError::Invalid(msg.into())
}

/// `path` as a clean absolute path: absolute, no `..`, no NUL.
pub fn clean_absolute(what: &'static str, path: &Path) -> Result<PathBuf, SpecError> {
    let bad = || SpecError::BadPath {
        what,
        path: path.display().to_string(),
    };
    if !path.is_absolute() || path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(bad());
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::ParentDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    Ok(out)
}

fn no_nul(what: &'static str, s: &str) -> Result<(), SpecError> {
    if s.contains('\0') {
        return Err(SpecError::Nul { what });
    }
    Ok(())
}

fn bounded<T>(what: &str, list: &[T]) -> Result<(), SpecError> {
    if list.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "{what} has {} entries, over the limit of {MAX_ENTRIES}",
            list.len()
        )));
    }
    Ok(())
}

/// A propagation option's mount flags.
fn propagation(option: &str) -> Option<libc::c_ulong> {
    Some(match option {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    })
}

/// Parsed mount options: flags, propagation changes, data, and whether it is a bind mount.
type MountOptions = (libc::c_ulong, Vec<libc::c_ulong>, Vec<String>, bool);

fn mount_options(options: &[String]) -> Result<MountOptions, SpecError> {
    let (mut flags, mut prop, mut data, mut bind) = (0, Vec::new(), Vec::new(), false);
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= libc::MS_NOSUID,
            "suid" => flags &= !libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "dev" => flags &= !libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "exec" => flags &= !libc::MS_NOEXEC,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            "mand" => flags |= libc::MS_MANDLOCK,
            "noatime" => flags |= libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "norelatime" => flags &= !libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                flags |= libc::MS_REC;
            }
            other if propagation(other).is_some() => {
                prop.extend(propagation(other));
            }
            other if other.contains('=') || other == "newinstance" => {
                no_nul("a mount option", other)?;
                if other.contains(',') && !other.contains('"') {
                    return Err(SpecError::MountOption(other.to_owned()));
                }
                data.push(other.to_owned());
            }
            other => return Err(SpecError::MountOption(other.to_owned())),
        }
    }
    Ok((flags, prop, data, bind))
}

const FS_TYPES: &[&str] = &[
    "proc", "tmpfs", "devpts", "mqueue", "sysfs", "cgroup", "cgroup2",
];

/// Parses and validates a spec given as JSON.
pub fn parse(json: &str) -> Result<ContainerPlan, SpecError> {
    let _span = husk_telemetry::child_span!(
        "jail.spec",
        otel.name = "jail spec",
        spec.bytes = json.len(),
    )
    .entered();
    object(json, "the OCI spec")?;
    let spec: Spec = serde_json::from_str(json).map_err(|e| SpecError::Malformed(e.to_string()))?;
    plan(&spec)
}

/// Refuses JSON that is not an object (serde would read `[]` as a struct of defaults).
fn object(json: &str, what: &str) -> Result<(), SpecError> {
    if json.len() > MAX_SPEC {
        return Err(SpecError::TooLarge(json.len()));
    }
    if !json.trim_start().starts_with('{') {
        return Err(SpecError::Malformed(format!(
            "{what} must be a JSON object"
        )));
    }
    Ok(())
}

/// Parses and validates an OCI `process` object given as JSON (ExecProcess).
pub fn parse_process(json: &str) -> Result<ProcessPlan, SpecError> {
    object(json, "the process")?;
    let process: Process =
        serde_json::from_str(json).map_err(|e| SpecError::Malformed(e.to_string()))?;
    process_plan(&process)
}

/// Parses and validates an OCI `linux.resources` object given as JSON (UpdateContainer).
pub fn parse_resources(json: &str) -> Result<LinuxResources, SpecError> {
    object(json, "linux.resources")?;
    serde_json::from_str(json).map_err(|e| SpecError::Malformed(e.to_string()))
}

/// The `RLIMIT_*` resource number of an OCI rlimit type.
fn rlimit_resource(name: &str) -> Option<u32> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

/// Validates a process.
pub fn process_plan(process: &Process) -> Result<ProcessPlan, SpecError> {
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(SpecError::NoArgs);
    }
    bounded("process.args", &args)?;
    for a in &args {
        no_nul("process.args", a)?;
    }
    let env = process.env().clone().unwrap_or_default();
    bounded("process.env", &env)?;
    for e in &env {
        no_nul("process.env", e)?;
    }
    let cwd = clean_absolute("process.cwd", process.cwd())?;
    let user = process.user();
    let additional_gids = user.additional_gids().clone().unwrap_or_default();
    bounded("process.user.additionalGids", &additional_gids)?;
    let umask = user.umask();
    if umask.is_some_and(|m| m > 0o777) {
        return Err(invalid(format!(
            "process.user.umask {:o} is over 0777",
            umask.unwrap_or(0)
        )));
    }
    let mut rlimits = Vec::new();
    for r in process.rlimits().iter().flatten() {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let resource = rlimit_resource(&name)
            .ok_or_else(|| invalid(format!("process.rlimits: unknown type {name:?}")))?;
        if r.soft() > r.hard() {
            return Err(invalid(format!(
                "process.rlimits {name}: soft limit {} is over the hard limit {}",
                r.soft(),
                r.hard()
            )));
        }
        if rlimits.iter().any(|p: &RlimitPlan| p.resource == resource) {
            return Err(invalid(format!("process.rlimits lists {name} twice")));
        }
        rlimits.push(RlimitPlan {
            name,
            resource,
            soft: r.soft(),
            hard: r.hard(),
        });
    }
    let capabilities = capabilities::from_spec(process.capabilities().as_ref())
        .map_err(|e| invalid(format!("process.capabilities: {e}")))?;
    let oom_score_adj = process.oom_score_adj();
    if oom_score_adj.is_some_and(|o| !(-1000..=1000).contains(&o)) {
        return Err(invalid(format!(
            "process.oomScoreAdj {} is outside -1000..1000",
            oom_score_adj.unwrap_or(0)
        )));
    }
    let selinux_label = process.selinux_label().clone().filter(|l| !l.is_empty());
    if let Some(l) = &selinux_label {
        crate::selinux::validate_label(l)
            .map_err(|e| invalid(format!("process.selinuxLabel: {e}")))?;
    }
    Ok(ProcessPlan {
        args,
        env,
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids,
        umask,
        terminal: process.terminal().unwrap_or(false),
        capabilities,
        rlimits,
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        oom_score_adj,
        selinux_label,
    })
}

fn namespace_of(t: LinuxNamespaceType) -> Result<Namespace, SpecError> {
    Ok(match t {
        LinuxNamespaceType::Mount => Namespace::Mount,
        LinuxNamespaceType::Pid => Namespace::Pid,
        LinuxNamespaceType::Network => Namespace::Network,
        LinuxNamespaceType::Ipc => Namespace::Ipc,
        LinuxNamespaceType::Uts => Namespace::Uts,
        LinuxNamespaceType::User => Namespace::User,
        LinuxNamespaceType::Cgroup => Namespace::Cgroup,
        LinuxNamespaceType::Time => {
            return Err(invalid(
                "linux.namespaces: the time namespace is not supported by this agent",
            ))
        }
    })
}

fn id_maps(
    what: &str,
    maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>,
) -> Result<Vec<IdMap>, SpecError> {
    let maps = maps.cloned().unwrap_or_default();
    if maps.len() > 340 {
        return Err(invalid(format!(
            "{what} has {} entries; the kernel takes at most 340",
            maps.len()
        )));
    }
    let mut out = Vec::new();
    for m in &maps {
        let (c, h, n) = (m.container_id(), m.host_id(), m.size());
        if n == 0 || c.checked_add(n).is_none() || h.checked_add(n).is_none() {
            return Err(invalid(format!(
                "{what}: mapping {c} -> {h} of size {n} is empty or overflows"
            )));
        }
        out.push(IdMap {
            container_id: c,
            host_id: h,
            size: n,
        });
    }
    Ok(out)
}

fn hooks(list: Option<&Vec<Hook>>, what: &str) -> Result<Vec<HookPlan>, SpecError> {
    let list = list.cloned().unwrap_or_default();
    bounded(what, &list)?;
    list.iter()
        .map(|h| {
            let path = clean_absolute("hook path", h.path())?;
            let args = h.args().clone().unwrap_or_default();
            let env = h.env().clone().unwrap_or_default();
            for a in args.iter().chain(&env) {
                no_nul("a hook's args or env", a)?;
            }
            let timeout_secs = match h.timeout() {
                None => DEFAULT_HOOK_TIMEOUT,
                Some(t) if t > 0 => t as u64,
                Some(t) => {
                    return Err(invalid(format!(
                        "{what}: hook {} has timeout {t}; it must be positive",
                        path.display()
                    )))
                }
            };
            Ok(HookPlan {
                path,
                args,
                env,
                timeout_secs,
            })
        })
        .collect()
}

/// The namespace a sysctl belongs to, `None` when it is not namespaced (runc's rules).
fn sysctl_namespace(key: &str) -> Option<Namespace> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        Some(Namespace::Ipc)
    } else if key.starts_with("net.") {
        Some(Namespace::Network)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(Namespace::Uts)
    } else {
        None
    }
}

fn device(d: &oci_spec::runtime::LinuxDevice) -> Result<DevicePlan, SpecError> {
    let path = clean_absolute("linux.devices path", d.path())?;
    if !path.starts_with("/dev") || path == Path::new("/dev") {
        return Err(invalid(format!(
            "linux.devices path {} must be under /dev",
            path.display()
        )));
    }
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(invalid(format!(
                "linux.devices {}: type \"a\" is for cgroup rules, not a device node",
                path.display()
            )))
        }
    };
    let number = |what: &str, n: i64| {
        u64::try_from(n).map_err(|_| {
            invalid(format!(
                "linux.devices {}: {what} {n} is negative",
                path.display()
            ))
        })
    };
    let mode = d.file_mode().unwrap_or(0o666);
    if mode > 0o7777 {
        return Err(invalid(format!(
            "linux.devices {}: fileMode {mode:o} is not a permission mode",
            path.display()
        )));
    }
    Ok(DevicePlan {
        major: number("major", d.major())?,
        minor: number("minor", d.minor())?,
        path,
        kind,
        mode,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

/// Validates a parsed spec.
pub fn plan(spec: &Spec) -> Result<ContainerPlan, SpecError> {
    let process = process_plan(spec.process().as_ref().ok_or(SpecError::NoProcess)?)?;
    let linux = spec.linux().clone().unwrap_or_default();

    // Namespaces first: what else the spec may ask depends on them.
    let mut namespaces: Vec<(Namespace, NamespaceMode)> = Vec::new();
    for n in linux.namespaces().iter().flatten() {
        let ns = namespace_of(n.typ())?;
        if namespaces.iter().any(|(k, _)| *k == ns) {
            return Err(SpecError::DuplicateNamespace(ns.proc_name()));
        }
        let mode = match (ns, n.path()) {
            (_, None) => NamespaceMode::New,
            (Namespace::Network, Some(_)) => NamespaceMode::Guest,
            (Namespace::Mount, Some(_)) => {
                return Err(invalid(
                    "linux.namespaces: joining a mount namespace by path is not supported (a container gets its own)",
                ))
            }
            (_, Some(p)) => {
                no_nul("a namespace path", &p.display().to_string())?;
                NamespaceMode::Sandbox
            }
        };
        namespaces.push((ns, mode));
    }
    let has = |ns: Namespace| namespaces.iter().any(|(k, _)| *k == ns);
    let sandbox = if namespaces.iter().any(|(_, m)| *m == NamespaceMode::Sandbox) {
        let first = namespaces
            .iter()
            .find(|(_, m)| *m == NamespaceMode::Sandbox)
            .map(|(n, _)| n.proc_name())
            .unwrap_or("pid");
        Some(
            spec.annotations()
                .as_ref()
                .and_then(|a| a.get(SANDBOX_ID_ANNOTATION))
                .cloned()
                .ok_or(SpecError::NamespacePath(first))?,
        )
    } else {
        None
    };

    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    if let Some(h) = &hostname {
        if !husk_protocols::cmdline::valid_hostname(h) {
            return Err(SpecError::Hostname(h.clone()));
        }
        if !has(Namespace::Uts) {
            return Err(SpecError::NeedsNamespace {
                field: "hostname".into(),
                namespace: "uts",
            });
        }
    }
    let domainname = spec.domainname().clone().filter(|h| !h.is_empty());
    if let Some(d) = &domainname {
        if !husk_protocols::cmdline::valid_hostname(d) {
            return Err(invalid(format!(
                "domainname {d:?} is not a valid domain name"
            )));
        }
        if !has(Namespace::Uts) {
            return Err(SpecError::NeedsNamespace {
                field: "domainname".into(),
                namespace: "uts",
            });
        }
    }

    let uid_mappings = id_maps("linux.uidMappings", linux.uid_mappings().as_ref())?;
    let gid_mappings = id_maps("linux.gidMappings", linux.gid_mappings().as_ref())?;
    match namespaces.iter().find(|(n, _)| *n == Namespace::User) {
        Some((_, NamespaceMode::New)) if uid_mappings.is_empty() || gid_mappings.is_empty() => {
            return Err(invalid(
                "a new user namespace needs linux.uidMappings and linux.gidMappings",
            ))
        }
        Some((_, NamespaceMode::New)) => {}
        _ if !uid_mappings.is_empty() || !gid_mappings.is_empty() => {
            return Err(SpecError::NeedsNamespace {
                field: "linux.uidMappings".into(),
                namespace: "user",
            })
        }
        _ => {}
    }

    let mounts_in = spec.mounts().clone().unwrap_or_default();
    bounded("mounts", &mounts_in)?;
    let mut mounts = Vec::new();
    for m in &mounts_in {
        let destination = clean_absolute("mount destination", m.destination())?;
        let (flags, propagation, data, bind) =
            mount_options(m.options().as_deref().unwrap_or_default())?;
        let mut typ = m.typ().clone().unwrap_or_default();
        // The guest has only the unified hierarchy: a v1 "cgroup" mount means cgroup2 here.
        if typ == "cgroup" {
            typ = "cgroup2".into();
        }
        let bind = bind || typ == "bind";
        let source = m
            .source()
            .as_ref()
            .map(|s| s.display().to_string())
            .unwrap_or_default();
        no_nul("mount source", &source)?;
        if bind {
            clean_absolute("bind mount source", Path::new(&source))?;
        } else if !FS_TYPES.contains(&typ.as_str()) {
            return Err(SpecError::MountType {
                typ,
                destination: destination.display().to_string(),
            });
        }
        if typ == "mqueue" && !has(Namespace::Ipc) {
            return Err(SpecError::NeedsNamespace {
                field: format!("the mqueue mount at {}", destination.display()),
                namespace: "ipc",
            });
        }
        mounts.push(MountPlan {
            destination,
            fstype: typ,
            source,
            flags,
            propagation,
            data: data.join(","),
            bind,
        });
    }

    let root_propagation = match linux.rootfs_propagation().as_deref() {
        None | Some("") => libc::MS_PRIVATE | libc::MS_REC,
        Some(p) => propagation(p).ok_or_else(|| {
            invalid(format!(
                "linux.rootfsPropagation {p:?} is not one of private, rprivate, shared, rshared, slave, rslave, unbindable, runbindable"
            ))
        })?,
    };
    let paths = |what: &'static str, list: &Option<Vec<String>>| {
        let list = list.clone().unwrap_or_default();
        bounded(what, &list)?;
        list.iter()
            .map(|p| clean_absolute(what, Path::new(p)))
            .collect::<Result<Vec<_>, _>>()
    };
    let masked_paths = paths("linux.maskedPaths", linux.masked_paths())?;
    let readonly_paths = paths("linux.readonlyPaths", linux.readonly_paths())?;
    let devices_in = linux.devices().clone().unwrap_or_default();
    bounded("linux.devices", &devices_in)?;
    let devices = devices_in
        .iter()
        .map(device)
        .collect::<Result<Vec<_>, _>>()?;

    let mut sysctl = BTreeMap::new();
    for (k, v) in linux.sysctl().iter().flatten() {
        let ok_key = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
            && !k.contains("..")
            && !k.starts_with('.');
        if !ok_key || v.contains('\0') || v.contains('\n') {
            return Err(invalid(format!(
                "linux.sysctl {k:?} = {v:?} is not a valid sysctl"
            )));
        }
        match sysctl_namespace(k) {
            None => {
                return Err(invalid(format!(
                    "linux.sysctl {k:?} is not in a namespace of the container: it would change the whole guest"
                )))
            }
            Some(ns) if !has(ns) => {
                return Err(SpecError::NeedsNamespace {
                    field: format!("linux.sysctl {k:?}"),
                    namespace: ns.proc_name(),
                })
            }
            Some(_) => {}
        }
        sysctl.insert(k.clone(), v.clone());
    }

    let seccomp = linux.seccomp().clone();
    if let Some(profile) = &seccomp {
        crate::seccomp::Filter::compile(Some(profile))
            .map_err(|e| invalid(format!("linux.seccomp: {e}")))?;
    }
    let mount_label = linux.mount_label().clone().filter(|l| !l.is_empty());
    if let Some(l) = &mount_label {
        crate::selinux::validate_label(l).map_err(|e| invalid(format!("linux.mountLabel: {e}")))?;
    }
    let h = spec.hooks().clone().unwrap_or_default();
    #[allow(deprecated)]
    let mut create_runtime = hooks(h.prestart().as_ref(), "hooks.prestart")?;
    create_runtime.extend(hooks(h.create_runtime().as_ref(), "hooks.createRuntime")?);
    let hooks = HooksPlan {
        create_runtime,
        create_container: hooks(h.create_container().as_ref(), "hooks.createContainer")?,
        start_container: hooks(h.start_container().as_ref(), "hooks.startContainer")?,
        poststart: hooks(h.poststart().as_ref(), "hooks.poststart")?,
        poststop: hooks(h.poststop().as_ref(), "hooks.poststop")?,
    };
    let annotations = spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(ContainerPlan {
        process,
        hostname,
        domainname,
        mounts,
        resources: linux.resources().clone(),
        namespaces,
        sandbox,
        uid_mappings,
        gid_mappings,
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        root_propagation,
        masked_paths,
        readonly_paths,
        devices,
        sysctl,
        seccomp,
        mount_label,
        hooks,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_json(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v = serde_json::to_value(Spec::default()).unwrap();
        v["process"]["args"] = serde_json::json!(["/bin/echo", "hi"]);
        edit(&mut v);
        v.to_string()
    }

    #[test]
    fn the_default_spec_is_accepted() {
        let p = parse(&spec_json(|_| {})).unwrap();
        assert_eq!(p.process.args, ["/bin/echo", "hi"]);
        assert_eq!(p.process.cwd, Path::new("/"));
        assert!(!p.process.terminal);
        assert!(p
            .mounts
            .iter()
            .any(|m| m.fstype == "proc" && m.destination == Path::new("/proc")));
        assert!(p
            .mounts
            .iter()
            .any(|m| m.fstype == "devpts" && m.data.contains("newinstance")));
    }

    #[test]
    fn relative_and_escaping_paths_are_refused() {
        let e = parse(&spec_json(|v| v["process"]["cwd"] = "work".into())).unwrap_err();
        assert!(
            e.to_string()
                .contains("process.cwd \"work\" must be an absolute path"),
            "{e}"
        );
        let e = parse(&spec_json(|v| {
            v["mounts"][0]["destination"] = "/proc/../../etc".into()
        }))
        .unwrap_err();
        assert!(matches!(e, SpecError::BadPath { .. }), "{e}");
    }

    #[test]
    fn bad_specs_have_clear_errors() {
        assert!(matches!(parse("{"), Err(SpecError::Malformed(_))));
        assert_eq!(
            parse(&spec_json(|v| v["process"]["args"] = serde_json::json!([]))),
            Err(SpecError::NoArgs)
        );
        let e = parse(&spec_json(|v| v["mounts"][0]["type"] = "nfs".into())).unwrap_err();
        assert!(matches!(e, SpecError::MountType { .. }), "{e}");
        let e = parse(&spec_json(|v| v["hostname"] = "a/b".into())).unwrap_err();
        assert!(matches!(e, SpecError::Hostname(_)), "{e}");
        assert!(matches!(
            parse(&" ".repeat(MAX_SPEC + 1)),
            Err(SpecError::TooLarge(_))
        ));
    }

    #[test]
    fn exec_processes_and_resources_are_validated() {
        let p = parse_process(
            r#"{"args":["sh"],"cwd":"/tmp","terminal":true,"user":{"uid":5,"gid":6}}"#,
        )
        .unwrap();
        assert_eq!((p.args.len(), p.uid, p.gid, p.terminal), (1, 5, 6, true));
        let e =
            parse_process(r#"{"args":["sh"],"cwd":"tmp","user":{"uid":0,"gid":0}}"#).unwrap_err();
        assert!(matches!(e, SpecError::BadPath { .. }), "{e}");
        assert_eq!(
            parse_process(r#"{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}"#),
            Err(SpecError::NoArgs)
        );
        let r = parse_resources(r#"{"memory":{"limit":1048576},"pids":{"limit":10}}"#).unwrap();
        assert_eq!(r.pids().as_ref().map(|p| p.limit()), Some(10));
        assert!(matches!(
            parse_resources("[1]"),
            Err(SpecError::Malformed(_))
        ));
    }

    #[test]
    fn clean_paths() {
        assert_eq!(
            clean_absolute("x", Path::new("/a/./b/")).unwrap(),
            Path::new("/a/b")
        );
        assert!(clean_absolute("x", Path::new("/a/../b")).is_err());
    }
}
