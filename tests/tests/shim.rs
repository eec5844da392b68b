//! containerd-shim-husk-v2 under a real containerd (Debian's package) driven with `ctr`: every
//! container in its own VM, output, exit codes, detached tasks with exec, ps, metrics, pause
//! and resume, kill and delete, terminals, and nothing left afterwards.

use husk_e2e::containerd::{Containerd, IMAGE, RUNTIME};
use husk_e2e::Harness;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn ctr_run_rm_prints_output_and_exit_codes() {
    let h = Harness::new();
    let cd = Containerd::start(&h);
    let out = cd.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "hello",
        "echo",
        "hello",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stderr),
        cd.log_tail()
    );
    assert_eq!(text(&out.stdout), "hello\n");

    let out = cd.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "codes",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", cd.log_tail());
    assert_eq!(text(&out.stdout), "out\n");
    assert!(
        text(&out.stderr).starts_with("err\n"),
        "{}",
        text(&out.stderr)
    );

    // A command that is not in the image: the guest's error reaches ctr verbatim.
    let out = cd.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "missing",
        "no-such-cmd",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("executable \"no-such-cmd\" not found in $PATH"),
        "{}",
        text(&out.stderr)
    );
    let _ = cd.run(&["containers", "rm", "missing"]);
    cd.assert_nothing_left(&["hello", "codes", "missing"]);
}

#[test]
fn a_detached_task_takes_exec_ps_metrics_pause_resume_kill_and_delete() {
    let h = Harness::new();
    let cd = Containerd::start(&h);
    let ok = |args: &[&str]| cd.ok(args);
    ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "d1",
        "sh",
        "-c",
        "echo begun > /tmp/mark; sleep 1000",
    ]);
    assert!(ok(&["task", "ls"]).contains("RUNNING"));

    let out = cd.run(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "d1",
        "sh",
        "-c",
        "cat /tmp/mark; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "begun\n");

    let ps = ok(&["task", "ps", "d1"]);
    assert!(ps.lines().count() >= 2, "{ps}");
    let metrics = ok(&["task", "metrics", "d1"]);
    assert!(
        metrics.contains("pids.current") && metrics.contains("memory.usage"),
        "{metrics}"
    );

    ok(&["task", "pause", "d1"]);
    assert!(ok(&["task", "ls"]).contains("PAUSED"));
    ok(&["task", "resume", "d1"]);
    assert!(ok(&["task", "ls"]).contains("RUNNING"));

    // A signal that the shell ignores as PID 1 (no handler) leaves it running; a forced
    // delete kills it and waits for the exit.
    ok(&["task", "kill", "-s", "TERM", "d1"]);
    ok(&["task", "rm", "-f", "d1"]);
    ok(&["containers", "rm", "d1"]);
    cd.assert_nothing_left(&["d1"]);
}

#[test]
fn ctr_run_t_runs_on_a_terminal() {
    let h = Harness::new();
    let cd = Containerd::start(&h);
    // `script` gives ctr the terminal it insists on for -t.
    let inner = format!(
        "ctr -a {} run -t --rm --runtime {RUNTIME} {IMAGE} tty1 sh -c '[ -t 0 ] && echo on-a-tty'",
        cd.socket().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (bsdutils)");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        cd.log_tail()
    );
    assert!(
        text(&out.stdout).contains("on-a-tty\r"),
        "{:?}",
        text(&out.stdout)
    );
    cd.assert_nothing_left(&["tty1"]);
}

/// The pid of this containerd's shim serving container `id`.
fn shim_pid(cd: &Containerd, id: &str) -> u32 {
    cd.shims()
        .into_iter()
        .find(|(_, cmdline)| cmdline.contains(&format!("-id {id} ")))
        .map(|(pid, _)| pid)
        .expect("the shim's process")
}

