//! Terminals for container processes (`process.terminal`): a pty whose slave becomes the
//! process's stdin, stdout and stderr and controlling terminal, and whose master the agent
//! reads (to the stdout stream) and writes (from the stdin stream).
//!
//! Owns the pty's file descriptors, their async I/O and the window size. Must never block the
//! async runtime: the master is non-blocking and driven by the reactor.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A pseudo-terminal allocated for one process.
#[derive(Debug)]
pub struct Pty {
    master: OwnedFd,
    /// Held until the process has started, so the terminal never hangs up before it.
    slave: Mutex<Option<OwnedFd>>,
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

impl Pty {
    /// Opens a new pty (from the guest's /dev/pts).
    pub fn open() -> io::Result<Self> {
        let pair = nix::pty::openpty(None, None)?;
        set_cloexec(&pair.master)?;
        set_cloexec(&pair.slave)?;
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = OFlag::from_bits_truncate(fcntl(pair.master.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(
            pair.master.as_raw_fd(),
            FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
        )?;
        Ok(Self {
            master: pair.master,
            slave: Mutex::new(Some(pair.slave)),
        })
    }

    /// Three handles on the slave, for the child's stdin, stdout and stderr.
    pub fn child_stdio(&self) -> io::Result<[OwnedFd; 3]> {
        let slave = self.slave.lock().unwrap_or_else(|p| p.into_inner());
        let slave = slave
            .as_ref()
            .ok_or_else(|| io::Error::other("the terminal was already handed to a process"))?;
        let dup = || slave.try_clone();
        Ok([dup()?, dup()?, dup()?])
    }

    /// Drops the agent's own handle on the slave once the process holds it: from then on the
    /// master reads end of file when the process's side is closed.
    pub fn release_slave(&self) {
        self.slave.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Sets the window size (the process gets SIGWINCH).
    pub fn resize(&self, rows: u16, columns: u16) -> io::Result<()> {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a `winsize` that lives across the call, on an fd we own.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// An async handle on the master (reads are the process's output, writes its input).
    pub fn io(&self) -> io::Result<PtyIo> {
        let fd = self.master.as_fd().try_clone_to_owned()?;
        // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which alone closes it, and an
        // `OwnedFd` always answers the same fd.
        Ok(PtyIo(unsafe { AsyncFd::register(fd) }?))
    }
}

/// Async reads and writes on a pty master; `EIO` (every slave closed) reads as end of file.
#[derive(Debug)]
pub struct PtyIo(AsyncFd<OwnedFd>);

impl AsyncRead for PtyIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.as_raw_fd(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn output_echo_resize_and_hangup() {
        let pty = Pty::open().unwrap();
        pty.resize(40, 132).unwrap();
        let [_, out, _] = pty.child_stdio().unwrap();
        drop(out);
        // The slave as a plain file stands for the process.
        let slave = {
            let guard = pty.slave.lock().unwrap();
            guard.as_ref().unwrap().try_clone().unwrap()
        };
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ fills `ws`, which lives across the call.
        let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (40, 132));
        let mut io = pty.io().unwrap();
        io.write_all(b"typed\n").await.unwrap();
        let mut slave_file = std::fs::File::from(slave);
        use std::io::Write as _;
        slave_file.write_all(b"printed\n").unwrap();
        pty.release_slave();
        drop(slave_file);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        let text = String::from_utf8_lossy(&all);
        // The terminal echoes input and turns "\n" into "\r\n".
        assert!(text.contains("typed\r\n"), "{text:?}");
        assert!(text.contains("printed\r\n"), "{text:?}");
        assert!(pty.child_stdio().is_err());
    }
}
