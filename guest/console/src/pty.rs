//! A session's pseudo-terminal: its master (the session reads output and writes input there),
//! its slave (the process's stdin, stdout, stderr and controlling terminal), the window size
//! and the terminal's end-of-file character.
//!
//! Owns the pty's file descriptors, all close-on-exec from their creation (other sessions fork
//! concurrently). Must never spawn or signal a process: the caller hands the slave to one.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::termios::{tcgetattr, LocalFlags, SpecialCharacterIndices};

use crate::request::WinSize;

/// A pseudo-terminal for one session.
#[derive(Debug)]
pub struct Pty {
    /// Non-blocking: readers poll it, so input and output never wait on each other.
    master: OwnedFd,
    /// Dropped (by [`Pty::close_slave`]) once the process holds its copies.
    slave: Option<OwnedFd>,
}

impl Pty {
    /// Opens a new pty from the system's /dev/ptmx with the window size `size`.
    pub fn open(size: WinSize) -> io::Result<Self> {
        let ptmx = c"/dev/ptmx";
        let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
        // SAFETY: a valid NUL-terminated path; the returned fd is checked and owned below.
        let fd = unsafe { libc::open(ptmx.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let master = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: unlockpt only issues TIOCSPTLCK on the master we own.
        if unsafe { libc::unlockpt(master.as_raw_fd()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let slave = open_peer(&master)?;
        let pty = Self {
            master,
            slave: Some(slave),
        };
        pty.resize(size)?;
        let fl = OFlag::from_bits_truncate(fcntl(pty.master.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(
            pty.master.as_raw_fd(),
            FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK),
        )?;
        Ok(pty)
    }

    /// The master (non-blocking).
    pub fn master(&self) -> BorrowedFd<'_> {
        self.master.as_fd()
    }

    /// Three close-on-exec handles on the slave, for the child's stdin, stdout and stderr.
    pub fn slave_stdio(&self) -> io::Result<[OwnedFd; 3]> {
        let slave = self
            .slave
            .as_ref()
            .ok_or_else(|| io::Error::other("the terminal's slave was already closed"))?;
        Ok([slave.try_clone()?, slave.try_clone()?, slave.try_clone()?])
    }

    /// Drops the session's own handle on the slave once the process holds it.
    pub fn close_slave(&mut self) {
        self.slave = None;
    }

    /// Sets the window size; the kernel sends SIGWINCH to the terminal's foreground group.
    pub fn resize(&self, size: WinSize) -> io::Result<()> {
        resize(self.master(), size)
    }
}

/// Sets the window size of the terminal whose master is `master`.
pub fn resize(master: BorrowedFd<'_>, size: WinSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` that lives across the call, on a valid fd.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The terminal's end-of-file character (VEOF, ^D unless changed) if the terminal is in
/// canonical mode, where it ends the input; `None` in raw mode, where it would be plain data.
pub fn eof_char(master: BorrowedFd<'_>) -> Option<u8> {
    // On a pty master, TCGETS reports the slave's settings.
    let t = tcgetattr(master).ok()?;
    t.local_flags
        .contains(LocalFlags::ICANON)
        .then(|| t.control_chars[SpecialCharacterIndices::VEOF as usize])
}

/// Makes the terminal on fd 0 the calling process's controlling terminal. For a `pre_exec`
/// hook after `setsid`: async-signal-safe, no allocation.
pub fn make_controlling_stdin() -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal) on fd 0, which the child
    // owns; no memory is passed.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the slave of `master`, close-on-exec, without making it a controlling terminal.
fn open_peer(master: &OwnedFd) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags as an integer and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if fd >= 0 {
        // SAFETY: the kernel just created `fd` for us.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    // Kernels before 4.13: open the slave by name.
    let mut name = [0 as libc::c_char; 64];
    // SAFETY: ptsname_r writes at most `name.len()` bytes, NUL-terminated, into our buffer.
    let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    // SAFETY: a valid NUL-terminated path; the fd is checked and owned below.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloexec(fd: BorrowedFd<'_>) -> bool {
        let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).unwrap();
        flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn pty_fds_are_cloexec_and_sized() {
        let mut pty = Pty::open(WinSize {
            rows: 33,
            cols: 101,
        })
        .unwrap();
        assert!(cloexec(pty.master()));
        let stdio = pty.slave_stdio().unwrap();
        for fd in &stdio {
            assert!(cloexec(fd.as_fd()));
        }
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a `winsize` into our local.
        let rc = unsafe { libc::ioctl(stdio[0].as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));
        // A fresh terminal is canonical, with ^D as its end-of-file character.
        assert_eq!(eof_char(pty.master()), Some(4));
        pty.close_slave();
        assert!(pty.slave_stdio().is_err());
    }
}
