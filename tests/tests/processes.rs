//! Beyond one process per container, in a real guest: processes exec'd into a running
//! container, terminals and their size, the container's processes, cgroup statistics, limits
//! and updates, pause and resume, OOM events, and the sandbox's life.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use husk_agent_client::{open_process_stream, AgentClient};
use husk_e2e::{busybox_rootfs, runtime, spec_json, Harness, SHUTDOWN_TIMEOUT};
use husk_hypervisor::config::Share;
use husk_protocols::agent::capability;
use husk_protocols::stdio::StreamKind;

const T: Duration = Duration::from_secs(60);

fn stream(vsock: &Path, id: &str, exec: &str, kind: StreamKind) -> UnixStream {
    open_process_stream(vsock, id, exec, kind, T).expect("stdio stream")
}

fn read_all(mut s: UnixStream) -> String {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("reading a stream");
    String::from_utf8_lossy(&buf).into_owned()
}

/// Boots a guest with a busybox rootfs shared as `rootfs`, runs `body` with a connected client.
fn with_guest<F, Fut>(body: F)
where
    F: FnOnce(AgentClient, std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let h = Harness::new();
    let rootfs = busybox_rootfs(&h.scratch().join("rootfs"));
    let mut config = h.config(&h.image("default"));
    config.shares.push(Share {
        tag: "rootfs".into(),
        host_dir: rootfs,
        read_only: true,
    });
    let (mut vm, _) = h.boot_ready(&config);
    let vsock = vm.vsock_path().to_owned();
    runtime().block_on(async {
        let client = AgentClient::connect(&vsock, T).await.expect("agent");
        body(client, vsock).await;
    });
    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    h.finish(vm);
}

