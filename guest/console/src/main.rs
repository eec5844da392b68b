//! husk-console: serves `husk.console.v1` sessions on vsock port 1026 (ARCHITECTURE.md §5),
//! one session per connection, for `husk exec`.
//!
//! Security: a session is a root shell (or any program) in the guest, or in any of its
//! containers, for whoever reaches vsock port 1026 of the guest. On the host that port is a
//! root-only socket, and the console is off unless the operator enables it (`husk.console=1`,
//! the host's `agent.debug_console`, or the debug image).
//!
//! Started by husk-init only where the console is enabled, as `/usr/bin/husk-console` without
//! arguments. This file owns argument parsing, logging, the accept loop and the session limit;
//! it must never run a session's process itself (see [`session`]).

mod enter;
mod error;
mod listener;
mod process;
mod pty;
mod relay;
mod request;
mod session;

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use husk_protocols::console::MAX_SESSIONS;

use crate::error::SessionError;
use crate::listener::{Address, Listener};
use crate::session::Config;

const USAGE: &str = "usage: husk-console [--listen vsock|vsock:PORT|unix:PATH] [--containers DIR]";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == enter::ARG) {
        enter::helper_main(&args);
    }
    if args.first().is_some_and(|a| a == "--version") {
        println!("husk-console {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let (address, config) = match parse_args(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("husk-console: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    ensure_standard_fds();
    // Logs at `husk.log=`'s level; with `husk.tracing=1`, each session's span to husk-tracer.
    let cmdline_text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(t) =
        husk_telemetry::init_guest_logging(&cmdline_text, Some(husk_telemetry::service::CONSOLE))
    {
        let _ = TELEMETRY.set(t);
    }
    let listener = match Listener::bind(&address) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {address}: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        "husk-console {} serving on {address}",
        env!("CARGO_PKG_VERSION")
    );
    serve(&listener, &config, MAX_SESSIONS)
}

