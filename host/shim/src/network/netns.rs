//! Running netlink work inside another network namespace: a thread of its own enters the
//! namespace (setns), runs the work on a single-threaded tokio runtime and ends, so no other
//! task of the shim ever runs in the pod's namespace.
//!
//! Owns entering a namespace. Must never setns a thread it did not create (tokio's pool
//! threads are reused; one left in the pod's namespace would leak it to unrelated work).

use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::Context;

/// Runs `work(handle)` in the network namespace at `netns` and returns its result.
pub async fn run_in<T, F, Fut>(netns: &Path, work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let ns = std::fs::File::open(netns)
        .with_context(|| format!("opening the pod's network namespace {}", netns.display()))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let what = netns.display().to_string();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let result = (|| {
                // SAFETY: setns(2) on this thread only, with an fd we hold open; the thread
                // is ours and ends when this closure returns.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(anyhow::Error::new(std::io::Error::last_os_error())
                        .context(format!("entering the network namespace {what}")));
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting a runtime for netlink")?;
                rt.block_on(async move {
                    let (conn, handle, _) =
                        rtnetlink::new_connection().context("opening a netlink socket")?;
                    tokio::spawn(conn);
                    work(handle).await
                })
            })();
            let _ = tx.send(result);
        })
        .context("starting the network namespace thread")?;
    rx.await
        .context("the network namespace thread ended without an answer")?
}
