//! The user's terminal during `husk run -t`: raw mode while the container runs (so keys, Ctrl-C
//! included, go to the container's terminal as typed), and the window size to pass on.
//!
//! Owns changing and restoring husk's own terminal settings. Must never leave the terminal in
//! raw mode: the settings are restored when [`RawMode`] is dropped, on every path out, and by
//! the panic hook [`restore_on_panic`] installs (release builds abort on panic, so no drop
//! runs there).

use std::os::fd::AsFd;
use std::sync::Mutex;

use nix::sys::termios::{self, SetArg, Termios};

/// The settings to restore while raw mode is on.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// husk's terminal in raw mode until dropped.
#[derive(Debug)]
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts husk's stdin in raw mode when it is a terminal; `None` when it is not.
    pub fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved.clone());
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &self.saved);
        SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Makes a panic restore the terminal (if raw mode is on) before its message is printed.
pub fn restore_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(saved) = saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &saved);
        }
        previous(info);
    }));
}

/// The terminal's size as a console `WindowSize`, if husk has a terminal.
pub fn window_size() -> Option<husk_protocols::console::WindowSize> {
    size().map(|(rows, cols)| {
        let mut ws = husk_protocols::console::WindowSize::new();
        ws.rows = rows;
        ws.cols = cols;
        ws
    })
}

/// The size (rows, columns) of the terminal on husk's stdout or stdin, if either is one.
pub fn size() -> Option<(u32, u32)> {
    [1, 0].into_iter().find_map(|fd| {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ fills `ws`, which lives across the call; a non-terminal fd fails.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        (rc == 0 && ws.ws_row > 0).then_some((u32::from(ws.ws_row), u32::from(ws.ws_col)))
    })
}
