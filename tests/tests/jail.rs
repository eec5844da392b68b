//! rustjail through `husk run`, one OCI spec field at a time: each test writes a spec (runc's
//! defaults with one change) or passes a flag, runs a busybox container in its own VM and
//! checks from inside the container that the field took effect; bad specs are refused before
//! anything starts, with errors that name the problem.

use std::path::{Path, PathBuf};

use husk_e2e::{busybox_rootfs, Harness};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A busybox root with the test's extra files.
fn rootfs(h: &Harness) -> PathBuf {
    busybox_rootfs(&h.scratch().join("rootfs"))
}

/// runc's default spec with PATH set and a writable root, then `edit`, written to a file.
fn spec_file(h: &Harness, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let mut v = serde_json::to_value(oci_spec::runtime::Spec::default()).expect("test set-up");
    v["process"]["env"] = serde_json::json!(["PATH=/bin", "HOME=/root"]);
    v["process"]["args"] = serde_json::json!(["sh"]);
    v["root"]["readonly"] = false.into();
    v["hostname"] = "box".into();
    edit(&mut v);
    let path = h.scratch().join("config.json");
    std::fs::write(&path, v.to_string()).expect("test set-up");
    path
}

/// The outcome of one `husk run`.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `husk run FLAGS IMAGE -- sh -c SCRIPT`.
fn run(h: &Harness, img: &Path, flags: &[&str], script: &str) -> Ran {
    let out = h
        .husk()
        .arg("run")
        .args(flags)
        .arg(img)
        .args(["--", "sh", "-c", script])
        .output()
        .expect("husk run");
    Ran {
        code: out.status.code(),
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
    }
}

/// Runs `script` with the spec `edit` makes; returns its stdout, asserting it exited 0.
fn with_spec(h: &Harness, edit: impl FnOnce(&mut serde_json::Value), script: &str) -> String {
    let img = rootfs(h);
    let spec = spec_file(h, edit);
    let r = run(
        h,
        &img,
        &["--spec", spec.to_str().expect("test set-up")],
        script,
    );
    assert_eq!(
        r.code,
        Some(0),
        "stdout {:?} stderr {:?}",
        r.stdout,
        r.stderr
    );
    r.stdout
}

/// Runs `script` with `flags`; its stdout, asserting it exited 0.
fn with_flags(h: &Harness, flags: &[&str], script: &str) -> String {
    let img = rootfs(h);
    let r = run(h, &img, flags, script);
    assert_eq!(
        r.code,
        Some(0),
        "stdout {:?} stderr {:?}",
        r.stdout,
        r.stderr
    );
    r.stdout
}

/// A spec refused before the container starts: husk exits 125 with `needle` in its error.
fn refused(h: &Harness, edit: impl FnOnce(&mut serde_json::Value), needle: &str) {
    let img = rootfs(h);
    let spec = spec_file(h, edit);
    let r = run(
        h,
        &img,
        &["--spec", spec.to_str().expect("test set-up")],
        "echo started",
    );
    assert_eq!(r.code, Some(125), "stderr {:?}", r.stderr);
    assert!(!r.stdout.contains("started"), "{:?}", r.stdout);
    assert!(
        r.stderr.contains(needle),
        "{needle:?} not in {:?}",
        r.stderr
    );
}

/// A field of /proc/self/status.
fn status_line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in {out:?}"))
}

#[test]
fn a_read_only_root_refuses_writes() {
    let h = Harness::new();
    let out = with_flags(
        &h,
        &["--read-only"],
        "touch /x 2>&1; echo rc=$?; grep ' / ' /proc/mounts",
    );
    assert!(
        out.contains("Read-only file system") && out.contains("rc=1"),
        "{out}"
    );
}

#[test]
fn masked_paths_read_empty() {
    let h = Harness::new();
    let img = rootfs(&h);
    std::fs::write(img.join("etc/secret"), "s3cret").unwrap();
    std::fs::create_dir_all(img.join("etc/secrets.d")).unwrap();
    std::fs::write(img.join("etc/secrets.d/key"), "k").unwrap();
    let spec = spec_file(&h, |v| {
        v["linux"]["maskedPaths"] =
            serde_json::json!(["/etc/secret", "/etc/secrets.d", "/nonexistent"]);
    });
    let r = run(
        &h,
        &img,
        &["--spec", spec.to_str().unwrap()],
        "echo \"[$(cat /etc/secret)]\"; ls /etc/secrets.d | wc -l; touch /etc/secrets.d/x 2>&1 | grep -c Read-only",
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, "[]\n0\n1\n");
}

