//! One connection, one session: read and check `open`, decide what runs where, start it,
//! announce it, relay until it ends, send its exit, clean up.
//!
//! Owns the session's order of events: `started` only once the program runs (or `error` and
//! nothing ran), `exit` last and after every byte of output, and the reap of the process after
//! the input thread is gone. All of a session's threads are scoped to [`serve`]: none outlives
//! it. Must never affect another session or the server: every failure ends this one only.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_protocols::console::{
    client_frame, read_frame, server, server_frame, ClientFrame, Exit, FrameError, Started,
    PROTOCOL,
};
use husk_protocols::container_record::{self, ContainerRecord};
use nix::fcntl::OFlag;

use crate::enter;
use crate::error::SessionError;
use crate::process::{self, Pipes, Process, Spec, Stdio3};
use crate::pty::Pty;
use crate::relay::{self, Stdin, Writer};
use crate::request::{self, Request};

/// How long a new connection may take to send its `open` frame.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The default shells, in order of preference, run interactive.
const SHELLS: [&str; 2] = ["/bin/bash", "/bin/sh"];

/// What every session of a server shares.
#[derive(Debug, Clone)]
pub struct Config {
    /// This program, started again as the enter helper (`/proc/self/exe`).
    pub exe: PathBuf,
    /// Where the agent's container records are.
    pub containers: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            exe: PathBuf::from("/proc/self/exe"),
            containers: PathBuf::from(container_record::DIR),
        }
    }
}

/// Serves one connection to its end. `id` and `peer` name the session in the log.
pub fn serve(mut conn: UnixStream, config: &Config, id: u64, peer: &str) {
    let writer = match conn.try_clone() {
        Ok(w) => Writer::new(w),
        Err(e) => {
            tracing::warn!(session = id, error = %e, "cannot use the connection");
            return;
        }
    };
    let request = match read_open(&conn) {
        Ok(r) => r,
        Err(None) => {
            tracing::debug!(session = id, peer, "closed before opening a session");
            return;
        }
        Err(Some(e)) => {
            tracing::info!(session = id, peer, error = %e, "session refused");
            writer.send(&e.frame());
            relay::linger(&mut conn, relay::LINGER);
            return;
        }
    };
    let span = tracing::info_span!(
        "console.session",
        otel.name = "console session",
        session = id,
        tty = request.tty,
        container.id = request.container_id.as_deref().unwrap_or(""),
        program = request.args.first().map_or("(shell)", String::as_str),
        otel.status_code = tracing::field::Empty,
    );
    if let Some(tp) = &request.traceparent {
        husk_telemetry::propagation::set_parent(&span, tp);
    }
    let _entered = span.enter();
    tracing::info!(
        session = id,
        peer,
        client = request.client,
        args = ?request.args,
        tty = request.tty,
        container = request.container_id.as_deref().unwrap_or("-"),
        "session opened"
    );
    let ending = run(conn.try_clone(), &request, config, &writer);
    match ending {
        Ok(exit) => tracing::info!(
            session = id,
            code = exit.code,
            signal = exit.signal,
            "session closed"
        ),
        Err(e) => {
            span.record("otel.status_code", "error");
            tracing::info!(session = id, error = %e, "session refused");
            writer.send(&e.frame());
            relay::linger(&mut conn, relay::LINGER);
        }
    }
}

/// Reads the first frame; `Err(None)`: the client left without a word.
fn read_open(mut conn: &UnixStream) -> Result<Request, Option<SessionError>> {
    let _ = conn.set_read_timeout(Some(OPEN_TIMEOUT));
    let frame = read_frame::<_, ClientFrame>(&mut conn);
    let _ = conn.set_read_timeout(None);
    let frame = match frame {
        Ok(f) => f,
        Err(FrameError::Closed) => return Err(None),
        Err(FrameError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(Some(SessionError::BadRequest(format!(
                "no open frame within {}s",
                OPEN_TIMEOUT.as_secs()
            ))))
        }
        Err(e) => {
            return Err(Some(SessionError::BadRequest(format!(
                "the first frame is unreadable: {e}"
            ))))
        }
    };
    match frame.frame {
        Some(client_frame::Frame::Open(open)) => request::validate(open).map_err(Some),
        other => Err(Some(SessionError::BadRequest(format!(
            "the first frame must be open, not {}",
            frame_name(other.as_ref())
        )))),
    }
}

