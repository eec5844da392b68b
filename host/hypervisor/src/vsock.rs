//! The host side of hybrid vsock: connect to a guest port through the VM's Unix socket with
//! `CONNECT <port>\n` → `OK <n>\n`, as Firecracker and husk's back ends expose it.
//!
//! Owns the handshake and its errors. Must never trust the reply: it is read byte by byte up
//! to a small limit, so a hostile or broken back end cannot make the host buffer without bound.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest reply line accepted (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY: usize = 32;

/// Why a guest port could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("cannot connect to the VM's vsock socket {}: {source} (is the VM running?)", path.display())]
    Socket { path: PathBuf, source: io::Error },
    #[error("nobody listens on guest vsock port {port}: the VM closed the connection during CONNECT (is the guest service for port {port} running?)")]
    NoListener { port: u32 },
    #[error("guest vsock port {port} did not answer CONNECT within {timeout:?}")]
    Timeout { port: u32, timeout: Duration },
    #[error("unexpected reply to CONNECT {port}: {reply:?}")]
    BadReply { port: u32, reply: String },
    #[error("vsock handshake for port {port} failed: {source}")]
    Io { port: u32, source: io::Error },
}

/// Opens a stream to guest `port` through the hybrid vsock socket at `uds`.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    let mut s = UnixStream::connect(uds).map_err(|source| VsockError::Socket {
        path: uds.into(),
        source,
    })?;
    let io_err = |source| VsockError::Io { port, source };
    s.set_read_timeout(Some(timeout)).map_err(io_err)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io_err)?;
    let mut reply = Vec::with_capacity(MAX_REPLY);
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(0) => return Err(VsockError::NoListener { port }),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if reply.len() >= MAX_REPLY => {
                return Err(VsockError::BadReply {
                    port,
                    reply: String::from_utf8_lossy(&reply).into(),
                })
            }
            Ok(_) => reply.push(byte[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(VsockError::Timeout { port, timeout })
            }
            // A reset during the handshake is the back end refusing the port.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(VsockError::NoListener { port })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    parse_reply(&reply).ok_or_else(|| VsockError::BadReply {
        port,
        reply: String::from_utf8_lossy(&reply).into_owned(),
    })?;
    s.set_read_timeout(None).map_err(io_err)?;
    Ok(s)
}

/// Parses a handshake reply line (without its `\n`): `OK <host port>` → the host port.
pub fn parse_reply(line: &[u8]) -> Option<u32> {
    std::str::from_utf8(line)
        .ok()?
        .strip_prefix("OK ")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A stand-in back end that answers one handshake with `reply` (or closes if `None`).
    fn backend(
        reply: Option<&'static [u8]>,
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).unwrap();
            if let Some(r) = reply {
                c.write_all(r).unwrap();
            }
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (dir, path, t)
    }

    #[test]
    fn handshake_ok() {
        let (_d, path, t) = backend(Some(b"OK 1073741824\n"));
        connect(&path, 1024, Duration::from_secs(5)).unwrap();
        assert_eq!(t.join().unwrap(), "CONNECT 1024\n");
    }

    #[test]
    fn closed_during_handshake_is_no_listener() {
        let (_d, path, t) = backend(None);
        let e = connect(&path, 4242, Duration::from_secs(5)).unwrap_err();
        t.join().unwrap();
        assert!(matches!(e, VsockError::NoListener { port: 4242 }), "{e}");
        assert!(e
            .to_string()
            .contains("nobody listens on guest vsock port 4242"));
    }

    #[test]
    fn endless_reply_is_refused() {
        let (_d, path, t) = backend(Some(&[b'A'; 64]));
        let e = connect(&path, 1, Duration::from_secs(5)).unwrap_err();
        t.join().unwrap();
        assert!(matches!(e, VsockError::BadReply { .. }), "{e}");
    }

    #[test]
    fn reply_parsing() {
        assert_eq!(parse_reply(b"OK 1073741824"), Some(1 << 30));
        assert_eq!(parse_reply(b"OK"), None);
        assert_eq!(parse_reply(b"OK -1"), None);
        assert_eq!(parse_reply(b"ok 5"), None);
        assert_eq!(parse_reply(b"OK 5\xff"), None);
    }

    #[test]
    fn no_socket() {
        let e = connect(Path::new("/nonexistent/v.sock"), 1, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("is the VM running?"));
    }
}
