//! Run one job per node with at most N at a time, on plain threads (ssh2 is blocking), with one
//! indicatif bar (done/failed/total) on stderr. A failing node never stops the others.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::RemoteError;

/// Stack per worker: libssh2 and OpenSSL need little; 1000 nodes must not need 8 GiB of stacks.
const WORKER_STACK: usize = 512 * 1024;

fn bar(label: &str, total: usize, show: bool, multi: Option<&MultiProgress>) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    // Under the caller's MultiProgress (e.g. next to a phase's status line), so the two never
    // draw over each other.
    let pb = match multi {
        Some(m) => m.add(pb),
        None => pb,
    };
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} nodes {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(label.to_string());
    pb.set_message("done, 0 failed");
    pb
}

/// Run `job` for every item, `concurrency` at a time; results come back in input order.
pub fn parallel_each<I, T, F>(
    items: &[I],
    concurrency: usize,
    label: &str,
    show_progress: bool,
    multi: Option<&MultiProgress>,
    job: F,
) -> Vec<Result<T, RemoteError>>
where
    I: Sync,
    T: Send,
    F: Fn(&I) -> Result<T, RemoteError> + Sync,
{
    let total = items.len();
    let pb = bar(label, total, show_progress, multi);
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<T, RemoteError>>>> =
        Mutex::new((0..total).map(|_| None).collect());
    let workers = concurrency.max(1).min(total);
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let work = || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let r = job(&items[i]);
                if r.is_err() {
                    let f = failed.fetch_add(1, Ordering::Relaxed) + 1;
                    pb.set_message(format!("done, {f} failed"));
                }
                pb.inc(1);
                if let Ok(mut res) = results.lock() {
                    res[i] = Some(r);
                }
            };
            match std::thread::Builder::new()
                .stack_size(WORKER_STACK)
                .spawn_scoped(scope, work)
            {
                Ok(h) => handles.push(h),
                // Out of threads: the workers already running drain the queue.
                Err(e) => tracing::warn!(error = %e, "could not start another SSH worker"),
            }
        }
        if handles.is_empty() {
            // Not even one thread: run inline rather than drop the work.
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let r = job(&items[i]);
                if let Ok(mut res) = results.lock() {
                    res[i] = Some(r);
                }
            }
        }
    });
    pb.finish_and_clear();
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(RemoteError::Internal(
                    "a worker thread died before finishing its node".into(),
                ))
            })
        })
        .collect()
}
