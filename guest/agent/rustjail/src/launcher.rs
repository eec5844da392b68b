//! The unconfined thread: a thread the agent starts before it confines itself with its own
//! seccomp filter, on which every process the agent starts is forked (jail processes and
//! hooks). A seccomp filter belongs to a thread and is inherited by what it forks, so the
//! agent's filter stays the agent's and never reaches a container or a hook.
//!
//! Owns that thread and the hand-over of work to it. Must never run anything but the short
//! fork-and-exec jobs handed to it: it is the one thread of the agent outside its filter.

use std::sync::mpsc;
use std::sync::OnceLock;

type Job = Box<dyn FnOnce() + Send>;

static LAUNCHER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();

/// Starts the unconfined thread; call once, before the agent confines itself.
pub fn start() -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("husk-launcher".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })?;
    let _ = LAUNCHER.set(tx);
    Ok(())
}

/// Runs `f` on the unconfined thread and returns its result; on the calling thread when no
/// launcher was started (unit tests, tools).
pub fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let Some(tx) = LAUNCHER.get() else {
        return f();
    };
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = done_tx.send(f());
    });
    if let Err(mpsc::SendError(job)) = tx.send(job) {
        // The thread is gone (it never exits): run here rather than fail.
        job();
    }
    // No value comes back only when the job panicked there: carry the panic over.
    done_rx
        .recv()
        .unwrap_or_else(|_| panic!("a job on the launcher thread panicked"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn jobs_run_on_the_launcher_thread() {
        super::start().unwrap();
        let name = super::run(|| std::thread::current().name().map(str::to_owned));
        assert_eq!(name.as_deref(), Some("husk-launcher"));
        assert_eq!(super::run(|| 6 * 7), 42);
    }
}
