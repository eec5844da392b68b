//! Entering a container with the real binary: a process of the test's own making in a new UTS
//! namespace (with its own hostname) stands for a container, recorded as the agent would.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use husk_protocols::console::{
    client, client_frame, read_frame, server_frame, write_frame, ErrorKind, Open, ServerFrame,
    PROTOCOL,
};
use husk_protocols::container_record::{start_time_from_stat, ContainerRecord};

/// Kills and reaps a child when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `sleep` in a UTS namespace of its own named `hostname`, ready once its pipe says so.
fn fake_container(hostname: &'static str) -> Reaped {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo ready; exec sleep 100"])
        .stdout(Stdio::piped());
    // SAFETY: unshare and sethostname are plain system calls, fine between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS)?;
            nix::unistd::sethostname(hostname)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .expect("a process in a new UTS namespace (needs root)");
    let mut ready = [0u8; 6];
    child
        .stdout
        .take()
        .expect("the child's stdout")
        .read_exact(&mut ready)
        .expect("its readiness");
    Reaped(child)
}

fn record(dir: &std::path::Path, id: &str, pid: u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("its stat");
    let r = ContainerRecord {
        id: id.into(),
        pid: pid as i32,
        start_time: start_time_from_stat(&stat).expect("its start time"),
        cwd: "/tmp".into(),
        env: vec!["FROM_RECORD=yes".into(), "PATH=/usr/bin:/bin".into()],
    };
    std::fs::create_dir_all(dir.join(id)).expect("the container's directory");
    std::fs::write(
        dir.join(id)
            .join(husk_protocols::container_record::RECORD_FILE),
        serde_json::to_string(&r).expect("the record as JSON"),
    )
    .expect("writing the record");
}

/// The console, listening on a Unix socket in `dir`.
fn console(dir: &std::path::Path) -> (Reaped, std::path::PathBuf) {
    let sock = dir.join("console.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_husk-console"))
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--containers")
        .arg(dir)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting husk-console");
    // It logs "serving on …" once it listens; the rest of its log is drained and dropped.
    let mut log = BufReader::new(child.stderr.take().expect("the console's stderr")).lines();
    let child = Reaped(child);
    loop {
        match log.next() {
            Some(Ok(line)) if line.contains("serving on") => break,
            Some(Ok(_)) => {}
            other => panic!("the console never listened: {other:?}"),
        }
    }
    std::thread::spawn(move || log.for_each(drop));
    (child, sock)
}

fn session(sock: &std::path::Path, id: &str, args: &[&str], tty: bool) -> Vec<server_frame::Frame> {
    let mut c = UnixStream::connect(sock).expect("connecting to the console");
    let mut o = Open::new();
    o.protocol = PROTOCOL.into();
    o.args = args.iter().map(|s| s.to_string()).collect();
    o.tty = tty;
    o.container_id = id.into();
    write_frame(&mut c, &client(client_frame::Frame::Open(o))).expect("sending open");
    c.flush().expect("flushing");
    let mut frames = Vec::new();
    loop {
        match read_frame::<_, ServerFrame>(&mut c) {
            Ok(f) => frames.push(f.frame.expect("a frame with content")),
            Err(_) => return frames,
        }
    }
}

fn stdout_and_exit(frames: &[server_frame::Frame]) -> (String, i32) {
    assert!(
        matches!(frames.first(), Some(server_frame::Frame::Started(_))),
        "{frames:?}"
    );
    let mut out = Vec::new();
    for f in &frames[1..frames.len() - 1] {
        if let server_frame::Frame::Stdout(d) = f {
            out.extend_from_slice(&d.data);
        }
    }
    match frames.last() {
        Some(server_frame::Frame::Exit(e)) => (String::from_utf8_lossy(&out).into_owned(), e.code),
        other => panic!("the last frame is not exit: {other:?}"),
    }
}

#[test]
fn a_session_enters_the_container() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let container = fake_container("husk-ctr-test");
    record(dir.path(), "c1", container.0.id());
    let (_console, sock) = console(dir.path());

    for tty in [false, true] {
        let frames = session(
            &sock,
            "c1",
            &["sh", "-c", "hostname; echo $FROM_RECORD; pwd; exit 4"],
            tty,
        );
        let (out, code) = stdout_and_exit(&frames);
        let out = out.replace("\r\n", "\n");
        assert_eq!(out, "husk-ctr-test\nyes\n/tmp\n", "tty {tty}");
        assert_eq!(code, 4);
    }

    // A program missing in the container: NOT_FOUND, and nothing started.
    match session(&sock, "c1", &["no-such-program-husk"], false).as_slice() {
        [server_frame::Frame::Error(e)] => {
            assert_eq!(e.kind.enum_value(), Ok(ErrorKind::NOT_FOUND));
            assert!(e.message.contains("no-such-program-husk") && e.message.contains("c1"));
        }
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }

    // The container's process gone: NO_CONTAINER.
    let pid = container.0.id();
    drop(container);
    let _ = pid;
    match session(&sock, "c1", &["true"], false).as_slice() {
        [server_frame::Frame::Error(e)] => {
            assert_eq!(e.kind.enum_value(), Ok(ErrorKind::NO_CONTAINER))
        }
        other => panic!("expected NO_CONTAINER, got {other:?}"),
    }
}