fn parse_args(args: &[OsString]) -> Result<(Address, Config), String> {
    let mut address = Address::Vsock(husk_protocols::ports::CONSOLE_PORT);
    let mut config = Config::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .and_then(|v| v.to_str())
                .map(str::to_owned)
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.to_str() {
            Some("--listen") => address = Address::parse(&value("--listen")?)?,
            Some("--containers") => config.containers = value("--containers")?.into(),
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok((address, config))
}

/// Opens /dev/null on any of fds 0, 1, 2 that is closed, so no pipe or socket ever lands there
/// (a child's stdio would then overwrite it).
fn ensure_standard_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // SAFETY: a valid NUL-terminated path; the lowest free descriptor (this one) is
            // taken and deliberately kept open for the process's life.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

/// The console's tracing, when the command line turns it on.
static TELEMETRY: std::sync::OnceLock<husk_telemetry::Telemetry> = std::sync::OnceLock::new();
/// How long a finished session's spans may take to reach husk-tracer.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// A session slot, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts connections forever, each served on its own thread, at most `max` at once: one more
/// is told `BUSY` and closed.
fn serve(listener: &Listener, config: &Config, max: usize) -> ! {
    let active = Arc::new(AtomicUsize::new(0));
    let next_id = AtomicU64::new(1);
    loop {
        let (conn, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                // Out of descriptors or memory: give sessions a moment to end.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        if active.fetch_add(1, Ordering::SeqCst) >= max {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::info!(session = id, peer, "refused: {max} sessions are open");
            refuse_busy(conn, max);
            continue;
        }
        let slot = Slot(active.clone());
        let config = config.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("session-{id}"))
            .spawn(move || {
                let _slot = slot;
                session::serve(conn, &config, id, &peer);
                // The session's span has ended: hand it to the tracer now, as the console
                // may be stopped at any time.
                if let Some(t) = TELEMETRY.get() {
                    t.flush(FLUSH_TIMEOUT);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(session = id, error = %e, "cannot start a session thread");
        }
    }
}

fn refuse_busy(mut conn: std::os::unix::net::UnixStream, max: usize) {
    let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
    let busy = SessionError::Busy(format!(
        "{max} sessions are open in this guest, the most it serves; close one and retry"
    ));
    let _ = husk_protocols::console::write_frame(&mut conn, &busy.frame());
    // Short: the accept loop waits meanwhile (the client's open frame is usually there already).
    relay::linger(&mut conn, Duration::from_millis(100));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tests::{open, outcome, rest, send};
    use husk_protocols::console::{
        client, client_frame, read_frame, server_frame, ErrorKind, ServerFrame,
    };
    use std::os::unix::net::UnixStream;

    /// A server on a Unix socket in a fresh directory (its thread runs until the test ends).
    fn server(max: usize) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = Listener::bind(&Address::Unix(path.clone())).unwrap();
        std::thread::spawn(move || serve(&listener, &Config::default(), max));
        (dir, path)
    }

    #[test]
    fn concurrent_sessions_each_get_their_own_output() {
        let (_dir, path) = server(MAX_SESSIONS);
        let clients: Vec<_> = (0..10)
            .map(|i| {
                let mut c = UnixStream::connect(&path).unwrap();
                let mut o = open(&["sh", "-c", "echo session-$N; exit $N"], false);
                o.env = vec![format!("N={i}")];
                send(&mut c, client_frame::Frame::Open(o));
                (i, c)
            })
            .collect();
        let threads: Vec<_> = clients
            .into_iter()
            .map(|(i, mut c)| {
                std::thread::spawn(move || {
                    let frames = rest(&mut c);
                    assert!(matches!(frames[0], server_frame::Frame::Started(_)));
                    let (out, _, exit) = outcome(&frames[1..]);
                    assert_eq!(out, format!("session-{i}\n").as_bytes());
                    assert_eq!(exit.code, i);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn one_session_too_many_is_told_busy() {
        let (_dir, path) = server(1);
        let mut first = UnixStream::connect(&path).unwrap();
        send(&mut first, client_frame::Frame::Open(open(&["cat"], false)));
        let f: ServerFrame = read_frame(&mut first).unwrap();
        assert!(matches!(f.frame, Some(server_frame::Frame::Started(_))));
        let mut second = UnixStream::connect(&path).unwrap();
        match rest(&mut second).as_slice() {
            [server_frame::Frame::Error(e)] => assert_eq!(e.kind.enum_value(), Ok(ErrorKind::BUSY)),
            other => panic!("expected BUSY, got {other:?}"),
        }
        // The first session is unaffected, and its slot comes back when it ends.
        send(
            &mut first,
            client_frame::Frame::Stdin(husk_protocols::console::data(b"x")),
        );
        send(
            &mut first,
            client_frame::Frame::StdinEof(husk_protocols::console::StdinEof::new()),
        );
        let (out, _, exit) = outcome(&rest(&mut first));
        assert_eq!((out.as_slice(), exit.code), (&b"x"[..], 0));
        drop(first);
        // The slot is given back once the session's thread ends, just after its last frame.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut third = UnixStream::connect(&path).unwrap();
            // A refused connection may be closed before the open frame is written.
            let o = client_frame::Frame::Open(open(&["true"], false));
            let _ = husk_protocols::console::write_frame(&mut third, &client(o));
            let frames = rest(&mut third);
            if matches!(frames[0], server_frame::Frame::Started(_)) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the slot never came back"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn arguments() {
        let args = |a: &[&str]| parse_args(&a.iter().map(OsString::from).collect::<Vec<_>>());
        let (address, config) = args(&[]).unwrap();
        assert_eq!(address, Address::Vsock(husk_protocols::ports::CONSOLE_PORT));
        assert_eq!(config.exe, std::path::Path::new("/proc/self/exe"));
        let (address, config) = args(&["--listen", "unix:/x.sock", "--containers", "/c"]).unwrap();
        assert_eq!(address, Address::Unix("/x.sock".into()));
        assert_eq!(config.containers, std::path::Path::new("/c"));
        assert!(args(&["--listen"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }
}
