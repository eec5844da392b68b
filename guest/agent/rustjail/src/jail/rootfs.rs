//! A new container's filesystem view: the propagation of `/`, the root bound on itself, the
//! spec's mounts (with the SELinux mount label), `/dev` (default nodes, the spec's devices,
//! the standard links, the terminal as `/dev/console`), sysctls, then after the hooks
//! `pivot_root`, masked and read-only paths and a read-only root.
//!
//! Owns the order of those steps, through [`Sys`]. Must never mount outside the container's
//! root: every target was resolved inside it by the agent ([`crate::paths`]) before the jail
//! started, and the spec's paths were validated by [`crate::spec`].

use std::io;
use std::path::{Path, PathBuf};

use super::sys::{Kind, Sys};
use crate::spec::{ContainerPlan, MountPlan, Namespace, NamespaceMode};

/// Device nodes bound from the guest's /dev into a container's tmpfs /dev.
pub const DEFAULT_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Standard /dev symlinks (link name, target).
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
];
/// The filesystems that take the SELinux mount label (`context=`). Not mqueue: its superblock
/// belongs to the IPC namespace, and a second mount with other options is refused.
const LABELLED: &[&str] = &["tmpfs", "devpts"];

/// What the jail needs to know beside the plan.
#[derive(Debug)]
pub struct Setup<'a> {
    pub plan: &'a ContainerPlan,
    pub rootfs: &'a Path,
    /// Each spec mount's target, resolved inside the root by the agent.
    pub targets: &'a [PathBuf],
    /// The container's cgroup directory (bound at a cgroup mount without a cgroup namespace).
    pub cgroup_dir: Option<&'a Path>,
    /// The SELinux mount label to add, when SELinux is on.
    pub mount_label: Option<&'a str>,
}

fn err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn with_label(data: &str, fstype: &str, label: Option<&str>) -> Option<String> {
    let mut words: Vec<String> = data
        .split(',')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(l) = label.filter(|_| LABELLED.contains(&fstype)) {
        if !words.iter().any(|w| w.starts_with("context=")) {
            words.push(crate::selinux::mount_option(l));
        }
    }
    (!words.is_empty()).then(|| words.join(","))
}

/// Before the hooks: everything under the root, while the guest's root is still visible.
pub fn prepare(sys: &mut impl Sys, s: &Setup<'_>) -> Result<(), String> {
    let plan = s.plan;
    // Nothing done below may reach the agent's mount namespace.
    sys.mount(None, Path::new("/"), None, plan.root_propagation, None)
        .map_err(err("setting the propagation of /"))?;
    // pivot_root needs the new root to be a mount point.
    sys.mount(
        Some(&s.rootfs.display().to_string()),
        s.rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(err("binding the container's root"))?;
    for (m, target) in plan.mounts.iter().zip(s.targets) {
        mount_one(sys, s, m, target).map_err(|e| {
            format!(
                "mounting {} at {}: {e}",
                m.fstype_or_bind(),
                m.destination.display()
            )
        })?;
    }
    dev(sys, s)?;
    for (key, value) in &plan.sysctl {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        sys.write_file(&path, value)
            .map_err(err(format_args!("setting sysctl {key}={value}")))?;
    }
    Ok(())
}

impl MountPlan {
    fn fstype_or_bind(&self) -> &str {
        if self.bind {
            "bind"
        } else {
            &self.fstype
        }
    }
}

fn mount_one(sys: &mut impl Sys, s: &Setup<'_>, m: &MountPlan, target: &Path) -> io::Result<()> {
    let user_ns = s.plan.namespace(Namespace::User) == Some(NamespaceMode::New);
    if m.bind {
        bind(sys, &m.source, target, m.flags)?;
    } else if m.fstype == "cgroup2" && s.plan.namespace(Namespace::Cgroup).is_none() {
        // Without a cgroup namespace the container sees its own cgroup only, bound in place.
        sys.mkdir_all(target)?;
        let dir = s
            .cgroup_dir
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "/sys/fs/cgroup".into());
        bind(sys, &dir, target, m.flags)?;
    } else {
        sys.mkdir_all(target)?;
        let source = if m.source.is_empty() {
            m.fstype.as_str()
        } else {
            m.source.as_str()
        };
        let data = with_label(&m.data, &m.fstype, s.mount_label);
        let r = sys.mount(
            Some(source),
            target,
            Some(&m.fstype),
            m.flags,
            data.as_deref(),
        );
        match r {
            // A user namespace may not mount a sysfs of a network namespace it does not own:
            // bind the guest's, as runc does.
            Err(e) if m.fstype == "sysfs" && user_ns && e.raw_os_error() == Some(libc::EPERM) => {
                bind(sys, "/sys", target, m.flags | libc::MS_REC)?;
            }
            other => other?,
        }
    }
    for p in &m.propagation {
        sys.mount(None, target, None, *p, None)?;
    }
    Ok(())
}

