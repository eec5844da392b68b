//! The guest image manifest: written by the image builder (rootfs/), read by husk-init and by
//! the host. It names the image's build id, flavour, component versions and the services init
//! supervises. This module defines the schema only; it never reads or writes files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the manifest lives inside the guest image.
pub const MANIFEST_PATH: &str = "/etc/husk/manifest.json";

/// The name of husk-console's service in a manifest: the host reads a VM's console from it.
pub const CONSOLE_SERVICE: &str = "console";

/// The name of husk-tracer's service in a manifest; it is enabled by
/// [`crate::cmdline::TRACING`], and husk-init stops it last at shutdown, after the services
/// whose spans it forwards have exited.
pub const TRACER_SERVICE: &str = "tracer";

/// Where the host keeps an image's manifest: beside it, as `<image>.manifest.json`.
pub fn manifest_path_for(image: &std::path::Path) -> std::path::PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".manifest.json");
    s.into()
}

/// Current manifest schema version.
pub const SCHEMA: u32 = 1;

/// Version of the binary SELinux policy format an image carries: the newest Linux 6.1 reads
/// (`POLICYDB_VERSION_MAX`); the image builder asks the policy compiler for exactly this.
pub const SELINUX_POLICY_VERSION: u32 = 33;

/// Where an image keeps its binary SELinux policy: libselinux's layout for a policy named
/// `husk` (see [`SELINUX_CONFIG_PATH`]), suffixed with [`SELINUX_POLICY_VERSION`].
pub const SELINUX_POLICY_PATH: &str = "/etc/selinux/husk/policy/policy.33";

/// libselinux's configuration file. libselinux counts SELinux as enabled only when it exists,
/// so an image with a policy carries one (naming the policy `husk`).
pub const SELINUX_CONFIG_PATH: &str = "/etc/selinux/config";

/// The manifest document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// Schema version, [`SCHEMA`].
    pub schema: u32,
    /// Content hash of the image (hex), identical for identical inputs.
    pub build_id: String,
    /// `default` or `debug`.
    pub flavour: String,
    /// Component name → version (husk-init, busybox, …).
    #[serde(default)]
    pub components: BTreeMap<String, String>,
    /// Services husk-init starts and restarts, in start order.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// The SELinux policy the image carries, which husk-init loads and enforces at boot
    /// unless the kernel command line turns SELinux off; none: the image has no policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux: Option<SelinuxPolicy>,
}

/// An image's binary SELinux policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelinuxPolicy {
    /// Where it is in the image ([`SELINUX_POLICY_PATH`]).
    pub path: String,
    /// Its format version ([`SELINUX_POLICY_VERSION`]).
    pub version: u32,
    /// SHA-256 of the binary policy, hex: which policy this is.
    pub sha256: String,
}

/// One supervised service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Short name used in logs and events.
    pub name: String,
    /// Program and arguments; `argv[0]` is an absolute path inside the image.
    pub argv: Vec<String>,
    /// `KEY=VALUE` environment entries (nothing else is inherited).
    #[serde(default)]
    pub env: Vec<String>,
    /// Where the service's standard streams go.
    #[serde(default)]
    pub stdio: ServiceStdio,
    /// A kernel command-line key that turns the service on (`husk.console`): with one, husk-init
    /// starts the service only when the command line sets that key to `1`; without, always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_by: Option<String>,
}

/// Standard streams of a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStdio {
    /// stdin from /dev/null, stdout and stderr to the console (the default).
    #[default]
    Log,
    /// An interactive session on the console: new session, console as controlling terminal.
    Console,
}

impl ServiceSpec {
    /// Whether husk-init starts this service under kernel command line `cmdline`.
    pub fn enabled(&self, cmdline: &str) -> bool {
        match &self.enabled_by {
            None => true,
            Some(key) => crate::cmdline::lookup(cmdline, key) == Some("1"),
        }
    }

    /// Checks what init relies on: a usable name and an absolute program path.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "service name {:?} must be 1-64 of [A-Za-z0-9_-]",
                self.name
            ));
        }
        match self.argv.first() {
            Some(p) if p.starts_with('/') => Ok(()),
            _ => Err(format!(
                "service {}: argv[0] must be an absolute path",
                self.name
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, argv: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            stdio: ServiceStdio::Log,
            enabled_by: None,
        }
    }

    #[test]
    fn a_gated_service_needs_its_key() {
        let mut s = svc("console", &["/usr/bin/husk-console"]);
        assert!(s.enabled("quiet"));
        s.enabled_by = Some(crate::cmdline::CONSOLE.into());
        assert!(!s.enabled("quiet"));
        assert!(!s.enabled("husk.console=0"));
        assert!(s.enabled("quiet husk.console=1"));
        assert!(
            !s.enabled("husk.console=1 husk.console=0"),
            "the last one wins"
        );
    }

    #[test]
    fn service_validation() {
        assert!(svc("agent", &["/bin/husk-agent"]).validate().is_ok());
        assert!(svc("", &["/x"]).validate().is_err());
        assert!(svc("a b", &["/x"]).validate().is_err());
        assert!(svc("a", &["rel"]).validate().is_err());
        assert!(svc("a", &[]).validate().is_err());
    }

    #[test]
    fn defaults_apply() {
        let m: ImageManifest =
            serde_json::from_str(r#"{"schema":1,"build_id":"x","flavour":"default"}"#).unwrap();
        assert!(m.services.is_empty());
        let s: ServiceSpec = serde_json::from_str(r#"{"name":"a","argv":["/a"]}"#).unwrap();
        assert_eq!(s.stdio, ServiceStdio::Log);
        assert_eq!(m.selinux, None, "an image of before SELinux has no policy");
    }

    #[test]
    fn the_policy_path_names_its_version() {
        assert!(SELINUX_POLICY_PATH.ends_with(&format!("/policy.{SELINUX_POLICY_VERSION}")));
        assert!(SELINUX_POLICY_PATH.starts_with("/etc/selinux/"));
    }
}