#[test]
fn a_sigkilled_shim_is_cleaned_up_by_containerd() {
    let h = Harness::new();
    let cd = Containerd::start(&h);
    cd.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "k1",
        "sleep",
        "1000",
    ]);
    let pid = shim_pid(&cd, "k1");
    let mut events = cd.events();
    // SAFETY: kill(2) on the shim's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    // containerd sees the shim go, runs `containerd-shim-husk-v2 delete`, and reports the exit;
    // removing the task and the container must then work and leave nothing.
    events.wait_for(|l| l.contains("/tasks/exit") && l.contains("\"k1\""));
    // containerd removes a dead shim's task itself; a later `task rm` finds nothing to do.
    let out = cd.run(&["task", "rm", "k1"]);
    assert!(
        out.status.success() || text(&out.stderr).contains("not found"),
        "{}\n{}",
        text(&out.stderr),
        cd.log_tail()
    );
    cd.ok(&["containers", "rm", "k1"]);
    cd.assert_nothing_left(&["k1"]);
}

#[test]
fn output_and_exit_survive_a_containerd_restart() {
    let h = Harness::new();
    let mut cd = Containerd::start(&h);
    let log = h.scratch().join("r1.log");
    let uri = format!("file://{}", log.display());
    // Ends on USR1 from an exec (or at once if the exec's mark came before the trap was set).
    let script = "trap 'echo after; exit 7' USR1; echo before; \
                  [ -e /tmp/go ] || { sleep 1000 & wait; }; echo after; exit 7";
    cd.ok(&[
        "run",
        "-d",
        "--log-uri",
        &uri,
        "--runtime",
        RUNTIME,
        IMAGE,
        "r1",
        "sh",
        "-c",
        script,
    ]);
    cd.restart();
    // The restarted containerd reconnects to the running shim: exec works, and the exit
    // event of the container reaches it.
    let mut events = cd.events();
    cd.ok(&[
        "task",
        "exec",
        "--exec-id",
        "go",
        "r1",
        "sh",
        "-c",
        "touch /tmp/go; kill -USR1 1",
    ]);
    events.wait_for(|l| l.contains("/tasks/exit") && l.contains("\"r1\"") && !l.contains("\"go\""));
    let out = cd.run(&["task", "rm", "r1"]);
    assert!(
        text(&out.stderr).contains("exit code 7"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&log).expect("the log file"),
        "before\nafter\n"
    );
    let _ = cd.run(&["containers", "rm", "r1"]);
    cd.assert_nothing_left(&["r1"]);
}

