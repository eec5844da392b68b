//! rustjail: husk's container engine inside the guest. It turns an OCI runtime spec into a
//! running, confined process: namespaces, the root filesystem and its mounts, devices,
//! capabilities, rlimits, seccomp, SELinux labels and a cgroup v2 of its own.
//!
//! Owns everything between a validated spec and `execve` of the container's program, and the
//! container's cgroup. Must never talk to the host (the agent owns the RPCs and the stdio
//! streams) and must never trust the spec: every path, name and number in it is checked in
//! [`spec`] before anything is done with it.
//!
//! Modules, one job each:
//! - [`spec`]: reads and validates the spec into plans (the only place that parses it).
//! - [`jail`]: the jail process, between the agent's fork and the program's exec.
//! - [`launch`]: the agent's side of a jail process: start it, drive it, wait for it.
//! - [`sync`]: the messages between the two; [`launcher`]: the thread they are forked on.
//! - [`capabilities`], [`paths`], [`hooks`]: capability sets, paths inside the root, OCI hooks.
//! - [`cgroups`]: the container's cgroup v2: limits, stats, freezing, OOM events.
//! - [`seccomp`]: the OCI seccomp profile (or the default one) compiled with libseccomp.
//! - [`selinux`]: the process and mount labels.

pub mod capabilities;
pub mod cgroups;
pub mod hooks;
pub mod jail;
pub mod launch;
pub mod launcher;
pub mod paths;
pub mod seccomp;
pub mod selinux;
pub mod spec;
pub mod sync;
