//! Facts about the guest for `GetGuestDetails`: kernel, hostname, memory, CPUs, uptime, image
//! build id, and how containers and the agent are confined (seccomp, SELinux).
//!
//! Owns reading them from `/proc`, `/sys` and the image manifest; every reader takes its root
//! so tests run on a fake tree. Must never fail the RPC for one unreadable fact: it is left at
//! its zero value and logged.

use std::path::Path;

use husk_protocols::agent::GuestDetails;
use husk_protocols::manifest::{ImageManifest, MANIFEST_PATH};

/// `MemTotal` and `MemAvailable` from a meminfo text, in bytes.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib.saturating_mul(1024))
            .unwrap_or(0)
    };
    (field("MemTotal"), field("MemAvailable"))
}

/// Number of CPUs in a `/sys/devices/system/cpu/online` range list such as `0-3,5`.
pub fn count_cpus(online: &str) -> u32 {
    online
        .trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => u32::from(part.parse::<u32>().is_ok()),
        })
        .sum()
}

fn read(root: &Path, path: &str) -> String {
    let full = root.join(path.trim_start_matches('/'));
    std::fs::read_to_string(&full).unwrap_or_else(|e| {
        tracing::debug!(path = %full.display(), error = %e, "guest fact unavailable");
        String::new()
    })
}

/// Gathers the details under `root` (`/` in the guest).
pub fn gather(root: &Path) -> GuestDetails {
    let (mem_total_bytes, mem_available_bytes) = parse_meminfo(&read(root, "/proc/meminfo"));
    let uptime_ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| std::time::Duration::from(t).as_nanos() as u64)
        .unwrap_or(0);
    let build_id = serde_json::from_str::<ImageManifest>(&read(root, MANIFEST_PATH))
        .map(|m| m.build_id)
        .unwrap_or_default();
    GuestDetails {
        kernel_release: read(root, "/proc/sys/kernel/osrelease").trim().to_owned(),
        hostname: read(root, "/proc/sys/kernel/hostname").trim().to_owned(),
        mem_total_bytes,
        mem_available_bytes,
        online_cpus: count_cpus(&read(root, "/sys/devices/system/cpu/online")),
        uptime_ns,
        build_id,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        seccomp: rustjail::seccomp::describe(),
        selinux: selinux_mode(root).to_owned(),
        agent_seccomp: crate::confine::Mode::from_cmdline(&read(root, "/proc/cmdline"))
            .map(|m| m.name())
            .unwrap_or("enforce")
            .to_owned(),
        ..Default::default()
    }
}

/// SELinux's mode from selinuxfs: "enforcing", "permissive", or "off" without a policy.
fn selinux_mode(root: &Path) -> &'static str {
    match read(root, "/sys/fs/selinux/enforce").trim() {
        "1" => "enforcing",
        "0" => "permissive",
        _ => "off",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let t = "MemTotal:         250000 kB\nMemFree: 1 kB\nMemAvailable:     200000 kB\n";
        assert_eq!(parse_meminfo(t), (256_000_000, 204_800_000));
        assert_eq!(parse_meminfo("garbage"), (0, 0));
    }

    #[test]
    fn cpus() {
        assert_eq!(count_cpus("0\n"), 1);
        assert_eq!(count_cpus("0-3,5\n"), 5);
        assert_eq!(count_cpus("3-1,x"), 0);
    }

    #[test]
    fn gathers_from_a_fake_root() {
        let root = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let f = root.path().join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, s).unwrap();
        };
        w("proc/sys/kernel/osrelease", "6.1.0\n");
        w("proc/sys/kernel/hostname", "pod\n");
        w("sys/devices/system/cpu/online", "0-1\n");
        w(
            "etc/husk/manifest.json",
            r#"{"schema":1,"build_id":"abc","flavour":"default"}"#,
        );
        let d = gather(root.path());
        assert_eq!(
            (d.kernel_release.as_str(), d.hostname.as_str()),
            ("6.1.0", "pod")
        );
        assert_eq!((d.online_cpus, d.build_id.as_str()), (2, "abc"));
        assert_eq!(
            (d.selinux.as_str(), d.agent_seccomp.as_str()),
            ("off", "enforce")
        );
        assert!(d.seccomp.contains("default profile"), "{}", d.seccomp);
        assert_eq!(
            d.mem_total_bytes, 0,
            "missing meminfo is a zero, not an error"
        );
    }
}
