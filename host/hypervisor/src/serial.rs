//! The VM's serial console on the host: a thread copies the guest's output to the VM's log
//! file, timestamps the first byte, keeps the recent lines and notices a kernel panic; callers
//! can wait for a line and type into the console.
//!
//! Owns the console stream. Must never block the guest: the reader drains continuously and
//! keeps a bounded number of lines in memory (the log file has everything).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Lines kept in memory for error reports and waits.
const KEPT_LINES: usize = 500;

/// The kernel's panic banner.
const PANIC_MARKER: &str = "Kernel panic - not syncing";

#[derive(Debug, Default)]
struct State {
    first_byte: Option<Instant>,
    lines: VecDeque<String>,
    /// Sequence number of the next complete line.
    next_seq: u64,
    partial: Vec<u8>,
    panic: Option<String>,
    eof: bool,
}

impl State {
    fn push_line(&mut self, raw: &[u8]) {
        let line = String::from_utf8_lossy(raw)
            .trim_end_matches('\r')
            .to_owned();
        if self.panic.is_none() && line.contains(PANIC_MARKER) {
            self.panic = Some(line.trim().to_owned());
        }
        if self.lines.len() == KEPT_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
        self.next_seq += 1;
    }
}

/// How a wait for a console line ended without the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("no matching console line within {0:?}")]
    Timeout(Duration),
    #[error("the console closed (the VM exited) before a matching line")]
    Closed,
}

/// The serial console of one VM.
pub struct Serial {
    shared: Arc<(Mutex<State>, Condvar)>,
    reader: Option<JoinHandle<()>>,
    input: Mutex<Option<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial")
            .field("lines", &self.state().next_seq)
            .finish_non_exhaustive()
    }
}

impl Serial {
    /// Starts copying `output` to `log`; `input` (if any) is the console's keyboard.
    pub fn start(
        mut output: impl Read + Send + 'static,
        input: Option<Box<dyn Write + Send>>,
        log: &Path,
    ) -> io::Result<Self> {
        let mut file = File::create(log)?;
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let thread_shared = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("serial".into())
            .spawn(move || {
                let (lock, cv) = &*thread_shared;
                let mut buf = [0u8; 8192];
                loop {
                    let n = match output.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    let now = Instant::now();
                    // The log is best effort: a full disk must not stall the guest's console.
                    let _ = file.write_all(&buf[..n]);
                    let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
                    st.first_byte.get_or_insert(now);
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            let raw = std::mem::take(&mut st.partial);
                            st.push_line(&raw);
                        } else if st.partial.len() < 64 * 1024 {
                            st.partial.push(b);
                        }
                    }
                    cv.notify_all();
                }
                let _ = file.flush();
                let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
                if !st.partial.is_empty() {
                    let raw = std::mem::take(&mut st.partial);
                    st.push_line(&raw);
                }
                st.eof = true;
                cv.notify_all();
            })?;
        Ok(Self {
            shared,
            reader: Some(reader),
            input: Mutex::new(input),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the guest's first byte arrived.
    pub fn first_byte_at(&self) -> Option<Instant> {
        self.state().first_byte
    }

    /// The kernel panic line, if the guest panicked.
    pub fn panic_line(&self) -> Option<String> {
        self.state().panic.clone()
    }

    /// The last `n` complete lines (and a trailing partial line).
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let st = self.state();
        let mut v: Vec<String> = st.lines.iter().rev().take(n).rev().cloned().collect();
        if !st.partial.is_empty() {
            v.push(String::from_utf8_lossy(&st.partial).into_owned());
        }
        v
    }

    /// Sequence number of the next line; pass it to [`Serial::wait_for_line`] to see only
    /// lines printed after this call.
    pub fn mark(&self) -> u64 {
        self.state().next_seq
    }

    /// Waits for a line, printed at or after `from`, for which `pred` holds.
    pub fn wait_for_line(
        &self,
        from: u64,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, WaitError> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let oldest = st.next_seq - st.lines.len() as u64;
            let skip = from.saturating_sub(oldest) as usize;
            if let Some(l) = st.lines.iter().skip(skip).find(|l| pred(l)) {
                return Ok(l.clone());
            }
            if st.eof {
                return Err(WaitError::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WaitError::Timeout(timeout));
            }
            st = cv
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until the console closes (the VM's process exited), up to `timeout`.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !st.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = cv
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Types `bytes` into the console.
    pub fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let mut input = self.input.lock().unwrap_or_else(|p| p.into_inner());
        let w = input.as_mut().ok_or_else(|| {
            io::Error::new(io::ErrorKind::Unsupported, "this console takes no input")
        })?;
        w.write_all(bytes)?;
        w.flush()
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        // The owner ends the VM first, so the reader is at or near end of stream.
        self.input.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_panic_and_waits() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let text = b"hello\r\nKernel panic - not syncing: Attempted to kill init!\nlast".to_vec();
        let s = Serial::start(io::Cursor::new(text), None, &log).unwrap();
        assert!(s.wait_closed(Duration::from_secs(5)));
        assert!(s.first_byte_at().is_some());
        assert_eq!(
            s.panic_line().unwrap(),
            "Kernel panic - not syncing: Attempted to kill init!"
        );
        assert_eq!(
            s.last_lines(2),
            [
                "Kernel panic - not syncing: Attempted to kill init!",
                "last"
            ]
        );
        assert_eq!(
            s.wait_for_line(0, Duration::from_secs(1), |l| l == "hello"),
            Ok("hello".into())
        );
        assert_eq!(
            s.wait_for_line(1, Duration::from_secs(1), |l| l == "hello"),
            Err(WaitError::Closed)
        );
        assert!(s.write(b"x").is_err());
        drop(s);
        assert!(std::fs::read_to_string(&log)
            .unwrap()
            .starts_with("hello\r\n"));
    }
}