fn frame_name(frame: Option<&client_frame::Frame>) -> &'static str {
    match frame {
        None => "an empty frame",
        Some(client_frame::Frame::Open(_)) => "open",
        Some(client_frame::Frame::Stdin(_)) => "stdin",
        Some(client_frame::Frame::StdinEof(_)) => "stdin_eof",
        Some(client_frame::Frame::Resize(_)) => "resize",
        Some(client_frame::Frame::Signal(_)) => "signal",
        Some(_) => "an unknown frame",
    }
}

/// The first of [`SHELLS`] that exists under `root`.
pub fn default_shell(root: &Path) -> Option<&'static str> {
    SHELLS.into_iter().find(|s| {
        // Not followed: an absolute link would be resolved in the console's root.
        std::fs::symlink_metadata(root.join(s.trim_start_matches('/'))).is_ok()
    })
}

/// What runs, decided from the request (and the container's record).
#[derive(Debug)]
struct Plan {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
    container: Option<ContainerRecord>,
}

fn plan(request: &Request, config: &Config) -> Result<Plan, SessionError> {
    let container = match &request.container_id {
        Some(id) => Some(enter::find(&config.containers, id)?),
        None => None,
    };
    let base = container.as_ref().map(|c| c.env.as_slice()).unwrap_or(&[]);
    let env = process::environment(base, &request.env, request.tty);
    let cwd = request
        .cwd
        .clone()
        .or_else(|| container.as_ref().map(|c| c.cwd.clone()))
        .filter(|c| c.starts_with('/'))
        .unwrap_or_else(|| "/".into());
    let argv = if request.args.is_empty() {
        let (root, missing) = match &container {
            Some(c) => (
                enter::root_of(c),
                format!(
                    "container {} has no shell ({}): pass a command that exists in it",
                    c.id,
                    SHELLS.join(" or ")
                ),
            ),
            None => (
                PathBuf::from("/"),
                format!(
                    "the guest image has no shell ({}): use the debug image (`husk run --debug`, \
                     `[hypervisor] image = \"debug\"` or the annotation io.husk.image=debug), \
                     or pass a command",
                    SHELLS.join(" or ")
                ),
            ),
        };
        let shell = default_shell(&root).ok_or(SessionError::NotFound(missing))?;
        vec![shell.to_owned(), "-i".to_owned()]
    } else {
        request.args.clone()
    };
    if container.is_none() && !Path::new(&cwd).is_dir() {
        return Err(SessionError::BadRequest(format!(
            "working directory {cwd} does not exist in the guest"
        )));
    }
    Ok(Plan {
        argv,
        env,
        cwd,
        container,
    })
}

/// Starts the plan; returns the process, its pid as the client is told, and its pipes.
fn start(
    plan: &Plan,
    pty: Option<&Pty>,
    config: &Config,
) -> Result<(Process, u32, Option<Pipes>), SessionError> {
    let stdio = || match pty {
        Some(p) => Stdio3::Pty(p),
        None => Stdio3::Pipes,
    };
    let Some(record) = &plan.container else {
        let spec = Spec {
            argv: plan.argv.clone(),
            env: plan.env.clone(),
            cwd: plan.cwd.clone(),
            keep_fd: None,
        };
        let (process, pipes) = process::spawn(&spec, stdio())
            .map_err(|e| spawn_error(&plan.argv[0], process::lookup(&plan.env, "PATH"), e))?;
        let pid = process.pid();
        return Ok((process, pid, pipes));
    };
    let (status_rx, status_tx): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| SessionError::Other(format!("creating a pipe: {e}")))?;
    let spec = Spec {
        argv: std::iter::once(config.exe.to_string_lossy().into_owned())
            .chain(enter::helper_args(
                status_tx.as_raw_fd(),
                record,
                &plan.cwd,
                &plan.argv,
            ))
            .collect(),
        env: plan.env.clone(),
        cwd: "/".into(),
        keep_fd: Some(status_tx.as_raw_fd()),
    };
    let spawned = process::spawn(&spec, stdio());
    drop(status_tx);
    let (mut process, pipes) = spawned.map_err(|e| {
        SessionError::Other(format!(
            "cannot start the enter helper {}: {e}",
            config.exe.display()
        ))
    })?;
    match enter::read_status(status_rx) {
        Ok(pid) => Ok((process, pid, pipes)),
        Err(e) => {
            process.reap();
            Err(e)
        }
    }
}