#[test]
fn ten_pods_started_at_once_all_run_and_clean_up() {
    let h = Harness::new();
    let cd = Containerd::start(&h);
    let ids: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let children: Vec<_> = ids
        .iter()
        .map(|id| {
            cd.ctr()
                .args(["run", "--rm", "--runtime", RUNTIME, IMAGE, id, "sh", "-c"])
                .arg(format!("echo pod {id}"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("ctr run")
        })
        .collect();
    for (id, child) in ids.iter().zip(children) {
        let out = child.wait_with_output().expect("ctr run");
        assert_eq!(
            (out.status.code(), text(&out.stdout)),
            (Some(0), format!("pod {id}\n")),
            "{}\n{}",
            text(&out.stderr),
            cd.log_tail()
        );
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    cd.assert_nothing_left(&ids);
}

#[test]
fn a_vm_that_dies_ends_its_task_with_an_error_and_its_console_in_the_log() {
    let h = Harness::new();
    let cd = Containerd::start(&h);
    cd.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "v1",
        "sleep",
        "1000",
    ]);
    let shim = shim_pid(&cd, "v1");
    // The VM's processes are children of the shim's keeper thread: look through all of the
    // shim's threads.
    let qemu = std::fs::read_dir(format!("/proc/{shim}/task"))
        .expect("shim threads")
        .flatten()
        .flat_map(|t| {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            kids.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("qemu"))
        })
        .and_then(|pid| pid.parse::<i32>().ok());
    let qemu = qemu.expect("the pod's QEMU");
    let mut events = cd.events();
    // SAFETY: kill(2) on the pod's QEMU.
    assert_eq!(unsafe { libc::kill(qemu, libc::SIGKILL) }, 0);
    let exit = events.wait_for(|l| l.contains("/tasks/exit") && l.contains("\"v1\""));
    assert!(!exit.contains("\"exit_status\":0"), "{exit}");
    let log = cd.log_tail();
    assert!(log.contains("lost the process"), "{log}");
    let out = cd.run(&["task", "rm", "v1"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        cd.log_tail()
    );
    let out = cd.run(&["containers", "rm", "v1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    cd.assert_nothing_left(&["v1"]);
}

#[test]
fn two_containers_of_one_pod_share_its_vm_and_namespaces() {
    let h = Harness::new();
    let cd = Containerd::start(&h);
    let ok = |args: &[&str]| cd.ok(args);
    let pod = "io.kubernetes.cri.sandbox-id=pod1";
    ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        pod,
        IMAGE,
        "pod1",
        "sleep",
        "1001",
    ]);
    // The CRI way to share the sandbox's pid namespace: a path (the host's, meaningless in the
    // guest), which the agent maps to its sandbox container's namespace.
    ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        pod,
        "--with-ns",
        "pid:/proc/1/ns/pid",
        "--with-ns",
        "ipc:/proc/1/ns/ipc",
        "--with-ns",
        "uts:/proc/1/ns/uts",
        IMAGE,
        "app1",
        "sleep",
        "1002",
    ]);
    let shims = cd.shims().len();
    assert_eq!(shims, 1, "one shim (one VM) serves the pod");
    // From the app container, the sandbox's process is visible (and is pid 1).
    let ps = ok(&[
        "task",
        "exec",
        "--exec-id",
        "ps",
        "app1",
        "ps",
        "-o",
        "pid,args",
    ]);
    assert!(
        ps.contains("sleep 1001") && ps.contains("sleep 1002"),
        "{ps}"
    );
    assert!(
        ps.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("sleep 1001")),
        "{ps}"
    );
    // And the sandbox's IPC and UTS namespaces (pid 1 is the sandbox's init).
    let ns = ok(&[
        "task",
        "exec",
        "--exec-id",
        "ns",
        "app1",
        "sh",
        "-c",
        "for n in 1/ns/ipc self/ns/ipc 1/ns/uts self/ns/uts; do readlink /proc/$n; done",
    ]);
    let ns: Vec<&str> = ns.lines().collect();
    assert!(ns.len() == 4 && ns[0] == ns[1] && ns[2] == ns[3], "{ns:?}");
    ok(&["task", "rm", "-f", "app1"]);
    ok(&["containers", "rm", "app1"]);
    ok(&["task", "rm", "-f", "pod1"]);
    ok(&["containers", "rm", "pod1"]);
    cd.assert_nothing_left(&["pod1", "app1"]);
}

#[test]
fn a_binary_log_uri_gets_both_streams_and_the_container_id() {
    let h = Harness::new();
    let cd = Containerd::start(&h);
    let dir = h.scratch().join("logger");
    std::fs::create_dir_all(&dir).expect("logger dir");
    let script = dir.join("log.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$CONTAINER_ID $CONTAINER_NAMESPACE $*\" > {d}/env\n\
             exec 5>&-\ncat <&3 > {d}/out & cat <&4 > {d}/err &\nwait\n",
            d = dir.display()
        ),
    )
    .expect("logger script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let uri = format!("binary://{}?tag=web", script.display());
    let out = cd.run(&[
        "run",
        "--rm",
        "--log-uri",
        &uri,
        "--runtime",
        RUNTIME,
        IMAGE,
        "b1",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stderr),
        cd.log_tail()
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    assert_eq!(read("env"), "b1 default tag web\n");
    assert_eq!(
        (read("out").as_str(), read("err").as_str()),
        ("to-out\n", "to-err\n")
    );
    cd.assert_nothing_left(&["b1"]);
}

#[test]
fn bind_mounts_and_volumes_reach_the_container_read_only_honoured() {
    let h = Harness::new();
    let cd = Containerd::start(&h);
    let vol = h.scratch().join("volume");
    std::fs::create_dir_all(&vol).expect("volume");
    std::fs::write(vol.join("in"), "from the host\n").expect("volume file");
    let rw = format!("type=bind,src={},dst=/data,options=rbind:rw", vol.display());
    let out = cd.run(&[
        "run",
        "--rm",
        "--mount",
        &rw,
        "--runtime",
        RUNTIME,
        IMAGE,
        "vol1",
        "sh",
        "-c",
        "cat /data/in; echo from the guest > /data/out",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stderr),
        cd.log_tail()
    );
    assert_eq!(text(&out.stdout), "from the host\n");
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).expect("written through the volume"),
        "from the guest\n"
    );
    let ro = format!("type=bind,src={},dst=/data,options=rbind:ro", vol.display());
    let out = cd.run(&[
        "run",
        "--rm",
        "--mount",
        &ro,
        "--runtime",
        RUNTIME,
        IMAGE,
        "vol2",
        "sh",
        "-c",
        "cat /data/in && ! touch /data/nope",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stderr),
        cd.log_tail()
    );
    assert!(!vol.join("nope").exists(), "a read-only volume was written");
    assert!(
        vol.join("in").exists(),
        "the volume's files are intact after the pods ended"
    );
    cd.assert_nothing_left(&["vol1", "vol2"]);
}

