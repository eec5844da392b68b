//! Reads an OCI runtime spec into what the basic jail needs, refusing what it cannot honour.
//!
//! Owns validation of everything in the spec the agent acts on: arguments, environment, cwd,
//! user, hostname and mounts. Must never touch the system; every path from the spec is treated
//! as hostile (absolute, no `..`, no NUL).

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};

/// The annotation with which the CRI plugin names a container's pod sandbox.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// Largest spec accepted.
pub const MAX_SPEC: usize = 1 << 20;

/// A mount the jail performs, destination relative to the container root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub destination: PathBuf,
    pub fstype: String,
    pub source: String,
    pub flags: libc::c_ulong,
    pub data: String,
    pub bind: bool,
}

/// One process to run: from the spec's `process`, or an ExecProcess request's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Runs on a terminal (one pty carries its stdin, stdout and stderr).
    pub terminal: bool,
}

/// The container: its init process and what the jail sets up around it, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerPlan {
    pub process: ProcessPlan,
    pub hostname: Option<String>,
    pub mounts: Vec<MountPlan>,
    /// `linux.resources`, applied to the container's cgroup.
    pub resources: Option<LinuxResources>,
    /// The container of the same sandbox whose namespaces this one joins (the annotation
    /// [`SANDBOX_ID_ANNOTATION`]), and which: those the spec asks for by path (host paths,
    /// meaningless here), among `CLONE_NEWPID`, `CLONE_NEWIPC` and `CLONE_NEWUTS`.
    pub shares_with: Option<(String, Vec<libc::c_int>)>,
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
    #[error("the spec asks for a pid, ipc or uts namespace by path, which in a pod means its sandbox's: add the annotation {SANDBOX_ID_ANNOTATION} naming the sandbox container")]
    PidNamespace,
    #[error("hostname {0:?} is not a valid hostname")]
    Hostname(String),
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

fn mount_options(options: &[String]) -> Result<(libc::c_ulong, Vec<String>, bool), SpecError> {
    let (mut flags, mut data, mut bind) = (0, Vec::new(), false);
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => {}
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "relatime" => flags |= libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                flags |= libc::MS_REC;
            }
            "private" | "rprivate" | "slave" | "rslave" => {}
            other if other.contains('=') || other == "newinstance" => {
                no_nul("a mount option", other)?;
                data.push(other.to_owned());
            }
            other => return Err(SpecError::MountOption(other.to_owned())),
        }
    }
    Ok((flags, data, bind))
}

const FS_TYPES: &[&str] = &[
    "proc", "tmpfs", "devpts", "mqueue", "sysfs", "cgroup", "cgroup2",
];

/// Parses and validates a spec given as JSON.
pub fn parse(json: &str) -> Result<ContainerPlan, SpecError> {
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

/// Validates a process.
pub fn process_plan(process: &Process) -> Result<ProcessPlan, SpecError> {
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(SpecError::NoArgs);
    }
    for a in &args {
        no_nul("process.args", a)?;
    }
    let env = process.env().clone().unwrap_or_default();
    for e in &env {
        no_nul("process.env", e)?;
    }
    let cwd = clean_absolute("process.cwd", process.cwd())?;
    let user = process.user();
    Ok(ProcessPlan {
        args,
        env,
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        terminal: process.terminal().unwrap_or(false),
    })
}

/// Validates a parsed spec.
pub fn plan(spec: &Spec) -> Result<ContainerPlan, SpecError> {
    let process = process_plan(spec.process().as_ref().ok_or(SpecError::NoProcess)?)?;
    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    if let Some(h) = &hostname {
        if !husk_protocols::cmdline::valid_hostname(h) {
            return Err(SpecError::Hostname(h.clone()));
        }
    }
    let mut mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let destination = clean_absolute("mount destination", m.destination())?;
        let (flags, data, bind) = mount_options(m.options().as_deref().unwrap_or_default())?;
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
        mounts.push(MountPlan {
            destination,
            fstype: typ,
            source,
            flags,
            data: data.join(","),
            bind,
        });
    }
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let joined: Vec<libc::c_int> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .map(|ns| {
            ns.iter()
                .filter(|n| n.path().is_some())
                .filter_map(|n| match n.typ() {
                    LinuxNamespaceType::Pid => Some(libc::CLONE_NEWPID),
                    LinuxNamespaceType::Ipc => Some(libc::CLONE_NEWIPC),
                    LinuxNamespaceType::Uts => Some(libc::CLONE_NEWUTS),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let shares_with = match joined.is_empty() {
        true => None,
        false => Some((
            spec.annotations()
                .as_ref()
                .and_then(|a| a.get(SANDBOX_ID_ANNOTATION))
                .cloned()
                .ok_or(SpecError::PidNamespace)?,
            joined,
        )),
    };
    Ok(ContainerPlan {
        process,
        hostname,
        mounts,
        resources,
        shares_with,
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
