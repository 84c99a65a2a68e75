//! The piece writer: writes of verified pieces, for every torrent of one backend, run by a few
//! blocking-pool threads that take them from one queue.
//!
//! Why: a `spawn_blocking` per piece costs a wake of a pool thread (a futex wake, and in a
//! virtual machine an interrupt to another CPU) plus that thread's sleep afterwards. With 200
//! torrents of 16 KiB pieces downloading at once, those hand-offs took about a fifth of the
//! process's CPU, far more than the writes themselves (a copy into the page cache). Here a
//! write queued while a drainer is running costs a lock and a push: the drainer takes it next,
//! without a wake. A drainer leaves when the queue is empty, so an idle backend holds no thread.
//!
//! Only short work goes through the queue (buffered writes, setting a bit); fsyncs (a file's
//! finalize, flushes) run as their own blocking tasks, so one slow file never holds the queue.
//! A write may still stall (the kernel throttling dirty pages, a slow device, a hung mount): a
//! job queued when every drainer has been in its current job for more than [`STUCK_AFTER`]
//! starts another drainer, up to [`MAX_DRAINERS`]; past that it runs on a blocking thread of
//! its own, as without the queue. A caller whose job still waits after [`KICK_AFTER`] (queued
//! behind a drainer that stalled since) kicks the queue the same way, so no torrent's writes
//! wait on another's stalled device.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zigtorrent_engine::StorageError;

/// Drainers at most: enough to keep writing past a few stalled writes; more would only contend
/// for the same devices. (Tokio's own pool would allow 512; a guess, not measured beyond "one
/// drainer kept up with 200 torrents on loopback".)
const MAX_DRAINERS: usize = 4;

/// A drainer this long in one job is taken as stuck: a 16 KiB write into the page cache takes
/// microseconds, a 16 MiB piece (the largest `create` makes) a few milliseconds.
const STUCK_AFTER: Duration = Duration::from_millis(2);

/// A caller waiting this long for its job looks again whether the drainers are stuck.
const KICK_AFTER: Duration = Duration::from_millis(10);

type Job = Box<dyn FnOnce() + Send>;

/// What a push or a kick starts.
enum Start {
    /// Nothing: a drainer is moving and will take the queued jobs.
    Nothing,
    /// A new drainer in this slot.
    Drainer(usize),
    /// Every drainer stuck: this job runs on a blocking thread of its own.
    Alone(Job),
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// One slot per possible drainer: `None` when free, else when its current job started
    /// (or when it was started, before its first job).
    busy_since: [Option<Instant>; MAX_DRAINERS],
}

impl Queue {
    /// Who takes the queued jobs: a drainer that started its job recently takes them next;
    /// else a new drainer (its slot taken now, so a burst of writes starts one, not one each);
    /// else, every drainer stuck, the oldest job runs alone.
    fn start(&mut self) -> Start {
        if self.jobs.is_empty() {
            return Start::Nothing;
        }
        let now = Instant::now();
        let moving = self
            .busy_since
            .iter()
            .flatten()
            .any(|&since| now.duration_since(since) < STUCK_AFTER);
        if moving {
            return Start::Nothing;
        }
        match self.busy_since.iter().position(Option::is_none) {
            Some(i) => {
                self.busy_since[i] = Some(now);
                Start::Drainer(i)
            }
            None => self.jobs.pop_front().map_or(Start::Nothing, Start::Alone),
        }
    }
}

/// One backend's queue of short blocking jobs (see the module docs).
#[derive(Default)]
pub(crate) struct PieceWriter {
    queue: Mutex<Queue>,
}

impl std::fmt::Debug for PieceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = lock(&self.queue);
        f.debug_struct("PieceWriter")
            .field("queued", &q.jobs.len())
            .field("drainers", &q.busy_since.iter().flatten().count())
            .finish()
    }
}

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PieceWriter {
    /// Run `f` on a drainer thread and return its result; a panic in `f` is raised again here,
    /// as `spawn_blocking` would.
    pub(crate) async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
        });
        let start = {
            let mut q = lock(&self.queue);
            q.jobs.push_back(job);
            q.start()
        };
        self.begin(start);
        let mut rx = rx;
        let answer = loop {
            tokio::select! {
                answer = &mut rx => break answer,
                () = tokio::time::sleep(KICK_AFTER) => {
                    let start = lock(&self.queue).start();
                    self.begin(start);
                }
            }
        };
        match answer {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // Only if the job was dropped unrun: the runtime is shutting down.
            Err(_) => Err(StorageError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other("the piece writer stopped"),
            }),
        }
    }

    /// Start what [`Queue::start`] decided. Not awaited: each job's own channel reports back.
    fn begin(self: &Arc<Self>, start: Start) {
        match start {
            Start::Nothing => {}
            Start::Drainer(slot) => {
                let drainer = Drainer {
                    writer: self.clone(),
                    slot,
                    left: false,
                };
                drop(tokio::task::spawn_blocking(move || drainer.drain()));
            }
            Start::Alone(job) => drop(tokio::task::spawn_blocking(job)),
        }
    }

    #[cfg(test)]
    fn drainers(&self) -> usize {
        lock(&self.queue).busy_since.iter().flatten().count()
    }
}