#[test]
fn a_pod_joins_its_network_namespace_through_a_tap() {
    use husk_e2e::netns::{PodNetns, POD_IF, POD_MTU};
    let h = Harness::new();
    let cd = Containerd::start(&h);
    let net = PodNetns::create(7);
    let with_ns = format!("network:{}", net.path().display());
    cd.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--with-ns",
        &with_ns,
        IMAGE,
        "net1",
        "sleep",
        "1000",
    ]);
    // The tap and its redirects are in place while the pod runs.
    assert!(
        net.ip(&["link"]).contains("husk_tap0"),
        "{}",
        net.ip(&["link"])
    );
    assert!(net
        .tc(&["filter", "show", "dev", POD_IF, "ingress"])
        .contains("mirred"));

    // The guest's NIC is the veth's twin: address, MTU, MAC and routes.
    let out = cd.run(&[
        "task",
        "exec",
        "--exec-id",
        "n1",
        "net1",
        "sh",
        "-c",
        "ip -o -4 addr show eth0; cat /sys/class/net/eth0/mtu /sys/class/net/eth0/address; ip route; ip link show lo",
    ]);
    let seen = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{seen}{}", text(&out.stderr));
    assert!(seen.contains(&format!("{}/24", net.address)), "{seen}");
    assert!(seen.contains(&format!("\n{POD_MTU}\n")), "{seen}");
    let mac = net.ip(&["-o", "link", "show", POD_IF]);
    let mac = mac
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("the veth's MAC")
        .to_owned();
    assert!(seen.contains(&mac), "{seen} lacks {mac}");
    assert!(
        seen.contains(&format!("default via {} dev eth0", net.gateway)),
        "{seen}"
    );
    assert!(
        seen.contains("state UNKNOWN") || seen.contains(",UP"),
        "lo is down: {seen}"
    );

    // Packets flow both ways: the container reaches the host end, the host reaches the guest.
    let out = cd.run(&[
        "task",
        "exec",
        "--exec-id",
        "n2",
        "net1",
        "ping",
        "-c",
        "1",
        "-W",
        "20",
        &net.gateway,
    ]);
    if out.status.code() != Some(0) {
        let guest = cd.run(&[
            "task",
            "exec",
            "--exec-id",
            "n3",
            "net1",
            "sh",
            "-c",
            "ip -s link show eth0; cat /proc/net/arp",
        ]);
        panic!(
            "no reply from the gateway: {}\nguest: {}\nnetns: {}\n{}",
            text(&out.stdout),
            text(&guest.stdout),
            net.ip(&["-s", "link"]),
            net.tc(&["-s", "filter", "show", "dev", POD_IF, "ingress"])
        );
    }
    let out = std::process::Command::new("ping")
        .args(["-c", "1", "-W", "20", &net.address])
        .output()
        .expect("ping (iputils-ping)");
    assert!(out.status.success(), "{}", text(&out.stdout));

    cd.ok(&["task", "kill", "-s", "KILL", "net1"]);
    cd.ok(&["task", "rm", "-f", "net1"]);
    cd.ok(&["containers", "rm", "net1"]);
    cd.assert_nothing_left(&["net1"]);
    // The tap went with the VM and the tc rules with the pod; CNI's veth is untouched.
    assert!(
        !net.ip(&["link"]).contains("husk_tap"),
        "{}",
        net.ip(&["link"])
    );
    assert!(
        !net.tc(&["qdisc", "show", "dev", POD_IF])
            .contains("ingress"),
        "{}",
        net.tc(&["qdisc", "show", "dev", POD_IF])
    );
    assert!(net
        .ip(&["-o", "addr", "show", POD_IF])
        .contains(&net.address));
}
