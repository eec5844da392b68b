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
    cd.assert_nothing_left();
}

#[test]
fn a_detached_task_takes_exec_ps_metrics_pause_resume_kill_and_delete() {
    let h = Harness::new();
    let cd = Containerd::start(&h);
    let ok = |args: &[&str]| {
        let out = cd.run(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\n{}",
            text(&out.stderr),
            cd.log_tail()
        );
        text(&out.stdout)
    };
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

    ok(&["task", "kill", "-s", "KILL", "d1"]);
    // `task delete` waits for nothing: wait for the exit through ctr first.
    let _ = cd.ctr().args(["task", "wait", "d1"]).output();
    ok(&["task", "delete", "d1"]);
    ok(&["containers", "rm", "d1"]);
    cd.assert_nothing_left();
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
    cd.assert_nothing_left();
}
