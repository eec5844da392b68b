//! OCI hooks: each runs as its own process with the container's state (JSON) on stdin, its
//! own arguments and environment, and a timeout; a failure names the hook, the point of the
//! container's life it ran at, and its exit status and last words on stderr.
//!
//! Owns running a list of hooks in order and the container state document. Must never run a
//! hook without a timeout, nor keep reading a hook's output without bound.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde::Serialize;

use crate::spec::HookPlan;

/// The most of a failed hook's stderr kept for the error message.
const MAX_STDERR: u64 = 4096;

/// The OCI state of a container, as hooks read it on stdin.
#[derive(Debug, Clone, Serialize)]
pub struct State<'a> {
    #[serde(rename = "ociVersion")]
    pub oci_version: &'static str,
    pub id: &'a str,
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub bundle: &'a str,
    pub annotations: &'a std::collections::BTreeMap<String, String>,
}

impl State<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The OCI runtime spec version husk implements.
pub const OCI_VERSION: &str = "1.2.0";

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{point} hook {path} could not start: {source}")]
    Start {
        point: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{point} hook {path} failed with {status}{stderr}")]
    Failed {
        point: &'static str,
        path: String,
        status: String,
        stderr: String,
    },
    #[error("{point} hook {path} did not finish within {secs} s and was killed")]
    Timeout {
        point: &'static str,
        path: String,
        secs: u64,
    },
}

/// Runs `hooks` in order, each with `state` on stdin; stops at the first failure.
pub fn run_all(point: &'static str, hooks: &[HookPlan], state: &str) -> Result<(), HookError> {
    if hooks.is_empty() {
        return Ok(());
    }
    let _span = husk_telemetry::child_span!(
        "jail.hooks",
        otel.name = format!("jail hooks {point}"),
        hooks = hooks.len(),
    )
    .entered();
    for h in hooks {
        run(point, h, state)?;
    }
    Ok(())
}

fn run(point: &'static str, h: &HookPlan, state: &str) -> Result<(), HookError> {
    let path = h.path.display().to_string();
    let mut cmd = Command::new(&h.path);
    if let Some((first, rest)) = h.args.split_first() {
        cmd.arg0(first).args(rest);
    }
    cmd.env_clear();
    for kv in &h.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Forked on the unconfined thread: the agent's own seccomp filter must not reach a hook.
    let mut child =
        crate::launcher::run(move || cmd.spawn()).map_err(|source| HookError::Start {
            point,
            path: path.clone(),
            source,
        })?;
    let pid = child.id();
    let stdin = child.stdin.take();
    let body = state.as_bytes().to_vec();
    // The state goes in on a thread of its own: a hook that never reads must not block us.
    let feeder = std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            let _ = s.write_all(&body);
        }
    });
    let mut stderr = child.stderr.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.take(MAX_STDERR).read_to_string(&mut text);
        }
        let _ = tx.send((child.wait(), text));
    });
    let (status, text) = match rx.recv_timeout(Duration::from_secs(h.timeout_secs)) {
        Ok(r) => r,
        Err(_) => {
            // SAFETY: kill(2) on the hook's pid, which is not reaped until the waiter returns.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let _ = rx.recv();
            let _ = feeder.join();
            return Err(HookError::Timeout {
                point,
                path,
                secs: h.timeout_secs,
            });
        }
    };
    let _ = feeder.join();
    let status = status.map_err(|source| HookError::Start {
        point,
        path: path.clone(),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let text = text.trim();
    Err(HookError::Failed {
        point,
        path,
        status: status.to_string(),
        stderr: if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sh(script: &str, timeout_secs: u64) -> HookPlan {
        HookPlan {
            path: PathBuf::from("/bin/sh"),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["HOOK=1".into()],
            timeout_secs,
        }
    }

    #[test]
    fn hooks_run_in_order_with_the_state_on_stdin() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        let o = out.display();
        let hooks = [
            sh(
                &format!("echo first $HOOK >> {o}; cat >> {o}; echo >> {o}"),
                5,
            ),
            sh(&format!("echo second >> {o}"), 5),
        ];
        run_all("createRuntime", &hooks, r#"{"id":"c1"}"#).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text, "first 1\n{\"id\":\"c1\"}\nsecond\n");
    }

    #[test]
    fn failures_and_timeouts_name_the_hook() {
        let e = run_all("poststart", &[sh("echo oops >&2; exit 3", 5)], "{}").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("poststart hook /bin/sh failed") && msg.contains("oops"),
            "{msg}"
        );
        let e = run_all("startContainer", &[sh("sleep 10", 1)], "{}").unwrap_err();
        assert!(matches!(e, HookError::Timeout { .. }), "{e}");
        let missing = HookPlan {
            path: PathBuf::from("/nonexistent/hook"),
            args: vec![],
            env: vec![],
            timeout_secs: 1,
        };
        assert!(matches!(
            run_all("createRuntime", &[missing], "{}"),
            Err(HookError::Start { .. })
        ));
    }

    #[test]
    fn the_state_is_oci_json() {
        let ann = std::collections::BTreeMap::from([("a".to_string(), "b".to_string())]);
        let s = State {
            oci_version: OCI_VERSION,
            id: "c1",
            status: "created",
            pid: Some(42),
            bundle: "/run/husk/containers/c1",
            annotations: &ann,
        };
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(v["ociVersion"], "1.2.0");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["annotations"]["a"], "b");
    }
}