#[test]
fn read_only_paths_refuse_writes_elsewhere_is_writable() {
    let h = Harness::new();
    let out = with_spec(
        &h,
        |v| v["linux"]["readonlyPaths"] = serde_json::json!(["/etc", "/proc/sys"]),
        "touch /etc/x 2>&1 | grep -c Read-only; touch /root/x && echo root-ok",
    );
    assert_eq!(out, "1\nroot-ok\n");
}

#[test]
fn dropping_cap_net_raw_makes_ping_fail() {
    let h = Harness::new();
    let ok = with_flags(&h, &[], "ping -c1 -W2 127.0.0.1 >/dev/null && echo pinged");
    assert_eq!(ok, "pinged\n");
    let out = with_flags(
        &h,
        &["--cap-drop", "NET_RAW"],
        "ping -c1 -W2 127.0.0.1 2>&1; echo rc=$?",
    );
    assert!(
        out.contains("rc=1")
            && (out.contains("permission denied") || out.contains("not permitted")),
        "{out}"
    );
}

#[test]
fn capability_sets_are_the_specs() {
    let h = Harness::new();
    let out = with_flags(
        &h,
        &[
            "--cap-drop",
            "ALL",
            "--cap-add",
            "KILL",
            "--cap-add",
            "CHOWN",
        ],
        "cat /proc/self/status",
    );
    // CAP_CHOWN (0) and CAP_KILL (5).
    assert_eq!(status_line(&out, "CapBnd:"), "0000000000000021");
    assert_eq!(status_line(&out, "CapEff:"), "0000000000000021");
    assert_eq!(status_line(&out, "CapPrm:"), "0000000000000021");
}