/// A bind mount of `source` at `target` (made a file or directory like the source), with the
/// flags applied by a remount (the kernel ignores them on the bind itself).
fn bind(sys: &mut impl Sys, source: &str, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    match sys.kind(Path::new(source))? {
        Some(Kind::Dir) => sys.mkdir_all(target)?,
        Some(_) => {
            if sys.kind(target)?.is_none() {
                sys.create_file(target)?;
            }
        }
        None => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the bind source {source} does not exist"),
            ))
        }
    }
    sys.mount(
        Some(source),
        target,
        None,
        libc::MS_BIND | (flags & libc::MS_REC),
        None,
    )?;
    let extra = flags & !(libc::MS_REC | libc::MS_BIND);
    if extra != 0 {
        sys.mount(
            None,
            target,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | extra,
            None,
        )?;
    }
    Ok(())
}

fn dev(sys: &mut impl Sys, s: &Setup<'_>) -> Result<(), String> {
    let plan = s.plan;
    let dev = s.rootfs.join("dev");
    let tmpfs_dev = plan
        .mounts
        .iter()
        .any(|m| m.destination == Path::new("/dev") && !m.bind);
    if tmpfs_dev {
        for n in DEFAULT_DEVICES {
            if plan
                .devices
                .iter()
                .any(|d| d.path == Path::new("/dev").join(n))
            {
                continue;
            }
            bind(sys, &format!("/dev/{n}"), &dev.join(n), 0)
                .map_err(err(format_args!("binding /dev/{n}")))?;
        }
        for (link, target) in DEV_LINKS {
            sys.symlink(Path::new(target), &dev.join(link))
                .map_err(err(format_args!("linking /dev/{link}")))?;
        }
    }
    let user_ns = plan.namespace(Namespace::User) == Some(NamespaceMode::New);
    for d in &plan.devices {
        let target = s.rootfs.join(d.path.strip_prefix("/").unwrap_or(&d.path));
        if let Some(parent) = target.parent() {
            sys.mkdir_all(parent)
                .map_err(err(format_args!("creating {}", d.path.display())))?;
        }
        if user_ns {
            // mknod is not allowed in a user namespace: bind the guest's node instead.
            bind(sys, &d.path.display().to_string(), &target, 0)
                .map_err(err(format_args!("binding device {}", d.path.display())))?;
            continue;
        }
        let devno = libc::makedev(d.major as u32, d.minor as u32);
        sys.mknod(&target, d.kind, d.mode, devno)
            .map_err(err(format_args!("creating device {}", d.path.display())))?;
        sys.chown(&target, d.uid, d.gid)
            .map_err(err(format_args!("chown of device {}", d.path.display())))?;
    }
    if plan.process.terminal && tmpfs_dev {
        // The terminal is the container's console, as under runc. Bound by path: the fd's
        // mount belongs to the agent's mount namespace, not this copy of it.
        let tty = sys
            .terminal_path()
            .map_err(err("finding the terminal on stdin"))?;
        bind(sys, &tty.display().to_string(), &dev.join("console"), 0).map_err(err(
            format_args!("binding the terminal {} at /dev/console", tty.display()),
        ))?;
    }
    Ok(())
}