/// Starts a container whose init prints "ready" once its children run, and returns its
/// stdout reader positioned after that line.
async fn start_ready(
    client: &AgentClient,
    vsock: &Path,
    id: &str,
    script: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> BufReader<UnixStream> {
    client
        .create_container(id, &spec_json(&["sh", "-c", script], edit), "rootfs")
        .await
        .expect("CreateContainer");
    let out = stream(vsock, id, "", StreamKind::Stdout);
    client.start_container(id).await.expect("StartContainer");
    let mut out = BufReader::new(out);
    let mut line = String::new();
    out.read_line(&mut line).expect("reading the ready line");
    assert_eq!(line, "ready\n");
    out
}

#[test]
fn exec_joins_the_container_and_terminals_work() {
    with_guest(|client, vsock| async move {
        for cap in [capability::EXEC, capability::TTY, capability::SANDBOX] {
            assert!(client.has_capability(cap), "{cap}");
        }
        client
            .create_sandbox("pod", "guest-host", &["nameserver 10.0.2.3".into()])
            .await
            .expect("CreateSandbox");
        let e = client.create_sandbox("pod2", "", &[]).await.unwrap_err();
        assert_eq!(e.rpc_code(), Some(ttrpc::Code::ALREADY_EXISTS), "{e}");

        // The init writes a file in its own root; an exec'd process sees it, shares the
        // container's hostname and PID namespace, and has its own stdio and exit code.
        let _init = start_ready(
            &client,
            &vsock,
            "c1",
            "echo hello > /tmp/mark; sleep 1000 & echo ready; wait",
            |_| {},
        )
        .await;
        let process = serde_json::json!({
            "args": ["sh", "-c", "cat /tmp/mark; hostname; echo pid $$; ps >&2; exit 5"],
            "env": ["PATH=/bin"],
            "cwd": "/tmp",
            "user": {"uid": 0, "gid": 0},
        });
        client
            .exec_process("c1", "e1", &process.to_string())
            .await
            .expect("ExecProcess");
        let out = stream(&vsock, "c1", "e1", StreamKind::Stdout);
        let err = stream(&vsock, "c1", "e1", StreamKind::Stderr);
        let pid = client
            .start_process("c1", "e1")
            .await
            .expect("start the exec");
        assert!(pid > 1);
        let (out, err) = (std::thread::spawn(move || read_all(out)), read_all(err));
        assert_eq!(client.wait("c1", "e1").await.expect("WaitProcess"), 5);
        let out = out.join().expect("stdout reader");
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("hello"), "{out}");
        assert_eq!(lines.next(), Some("box"), "{out}");
        let ns_pid: u32 = lines
            .next()
            .and_then(|l| l.strip_prefix("pid ")?.parse().ok())
            .expect("pid line");
        assert!(
            ns_pid > 1 && ns_pid < 100,
            "a pid of the container's namespace: {ns_pid}"
        );
        // ps inside sees the container's init as pid 1 and not the guest's processes.
        assert!(
            err.lines()
                .any(|l| l.split_whitespace().next() == Some("1")),
            "{err}"
        );
        assert!(
            !err.contains("husk-agent"),
            "the guest leaked into the container: {err}"
        );
        // A waited exec is forgotten; a second one with the same id is fine.
        let e = client.wait("c1", "e1").await.unwrap_err();
        assert_eq!(e.rpc_code(), Some(ttrpc::Code::FAILED_PRECONDITION), "{e}");

        // Bad execs are clear errors.
        let bad =
            serde_json::json!({"args": ["sh"], "cwd": "relative", "user": {"uid": 0, "gid": 0}});
        let e = client
            .exec_process("c1", "e2", &bad.to_string())
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("process.cwd \"relative\" must be an absolute path"),
            "{e}"
        );
        let e = client
            .exec_process("c1", "../x", &process.to_string())
            .await
            .unwrap_err();
        assert_eq!(e.rpc_code(), Some(ttrpc::Code::INVALID_ARGUMENT), "{e}");
        let e = client
            .exec_process("nope", "e3", &process.to_string())
            .await
            .unwrap_err();
        assert_eq!(e.rpc_code(), Some(ttrpc::Code::NOT_FOUND), "{e}");

        // An exec on a terminal: one stream carries its output, the size set before it starts
        // is the one it sees, input typed reaches it.
        let tty = serde_json::json!({
            "args": ["sh", "-c", "[ -t 0 ] && echo on-a-tty; stty size; read line; echo got $line"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
        });
        client
            .exec_process("c1", "t1", &tty.to_string())
            .await
            .expect("ExecProcess tty");
        let e = open_process_stream(&vsock, "c1", "t1", StreamKind::Stderr, T).unwrap_err();
        assert!(e.to_string().contains("terminal"), "{e}");
        let out = stream(&vsock, "c1", "t1", StreamKind::Stdout);
        let mut input = stream(&vsock, "c1", "t1", StreamKind::Stdin);
        client
            .resize_tty("c1", "t1", 40, 132)
            .await
            .expect("ResizeTty");
        client
            .start_process("c1", "t1")
            .await
            .expect("start the tty exec");
        input.write_all(b"typed\n").expect("typing");
        let out = std::thread::spawn(move || read_all(out));
        assert_eq!(client.wait("c1", "t1").await.expect("wait tty"), 0);
        let out = out.join().expect("tty reader");
        assert!(out.contains("on-a-tty\r\n"), "{out:?}");
        assert!(out.contains("40 132\r\n"), "{out:?}");
        assert!(out.contains("got typed\r\n"), "{out:?}");
        let e = client.resize_tty("c1", "", 10, 10).await.unwrap_err();
        assert!(e.to_string().contains("has no terminal"), "{e}");

        // DestroySandbox removes the running container.
        client.destroy_sandbox("pod").await.expect("DestroySandbox");
        let e = client.list_processes("c1").await.unwrap_err();
        assert_eq!(e.rpc_code(), Some(ttrpc::Code::NOT_FOUND), "{e}");
        client
            .create_sandbox("pod2", "", &[])
            .await
            .expect("a new sandbox after destroy");
    });
}

