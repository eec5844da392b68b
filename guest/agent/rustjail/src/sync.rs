//! The conversation between the agent and a jail process, over a Unix socket pair: one frame
//! per message, a little-endian u32 length then JSON.
//!
//! Owns the message types and their framing. Must never trust a frame: lengths are bounded
//! and every frame is parsed into a closed set of messages. The jail's end is close-on-exec,
//! so a successful `execve` of the container's program reads as end of file on the agent's.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use oci_spec::runtime::LinuxSeccomp;
use serde::{Deserialize, Serialize};

use crate::spec::{ContainerPlan, Namespace, ProcessPlan};

/// The largest frame (a spec is at most 1 MiB; its plan is smaller than twice that).
pub const MAX_FRAME: usize = 4 << 20;

/// What a jail process is to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Mode {
    /// A container's init: new namespaces (or its sandbox's), mounts, root.
    Create {
        plan: Box<ContainerPlan>,
        /// The container's root directory (the agent's path, an overlay mount).
        rootfs: PathBuf,
        /// Each of the plan's mounts' target, resolved inside `rootfs` by the agent.
        targets: Vec<PathBuf>,
        /// Namespaces joined rather than made: the sandbox's, as /proc/PID/ns/NAME paths.
        joins: Vec<(Namespace, PathBuf)>,
    },
    /// A process exec'd into a running container: its init's namespaces, cgroup and root.
    Exec {
        process: Box<ProcessPlan>,
        /// The namespaces to join, in this order (user first, mount last).
        joins: Vec<(Namespace, PathBuf)>,
        /// The container's seccomp profile (the default one when `None`).
        seccomp: Option<LinuxSeccomp>,
    },
}

/// Everything a jail process needs, sent as its first message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JailConfig {
    pub container_id: String,
    pub mode: Mode,
    /// The program to exec: a path inside the container.
    pub program: PathBuf,
    /// The container cgroup's `cgroup.procs`, joined first.
    pub cgroup_procs: Option<PathBuf>,
    /// Whether SELinux is enforcing in the guest (labels are applied only then).
    pub selinux: bool,
}

/// Agent → jail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToJail {
    Config(Box<JailConfig>),
    /// The uid and gid maps of the new user namespace are written.
    Mapped,
    /// The createRuntime hooks ran; the container's state for the createContainer hooks.
    Continue {
        state: String,
    },
    /// StartContainer: run the startContainer hooks with this state, then exec.
    Start {
        state: String,
    },
}

/// Jail → agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromJail {
    /// A new user namespace was made by the jail process `pid`: write its id maps.
    MapIds { pid: u32 },
    /// The process that will exec the container's program (in the guest's pid namespace).
    Pid { pid: u32 },
    /// Namespaces and mounts are ready (before `pivot_root`): run the createRuntime hooks.
    Mounted,
    /// Everything is ready; waiting for [`ToJail::Start`].
    Created,
    /// A step failed; the jail process exits.
    Error { message: String },
}

/// Sends one message.
pub fn send<T: Serialize>(sock: &mut UnixStream, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a jail message of {} bytes is over {MAX_FRAME}", body.len()),
        ));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    sock.write_all(&frame)
}

/// Receives one message; `None` at end of file (the other side closed, or exec'd).
pub fn recv<T: for<'de> Deserialize<'de>>(sock: &mut UnixStream) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match sock.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a jail message claims {len} bytes, over {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_end_at_eof() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        send(&mut a, &FromJail::Pid { pid: 7 }).unwrap();
        drop(a);
        assert!(matches!(
            recv::<FromJail>(&mut b).unwrap(),
            Some(FromJail::Pid { pid: 7 })
        ));
        assert!(recv::<FromJail>(&mut b).unwrap().is_none());
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&(MAX_FRAME as u32 + 1).to_le_bytes()).unwrap();
        assert!(recv::<FromJail>(&mut b).is_err());
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&3u32.to_le_bytes()).unwrap();
        a.write_all(b"{x}").unwrap();
        assert!(recv::<FromJail>(&mut b).is_err());
    }
}
