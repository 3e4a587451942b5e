//! Threads for large JSON work (checking a big AppendBatch, converting a large page to the
//! `value` form) at a lower CPU priority than the rest of the server.
//!
//! Such work is CPU: 15 MiB of JSON is about 50 ms of a core wherever it runs. On the
//! blocking pool it ran at the same priority as the async workers and the writers, so on a
//! machine with few cores a small append waking up behind it waited for the scheduler's
//! time slice. Here it runs at `nice` [`NICE`]: the kernel gives the cores to the
//! latency-sensitive threads first, and the large request still gets whatever they leave,
//! which is most of the machine. One thread per core (at least two): more would not make
//! CPU-bound work finish sooner, and requests queue for them in arrival order, each already
//! in memory and bounded by the message size limit.

use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};

/// How much lower the threads' priority is (the kernel's scale: 0 normal, 19 lowest).
pub const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The queue to the threads, started on first use.
fn queue() -> &'static Mutex<Sender<Job>> {
    static QUEUE: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (send, receive) = channel::<Job>();
        let receive = std::sync::Arc::new(Mutex::new(receive));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        for i in 0..threads {
            let receive = receive.clone();
            let started = std::thread::Builder::new()
                .name(format!("ministore-json-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only to take a job, never while running one.
                        let job = crate::lock(&receive).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the process is ending
                        }
                    }
                });
            // Fewer threads only cost latency; with none, `run` works inline.
            if let Err(error) = started {
                tracing::warn!(%error, "could not start a JSON thread");
            }
        }
        Mutex::new(send)
    })
}

/// Lowers the calling thread's priority. On Linux `setpriority(PRIO_PROCESS, tid)` applies
/// to one thread. Failure only costs the latency it would have saved, so it is logged.
fn lower_priority() {
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICE)
    };
    if result != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not lower the priority of a JSON thread");
    }
}

/// Runs `work` on a low-priority thread and returns its result. A panic in `work` is
/// raised again here, as if it had run inline.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
    });
    // No thread to take it (the OS refused to start any): inline, as before they existed.
    if let Err(std::sync::mpsc::SendError(job)) = crate::lock(queue()).send(job) {
        job();
    }
    // Every job sends its result: it runs to the end (panics are caught) once taken, and
    // the threads never stop taking jobs while the process runs.
    match result.await.expect("a JSON job always answers") {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn work_runs_on_a_thread_of_lower_priority() {
        let (value, nice) = super::run(|| {
            // SAFETY: getpriority reads the calling thread's priority.
            let nice = unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::getpriority(libc::PRIO_PROCESS, tid)
            };
            (42, nice)
        })
        .await;
        assert_eq!(value, 42);
        assert!(nice >= super::NICE, "nice {nice}");
    }

    #[tokio::test]
    #[should_panic(expected = "bad record")]
    async fn a_panic_in_the_work_is_raised_in_the_caller() {
        super::run(|| panic!("bad record")).await;
    }
}
