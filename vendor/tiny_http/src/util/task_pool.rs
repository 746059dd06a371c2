use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// Manages a collection of threads.
///
/// A new thread is created every time all the existing threads are full.
/// Any idle thread will automatically die after a few seconds.
///
/// portcullis patch: stock tiny_http decided "is a thread free?" from a
/// counter read outside the queue lock, so a burst of connections could be
/// queued behind a single idle thread and wait until a busy connection
/// (perhaps a stalled one) ended. Now the idle count and the queue live
/// under one lock, and a task is queued only while more threads are idle
/// than tasks wait; otherwise a thread is started for it.
pub struct TaskPool {
    sharing: Arc<Sharing>,
}

struct Todo {
    queue: VecDeque<Box<dyn FnMut() + Send>>,
    idle: usize,
}

struct Sharing {
    todo: Mutex<Todo>,
    condvar: Condvar,
    // number of total worker threads running
    active_tasks: AtomicUsize,
    closing: AtomicBool,
}

/// Minimum number of active threads.
static MIN_THREADS: usize = 4;
/// Idle threads above the minimum end after this.
const IDLE_EXIT: Duration = Duration::from_millis(5000);

struct Registration<'a> {
    nb: &'a AtomicUsize,
}

impl<'a> Registration<'a> {
    fn new(nb: &'a AtomicUsize) -> Registration<'a> {
        nb.fetch_add(1, Ordering::Release);
        Registration { nb }
    }
}

impl<'a> Drop for Registration<'a> {
    fn drop(&mut self) {
        self.nb.fetch_sub(1, Ordering::Release);
    }
}

fn lock(m: &Mutex<Todo>) -> std::sync::MutexGuard<'_, Todo> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TaskPool {
    pub fn new() -> TaskPool {
        let pool = TaskPool {
            sharing: Arc::new(Sharing {
                todo: Mutex::new(Todo {
                    queue: VecDeque::new(),
                    idle: 0,
                }),
                condvar: Condvar::new(),
                active_tasks: AtomicUsize::new(0),
                closing: AtomicBool::new(false),
            }),
        };

        for _ in 0..MIN_THREADS {
            pool.add_thread(None)
        }

        pool
    }

    /// Executes a function in a thread.
    /// If no thread is available, spawns a new one.
    pub fn spawn(&self, code: Box<dyn FnMut() + Send>) {
        let mut todo = lock(&self.sharing.todo);
        if todo.queue.len() < todo.idle {
            todo.queue.push_back(code);
            drop(todo);
            self.sharing.condvar.notify_one();
        } else {
            drop(todo);
            self.add_thread(Some(code));
        }
    }

    fn add_thread(&self, initial_fn: Option<Box<dyn FnMut() + Send>>) {
        let sharing = self.sharing.clone();

        let spawned = thread::Builder::new()
            .name("http-conn".into())
            .spawn(move || {
                let sharing = sharing;
                let _active_guard = Registration::new(&sharing.active_tasks);

                if let Some(mut f) = initial_fn {
                    f();
                }

                loop {
                    let mut task: Box<dyn FnMut() + Send> = {
                        let mut todo = lock(&sharing.todo);
                        loop {
                            if let Some(t) = todo.queue.pop_front() {
                                break t;
                            }
                            if sharing.closing.load(Ordering::Acquire) {
                                return;
                            }
                            todo.idle += 1;
                            let keep = sharing.active_tasks.load(Ordering::Acquire) <= MIN_THREADS;
                            let timed_out = if keep {
                                todo = sharing
                                    .condvar
                                    .wait(todo)
                                    .unwrap_or_else(|e| e.into_inner());
                                false
                            } else {
                                let (t, res) = sharing
                                    .condvar
                                    .wait_timeout(todo, IDLE_EXIT)
                                    .unwrap_or_else(|e| e.into_inner());
                                todo = t;
                                res.timed_out()
                            };
                            todo.idle -= 1;
                            if timed_out && todo.queue.is_empty() {
                                return;
                            }
                        }
                    };

                    task();
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start a connection thread: {}", e);
        }
    }
}

impl Drop for TaskPool {
    fn drop(&mut self) {
        self.sharing.closing.store(true, Ordering::Release);
        self.sharing.condvar.notify_all();
    }
}