fn spawn_error(program: &str, path: Option<&str>, e: std::io::Error) -> SessionError {
    if e.kind() != std::io::ErrorKind::NotFound {
        return SessionError::Other(format!("cannot run {program}: {e}"));
    }
    if program.contains('/') {
        SessionError::NotFound(format!("program {program} does not exist in the guest"))
    } else {
        SessionError::NotFound(format!(
            "program {program} not found in PATH ({})",
            path.unwrap_or_default()
        ))
    }
}

/// Runs a checked request to its end; `Err`: nothing ran (the caller sends the error).
fn run(
    reader: std::io::Result<UnixStream>,
    request: &Request,
    config: &Config,
    writer: &Writer,
) -> Result<Exit, SessionError> {
    let reader = reader.map_err(|e| SessionError::Other(format!("using the connection: {e}")))?;
    let plan = plan(request, config)?;
    let mut pty = match request.tty {
        true => Some(
            Pty::open(request.size)
                .map_err(|e| SessionError::Other(format!("opening a terminal: {e}")))?,
        ),
        false => None,
    };
    let (mut process, pid, pipes) = start(&plan, pty.as_ref(), config)?;
    if let Some(p) = pty.as_mut() {
        p.close_slave();
    }
    let mut started = Started::new();
    started.protocol = PROTOCOL.into();
    started.pid = pid;
    started.server_version = env!("CARGO_PKG_VERSION").into();
    if !writer.send(&server(server_frame::Frame::Started(started))) {
        process.reap();
        return Err(SessionError::Other(
            "the client went away before the session started".into(),
        ));
    }
    let exit = relay_until_exit(reader, &process, pty.as_ref(), pipes, writer)?;
    process.reap();
    Ok(exit)
}

/// Starts a session thread. One that cannot start (the guest is out of resources) ends the
/// session: its process is killed, so nothing waits for the missing thread.
fn spawn_in<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    name: &str,
    process: &Process,
    f: impl FnOnce() + Send + 'scope,
) -> Option<std::thread::ScopedJoinHandle<'scope, ()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn_scoped(s, f)
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot start the session's {name} thread");
            process.kill_session();
        })
        .ok()
}

/// The process's output side.
enum Outputs<'a> {
    Pty(&'a Pty),
    Pipes(OwnedFd, OwnedFd),
}

