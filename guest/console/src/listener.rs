//! Where the console listens: vsock (the guest's default, any CID, port 1026) or a Unix
//! socket (`--listen unix:/path`, for tests and local debugging).
//!
//! Owns the listening socket and hands out accepted connections as `UnixStream`s (a connected
//! AF_VSOCK socket only needs read, write, shutdown and close, which any stream socket has).
//! Must never read from a connection.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};

use husk_protocols::ports::CONSOLE_PORT;
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    Vsock(OwnedFd),
    Unix(UnixListener),
}

/// A listening address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// Any CID, this port.
    Vsock(u32),
    /// A Unix socket at this path.
    Unix(std::path::PathBuf),
}

impl Address {
    /// Parses `vsock`, `vsock:PORT` or `unix:/path`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "vsock" {
            return Ok(Address::Vsock(CONSOLE_PORT));
        }
        if let Some(port) = text.strip_prefix("vsock:") {
            return port
                .parse()
                .map(Address::Vsock)
                .map_err(|_| format!("{text:?}: the vsock port is not a number"));
        }
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{text:?}: no socket path"));
            }
            return Ok(Address::Unix(path.into()));
        }
        Err(format!(
            "{text:?} is not a listening address (vsock, vsock:PORT or unix:/path)"
        ))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Vsock(port) => write!(f, "vsock:{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Listener {
    /// Listens on `address` (a stale Unix socket file is replaced).
    pub fn bind(address: &Address) -> io::Result<Self> {
        match address {
            Address::Vsock(port) => {
                let fd = socket(
                    AddressFamily::Vsock,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, *port))?;
                listen(&fd, Backlog::new(64).unwrap_or(Backlog::MAXCONN))?;
                Ok(Listener::Vsock(fd))
            }
            Address::Unix(path) => {
                let _ = std::fs::remove_file(path);
                Ok(Listener::Unix(UnixListener::bind(path)?))
            }
        }
    }

    /// Waits for the next connection; returns it and a name for its peer.
    pub fn accept(&self) -> io::Result<(UnixStream, String)> {
        match self {
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                Ok((s, "unix".into()))
            }
            Listener::Vsock(fd) => {
                let conn = accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
                // SAFETY: accept4 returned a new connected socket that nothing else owns.
                let conn = unsafe { OwnedFd::from_raw_fd(conn) };
                let peer = nix::sys::socket::getpeername::<VsockAddr>(conn.as_raw_fd())
                    .map(|a| format!("vsock:{}:{}", a.cid(), a.port()))
                    .unwrap_or_else(|_| "vsock".into());
                // SAFETY: a connected stream socket we own; UnixStream only reads, writes,
                // shuts down and closes it, which any stream socket supports.
                Ok((unsafe { UnixStream::from_raw_fd(conn.into_raw_fd()) }, peer))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(Address::parse("vsock"), Ok(Address::Vsock(CONSOLE_PORT)));
        assert_eq!(Address::parse("vsock:5000"), Ok(Address::Vsock(5000)));
        assert_eq!(
            Address::parse("unix:/tmp/c.sock"),
            Ok(Address::Unix("/tmp/c.sock".into()))
        );
        for bad in ["", "unix:", "vsock:x", "tcp:1"] {
            assert!(Address::parse(bad).is_err(), "{bad:?}");
        }
    }
}
