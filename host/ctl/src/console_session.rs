//! One `husk.console.v1` session from the host's side: sends the `open` frame, relays husk's
//! stdin, window size and signals to the guest and the guest's stdout and stderr back, until the
//! exit status.
//!
//! Owns the relay and husk's terminal during it: raw mode for a tty session, restored on every
//! way out (the [`terminal::RawMode`] guard; SIGTERM, SIGHUP and SIGINT end the remote process
//! instead of husk, so husk always gets to restore it). Must never trust the guest: frames are
//! bounded by the framing, and a stream that ends without an exit status is an error.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use husk_protocols::console::{
    self, client_frame, server_frame, ErrorKind, Open, ServerFrame, StdinEof, MAX_DATA,
};
use nix::sys::signal::{SigSet, Signal};

use crate::terminal;

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The process ran and ended: its exit code (128 + signal when killed).
    Exit { code: i32 },
    /// The guest refused to start it.
    Refused { kind: ErrorKind, message: String },
}

type Writer = Arc<Mutex<UnixStream>>;

fn send(w: &Writer, frame: client_frame::Frame) -> anyhow::Result<()> {
    let mut s = w.lock().unwrap_or_else(|p| p.into_inner());
    console::write_frame(&mut *s, &console::client(frame))?;
    Ok(())
}

/// Signals husk relays to the session instead of dying of them.
const RELAYED: [Signal; 4] = [
    Signal::SIGWINCH,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
];

/// Runs the session on `stream`: `interactive` passes husk's stdin.
pub fn run(stream: UnixStream, open: &Open, interactive: bool) -> anyhow::Result<Ended> {
    // Blocked before any thread starts, so every thread inherits the mask and the signal
    // thread alone takes them with sigwait.
    let mut mask = SigSet::empty();
    for s in RELAYED {
        mask.add(s);
    }
    mask.thread_block().context("blocking signals")?;
    let writer: Writer = Arc::new(Mutex::new(
        stream.try_clone().context("cloning the console stream")?,
    ));
    let mut reader = stream;

    send(&writer, client_frame::Frame::Open(open.clone())).context("opening the session")?;
    let first: ServerFrame =
        console::read_frame(&mut reader).context("waiting for the session to start")?;
    match first.frame {
        Some(server_frame::Frame::Started(s)) => {
            tracing::debug!(pid = s.pid, server = %s.server_version, "session started");
        }
        Some(server_frame::Frame::Error(e)) => {
            return Ok(Ended::Refused {
                kind: e.kind.enum_value_or_default(),
                message: e.message,
            })
        }
        other => bail!("the guest console answered the open with {other:?}"),
    }

    // Raw mode only once the session runs, restored when this function returns, however.
    let _raw = match (open.tty, interactive) {
        (true, true) => terminal::RawMode::enter(),
        _ => None,
    };
    {
        let w = writer.clone();
        let tty = open.tty;
        std::thread::spawn(move || relay_signals(&w, mask, tty));
    }
    if interactive {
        let w = writer.clone();
        std::thread::spawn(move || relay_stdin(&w));
    } else if !open.tty {
        // The session's stdin ends at once (on a terminal that would type ^D: a terminal
        // without -i just gets no input). A failure here shows as the end of the stream below.
        let _ = send(&writer, client_frame::Frame::StdinEof(StdinEof::new()));
    }

    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    loop {
        let frame: ServerFrame = match console::read_frame(&mut reader) {
            Ok(f) => f,
            Err(console::FrameError::Closed) => bail!(
                "the guest console closed the session without an exit status (did the VM stop?)"
            ),
            Err(console::FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                bail!("the guest console dropped the session without an exit status (did the VM stop?)")
            }
            Err(e) => return Err(e).context("reading from the guest console"),
        };
        match frame.frame {
            Some(server_frame::Frame::Stdout(d)) => {
                out.write_all(&d.data)?;
                out.flush()?;
            }
            Some(server_frame::Frame::Stderr(d)) => {
                err.write_all(&d.data)?;
                err.flush()?;
            }
            Some(server_frame::Frame::Exit(e)) => {
                let _ = reader.shutdown(std::net::Shutdown::Both);
                return Ok(Ended::Exit { code: e.code });
            }
            Some(server_frame::Frame::Error(e)) => bail!("the guest console: {}", e.message),
            // Frames of a newer server this client does not know.
            Some(_) | None => {}
        }
    }
}

/// Copies husk's stdin to the session in bounded chunks; its end closes the session's stdin.
fn relay_stdin(w: &Writer) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if send(w, client_frame::Frame::Stdin(console::data(&buf[..n]))).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = send(w, client_frame::Frame::StdinEof(StdinEof::new()));
}

/// Takes the relayed signals: a window change resizes the session's terminal, the others go to
/// the session's process (which then ends the session with its own status).
fn relay_signals(w: &Writer, mask: SigSet, tty: bool) {
    loop {
        let Ok(sig) = mask.wait() else { return };
        let sent = match sig {
            Signal::SIGWINCH if tty => match terminal::window_size() {
                Some(ws) => send(w, client_frame::Frame::Resize(ws)),
                None => Ok(()),
            },
            Signal::SIGWINCH => Ok(()),
            other => {
                let mut s = console::Signal::new();
                s.number = other as i32;
                send(w, client_frame::Frame::Signal(s))
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocols::console::ClientFrame;

    /// A frame the client sends.
    fn read_client(s: &mut UnixStream) -> ClientFrame {
        console::read_frame(s).expect("client frame")
    }

    fn started() -> ServerFrame {
        let mut s = console::Started::new();
        s.pid = 7;
        console::server(server_frame::Frame::Started(s))
    }

    #[test]
    fn output_then_exit_status() {
        let (client, mut guest) = UnixStream::pair().expect("pair");
        let t = std::thread::spawn(move || {
            let open = read_client(&mut guest);
            assert!(matches!(open.frame, Some(client_frame::Frame::Open(_))));
            console::write_frame(&mut guest, &started()).expect("write");
            let eof = read_client(&mut guest);
            assert!(matches!(eof.frame, Some(client_frame::Frame::StdinEof(_))));
            let mut exit = console::Exit::new();
            exit.code = 7;
            console::write_frame(
                &mut guest,
                &console::server(server_frame::Frame::Exit(exit)),
            )
            .expect("write");
        });
        let mut open = Open::new();
        open.args = vec!["true".into()];
        assert_eq!(
            run(client, &open, false).expect("session"),
            Ended::Exit { code: 7 }
        );
        t.join().expect("guest");
    }

    #[test]
    fn a_refusal_and_a_lost_guest_are_told_apart() {
        let (client, mut guest) = UnixStream::pair().expect("pair");
        std::thread::spawn(move || {
            read_client(&mut guest);
            let f = console::error_frame(ErrorKind::NOT_FOUND, "program nope not found");
            console::write_frame(&mut guest, &f).expect("write");
        });
        let ended = run(client, &Open::new(), false).expect("session");
        assert_eq!(
            ended,
            Ended::Refused {
                kind: ErrorKind::NOT_FOUND,
                message: "program nope not found".into()
            }
        );
        let (client, mut guest) = UnixStream::pair().expect("pair");
        std::thread::spawn(move || {
            read_client(&mut guest);
            console::write_frame(&mut guest, &started()).expect("write");
        });
        let e = run(client, &Open::new(), false).expect_err("lost");
        assert!(format!("{e:#}").contains("without an exit status"), "{e:#}");
    }
}