fn relay_until_exit(
    reader: UnixStream,
    process: &Process,
    pty: Option<&Pty>,
    pipes: Option<Pipes>,
    writer: &Writer,
) -> Result<Exit, SessionError> {
    let other = |what: &str, e: &dyn std::fmt::Display| SessionError::Other(format!("{what}: {e}"));
    let (over_rx, over_tx) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| other("creating a pipe", &e))?;
    let mut shutdown = reader
        .try_clone()
        .map_err(|e| other("using the connection", &e))?;
    let (stdin, outputs) = match (pty, pipes) {
        (Some(p), _) => {
            let master = p
                .master()
                .try_clone_to_owned()
                .map_err(|e| other("using the terminal", &e))?;
            (Stdin::Pty(master), Outputs::Pty(p))
        }
        (None, Some(pipes)) => {
            process::set_nonblocking(&pipes.stdin)
                .map_err(|e| other("using the process's input", &e))?;
            (
                Stdin::Pipe(pipes.stdin),
                Outputs::Pipes(pipes.stdout, pipes.stderr),
            )
        }
        (None, None) => return Err(SessionError::Other("the process has no stdio".into())),
    };
    let (exited_rx, exited_tx) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| other("creating a pipe", &e))?;
    std::thread::scope(|s| {
        let input = spawn_in(s, "input", process, move || {
            relay::input(reader, stdin, process, over_rx);
        });
        let status = match outputs {
            Outputs::Pty(p) => {
                let pump = spawn_in(s, "output", process, move || {
                    relay::pump_pty(p.master(), exited_rx, writer, process)
                });
                let status = process.wait_exit();
                drop(exited_tx);
                if let Some(t) = pump {
                    let _ = t.join();
                }
                status
            }
            Outputs::Pipes(stdout, stderr) => {
                drop(exited_rx);
                drop(exited_tx);
                let out = spawn_in(s, "stdout", process, move || {
                    relay::pump_pipe(stdout, false, writer, process)
                });
                let err = spawn_in(s, "stderr", process, move || {
                    relay::pump_pipe(stderr, true, writer, process)
                });
                for t in [out, err].into_iter().flatten() {
                    let _ = t.join();
                }
                process.wait_exit()
            }
        };
        let exit = match status {
            Ok(e) => {
                let mut exit = Exit::new();
                exit.code = e.code;
                exit.signal = e.signal;
                exit
            }
            Err(e) => {
                tracing::warn!(error = %e, "waiting for the session's process");
                let mut exit = Exit::new();
                exit.code = 255;
                exit
            }
        };
        writer.send(&server(server_frame::Frame::Exit(exit.clone())));
        // The input thread lingers until the client closes, then ends.
        drop(over_tx);
        match input {
            Some(t) => {
                let _ = t.join();
            }
            None => relay::linger(&mut shutdown, relay::LINGER),
        }
        Ok(exit)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use husk_protocols::console::{
        client, data, write_frame, ErrorKind, Open, ServerFrame, Signal, StdinEof, WindowSize,
        MAX_DATA,
    };
    use std::time::Instant;

    pub(crate) fn open(args: &[&str], tty: bool) -> Open {
        let mut o = Open::new();
        o.protocol = PROTOCOL.into();
        o.args = args.iter().map(|s| s.to_string()).collect();
        o.tty = tty;
        o.client = "test".into();
        o
    }

    pub(crate) fn send(c: &mut UnixStream, f: client_frame::Frame) {
        write_frame(c, &client(f)).unwrap();
    }

    /// A session served on a thread over one end of a socket pair; returns the other end.
    fn start_session(o: Open) -> (UnixStream, std::thread::JoinHandle<()>) {
        start_with(client_frame::Frame::Open(o), Config::default())
    }

    fn start_with(
        first: client_frame::Frame,
        config: Config,
    ) -> (UnixStream, std::thread::JoinHandle<()>) {
        let (server_end, mut client_end) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve(server_end, &config, 0, "test"));
        send(&mut client_end, first);
        (client_end, t)
    }

    fn next(c: &mut UnixStream) -> Option<server_frame::Frame> {
        match read_frame::<_, ServerFrame>(c) {
            Ok(f) => Some(f.frame.expect("a frame with content")),
            Err(FrameError::Closed) => None,
            Err(e) => panic!("reading a frame: {e}"),
        }
    }

    /// Everything the server sends until it closes.
    pub(crate) fn rest(c: &mut UnixStream) -> Vec<server_frame::Frame> {
        std::iter::from_fn(|| next(c)).collect()
    }

    fn started(c: &mut UnixStream) -> Started {
        match next(c) {
            Some(server_frame::Frame::Started(s)) => s,
            other => panic!("expected started, got {other:?}"),
        }
    }

    /// Output and exit from frames; checks that exit is the last frame and comes once.
    pub(crate) fn outcome(frames: &[server_frame::Frame]) -> (Vec<u8>, Vec<u8>, Exit) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (last, body) = frames.split_last().expect("frames");
        for f in body {
            match f {
                server_frame::Frame::Stdout(d) => out.extend_from_slice(&d.data),
                server_frame::Frame::Stderr(d) => err.extend_from_slice(&d.data),
                other => panic!("unexpected frame before the end: {other:?}"),
            }
        }
        match last {
            server_frame::Frame::Exit(e) => (out, err, e.clone()),
            other => panic!("the last frame is not exit: {other:?}"),
        }
    }

    fn refusal(frames: &[server_frame::Frame]) -> (ErrorKind, String) {
        match frames {
            [server_frame::Frame::Error(e)] => {
                (e.kind.enum_value().expect("known kind"), e.message.clone())
            }
            other => panic!("expected one error frame, got {other:?}"),
        }
    }

    /// Waits (bounded) until `pid` no longer exists.
    pub(crate) fn wait_gone(pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "process {pid} still exists");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn pipes_keep_streams_apart_and_exit_comes_last() {
        let (mut c, t) =
            start_session(open(&["sh", "-c", "echo out; echo err >&2; exit 7"], false));
        let s = started(&mut c);
        assert_eq!(s.protocol, PROTOCOL);
        assert!(s.pid > 0);
        let (out, err, exit) = outcome(&rest(&mut c));
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"out\n"[..], &b"err\n"[..])
        );
        assert_eq!((exit.code, exit.signal), (7, 0));
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn stdin_is_piped_until_stdin_eof() {
        let (mut c, t) = start_session(open(&["cat"], false));
        started(&mut c);
        send(&mut c, client_frame::Frame::Stdin(data(b"hello\n")));
        send(&mut c, client_frame::Frame::Stdin(data(b"world")));
        send(&mut c, client_frame::Frame::StdinEof(StdinEof::new()));
        let (out, err, exit) = outcome(&rest(&mut c));
        assert_eq!(out, b"hello\nworld");
        assert!(err.is_empty());
        assert_eq!((exit.code, exit.signal), (0, 0));
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn environment_and_working_directory() {
        let mut o = open(
            &[
                "sh",
                "-c",
                "echo $HUSK_X $HOME $PATH; pwd; echo ${TERM:-none}",
            ],
            false,
        );
        o.env = vec!["HUSK_X=42".into()];
        o.cwd = "/tmp".into();
        let (mut c, t) = start_session(o);
        started(&mut c);
        let (out, _, exit) = outcome(&rest(&mut c));
        let expected = format!("42 /root {}\n/tmp\nnone\n", process::DEFAULT_PATH);
        assert_eq!(String::from_utf8_lossy(&out), expected);
        assert_eq!(exit.code, 0);
        drop(c);
        t.join().unwrap();
    }

    /// Reads frames until the output so far contains `needle`; returns that output.
    fn read_until(c: &mut UnixStream, needle: &str) -> String {
        let mut out = Vec::new();
        while !String::from_utf8_lossy(&out).contains(needle) {
            match next(c) {
                Some(server_frame::Frame::Stdout(d)) => out.extend_from_slice(&d.data),
                other => panic!(
                    "waiting for {needle:?} after {:?}, got {other:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn size(rows: u32, cols: u32) -> WindowSize {
        let mut s = WindowSize::new();
        s.rows = rows;
        s.cols = cols;
        s
    }

    #[test]
    fn a_terminal_has_the_size_asked_for_and_follows_resizes() {
        let mut o = open(
            &["sh", "-c", "stty size; read x; stty size; test -t 0"],
            true,
        );
        o.size = Some(size(33, 101)).into();
        let (mut c, t) = start_session(o);
        started(&mut c);
        read_until(&mut c, "33 101");
        send(&mut c, client_frame::Frame::Resize(size(40, 120)));
        send(&mut c, client_frame::Frame::Stdin(data(b"go\n")));
        let (out, err, exit) = outcome(&rest(&mut c));
        assert!(String::from_utf8_lossy(&out).contains("40 120"), "{out:?}");
        assert!(err.is_empty());
        assert_eq!((exit.code, exit.signal), (0, 0));
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn the_default_shell_is_interactive_on_a_terminal() {
        let (mut c, t) = start_session(open(&[], true));
        started(&mut c);
        send(
            &mut c,
            client_frame::Frame::Stdin(data(b"echo hi-$((40+2))\n")),
        );
        read_until(&mut c, "hi-42");
        send(&mut c, client_frame::Frame::Stdin(data(b"exit 5\n")));
        let (_, _, exit) = outcome(&rest(&mut c));
        assert_eq!((exit.code, exit.signal), (5, 0));
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn stdin_eof_on_a_terminal_ends_a_partial_line_and_the_input() {
        let (mut c, t) = start_session(open(&["cat"], true));
        started(&mut c);
        send(&mut c, client_frame::Frame::Stdin(data(b"abc")));
        send(&mut c, client_frame::Frame::StdinEof(StdinEof::new()));
        let (out, _, exit) = outcome(&rest(&mut c));
        // The terminal echoes "abc", then cat writes it back.
        assert_eq!(out, b"abcabc");
        assert_eq!((exit.code, exit.signal), (0, 0));
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn terminal_output_is_drained_before_exit() {
        let script = "head -c 200000 /dev/zero | tr '\\0' a; exit 3";
        let (mut c, t) = start_session(open(&["sh", "-c", script], true));
        started(&mut c);
        let (out, _, exit) = outcome(&rest(&mut c));
        assert_eq!(out.len(), 200_000);
        assert!(out.iter().all(|b| *b == b'a'));
        assert_eq!((exit.code, exit.signal), (3, 0));
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn a_signal_frame_reaches_the_process() {
        for tty in [false, true] {
            let (mut c, t) = start_session(open(&["sleep", "100"], tty));
            started(&mut c);
            let mut sig = Signal::new();
            sig.number = 15;
            send(&mut c, client_frame::Frame::Signal(sig));
            let (_, _, exit) = outcome(&rest(&mut c));
            assert_eq!((exit.code, exit.signal), (143, 15), "tty {tty}");
            drop(c);
            t.join().unwrap();
        }
    }

    #[test]
    fn refusals() {
        let mut o = open(&["true"], false);
        o.protocol = "husk.console.v2".into();
        let (mut c, t) = start_session(o);
        let (kind, message) = refusal(&rest(&mut c));
        assert_eq!(kind, ErrorKind::PROTOCOL);
        assert!(message.contains("husk.console.v2") && message.contains(PROTOCOL));
        drop(c);
        t.join().unwrap();

        let (mut c, t) = start_with(client_frame::Frame::Stdin(data(b"x")), Config::default());
        assert_eq!(refusal(&rest(&mut c)).0, ErrorKind::BAD_REQUEST);
        drop(c);
        t.join().unwrap();

        let mut o = open(&["true"], false);
        o.env = vec!["NOT-AN-ENTRY".into()];
        let (mut c, t) = start_session(o);
        assert_eq!(refusal(&rest(&mut c)).0, ErrorKind::BAD_REQUEST);
        drop(c);
        t.join().unwrap();

        let mut o = open(&["true"], false);
        o.cwd = "/no/such/dir".into();
        let (mut c, t) = start_session(o);
        assert_eq!(refusal(&rest(&mut c)).0, ErrorKind::BAD_REQUEST);
        drop(c);
        t.join().unwrap();

        for tty in [false, true] {
            let (mut c, t) = start_session(open(&["no-such-program-husk", "x"], tty));
            let (kind, message) = refusal(&rest(&mut c));
            assert_eq!(kind, ErrorKind::NOT_FOUND);
            assert!(message.contains("no-such-program-husk") && message.contains("PATH"));
            drop(c);
            t.join().unwrap();
        }
    }

    #[test]
    fn unknown_containers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            containers: dir.path().into(),
            ..Config::default()
        };
        for (id, says) in [
            ("../../etc/passwd", "not a container id"),
            ("c9", "no container c9"),
        ] {
            let mut o = open(&["true"], false);
            o.container_id = id.into();
            let (mut c, t) = start_with(client_frame::Frame::Open(o), config.clone());
            let (kind, message) = refusal(&rest(&mut c));
            assert_eq!(kind, ErrorKind::NO_CONTAINER);
            assert!(message.contains(says), "{message}");
            drop(c);
            t.join().unwrap();
        }
    }

    #[test]
    fn a_lost_client_kills_the_process() {
        for tty in [false, true] {
            let (mut c, t) = start_session(open(&["sleep", "100"], tty));
            let pid = started(&mut c).pid;
            assert!(Path::new(&format!("/proc/{pid}")).exists());
            drop(c);
            t.join().unwrap();
            wait_gone(pid);
        }
    }

    #[test]
    fn large_output_arrives_whole_in_bounded_frames() {
        let (mut c, t) = start_session(open(&["head", "-c", "1048576", "/dev/zero"], false));
        started(&mut c);
        let frames = rest(&mut c);
        for f in &frames {
            if let server_frame::Frame::Stdout(d) = f {
                assert!(d.data.len() <= MAX_DATA);
            }
        }
        let (out, _, exit) = outcome(&frames);
        assert_eq!(out.len(), 1_048_576);
        assert!(out.iter().all(|b| *b == 0));
        assert_eq!(exit.code, 0);
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn default_shells_are_looked_up_in_the_root() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(default_shell(root.path()), None);
        std::fs::create_dir(root.path().join("bin")).unwrap();
        std::fs::write(root.path().join("bin/sh"), "").unwrap();
        assert_eq!(default_shell(root.path()), Some("/bin/sh"));
        std::fs::write(root.path().join("bin/bash"), "").unwrap();
        assert_eq!(default_shell(root.path()), Some("/bin/bash"));
    }
}