#[test]
fn cgroups_give_processes_stats_limits_pause_and_oom_events() {
    with_guest(|client, vsock| async move {
        assert!(client.has_capability(capability::CGROUPS));
        assert!(client.has_capability(capability::OOM_EVENTS));

        // The spec's limits apply; the container's processes are listed with both pids.
        let _out = start_ready(
            &client,
            &vsock,
            "c1",
            // "ready" once the child has exec'd sleep (not while it is still a forked shell).
            "sleep 1000 & while [ \"$(cat /proc/$!/comm)\" != sleep ]; do :; done; echo ready; wait",
            |v| {
                v["linux"]["resources"] =
                    serde_json::json!({"pids": {"limit": 50}, "memory": {"limit": 64 << 20}});
            },
        )
        .await;
        let ps = client.list_processes("c1").await.expect("ListProcesses");
        assert_eq!(ps.len(), 2, "{ps:?}");
        let init = ps
            .iter()
            .find(|p| p.container_pid == 1)
            .expect("the init in the list");
        assert!(init.cmdline.starts_with("sh -c"), "{init:?}");
        assert!(
            ps.iter()
                .any(|p| p.cmdline == "sleep 1000" && p.container_pid > 1),
            "{ps:?}"
        );
        let s = client.stats("c1").await.expect("StatsContainer");
        assert_eq!(
            (s.pids_current, s.pids_limit, s.memory_limit_bytes),
            (2, 50, 64 << 20)
        );
        assert!(s.memory_usage_bytes > 0 && s.cpu_usage_usec > 0, "{s:?}");

        // UpdateContainer changes them; nonsense is refused by name.
        client
            .update(
                "c1",
                r#"{"pids": {"limit": 20}, "cpu": {"quota": 50000, "period": 100000}}"#,
            )
            .await
            .expect("UpdateContainer");
        assert_eq!(client.stats("c1").await.expect("stats").pids_limit, 20);
        let e = client
            .update("c1", r#"{"cpu": {"period": 0}}"#)
            .await
            .unwrap_err();
        assert_eq!(e.rpc_code(), Some(ttrpc::Code::INVALID_ARGUMENT), "{e}");
        let e = client.update("c1", "[]").await.unwrap_err();
        assert_eq!(e.rpc_code(), Some(ttrpc::Code::INVALID_ARGUMENT), "{e}");

        // Pause freezes: a cat echoes nothing while paused, everything after resume, and
        // nothing may start in a paused container.
        client
            .create_container("c2", &spec_json(&["cat"], |_| {}), "rootfs")
            .await
            .expect("create c2");
        let out = stream(&vsock, "c2", "", StreamKind::Stdout);
        let mut input = stream(&vsock, "c2", "", StreamKind::Stdin);
        client.start_container("c2").await.expect("start c2");
        let mut out = BufReader::new(out);
        let mut line = String::new();
        input.write_all(b"before\n").expect("typing");
        out.read_line(&mut line).expect("echo");
        assert_eq!(line, "before\n");
        client.pause("c2").await.expect("PauseContainer");
        input.write_all(b"during\n").expect("typing");
        out.get_ref()
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        line.clear();
        let r = out.read_line(&mut line);
        assert!(
            r.is_err() && line.is_empty(),
            "a paused container echoed {line:?}"
        );
        let exec = serde_json::json!({"args": ["true"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}});
        client
            .exec_process("c2", "x", &exec.to_string())
            .await
            .expect("exec recorded");
        let e = client.start_process("c2", "x").await.unwrap_err();
        assert!(e.to_string().contains("paused"), "{e}");
        client.resume("c2").await.expect("ResumeContainer");
        out.get_ref().set_read_timeout(None).expect("timeout");
        out.read_line(&mut line).expect("echo after resume");
        assert_eq!(line, "during\n");
        client.remove_container("c2").await.expect("remove c2");

        // The OOM killer in a container with a small limit: GetOOMEvent answers with it.
        let oom = client.oom_event();
        client
            .create_container(
                "c3",
                &spec_json(
                    &[
                        "sh",
                        "-c",
                        "dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived",
                    ],
                    |v| {
                        v["linux"]["resources"] =
                            serde_json::json!({"memory": {"limit": 16 << 20, "swap": 16 << 20}});
                    },
                ),
                "rootfs",
            )
            .await
            .expect("create c3");
        let out = stream(&vsock, "c3", "", StreamKind::Stdout);
        client.start_container("c3").await.expect("start c3");
        let event = tokio::time::timeout(T, oom)
            .await
            .expect("an OOM event")
            .expect("GetOOMEvent");
        assert_eq!((event.container_id.as_str(), event.oom_kills), ("c3", 1));
        assert_eq!(client.wait_process("c3").await.expect("wait c3"), 0);
        assert_eq!(
            read_all(out),
            "survived\n",
            "the shell lives on, dd was killed"
        );
        assert_eq!(client.stats("c3").await.expect("stats c3").oom_kills, 1);
        client.remove_container("c3").await.expect("remove c3");
        client.remove_container("c1").await.expect("remove c1");
    });
}