/// One drainer's claim on its slot. A drainer dropped before it ran (its runtime shut down
/// first) frees the slot, so the backend never runs out of drainers.
struct Drainer {
    writer: Arc<PieceWriter>,
    slot: usize,
    /// The slot was freed by `drain` itself.
    left: bool,
}

impl Drainer {
    /// Run queued jobs until there are none, then free the slot and leave. Freeing it under the
    /// same lock that saw the queue empty: a job pushed just after starts a new drainer.
    fn drain(mut self) {
        loop {
            let job = {
                let mut q = lock(&self.writer.queue);
                match q.jobs.pop_front() {
                    Some(job) => {
                        q.busy_since[self.slot] = Some(Instant::now());
                        job
                    }
                    None => {
                        q.busy_since[self.slot] = None;
                        self.left = true;
                        return;
                    }
                }
            };
            // Never unwinds: `run` wrapped the caller's closure in `catch_unwind`.
            job();
        }
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        if !self.left {
            lock(&self.writer.queue).busy_since[self.slot] = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every job runs and answers its own caller, many at once from many tasks; the drainers
    /// all leave once the queue is empty; an error comes back as the caller's error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_job_answers_its_caller_and_drainers_leave() {
        let w = Arc::new(PieceWriter::default());
        let tasks: Vec<_> = (0..500u32)
            .map(|i| {
                let w = w.clone();
                tokio::spawn(async move { w.run(move || Ok(i * 2)).await })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), i as u32 * 2);
        }
        let err = w
            .run(|| -> Result<(), StorageError> { Err(StorageError::Missing) })
            .await;
        assert!(matches!(err, Err(StorageError::Missing)));
        // The last drainer decrements its count just after answering: wait for it to leave.
        for _ in 0..1000 {
            if w.drainers() == 0 {
                break;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let queued = lock(&w.queue).jobs.len();
        assert_eq!((queued, w.drainers()), (0, 0));
    }

    /// A drainer that never ran (its runtime shut down first) gives its slot back, so four
    /// such losses cannot leave the backend without drainers.
    #[test]
    fn a_drainer_dropped_unrun_frees_its_slot() {
        let w = Arc::new(PieceWriter::default());
        for slot in 0..MAX_DRAINERS {
            lock(&w.queue).busy_since[slot] = Some(Instant::now());
        }
        drop(Drainer {
            writer: w.clone(),
            slot: 2,
            left: false,
        });
        assert_eq!(w.drainers(), MAX_DRAINERS - 1);
        assert!(lock(&w.queue).busy_since[2].is_none());
    }

    /// A job stuck in a slow call does not hold the others: another drainer takes them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_job_does_not_hold_the_queue() {
        let w = Arc::new(PieceWriter::default());
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let blocked = {
            let w = w.clone();
            tokio::spawn(async move {
                w.run(move || {
                    let _ = started_tx.send(());
                    let _ = stuck.recv();
                    Ok(())
                })
                .await
            })
        };
        started.recv().unwrap();
        std::thread::sleep(STUCK_AFTER * 2);
        let rest: Vec<_> = (0..20u32)
            .map(|i| {
                let w = w.clone();
                tokio::spawn(async move { w.run(move || Ok(i)).await })
            })
            .collect();
        for (i, t) in rest.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), i as u32);
        }
        assert!(!blocked.is_finished(), "the stuck job is still stuck");
        release.send(()).unwrap();
        blocked.await.unwrap().unwrap();
    }

    /// Every drainer stuck (a hung mount under one torrent): other writes still run, on
    /// threads of their own, and a job queued just before its drainer stalled is kicked out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_go_on_while_every_drainer_is_stuck() {
        let w = Arc::new(PieceWriter::default());
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let stuck = Arc::new(Mutex::new(stuck));
        let mut blocked = Vec::new();
        for _ in 0..MAX_DRAINERS + 2 {
            let (w, stuck) = (w.clone(), stuck.clone());
            blocked.push(tokio::spawn(async move {
                w.run(move || {
                    let _ = stuck.lock().map(|rx| rx.recv());
                    Ok(())
                })
                .await
            }));
            // Each is seen stuck before the next arrives.
            tokio::time::sleep(STUCK_AFTER * 3).await;
        }
        let others: Vec<_> = (0..10u32)
            .map(|i| {
                let w = w.clone();
                tokio::spawn(async move { w.run(move || Ok(i)).await })
            })
            .collect();
        for (i, t) in others.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), i as u32);
        }
        for _ in 0..blocked.len() {
            release.send(()).unwrap();
        }
        for b in blocked {
            b.await.unwrap().unwrap();
        }
    }
}