#[test]
fn ambient_capabilities_survive_a_non_root_user() {
    let h = Harness::new();
    let out = with_spec(
        &h,
        |v| {
            v["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
            v["process"]["capabilities"] = serde_json::json!({
                "bounding": ["CAP_NET_BIND_SERVICE"], "effective": ["CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_NET_BIND_SERVICE"], "inheritable": ["CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_NET_BIND_SERVICE"]});
        },
        "id -u; cat /proc/self/status",
    );
    assert!(out.starts_with("1000\n"), "{out}");
    assert_eq!(status_line(&out, "CapAmb:"), "0000000000000400");
    assert_eq!(status_line(&out, "CapEff:"), "0000000000000400");
}

#[test]
fn rlimit_nofile_is_what_was_asked() {
    let h = Harness::new();
    let out = with_flags(&h, &["--ulimit", "nofile=123:456"], "ulimit -n; ulimit -Hn");
    assert_eq!(out, "123\n456\n");
}

#[test]
fn user_groups_and_umask() {
    let h = Harness::new();
    let out = with_spec(
        &h,
        |v| {
            v["process"]["user"] =
                serde_json::json!({"uid": 1000, "gid": 100, "additionalGids": [5, 7], "umask": 63})
        },
        "id -u; id -g; id -G; umask",
    );
    assert_eq!(out, "1000\n100\n100 5 7\n0077\n");
}

#[test]
fn no_new_privileges_is_the_specs() {
    let h = Harness::new();
    let on = with_spec(
        &h,
        |v| v["process"]["noNewPrivileges"] = true.into(),
        "cat /proc/self/status",
    );
    assert_eq!(status_line(&on, "NoNewPrivs:"), "1");
    let off = with_spec(
        &h,
        |v| v["process"]["noNewPrivileges"] = false.into(),
        "cat /proc/self/status",
    );
    assert_eq!(status_line(&off, "NoNewPrivs:"), "0");
}

#[test]
fn oom_score_adj_is_set() {
    let h = Harness::new();
    let out = with_spec(
        &h,
        |v| v["process"]["oomScoreAdj"] = 123.into(),
        "cat /proc/self/oom_score_adj",
    );
    assert_eq!(out, "123\n");
}

#[test]
fn hostname_domainname_env_and_cwd() {
    let h = Harness::new();
    let out = with_spec(
        &h,
        |v| {
            v["hostname"] = "jailbox".into();
            v["domainname"] = "example.org".into();
            v["process"]["env"] = serde_json::json!(["PATH=/bin", "GREETING=hello world"]);
            v["process"]["cwd"] = "/tmp".into();
        },
        "hostname; cat /proc/sys/kernel/domainname; echo $GREETING; pwd",
    );
    assert_eq!(out, "jailbox\nexample.org\nhello world\n/tmp\n");
}

#[test]
fn namespaced_sysctls_are_set_and_others_refused() {
    let h = Harness::new();
    let out = with_spec(
        &h,
        |v| {
            v["linux"]["sysctl"] =
                serde_json::json!({"kernel.shmmax": "1234567", "net.ipv4.ip_forward": "1"})
        },
        "cat /proc/sys/kernel/shmmax /proc/sys/net/ipv4/ip_forward",
    );
    assert_eq!(out, "1234567\n1\n");
    refused(
        &h,
        |v| v["linux"]["sysctl"] = serde_json::json!({"vm.swappiness": "10"}),
        "\"vm.swappiness\" is not in a namespace of the container",
    );
}

#[test]
fn a_user_namespace_maps_root_to_the_mapped_id() {
    let h = Harness::new();
    let out = with_spec(
        &h,
        |v| {
            v["linux"]["namespaces"].as_array_mut().unwrap().push(serde_json::json!({"type": "user"}));
            v["linux"]["uidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            v["linux"]["gidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        },
        // /dev/shm is a tmpfs the jail mounted inside the namespace: its root is the
        // container's root.
        "id -u; cat /proc/self/uid_map /proc/self/gid_map; touch /dev/shm/f && stat -c %u /dev/shm/f",
    );
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words,
        ["0", "0", "100000", "65536", "0", "100000", "65536", "0"],
        "{out}"
    );
}

#[test]
fn pid_network_ipc_uts_and_cgroup_namespaces_are_the_containers() {
    let h = Harness::new();
    let out = with_flags(
        &h,
        &[],
        "echo pid=$$; ip -o link show lo | grep -c ',UP'; ls /sys/class/net | grep -c eth; \
         cat /proc/self/cgroup; ls -d /dev/mqueue",
    );
    // A new network namespace: loopback up, none of the VM's NICs.
    assert_eq!(out, "pid=1\n1\n0\n0::/\n/dev/mqueue\n");
    // Without a cgroup namespace the container sees its own cgroup's path, bound in place.
    let out = with_spec(
        &h,
        |v| {
            v["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "cgroup")
        },
        "cat /proc/self/cgroup; cat /sys/fs/cgroup/cgroup.procs | wc -l",
    );
    assert!(out.starts_with("0::/husk/main\n"), "{out}");
}

#[test]
fn devices_default_and_from_the_spec() {
    let h = Harness::new();
    let out = with_spec(
        &h,
        |v| {
            v["linux"]["devices"] = serde_json::json!([
                {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 5, "gid": 6}
            ])
        },
        "echo hi > /dev/mynull && stat -c '%F %t,%T %a %u %g' /dev/mynull; \
         for d in null zero full random urandom tty; do [ -c /dev/$d ] || echo missing $d; done; \
         readlink /dev/fd; readlink /dev/ptmx; [ -d /dev/pts ] && [ -d /dev/shm ] && echo dirs",
    );
    assert_eq!(
        out,
        "character special file 1,3 666 5 6\n/proc/self/fd\npts/ptmx\ndirs\n"
    );
}

#[test]
fn mounts_with_options_and_propagation() {
    let h = Harness::new();
    let out = with_spec(
        &h,
        |v| {
            v["mounts"].as_array_mut().unwrap().push(serde_json::json!(
                {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["ro", "nosuid", "size=1m", "rprivate"]}));
            v["mounts"].as_array_mut().unwrap().push(serde_json::json!(
                {"destination": "/work", "type": "tmpfs", "source": "tmpfs", "options": ["size=2m", "mode=700"]}));
        },
        "touch /scratch/x 2>&1 | grep -c Read-only; grep ' /scratch ' /proc/mounts | grep ' ro,' | grep -c nosuid; \
         touch /work/y && stat -c %a /work",
    );
    assert_eq!(out, "1\n1\n700\n");
}

#[test]
fn hooks_run_in_order_with_the_state_on_stdin() {
    let h = Harness::new();
    // The guest's path to the container's root, where runtime-namespace hooks find a shell.
    let guest_root = "/run/husk/containers/main/rootfs";
    let hook = |name: &str, sh: &str, log: &str| {
        let bin = sh.trim_end_matches("/sh");
        serde_json::json!({"path": sh, "args": ["sh", "-c", format!("echo {name} $(cat) >> {log}")],
                           "env": [format!("PATH={bin}")], "timeout": 10})
    };
    let out = with_spec(
        &h,
        |v| {
            let (gsh, glog) = (
                format!("{guest_root}/bin/sh"),
                format!("{guest_root}/hooks.log"),
            );
            v["hooks"] = serde_json::json!({
                "createRuntime": [hook("createRuntime", &gsh, &glog)],
                "createContainer": [hook("createContainer", &gsh, &glog)],
                "startContainer": [hook("startContainer", "/bin/sh", "/hooks.log")],
                "poststart": [hook("poststart", &gsh, &glog)],
            });
            v["annotations"] = serde_json::json!({"org.example/test": "yes"});
        },
        // poststart runs after the start: wait for its line before reading the log.
        "while ! grep -q poststart /hooks.log 2>/dev/null; do sleep 0.1; done; cat /hooks.log",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for (line, (name, status)) in lines.iter().zip([
        ("createRuntime", "creating"),
        ("createContainer", "creating"),
        ("startContainer", "created"),
        ("poststart", "running"),
    ]) {
        let (n, json) = line.split_once(' ').unwrap();
        assert_eq!(n, name, "{out}");
        let state: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(state["id"], "main", "{line}");
        assert_eq!(state["status"], status, "{line}");
        assert_eq!(state["annotations"]["org.example/test"], "yes", "{line}");
        assert!(state["pid"].as_u64().unwrap() > 1, "{line}");
    }
}

#[test]
fn the_default_seccomp_profile_blocks_unshare_while_programs_run() {
    let h = Harness::new();
    let out = with_flags(
        &h,
        &[],
        "unshare -r true 2>&1; echo rc=$?; grep Seccomp: /proc/self/status; ls / >/dev/null && echo ls-ok",
    );
    assert!(
        out.contains("Operation not permitted") && out.contains("rc=1"),
        "{out}"
    );
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("ls-ok"), "{out}");
}

#[test]
fn a_custom_seccomp_profile_gives_mkdir_its_errno() {
    let h = Harness::new();
    let profile = h.scratch().join("seccomp.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 18}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let out = with_flags(&h, &["--security-opt", &opt], "mkdir /d 2>&1; echo rc=$?");
    // EXDEV (18) is "Invalid cross-device link".
    assert!(
        out.contains("Invalid cross-device link") && out.contains("rc=1"),
        "{out}"
    );
}

#[test]
fn bad_specs_are_refused_before_anything_starts() {
    let h = Harness::new();
    refused(
        &h,
        |v| {
            v["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"type": "bogus"}))
        },
        "bogus",
    );
    refused(
        &h,
        |v| v["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_BOGUS"]),
        "CAP_BOGUS",
    );
    refused(
        &h,
        |v| {
            v["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"type": "pid"}))
        },
        "the pid namespace twice",
    );
    refused(
        &h,
        |v| {
            v["process"]["rlimits"] =
                serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}])
        },
        "soft limit 10 is over the hard limit 5",
    );
}

#[test]
fn a_mount_escaping_the_root_through_a_symlink_is_refused() {
    let h = Harness::new();
    let img = rootfs(&h);
    std::os::unix::fs::symlink("../../../../../../etc", img.join("escape")).unwrap();
    let spec = spec_file(&h, |v| {
        v["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/escape/x", "type": "tmpfs", "source": "tmpfs"}));
    });
    let r = run(
        &h,
        &img,
        &["--spec", spec.to_str().unwrap()],
        "echo started",
    );
    assert_eq!(r.code, Some(125), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("leaves the container's root through the symlink /escape"),
        "{}",
        r.stderr
    );
}

