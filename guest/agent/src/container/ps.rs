//! What `ListProcesses` says about each process of a container: pids (the guest's and the
//! container's), parent, owner, state and command line, read from `/proc`.
//!
//! Owns parsing those files. Must never fail for a process that exits while it is read (it is
//! left out) nor trust the command name, which the process chooses (it may hold `)`, spaces or
//! newlines).

use std::path::Path;

use husk_protocols::agent::ProcessInfo;

/// Longest command line reported.
const MAX_CMDLINE: usize = 4096;

/// `(state, ppid, comm)` from `/proc/PID/stat`.
fn parse_stat(text: &str) -> Option<(String, u32, String)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut rest = text.get(close + 1..)?.split_ascii_whitespace();
    let state = rest.next()?.to_owned();
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid, comm))
}

/// `(real uid, innermost pid)` from `/proc/PID/status`.
fn parse_status(text: &str) -> (u32, Option<u32>) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::split_ascii_whitespace)
    };
    let uid = field("Uid")
        .and_then(|mut f| f.next()?.parse().ok())
        .unwrap_or(0);
    let ns_pid = field("NSpid").and_then(|f| f.last()?.parse().ok());
    (uid, ns_pid)
}

/// Arguments joined by spaces, or `[comm]` when there are none (a zombie).
fn command_line(raw: &[u8], comm: &str) -> String {
    let raw = &raw[..raw.len().min(MAX_CMDLINE)];
    let words: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    if words.is_empty() {
        format!("[{comm}]")
    } else {
        words.join(" ")
    }
}

/// Reads one process under `proc`; `None` when it is gone.
pub fn process_info(proc: &Path, pid: u32) -> Option<ProcessInfo> {
    let dir = proc.join(pid.to_string());
    let (state, ppid, comm) = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
    let (uid, ns_pid) = parse_status(&std::fs::read_to_string(dir.join("status")).ok()?);
    let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    Some(ProcessInfo {
        pid,
        container_pid: ns_pid.unwrap_or(pid),
        ppid,
        uid,
        state,
        cmdline: command_line(&cmdline, &comm),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_command_name_does_not_confuse_the_parser() {
        let (state, ppid, comm) = parse_stat("42 (a) b) S) R 7 42 42 0 -1").unwrap();
        assert_eq!((state.as_str(), ppid, comm.as_str()), ("R", 7, "a) b) S"));
        assert!(parse_stat("42 nonsense").is_none());
    }

    #[test]
    fn reads_a_fake_proc_entry() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("310");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("stat"), "310 (sleep) S 300 310 310 0 -1 0\n").unwrap();
        std::fs::write(
            p.join("status"),
            "Name:\tsleep\nUid:\t1000\t1000\t1000\t1000\nNSpid:\t310\t3\n",
        )
        .unwrap();
        std::fs::write(p.join("cmdline"), b"sleep\x00100\x00").unwrap();
        let info = process_info(dir.path(), 310).unwrap();
        assert_eq!(
            (info.pid, info.container_pid, info.ppid, info.uid),
            (310, 3, 300, 1000)
        );
        assert_eq!(
            (info.state.as_str(), info.cmdline.as_str()),
            ("S", "sleep 100")
        );
        std::fs::write(p.join("cmdline"), b"").unwrap();
        assert_eq!(process_info(dir.path(), 310).unwrap().cmdline, "[sleep]");
        assert!(process_info(dir.path(), 311).is_none());
    }
}
