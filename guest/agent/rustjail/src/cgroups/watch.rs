//! Event-driven waits for a change of one interface file of a cgroup (kernfs sends
//! `IN_MODIFY` for `cgroup.events` and `memory.events`) or for the cgroup's removal, blocking
//! or on the tokio reactor. cgroups-rs has nothing for cgroup v2 here (its OOM notifier is the
//! v1 `cgroup.event_control` one).
//!
//! Owns the inotify instances and what their events mean. Must never block the async runtime
//! (the async wait is readiness driven) nor report a sibling cgroup's removal as this one's.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::CgroupError;

/// What a batch of inotify events means for a wait.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    /// The watched file changed (or events were lost): check again.
    Changed,
    /// The cgroup was removed.
    Gone,
    /// Nothing that concerns this cgroup.
    Nothing,
}

/// An inotify instance watching one interface file of a cgroup for changes, and the cgroup's
/// parent directory for the cgroup's removal. (kernfs sends `IN_MODIFY` for `cgroup.events`
/// and `memory.events` but nothing on the files when the cgroup is removed; the `rmdir` itself
/// is reported to the parent as `IN_DELETE`.)
#[derive(Debug)]
pub(super) struct Watches {
    inotify: Inotify,
    cgroup: PathBuf,
    file: PathBuf,
    file_wd: WatchDescriptor,
    parent_wd: Option<WatchDescriptor>,
    name: Option<OsString>,
}

impl Watches {
    pub(super) fn new(cgroup: &Path, file: &Path) -> Result<Self, CgroupError> {
        let watch_err = |file: &Path, source: nix::Error| {
            if source == nix::Error::ENOENT && !cgroup.exists() {
                CgroupError::Gone(cgroup.to_owned())
            } else {
                CgroupError::Watch {
                    file: file.to_owned(),
                    source: source.into(),
                }
            }
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| watch_err(file, e))?;
        let parent_wd = match cgroup.parent() {
            Some(parent) => Some(
                inotify
                    .add_watch(parent, AddWatchFlags::IN_DELETE | AddWatchFlags::IN_ONLYDIR)
                    .map_err(|e| watch_err(parent, e))?,
            ),
            None => None,
        };
        let file_wd = inotify
            .add_watch(
                file,
                AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_DELETE_SELF,
            )
            .map_err(|e| watch_err(file, e))?;
        Ok(Self {
            inotify,
            cgroup: cgroup.to_owned(),
            file: file.to_owned(),
            file_wd,
            parent_wd,
            name: cgroup.file_name().map(OsString::from),
        })
    }

    fn classify(&self, events: &[InotifyEvent]) -> Wake {
        let mut wake = Wake::Nothing;
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                wake = Wake::Changed;
            } else if Some(event.wd) == self.parent_wd {
                let parent_gone = event.mask.contains(AddWatchFlags::IN_IGNORED);
                let removed = event.mask.contains(AddWatchFlags::IN_DELETE)
                    && event.name.is_some()
                    && event.name == self.name;
                if parent_gone || removed {
                    return Wake::Gone;
                }
            } else if event.wd == self.file_wd {
                if event.mask.intersects(
                    AddWatchFlags::IN_IGNORED
                        | AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_UNMOUNT,
                ) {
                    return Wake::Gone;
                }
                wake = Wake::Changed;
            }
        }
        wake
    }

    fn watch_error(&self, source: io::Error) -> CgroupError {
        CgroupError::Watch {
            file: self.file.clone(),
            source,
        }
    }

    /// Blocks until the file changes or `timeout` passes (best effort: errors just end it).
    pub(super) fn wait_blocking(&self, timeout: Duration) {
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        if let Ok(ready) = nix::poll::poll(&mut fds, PollTimeout::from(millis)) {
            if ready > 0 {
                // Drain; what changed does not matter, the caller tries again.
                let _ = self.inotify.read_events();
            }
        }
    }
}

/// `AsyncFd` needs `AsRawFd`, which nix's `Inotify` has only as `AsFd`.
#[derive(Debug)]
struct InotifyFd(Watches);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.inotify.as_fd().as_raw_fd()
    }
}

/// [`Watches`] on the tokio reactor.
#[derive(Debug)]
pub(super) struct AsyncWatch {
    fd: AsyncFd<InotifyFd>,
}

impl AsyncWatch {
    pub(super) fn new(cgroup: &Path, file: &Path) -> Result<Self, CgroupError> {
        let watches = Watches::new(cgroup, file)?;
        let file = watches.file.clone();
        // SAFETY: the descriptor is the inotify instance's `OwnedFd`, owned by the `InotifyFd`
        // that the `AsyncFd` owns and never hands out mutably, so it stays open and the same
        // for the `AsyncFd`'s whole life.
        let fd = unsafe { AsyncFd::register_with_interest(InotifyFd(watches), Interest::READABLE) }
            .map_err(|e| CgroupError::Watch {
                file,
                source: e.into(),
            })?;
        Ok(Self { fd })
    }

    /// Waits for the next change of the file; [`CgroupError::Gone`] when the cgroup goes.
    pub(super) async fn changed(&self) -> Result<(), CgroupError> {
        let watches = &self.fd.get_ref().0;
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| watches.watch_error(e))?;
            let events = match guard.try_io(|fd| {
                fd.get_ref()
                    .0
                    .inotify
                    .read_events()
                    .map_err(io::Error::from)
            }) {
                Ok(read) => read.map_err(|e| watches.watch_error(e))?,
                Err(_would_block) => continue,
            };
            match watches.classify(&events) {
                Wake::Changed => return Ok(()),
                Wake::Gone => return Err(CgroupError::Gone(watches.cgroup.clone())),
                Wake::Nothing => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn watches_ignore_siblings_and_report_changes_and_removal() {
        let root = tempfile::tempdir().unwrap();
        let cgroup = root.path().join("c1");
        fs::create_dir(&cgroup).unwrap();
        let events = cgroup.join("cgroup.events");
        fs::write(&events, "frozen 0\n").unwrap();
        let watches = Watches::new(&cgroup, &events).unwrap();
        // A sibling's removal is not ours.
        let sibling = root.path().join("c2");
        fs::create_dir(&sibling).unwrap();
        fs::remove_dir(&sibling).unwrap();
        let read = watches.inotify.read_events().unwrap();
        assert_eq!(watches.classify(&read), Wake::Nothing);
        fs::write(&events, "frozen 1\n").unwrap();
        let read = watches.inotify.read_events().unwrap();
        assert_eq!(watches.classify(&read), Wake::Changed);
        fs::remove_dir_all(&cgroup).unwrap();
        let read = watches.inotify.read_events().unwrap();
        assert_eq!(watches.classify(&read), Wake::Gone);
    }
}