/// After the hooks: `pivot_root`, then masked and read-only paths, a read-only root, names.
pub fn finish(sys: &mut impl Sys, s: &Setup<'_>) -> Result<(), String> {
    let plan = s.plan;
    sys.pivot_root(s.rootfs)
        .map_err(err("pivot_root into the container's root"))?;
    for p in &plan.masked_paths {
        match sys
            .kind(p)
            .map_err(err(format_args!("masking {}", p.display())))?
        {
            None => {}
            Some(Kind::Dir) => {
                // With SELinux on, the mask carries the mount label, or the container could
                // not even list it.
                let data = with_label("", "tmpfs", s.mount_label);
                sys.mount(
                    Some("tmpfs"),
                    p,
                    Some("tmpfs"),
                    libc::MS_RDONLY,
                    data.as_deref(),
                )
                .map_err(err(format_args!("masking {}", p.display())))?
            }
            Some(_) => sys
                .mount(Some("/dev/null"), p, None, libc::MS_BIND, None)
                .map_err(err(format_args!("masking {}", p.display())))?,
        }
    }
    for p in &plan.readonly_paths {
        if sys
            .kind(p)
            .map_err(err(format_args!("read-only path {}", p.display())))?
            .is_none()
        {
            continue;
        }
        let path = p.display().to_string();
        sys.mount(Some(&path), p, None, libc::MS_BIND | libc::MS_REC, None)
            .and_then(|()| {
                sys.mount(
                    None,
                    p,
                    None,
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    None,
                )
            })
            .map_err(err(format_args!("making {} read-only", p.display())))?;
    }
    if plan.readonly_root {
        sys.mount(
            None,
            Path::new("/"),
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )
        .map_err(err("making the root read-only"))?;
    }
    let own_uts = plan.namespace(Namespace::Uts) == Some(NamespaceMode::New);
    if own_uts {
        if let Some(h) = &plan.hostname {
            sys.sethostname(h).map_err(err("setting the hostname"))?;
        }
        if let Some(d) = &plan.domainname {
            sys.setdomainname(d)
                .map_err(err("setting the domainname"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::sys::Recorder;
    use super::*;

    fn plan(edit: impl FnOnce(&mut serde_json::Value)) -> ContainerPlan {
        let mut v = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
        v["process"]["args"] = serde_json::json!(["/bin/sh"]);
        v["hostname"] = "box".into();
        edit(&mut v);
        crate::spec::parse(&v.to_string()).unwrap()
    }

    fn run(p: &ContainerPlan, label: Option<&str>) -> Vec<String> {
        let root = Path::new("/r");
        let targets: Vec<PathBuf> = p
            .mounts
            .iter()
            .map(|m| root.join(m.destination.strip_prefix("/").unwrap()))
            .collect();
        let mut sys = Recorder {
            existing: vec![
                (PathBuf::from("/dev/null"), Kind::Other),
                (PathBuf::from("/dev/zero"), Kind::Other),
                (PathBuf::from("/dev/full"), Kind::Other),
                (PathBuf::from("/dev/random"), Kind::Other),
                (PathBuf::from("/dev/urandom"), Kind::Other),
                (PathBuf::from("/dev/tty"), Kind::Other),
                (PathBuf::from("/proc/kcore"), Kind::File),
                (PathBuf::from("/proc/acpi"), Kind::Dir),
                (PathBuf::from("/proc/sys"), Kind::Dir),
                (PathBuf::from("/sys/fs/cgroup/husk/c1"), Kind::Dir),
            ],
            ..Default::default()
        };
        let s = Setup {
            plan: p,
            rootfs: root,
            targets: &targets,
            cgroup_dir: Some(Path::new("/sys/fs/cgroup/husk/c1")),
            mount_label: label,
        };
        prepare(&mut sys, &s).unwrap();
        sys.calls.push("-- hooks --".into());
        finish(&mut sys, &s).unwrap();
        sys.calls
    }

    fn pos(calls: &[String], prefix: &str) -> usize {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no call {prefix:?} in {calls:#?}"))
    }

    #[test]
    fn the_default_spec_in_order() {
        let calls = run(&plan(|_| {}), None);
        assert_eq!(
            calls[0],
            format!("mount - / - {:#x} -", libc::MS_PRIVATE | libc::MS_REC)
        );
        assert!(calls[1].starts_with("mount /r /r -"));
        let proc_ = pos(&calls, "mount proc /r/proc proc");
        let devnull = pos(&calls, "mount /dev/null /r/dev/null");
        let hooks = pos(&calls, "-- hooks --");
        let pivot = pos(&calls, "pivot_root /r");
        let masked = pos(&calls, "mount /dev/null /proc/kcore");
        let ro = pos(&calls, "mount /proc/sys /proc/sys");
        let host = pos(&calls, "sethostname box");
        assert!(
            proc_ < devnull && devnull < hooks && hooks < pivot,
            "{calls:#?}"
        );
        assert!(pivot < masked && masked < ro && ro < host, "{calls:#?}");
        // A masked directory gets a read-only tmpfs; missing masked paths are skipped.
        pos(&calls, "mount tmpfs /proc/acpi tmpfs 0x1");
        assert!(!calls.iter().any(|c| c.contains("/proc/keys")));
        // With a cgroup namespace (the default spec has one), cgroup2 is mounted.
        pos(&calls, "mount cgroup /r/sys/fs/cgroup cgroup2");
        pos(&calls, "symlink /proc/self/fd /r/dev/fd");
        // The default spec's root is read-only.
        pos(
            &calls,
            &format!(
                "mount - / - {:#x}",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY
            ),
        );
    }

    #[test]
    fn labels_devices_sysctls_and_propagation() {
        let p = plan(|v| {
            v["linux"]["devices"] = serde_json::json!([
                {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 5, "gid": 6}
            ]);
            v["linux"]["sysctl"] = serde_json::json!({"kernel.shmmax": "1000"});
            v["linux"]["rootfsPropagation"] = "rslave".into();
            v["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "cgroup");
            v["mounts"][1]["options"]
                .as_array_mut()
                .unwrap()
                .push("rshared".into());
        });
        let calls = run(&p, Some("system_u:object_r:container_file_t:s0:c1,c2"));
        assert_eq!(
            calls[0],
            format!("mount - / - {:#x} -", libc::MS_SLAVE | libc::MS_REC)
        );
        let dev = pos(&calls, "mount tmpfs /r/dev tmpfs");
        assert!(
            calls[dev].contains("context=\"system_u:object_r:container_file_t:s0:c1,c2\""),
            "{}",
            calls[dev]
        );
        assert!(!calls[pos(&calls, "mount proc /r/proc proc")].contains("context="));
        pos(
            &calls,
            &format!("mount - /r/dev - {:#x}", libc::MS_SHARED | libc::MS_REC),
        );
        let makedev = libc::makedev(10, 229);
        pos(&calls, &format!("mknod /r/dev/fuse 20000 666 {makedev}"));
        pos(&calls, "chown /r/dev/fuse 5 6");
        let sysctl = pos(&calls, "write /proc/sys/kernel/shmmax 1000");
        // Without a cgroup namespace the container's own cgroup is bound in place.
        pos(&calls, "mount /sys/fs/cgroup/husk/c1 /r/sys/fs/cgroup -");
        assert!(sysctl < pos(&calls, "pivot_root"));
    }

    #[test]
    fn a_user_namespace_binds_devices_instead_of_mknod() {
        let p = plan(|v| {
            v["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"type": "user"}));
            v["linux"]["uidMappings"] =
                serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 100}]);
            v["linux"]["gidMappings"] =
                serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 100}]);
            v["linux"]["devices"] = serde_json::json!([
                {"path": "/dev/null", "type": "c", "major": 1, "minor": 3}
            ]);
        });
        let calls = run(&p, None);
        assert!(!calls.iter().any(|c| c.starts_with("mknod")), "{calls:#?}");
        pos(&calls, "mount /dev/null /r/dev/null");
    }
}
