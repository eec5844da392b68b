//! The way to the host: a stream connection to its trace port, AF_VSOCK to
//! ([`HOST_CID`], [`TRACE_PORT`]) in the guest, a Unix socket in tests.
//!
//! Owns connecting, with a timeout. Must never read or write a connection: the forwarder
//! speaks the protocol. A connected AF_VSOCK socket is handed out as a `UnixStream`, as
//! husk-console does: the forwarder needs only read, write, timeouts and close, which every
//! stream socket has.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use husk_protocols::ports::{HOST_CID, TRACE_PORT};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, VsockAddr,
};

/// Something the forwarder can connect to.
pub trait Uplink: Send + 'static {
    /// A fresh connection, within `timeout`.
    fn connect(&self, timeout: Duration) -> io::Result<UnixStream>;
    /// Where it goes, for logs (`vsock 2:10240`).
    fn describe(&self) -> String;
}

/// The host's trace port over AF_VSOCK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vsock {
    pub cid: u32,
    pub port: u32,
}

impl Vsock {
    /// The host's trace port: ([`HOST_CID`], [`TRACE_PORT`]).
    pub const HOST: Vsock = Vsock {
        cid: HOST_CID,
        port: TRACE_PORT,
    };
}

impl Uplink for Vsock {
    fn connect(&self, timeout: Duration) -> io::Result<UnixStream> {
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        match connect(fd.as_raw_fd(), &VsockAddr::new(self.cid, self.port)) {
            Ok(()) => {}
            Err(Errno::EINPROGRESS) => wait_connected(&fd, timeout)?,
            Err(e) => return Err(e.into()),
        }
        let stream = UnixStream::from(fd);
        stream.set_nonblocking(false)?;
        Ok(stream)
    }

    fn describe(&self) -> String {
        format!("vsock {}:{}", self.cid, self.port)
    }
}

/// Waits for a non-blocking connect to finish; its outcome.
fn wait_connected(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let poll_timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, poll_timeout) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                ))
            }
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    match getsockopt(fd, sockopt::SocketError)? {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// A Unix socket standing in for the host (tests).
#[cfg(test)]
#[derive(Debug, Clone)]
pub struct UnixPath(pub std::path::PathBuf);

#[cfg(test)]
impl Uplink for UnixPath {
    fn connect(&self, _timeout: Duration) -> io::Result<UnixStream> {
        UnixStream::connect(&self.0)
    }

    fn describe(&self) -> String {
        format!("unix {}", self.0.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_address_and_its_description() {
        assert_eq!(
            Vsock::HOST,
            Vsock {
                cid: 2,
                port: 10240
            }
        );
        assert_eq!(Vsock::HOST.describe(), "vsock 2:10240");
    }

    #[test]
    fn a_vsock_port_nobody_serves_is_an_error_not_a_hang() {
        // On a machine without vsock the socket cannot be made; with it, nothing listens on
        // the host side of this port: an error either way, within the timeout.
        let nobody = Vsock {
            cid: HOST_CID,
            port: 0x7ffe_fffe,
        };
        assert!(nobody.connect(Duration::from_millis(500)).is_err());
    }
}
