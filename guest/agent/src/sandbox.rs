//! The sandbox: the guest-wide set-up CreateSandbox makes before the first container (its id,
//! the hostname, the resolver configuration) and DestroySandbox undoes.
//!
//! Owns validating that request and writing `/etc/resolv.conf`. Must never touch containers
//! (DestroySandbox removes them through [`crate::container::Containers`]) nor accept text that
//! could inject lines into a guest file.

use std::path::PathBuf;
use std::sync::Mutex;

use husk_protocols::agent::{valid_id, CreateSandboxRequest};

/// Most resolver lines accepted.
pub const MAX_DNS_LINES: usize = 16;
/// Longest resolver line accepted.
pub const MAX_DNS_LINE: usize = 256;

/// Why a sandbox request was refused.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox id {0:?}: use 1-64 of [A-Za-z0-9_.-], not starting with '.'")]
    BadId(String),
    #[error("hostname {0:?} is not a valid hostname (1-64 of [A-Za-z0-9.-], no leading '-')")]
    Hostname(String),
    #[error("{0}")]
    Dns(String),
    #[error("sandbox {0:?} already exists: destroy it first")]
    Exists(String),
    #[error("no sandbox {0:?} (this guest's sandbox is {1:?})")]
    NotFound(String, Option<String>),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl SandboxError {
    /// The ttrpc status code for this error.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            SandboxError::BadId(_) | SandboxError::Hostname(_) | SandboxError::Dns(_) => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            SandboxError::Exists(_) => ttrpc::Code::ALREADY_EXISTS,
            SandboxError::NotFound(..) => ttrpc::Code::NOT_FOUND,
            SandboxError::Io { .. } => ttrpc::Code::INTERNAL,
        }
    }
}

/// Checks resolver lines: few, short, one line each, printable.
fn check_dns(lines: &[String]) -> Result<(), SandboxError> {
    if lines.len() > MAX_DNS_LINES {
        return Err(SandboxError::Dns(format!(
            "{} resolver lines, over the limit of {MAX_DNS_LINES}",
            lines.len()
        )));
    }
    for l in lines {
        if l.len() > MAX_DNS_LINE || l.bytes().any(|b| b.is_ascii_control()) {
            return Err(SandboxError::Dns(format!(
                "resolver line {:?} must be at most {MAX_DNS_LINE} printable bytes on one line",
                l.chars().take(80).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// The guest's sandbox.
#[derive(Debug)]
pub struct Sandbox {
    /// `/etc` of the guest (a temporary directory in tests).
    etc: PathBuf,
    id: Mutex<Option<String>>,
}

impl Sandbox {
    pub fn new(etc: impl Into<PathBuf>) -> Self {
        Self {
            etc: etc.into(),
            id: Mutex::new(None),
        }
    }

    fn id(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates and applies the request; `set_hostname` changes the guest's hostname.
    pub fn create(
        &self,
        req: &CreateSandboxRequest,
        set_hostname: impl FnOnce(&str) -> std::io::Result<()>,
    ) -> Result<(), SandboxError> {
        if !valid_id(&req.sandbox_id) {
            return Err(SandboxError::BadId(
                req.sandbox_id.chars().take(80).collect(),
            ));
        }
        if !req.hostname.is_empty() && !husk_protocols::cmdline::valid_hostname(&req.hostname) {
            return Err(SandboxError::Hostname(
                req.hostname.chars().take(80).collect(),
            ));
        }
        check_dns(&req.dns)?;
        let mut id = self.id();
        if let Some(existing) = id.as_ref() {
            return Err(SandboxError::Exists(existing.clone()));
        }
        if !req.hostname.is_empty() {
            set_hostname(&req.hostname).map_err(|source| SandboxError::Io {
                context: format!("setting the hostname to {:?}", req.hostname),
                source,
            })?;
        }
        if !req.dns.is_empty() {
            let path = self.etc.join("resolv.conf");
            let text: String = req.dns.iter().map(|l| format!("{l}\n")).collect();
            std::fs::create_dir_all(&self.etc)
                .and_then(|()| std::fs::write(&path, text))
                .map_err(|source| SandboxError::Io {
                    context: format!("writing {}", path.display()),
                    source,
                })?;
        }
        *id = Some(req.sandbox_id.clone());
        tracing::info!(sandbox = %req.sandbox_id, "sandbox created");
        Ok(())
    }

    /// Checks that `sandbox_id` is this guest's sandbox.
    pub fn check(&self, sandbox_id: &str) -> Result<(), SandboxError> {
        let id = self.id();
        if id.as_deref() == Some(sandbox_id) {
            Ok(())
        } else {
            Err(SandboxError::NotFound(
                sandbox_id.chars().take(80).collect(),
                id.clone(),
            ))
        }
    }

    /// Forgets the sandbox (its containers are already gone).
    pub fn forget(&self) {
        if let Some(id) = self.id().take() {
            tracing::info!(sandbox = %id, "sandbox destroyed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, hostname: &str, dns: &[&str]) -> CreateSandboxRequest {
        CreateSandboxRequest {
            sandbox_id: id.into(),
            hostname: hostname.into(),
            dns: dns.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn create_check_destroy() {
        let etc = tempfile::tempdir().unwrap();
        let sb = Sandbox::new(etc.path());
        let mut set = None;
        sb.create(&req("pod1", "web", &["nameserver 10.0.2.3"]), |h| {
            set = Some(h.to_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(set.as_deref(), Some("web"));
        assert_eq!(
            std::fs::read_to_string(etc.path().join("resolv.conf")).unwrap(),
            "nameserver 10.0.2.3\n"
        );
        assert!(matches!(
            sb.create(&req("pod2", "", &[]), |_| Ok(())),
            Err(SandboxError::Exists(_))
        ));
        assert!(sb.check("pod1").is_ok());
        assert!(matches!(sb.check("pod2"), Err(SandboxError::NotFound(..))));
        sb.forget();
        assert!(sb.check("pod1").is_err());
        sb.create(&req("pod2", "", &[]), |_| panic!("no hostname given"))
            .unwrap();
    }

    #[test]
    fn hostile_requests_are_refused() {
        let etc = tempfile::tempdir().unwrap();
        let sb = Sandbox::new(etc.path());
        let never = |_: &str| -> std::io::Result<()> { panic!("must not be applied") };
        assert!(matches!(
            sb.create(&req("../x", "", &[]), never),
            Err(SandboxError::BadId(_))
        ));
        assert!(matches!(
            sb.create(&req("p", "a b", &[]), never),
            Err(SandboxError::Hostname(_))
        ));
        assert!(matches!(
            sb.create(&req("p", "", &["nameserver 1.1.1.1\noptions evil"]), never),
            Err(SandboxError::Dns(_))
        ));
        let many: Vec<&str> = vec!["nameserver 1.1.1.1"; MAX_DNS_LINES + 1];
        assert!(matches!(
            sb.create(&req("p", "", &many), never),
            Err(SandboxError::Dns(_))
        ));
        assert!(!etc.path().join("resolv.conf").exists());
    }
}
