//! `husk.agent.v1`: the host's API to husk-agent (vsock [`crate::ports::AGENT_PORT`]).
//!
//! Re-exports the generated messages, client and service trait, and owns the version rules:
//! the package name, major and minor, the capability strings, and the host's compatibility
//! check. Must never contain transport or handler logic.

pub use crate::generated::agent::*;
pub use crate::generated::agent_ttrpc::{create_agent, Agent, AgentClient};

/// Protocol package announced in the handshake.
pub const PROTOCOL: &str = "husk.agent.v1";
/// Major version: a host refuses an agent with another major.
pub const MAJOR: u32 = 1;
/// Minor version: grows as optional fields and RPCs are added.
pub const MINOR: u32 = 4;

/// Optional features an agent may advertise; the host uses one only when it is listed.
pub mod capability {
    /// `GetGuestDetails` is served.
    pub const GUEST_DETAILS: &str = "guest-details";
    /// Container lifecycle RPCs with a basic jail (mount, pid, uts, ipc namespaces).
    pub const CONTAINERS: &str = "containers";
    /// Per-process stdio on dedicated `husk.stdio.v1` vsock streams.
    pub const STDIO_STREAMS: &str = "stdio-streams";
    /// `CreateSandbox` and `DestroySandbox` (v1.1).
    pub const SANDBOX: &str = "sandbox";
    /// `ExecProcess`, and `StartContainer` with an exec id (v1.1).
    pub const EXEC: &str = "exec";
    /// Terminals (`process.terminal`) on one stdout stream, and `ResizeTty` (v1.1).
    pub const TTY: &str = "tty";
    /// A cgroup per container: `ListProcesses`, `StatsContainer`, `PauseContainer`,
    /// `ResumeContainer`, `UpdateContainer` (v1.1).
    pub const CGROUPS: &str = "cgroups";
    /// `GetOOMEvent` (v1.1).
    pub const OOM_EVENTS: &str = "oom-events";
    /// Several containers per sandbox: `rootfs_path` in CreateContainer, and a container whose
    /// spec asks for a pid namespace by path joins its sandbox container's (v1.2).
    pub const PODS: &str = "pods";
    /// `interfaces` and `routes` in `CreateSandbox`: the pod's network (v1.3).
    pub const NETWORK: &str = "network";
    /// The whole OCI runtime spec in the jail (rustjail): every namespace incl. user and
    /// cgroup, capabilities, rlimits, seccomp with a default profile, SELinux labels, devices,
    /// sysctls, masked and read-only paths, hooks; the init is made at `CreateContainer` and
    /// waits for `StartContainer` (v1.4).
    pub const OCI_JAIL: &str = "oci-jail";
}

/// Where the agent mounts each virtio-fs share (`<SHARES_DIR>/<tag>`), read-write (the
/// host's virtiofsd decides what is writable). A spec's bind mount may name a source there: a
/// host directory or file the host put in the pod's share (a volume).
pub const SHARES_DIR: &str = "/run/husk/shares";

/// Longest container or exec id.
pub const MAX_ID: usize = 64;

/// Checks a container or exec id: 1-64 of `[A-Za-z0-9_.-]`, not starting with `.` (ids name
/// directories in the guest, so `..` and `/` must never pass).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// Why the host will not talk to an agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the guest agent speaks {agent_protocol} (major {agent_major}, agent {agent_version}), this host speaks {PROTOCOL} (major {MAJOR}): rebuild the guest image with this husk (`husk image build`)")]
pub struct Incompatible {
    pub agent_protocol: String,
    pub agent_major: u32,
    pub agent_version: String,
}

/// Accepts a handshake answer from an agent of the same major version.
pub fn check_compatible(resp: &HandshakeResponse) -> Result<(), Incompatible> {
    if resp.major == MAJOR && resp.protocol == PROTOCOL {
        return Ok(());
    }
    Err(Incompatible {
        agent_protocol: resp.protocol.clone(),
        agent_major: resp.major,
        agent_version: resp.agent_version.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(protocol: &str, major: u32) -> HandshakeResponse {
        HandshakeResponse {
            protocol: protocol.into(),
            major,
            minor: 7,
            agent_version: "9.9.9".into(),
            ..Default::default()
        }
    }

    #[test]
    fn same_major_any_minor_is_accepted() {
        assert!(check_compatible(&resp(PROTOCOL, MAJOR)).is_ok());
    }

    #[test]
    fn another_major_is_refused_naming_both() {
        let e = check_compatible(&resp("husk.agent.v2", 2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("husk.agent.v2") && e.contains("major 2"), "{e}");
        assert!(e.contains("husk.agent.v1") && e.contains("major 1"), "{e}");
        assert!(e.contains("9.9.9"), "{e}");
    }

    #[test]
    fn ids() {
        assert!(valid_id("c1") && valid_id("my.container-2_x"));
        for bad in ["", ".", "..", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn messages_round_trip_through_protobuf() {
        use protobuf::Message;
        let r = resp(PROTOCOL, MAJOR);
        let bytes = r.write_to_bytes().unwrap();
        assert_eq!(HandshakeResponse::parse_from_bytes(&bytes).unwrap(), r);
    }
}
