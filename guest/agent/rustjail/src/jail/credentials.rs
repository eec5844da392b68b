//! The process's own confinement, last before `execve`: oom_score_adj, rlimits, its terminal,
//! its SELinux exec label, capabilities (bounding set dropped, user and groups changed with the
//! permitted set kept, then effective/permitted/inheritable and ambient), cwd, umask,
//! no_new_privs and seccomp.
//!
//! Owns the order, which matters: rlimits and oom_score_adj while still privileged; without
//! no_new_privs, loading seccomp needs CAP_SYS_ADMIN, so the filter goes in before the
//! capabilities are dropped; with it, as late as possible (runc's order). Must never skip a
//! step that fails: every failure ends the jail with the step named.

use std::path::Path;

use super::sys::Sys;
use crate::capabilities::names;
use crate::spec::ProcessPlan;

/// The two confinements made outside [`Sys`] (by libseccomp and libselinux).
pub struct Confine<'a> {
    /// Sets the SELinux exec label (a no-op when SELinux is off).
    pub exec_label: &'a mut dyn FnMut() -> Result<(), String>,
    /// Installs the seccomp filter.
    pub seccomp: &'a mut dyn FnMut() -> Result<(), String>,
}

impl std::fmt::Debug for Confine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Confine")
    }
}

/// Applies `p` to the calling process; `last_cap` is the kernel's highest capability number.
pub fn apply(
    sys: &mut impl Sys,
    p: &ProcessPlan,
    last_cap: u32,
    confine: Confine<'_>,
) -> Result<(), String> {
    if let Some(adj) = p.oom_score_adj {
        sys.write_file(Path::new("/proc/self/oom_score_adj"), &adj.to_string())
            .map_err(|e| format!("setting oom_score_adj {adj}: {e}"))?;
    }
    for r in &p.rlimits {
        sys.setrlimit(r.resource, r.soft, r.hard)
            .map_err(|e| format!("setting {} to {}/{}: {e}", r.name, r.soft, r.hard))?;
    }
    if p.terminal {
        sys.take_terminal()
            .map_err(|e| format!("taking the terminal: {e}"))?;
    }
    (confine.exec_label)()?;
    if !p.no_new_privileges {
        (confine.seccomp)()?;
    }
    let caps = &p.capabilities;
    for cap in 0..=last_cap.min(63) {
        if caps.bounding & (1 << cap) == 0 {
            sys.drop_bounding(cap).map_err(|e| {
                format!(
                    "dropping {} from the bounding set: {e}",
                    names(1 << cap).first().copied().unwrap_or("a capability")
                )
            })?;
        }
    }
    sys.set_keep_caps(true)
        .map_err(|e| format!("keeping capabilities across setuid: {e}"))?;
    sys.setgroups(&p.additional_gids)
        .map_err(|e| format!("setting additional groups {:?}: {e}", p.additional_gids))?;
    sys.setresgid(p.gid)
        .map_err(|e| format!("setting gid {}: {e}", p.gid))?;
    sys.setresuid(p.uid)
        .map_err(|e| format!("setting uid {}: {e}", p.uid))?;
    sys.set_keep_caps(false)
        .map_err(|e| format!("clearing keepcaps: {e}"))?;
    sys.chdir(&p.cwd).map_err(|e| {
        format!(
            "changing to the working directory {} as uid {}: {e}",
            p.cwd.display(),
            p.uid
        )
    })?;
    let known = if last_cap >= 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap + 1)) - 1
    };
    let sets = crate::capabilities::CapSets {
        bounding: caps.bounding & known,
        effective: caps.effective & known,
        permitted: caps.permitted & known,
        inheritable: caps.inheritable & known,
        ambient: caps.ambient & known,
    };
    sys.capset(&sets)
        .map_err(|e| format!("setting capabilities: {e}"))?;
    for cap in 0..=last_cap.min(63) {
        if sets.ambient & (1 << cap) != 0 {
            sys.raise_ambient(cap)
                .map_err(|e| format!("raising ambient {:?}: {e}", names(1 << cap)))?;
        }
    }
    if let Some(mask) = p.umask {
        sys.umask(mask);
    }
    if p.no_new_privileges {
        sys.set_no_new_privs()
            .map_err(|e| format!("setting no_new_privs: {e}"))?;
        (confine.seccomp)()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::sys::Recorder;
    use super::*;

    fn process(edit: impl FnOnce(&mut serde_json::Value)) -> ProcessPlan {
        let mut v = serde_json::json!({
            "args": ["sh"], "cwd": "/work", "user": {"uid": 1000, "gid": 100, "additionalGids": [5], "umask": 18},
            "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"],
                             "permitted": ["CAP_KILL"], "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}],
            "oomScoreAdj": 500
        });
        edit(&mut v);
        crate::spec::parse_process(&v.to_string()).unwrap()
    }

    fn run(p: &ProcessPlan) -> Vec<String> {
        let mut sys = Recorder::default();
        let log = std::cell::RefCell::new(Vec::new());
        let (mut label, mut seccomp) = (
            || {
                log.borrow_mut().push("exec_label".to_string());
                Ok(())
            },
            || {
                log.borrow_mut().push("seccomp".to_string());
                Ok(())
            },
        );
        // Interleave the closures' calls with the recorder's by a shared marker.
        apply(
            &mut sys,
            p,
            40,
            Confine {
                exec_label: &mut label,
                seccomp: &mut seccomp,
            },
        )
        .unwrap();
        let mut calls = sys.calls;
        calls.extend(
            log.into_inner()
                .into_iter()
                .map(|c| format!("(closure) {c}")),
        );
        calls
    }

    #[test]
    fn privileged_steps_come_before_the_change_of_user() {
        let calls = run(&process(|_| {}));
        let i = |p: &str| {
            calls
                .iter()
                .position(|c| c.starts_with(p))
                .unwrap_or_else(|| panic!("{p} in {calls:#?}"))
        };
        assert!(i("write /proc/self/oom_score_adj 500") < i("setrlimit 7 100 200"));
        assert!(i("setrlimit") < i("drop_bounding"));
        // Every capability outside the bounding set is dropped, CAP_CHOWN (0) and CAP_KILL (5) kept.
        assert!(!calls.contains(&"drop_bounding 0".to_string()));
        assert!(!calls.contains(&"drop_bounding 5".to_string()));
        assert!(calls.contains(&"drop_bounding 40".to_string()));
        assert!(i("drop_bounding") < i("keepcaps true"));
        assert!(i("keepcaps true") < i("setgroups [5]"));
        assert!(i("setgroups") < i("setresgid 100") && i("setresgid") < i("setresuid 1000"));
        assert!(i("setresuid") < i("keepcaps false") && i("keepcaps false") < i("chdir /work"));
        assert!(i("chdir") < i("capset e=0x20 p=0x20 i=0x20") && i("capset") < i("ambient 5"));
        assert!(i("ambient") < i("umask 22"));
        assert!(!calls.iter().any(|c| c == "no_new_privs"));
    }

    #[test]
    fn no_new_privs_moves_seccomp_last() {
        let calls = run(&process(|v| v["noNewPrivileges"] = true.into()));
        assert!(calls.contains(&"no_new_privs".to_string()));
        assert_eq!(calls.last().unwrap(), "(closure) seccomp");
        let calls = run(&process(|v| v["terminal"] = true.into()));
        assert!(calls.contains(&"take_terminal".to_string()));
    }
}
