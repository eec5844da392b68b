//! Linux capability names, shared by the host (flags that edit a spec: `husk run --cap-add`)
//! and the guest (the jail applies them; the default seccomp profile follows them).
//!
//! Owns the name table (linux/capability.h, 0 to 40), the spelling rules and the default set
//! a container keeps. Must never apply anything.

/// Capability names by number, as in linux/capability.h (0 to 40).
pub const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The canonical spelling of a capability name (`net_raw`, `NET_RAW` and `CAP_NET_RAW` are
/// `CAP_NET_RAW`), `None` when it names no capability.
pub fn canonical(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    let full = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES
        .iter()
        .copied()
        .find(|n| n.strip_prefix("CAP_") == Some(full))
}

/// The number of a capability name (any spelling [`canonical`] takes).
pub fn number(name: &str) -> Option<u32> {
    let c = canonical(name)?;
    NAMES.iter().position(|n| *n == c).map(|i| i as u32)
}

/// The capabilities a container keeps by default under containerd and docker (runc's own
/// defaults keep three).
pub const CONTAINER_DEFAULTS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        assert_eq!(canonical("net_raw"), Some("CAP_NET_RAW"));
        assert_eq!(canonical("CAP_SYS_ADMIN"), Some("CAP_SYS_ADMIN"));
        assert_eq!(canonical("CAP_CAP_KILL"), None);
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert!(CONTAINER_DEFAULTS.iter().all(|c| canonical(c) == Some(*c)));
    }
}
