//! `husk exec` and `husk console` into running sandboxes through the guest console
//! (husk-console, `husk.console.v1` on vsock 1026): separate streams and the remote exit code,
//! a real terminal driven by tmux, containers' namespaces, concurrent sessions, sandboxes made
//! by containerd, and the errors a person gets when a sandbox cannot be reached.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use husk_e2e::containerd::{Containerd, IMAGE, RUNTIME};
use husk_e2e::{busybox_rootfs, husk_binary, Harness};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// How long a terminal screen may take to show what the test waits for (QEMU-TCG is slow).
const SCREEN_TIMEOUT: Duration = Duration::from_secs(60);

/// A sandbox made by `husk run`, its container waiting until told to stop.
struct Sandbox<'h> {
    h: &'h Harness,
    run: Child,
}

impl<'h> Sandbox<'h> {
    /// Starts `husk run [flags] busybox -- …` named `name`; returns once the container runs.
    fn start(h: &'h Harness, name: &str, flags: &[&str]) -> Self {
        let img = busybox_rootfs(&h.scratch().join(format!("rootfs-{name}")));
        // `sh` as the container's PID 1 ends on SIGINT through its trap (a PID 1 without a
        // handler ignores it).
        let script = "trap 'exit 0' INT TERM; echo ready; while :; do sleep 1; done";
        let mut run = h
            .husk()
            .args(["run", "--name", name])
            .args(flags)
            .arg(&img)
            .args(["--", "sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("husk run");
        let mut lines = BufReader::new(run.stdout.take().expect("stdout")).lines();
        match lines.next() {
            Some(Ok(l)) if l == "ready" => {}
            other => {
                let _ = run.kill();
                let out = run.wait_with_output().expect("husk run's output");
                panic!("husk run did not start: {other:?}\n{}", text(&out.stderr));
            }
        }
        Self { h, run }
    }

    /// `husk exec ARGS…` against this sandbox (ARGS holds the sandbox and the command).
    fn exec(&self, args: &[&str]) -> Output {
        self.h
            .husk()
            .arg("exec")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("husk exec")
    }

    /// Stops the container (SIGINT through husk run) and checks nothing is left.
    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.run.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT to husk run");
        let status = self.run.wait().expect("husk run");
        assert_eq!(status.code(), Some(0), "husk run after SIGINT");
        for dir in [self.h.run_root(), self.h.state_dir()] {
            let left: Vec<_> = std::fs::read_dir(&dir)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
        }
    }
}

impl Drop for Sandbox<'_> {
    fn drop(&mut self) {
        let _ = self.run.kill();
        let _ = self.run.wait();
    }
}

