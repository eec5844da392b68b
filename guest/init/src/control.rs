//! The `husk.init.v1` channel to the host: connects to the host's vsock port, announces
//! readiness, forwards events, and turns a host shutdown request into SIGTERM for PID 1.
//!
//! Owns the vsock connection. Must never act on host requests itself: it only signals the event
//! loop, which owns the shutdown sequence.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use husk_protocols::frame::{read_frame, write_frame, FrameError};
use husk_protocols::init::{GuestMessage, HostMessage};
use husk_protocols::ports::{HOST_CID, INIT_PORT};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

/// Connection attempts before giving up (the host listens before the VM starts).
const CONNECT_TRIES: u32 = 5;

/// The reason the host gave for the shutdown it requested, read by the event loop.
pub static SHUTDOWN_REASON: OnceLock<String> = OnceLock::new();
/// The `traceparent` of the host span that asked for the shutdown (tracing on).
pub static SHUTDOWN_TRACEPARENT: OnceLock<String> = OnceLock::new();

/// The writing half of the channel.
#[derive(Debug)]
pub struct Control {
    stream: Mutex<UnixStream>,
}

fn connect_once() -> io::Result<UnixStream> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(HOST_CID, INIT_PORT),
    )?;
    // SAFETY: `fd` is a connected stream socket we own; UnixStream only uses read/write/close
    // on it, which are valid on any stream socket, AF_VSOCK included.
    Ok(unsafe { UnixStream::from_raw_fd(fd.into_raw_fd()) })
}

impl Control {
    /// Connects to the host, retrying briefly with back-off.
    pub fn connect() -> io::Result<Self> {
        let mut delay = Duration::from_millis(20);
        let mut tries = 0;
        loop {
            match connect_once() {
                Ok(stream) => {
                    return Ok(Self {
                        stream: Mutex::new(stream),
                    })
                }
                Err(e) if tries + 1 >= CONNECT_TRIES => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "host vsock port {INIT_PORT} not reachable yet");
                    std::thread::sleep(delay);
                    delay *= 2;
                    tries += 1;
                }
            }
        }
    }

    /// Sends one message; failures are logged, never fatal.
    pub fn send(&self, msg: &GuestMessage) {
        let Ok(mut s) = self.stream.lock() else {
            return;
        };
        if let Err(e) = write_frame(&mut *s, msg) {
            tracing::warn!(error = %e, "cannot send to host");
        }
    }

    /// Reads host requests on a thread of its own for as long as the connection lives.
    pub fn spawn_reader(&self) -> io::Result<()> {
        let mut reader = self
            .stream
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .try_clone()?;
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || loop {
                match read_frame::<_, HostMessage>(&mut reader) {
                    Ok(HostMessage::Shutdown {
                        reason,
                        traceparent,
                    }) => {
                        let _ = SHUTDOWN_REASON.set(reason);
                        if let Some(tp) = traceparent {
                            let _ = SHUTDOWN_TRACEPARENT.set(tp);
                        }
                        let _ = nix::sys::signal::kill(
                            nix::unistd::getpid(),
                            nix::sys::signal::SIGTERM,
                        );
                    }
                    Ok(HostMessage::Unknown) => tracing::debug!("ignoring unknown host message"),
                    Err(FrameError::Closed) => {
                        tracing::info!("host closed the control channel");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "bad frame from host, closing control channel");
                        return;
                    }
                }
            })?;
        Ok(())
    }
}