#[test]
fn cgroup_limits_come_from_the_spec() {
    let h = Harness::new();
    let out = with_spec(
        &h,
        |v| {
            v["linux"]["resources"] = serde_json::json!({
                "memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": 96 << 20},
                "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
                "pids": {"limit": 20},
            })
        },
        "cd /sys/fs/cgroup; cat memory.max memory.low memory.swap.max cpu.weight cpu.max \
         cpuset.cpus pids.max",
    );
    // swap.max is the OCI swap (memory + swap) less the limit; shares 512 is weight 20.
    assert_eq!(
        out,
        "67108864\n33554432\n33554432\n20\n50000 100000\n0\n20\n"
    );
}

#[test]
fn pids_max_stops_a_fork_bomb() {
    let h = Harness::new();
    let out = with_spec(
        &h,
        |v| v["linux"]["resources"] = serde_json::json!({"pids": {"limit": 10}}),
        // Forty background sleeps in a container that may hold ten processes.
        // The loop runs in a subshell (the shell gives up at the first failed fork), and only
        // builtins follow it: a fork would fail too.
        "(i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done) 2>/dev/null; \
         read n < /sys/fs/cgroup/pids.current; echo running=$n; \
         while read k v; do [ $k = max ] && echo max $v; done < /sys/fs/cgroup/pids.events; true",
    );
    let running: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("running="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(running <= 10, "{out}");
    let refused: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    // The bomb hit the limit (the subshell gives up at its first refused fork).
    assert!(refused >= 1, "{out}");
}

#[test]
fn selinux_labels_the_process_and_denies_what_policy_denies() {
    let h = Harness::new();
    // The default label, and the one asked for (with MCS categories).
    // The kernel ends the label with a NUL.
    let out = with_flags(&h, &[], "tr -d '\\0' < /proc/self/attr/current; echo");
    assert_eq!(out, "system_u:system_r:container_t:s0\n");
    let out = with_flags(
        &h,
        &[
            "--security-opt",
            "label=system_u:system_r:container_t:s0:c1,c2",
        ],
        "tr -d '\\0' < /proc/self/attr/current; echo",
    );
    assert!(
        out.starts_with("system_u:system_r:container_t:s0:c1,c2\n"),
        "{out}"
    );
    // A tmpfs labelled read-only for containers: root with every capability may read it,
    // the policy refuses the write.
    let out = with_spec(
        &h,
        |v| {
            v["mounts"]
                .as_array_mut()
                .expect("mounts")
                .push(serde_json::json!(
                {"destination": "/ro", "type": "tmpfs", "source": "tmpfs",
                 "options": ["context=\"system_u:object_r:container_ro_file_t:s0\""]}));
            v["mounts"]
                .as_array_mut()
                .expect("mounts")
                .push(serde_json::json!(
                {"destination": "/rw", "type": "tmpfs", "source": "tmpfs"}));
        },
        "ls /ro >/dev/null && echo read-ok; echo x > /ro/f 2>&1 || echo write-denied; \
         echo x > /rw/f && echo own-write-ok",
    );
    assert_eq!(out, "read-ok\nwrite-denied\nown-write-ok\n");
}

#[test]
fn selinux_can_be_turned_off() {
    let h = Harness::new();
    let out = with_flags(
        &h,
        &["--append", "husk.selinux=0"],
        "cat /proc/self/attr/current 2>/dev/null; echo",
    );
    // Without a policy the kernel knows no label but its initial one.
    assert!(!out.contains("container_t"), "{out}");
}

#[test]
fn a_failing_hook_stops_the_container_with_its_error() {
    let h = Harness::new();
    let sh = "/run/husk/containers/main/rootfs/bin/sh";
    refused(
        &h,
        |v| {
            v["hooks"] = serde_json::json!({"createRuntime": [
                {"path": sh, "args": ["sh", "-c", "echo no-network-for-you >&2; exit 3"]}]})
        },
        "no-network-for-you",
    );
}
