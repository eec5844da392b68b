//! `husk.init.v1`: the control channel between husk-init (PID 1) and the host.
//!
//! The guest connects to host port [`crate::ports::INIT_PORT`] once its mounts are up and
//! sends [`GuestMessage::Ready`]; the host may then send [`HostMessage::Shutdown`]. Messages
//! travel as [`crate::frame`] frames. Both sides ignore unknown fields, so v1 may gain optional
//! fields; an unknown message type decodes as `Unknown` and is skipped, never fatal.

use serde::{Deserialize, Serialize};

/// Protocol package name and version announced in [`Ready::protocol`].
pub const PROTOCOL: &str = "husk.init.v1";

/// Major version of this protocol; a host refuses a guest whose major differs.
pub const MAJOR: u32 = 1;

/// Messages from husk-init to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    /// Init has mounted the base filesystems and started its services.
    Ready(Ready),
    /// A supervised service exited and will be restarted after `restart_in_ms`.
    ServiceExited {
        name: String,
        status: String,
        restart_in_ms: u64,
    },
    /// Init is about to sync and reboot (i.e. leave the VM).
    ShuttingDown { reason: String },
    /// A message type this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

/// The readiness report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Always [`PROTOCOL`] for this version.
    pub protocol: String,
    /// husk-init's crate version.
    pub init_version: String,
    /// Build id from the image manifest.
    pub build_id: String,
    /// Image flavour from the manifest (`default`, `debug`).
    pub flavour: String,
    /// `CLOCK_BOOTTIME` when readiness was sent, in nanoseconds.
    pub uptime_ns: u64,
    /// `CLOCK_BOOTTIME` when husk-init started, in nanoseconds (0 from an older init): the
    /// kernel's part of the boot, as a trace shows it.
    #[serde(default)]
    pub init_started_ns: u64,
    /// `CLOCK_REALTIME` when readiness was sent, in nanoseconds since the Unix epoch (0 from an
    /// older init). The host compares it with its own clock on receipt to learn the guest's
    /// clock offset, and shifts guest spans by it so a trace's waterfall is honest.
    #[serde(default)]
    pub realtime_ns: u64,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// Names of the services init started.
    #[serde(default)]
    pub services: Vec<String>,
    /// Whether init credited a hardware seed to the kernel's entropy pool.
    #[serde(default)]
    pub entropy_seeded: bool,
    /// SELinux in the guest: `enforcing`, `permissive` or `off` (empty from an older init).
    #[serde(default)]
    pub selinux: String,
}

/// Messages from the host to husk-init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// Stop services, sync filesystems and leave the VM.
    Shutdown {
        reason: String,
        /// W3C `traceparent` of the host span asking (tracing on): husk-init's shutdown span
        /// joins its trace.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    /// A message type this build does not know.
    #[serde(other)]
    Unknown,
}

/// The major version encoded in a protocol string such as `husk.init.v1`.
pub fn major_of(protocol: &str) -> Option<u32> {
    protocol.strip_prefix("husk.init.v")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{read_frame, write_frame};

    #[test]
    fn ready_round_trips() {
        let ready = GuestMessage::Ready(Ready {
            protocol: PROTOCOL.into(),
            init_version: "0.1.0".into(),
            build_id: "abc".into(),
            flavour: "debug".into(),
            uptime_ns: 12,
            realtime_ns: 1_700_000_000_000_000_000,
            init_started_ns: 5,
            kernel_release: "6.1".into(),
            services: vec!["shell".into()],
            entropy_seeded: true,
            selinux: "enforcing".into(),
        });
        let mut buf = Vec::new();
        write_frame(&mut buf, &ready).unwrap();
        let back: GuestMessage = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, ready);
    }

    #[test]
    fn unknown_types_and_fields_are_tolerated() {
        let m: HostMessage = serde_json::from_str(r#"{"type":"hibernate","x":1}"#).unwrap();
        assert_eq!(m, HostMessage::Unknown);
        let m: HostMessage =
            serde_json::from_str(r#"{"type":"shutdown","reason":"r","extra":true}"#).unwrap();
        assert_eq!(
            m,
            HostMessage::Shutdown {
                reason: "r".into(),
                traceparent: None
            }
        );
    }

    #[test]
    fn major_version() {
        assert_eq!(major_of(PROTOCOL), Some(MAJOR));
        assert_eq!(major_of("husk.init.v12"), Some(12));
        assert_eq!(major_of("other.v1"), None);
    }
}