#[test]
fn exec_keeps_streams_apart_and_returns_the_remote_exit_code() {
    let h = Harness::new();
    let sb = Sandbox::start(&h, "streams", &["--debug"]);
    let out = sb.exec(&[
        "streams",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");

    // A unique prefix of the id finds it too; stdin is husk's with -i.
    let id = husk_state::find(&h.state_dir(), "streams")
        .expect("the sandbox's record")
        .id;
    let mut child = h
        .husk()
        .args([
            "exec",
            "-i",
            &id[..id.len() - 2],
            "--",
            "sh",
            "-c",
            "tr a-z A-Z",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("husk exec -i");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"piped in\n")
        .expect("writing stdin");
    let out = child.wait_with_output().expect("husk exec -i");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "PIPED IN\n");

    // Environment and working directory.
    let out = sb.exec(&[
        "-e",
        "GREETING=hello",
        "-w",
        "/etc",
        "streams",
        "--",
        "sh",
        "-c",
        "echo $GREETING $(pwd)",
    ]);
    assert_eq!(text(&out.stdout), "hello /etc\n", "{}", text(&out.stderr));

    // The debug image's tools run in the guest (packed with their libraries).
    let out = sb.exec(&[
        "streams",
        "--",
        "sh",
        "-c",
        "strace -e trace=execve /bin/true 2>&1 | head -1; lsof -p 1 | head -1",
    ]);
    let tools = text(&out.stdout);
    assert!(
        tools.starts_with("execve(\"/bin/true\"") && tools.contains("COMMAND"),
        "{tools}{}",
        text(&out.stderr)
    );

    // A program that does not exist is 127, with the guest's reason.
    let out = sb.exec(&["streams", "--", "no-such-program"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no-such-program"),
        "{}",
        text(&out.stderr)
    );
    sb.stop();
}

#[test]
fn exec_into_a_container_sees_its_filesystem_and_processes() {
    let h = Harness::new();
    let sb = Sandbox::start(&h, "inside", &["--debug"]);
    // The guest's own root: husk's services run there, and the guest's binaries are there.
    let out = sb.exec(&[
        "inside",
        "--",
        "sh",
        "-c",
        "ps -o comm; test -x /usr/bin/husk-agent && echo has-agent",
    ]);
    let guest = text(&out.stdout);
    assert!(
        guest.lines().any(|l| l == "husk-agent") && guest.contains("has-agent"),
        "{guest}"
    );

    // The container: its PID namespace (its shell is PID 1) and its root (no husk binaries).
    let out = sb.exec(&[
        "--container",
        "main",
        "inside",
        "--",
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; ps -o comm; test -e /usr/bin/husk-agent || echo no-agent; hostname",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let inside = text(&out.stdout);
    assert!(inside.starts_with("sh -c trap"), "{inside}");
    assert!(!inside.lines().any(|l| l == "husk-agent"), "{inside}");
    assert!(inside.contains("no-agent"), "{inside}");
    assert!(
        inside.trim_end().ends_with("inside"),
        "the container's hostname: {inside}"
    );

    // An unknown container is named in the error, with the sandbox's containers.
    let out = sb.exec(&["--container", "nope", "inside", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(err.contains("nope") && err.contains("main"), "{err}");
    sb.stop();
}

#[test]
fn ten_sessions_at_once_each_get_their_own_output() {
    let h = Harness::new();
    let sb = Sandbox::start(&h, "many", &["--debug"]);
    let children: Vec<Child> = (0..10)
        .map(|n| {
            h.husk()
                .args(["exec", "many", "--", "sh", "-c"])
                .arg(format!(
                    "for i in 1 2 3; do echo session-{n}-$i; done; exit {n}"
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("husk exec")
        })
        .collect();
    for (n, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("husk exec");
        assert_eq!(out.status.code(), Some(n as i32), "{}", text(&out.stderr));
        let want: String = (1..=3).map(|i| format!("session-{n}-{i}\n")).collect();
        assert_eq!(text(&out.stdout), want);
    }
    sb.stop();
}

#[test]
fn missing_sandboxes_and_disabled_consoles_are_clear_errors() {
    let h = Harness::new();
    let out = h
        .husk()
        .args(["exec", "no-such-sandbox", "--", "true"])
        .output()
        .expect("husk exec");
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains("no-such-sandbox") && err.contains("husk ps"),
        "{err}"
    );

    // A sandbox whose husk process died (SIGKILL: no clean-up) is "not running".
    let mut gone = Sandbox::start(&h, "gone", &["--debug"]);
    gone.run.kill().expect("SIGKILL to husk run");
    gone.run.wait().expect("husk run");
    let out = gone.exec(&["gone", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains("gone") && err.contains("is not running"),
        "{err}"
    );
    drop(gone);

    // The default image runs no console unless asked.
    let sb = Sandbox::start(&h, "quiet", &[]);
    let out = sb.exec(&["quiet", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains("has no console") && err.contains("debug_console"),
        "{err}"
    );
    sb.stop();
}

/// A tmux server of the test's own, driving a real terminal.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn new(dir: &Path) -> Self {
        Self {
            socket: dir.join("tmux.sock"),
        }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux (apt-get install tmux; scripts/test.sh does)")
    }

    fn screen(&self) -> String {
        text(&self.cmd(&["capture-pane", "-p", "-t", "t"]).stdout)
    }

    /// Waits until the screen shows `what` (the terminal's content is the event).
    fn wait_for(&self, what: &str) -> String {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            let screen = self.screen();
            if screen.contains(what) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {what:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn a_terminal_session_follows_resizes_and_restores_the_terminal() {
    let h = Harness::new();
    let sb = Sandbox::start(&h, "tty", &["--debug"]);
    let tmux = Tmux::new(h.scratch());
    // The pane's shell records the terminal's settings before and after husk.
    let script = format!(
        "before=$(stty -g); env HUSK_STATE_DIR={state} HUSK_RUN_ROOT={run} HUSK_LOG_ROOT={log} {husk} console tty; code=$?; \
         [ \"$before\" = \"$(stty -g)\" ] && echo RESTORED-$code || echo NOT-RESTORED-$code; exec sleep 600",
        state = h.state_dir().display(),
        run = h.run_root().display(),
        log = h.log_root().display(),
        husk = husk_binary().display(),
    );
    let started = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "80",
        "-y",
        "24",
        "bash",
        "-c",
        &script,
    ]);
    assert!(started.status.success(), "{}", text(&started.stderr));
    tmux.wait_for("#");
    tmux.keys(&["echo typed-$((6*7))", "Enter"]);
    tmux.wait_for("typed-42");
    tmux.keys(&["stty size", "Enter"]);
    tmux.wait_for("24 80");
    assert!(tmux
        .cmd(&["resize-window", "-t", "t", "-x", "100", "-y", "30"])
        .status
        .success());
    tmux.keys(&["clear; stty size", "Enter"]);
    tmux.wait_for("30 100");
    tmux.keys(&["C-d"]);
    let screen = tmux.wait_for("RESTORED-");
    assert!(screen.contains("RESTORED-0"), "{screen}");
    sb.stop();
}

#[test]
fn a_sandbox_made_by_containerd_is_reachable_the_same_way() {
    let h = Harness::new();
    let cd = Containerd::start(&h);
    cd.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.husk.image=debug",
        IMAGE,
        "pod1",
        "sh",
        "-c",
        "echo from-pod > /tmp/mark; exec sleep 1000",
    ]);
    let ps = h.husk().args(["ps", "--json"]).output().expect("husk ps");
    let v: serde_json::Value = serde_json::from_slice(&ps.stdout).expect("ps --json");
    assert_eq!(v[0]["id"], "pod1", "{v}");
    assert_eq!(v[0]["origin"], "shim", "{v}");
    assert_eq!(v[0]["console"], true, "{v}");

    let out = h
        .husk()
        .args(["exec", "pod1", "--", "sh", "-c", "echo guest; exit 3"])
        .stdin(Stdio::null())
        .output()
        .expect("husk exec");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "guest\n");
    let out = h
        .husk()
        .args([
            "exec",
            "--container",
            "pod1",
            "pod1",
            "--",
            "sh",
            "-c",
            "cat /tmp/mark; cat /proc/1/cmdline",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("husk exec --container");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let inside = text(&out.stdout);
    assert!(inside.starts_with("from-pod\nsleep"), "{inside}");

    cd.ok(&["task", "kill", "-s", "KILL", "pod1"]);
    cd.ok(&["task", "rm", "-f", "pod1"]);
    cd.ok(&["containers", "rm", "pod1"]);
    cd.assert_nothing_left(&["pod1"]);
    let left: Vec<_> = std::fs::read_dir(h.state_dir())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "records left: {left:?}");
}
