//! Where the futures of async handlers run ([`IpcMain::handle_async`](crate::IpcMain::handle_async)).
//!
//! On the tokio runtime that was current when the handler was registered (feature `tokio`, on by
//! default), so they may use tokio's timers and I/O; otherwise on one thread of msgport-ipc's
//! own ("msgport-ipc-tasks"), polled when woken: any executor-agnostic future works there
//! (msgport's own `recv`, channels of `futures`), and a future that blocks its thread stops the
//! others. A panic while polling fails that one invoke.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Which executor runs a handler's futures, chosen when it is registered.
#[derive(Clone)]
pub(crate) enum Runner {
    Own,
    #[cfg(feature = "tokio")]
    Tokio(tokio::runtime::Handle),
}

impl Runner {
    /// The tokio runtime of the calling thread, if any; else msgport-ipc's task thread.
    pub(crate) fn current() -> Runner {
        #[cfg(feature = "tokio")]
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            return Runner::Tokio(handle);
        }
        Runner::Own
    }

    /// Runs `future` to completion, then `done` with its output (or why there is none).
    pub(crate) fn spawn<T: Send + 'static>(
        &self,
        future: BoxFuture<T>,
        done: impl FnOnce(Result<T, Unfinished>) + Send + 'static,
    ) {
        // If the task is dropped unfinished (its runtime shut down, or no thread could run it),
        // `done` still runs: the caller is told instead of waiting for ever.
        let mut done = Done(Some(Box::new(done)));
        let task = async move {
            let out = Guarded(future).await;
            done.call(out);
        };
        match self {
            Runner::Own => own_spawn(Box::pin(task)),
            #[cfg(feature = "tokio")]
            Runner::Tokio(handle) => {
                handle.spawn(task);
            }
        }
    }
}

/// Why a task ended without its future's output.
pub(crate) enum Unfinished {
    /// Polling it panicked (the text of the panic).
    Panicked(String),
    /// It was dropped before it finished: its runtime shut down, or no thread could run it.
    Dropped,
}

/// Runs its function once: with the output, or when dropped before that.
struct Done<T>(Option<Finish<T>>);

type Finish<T> = Box<dyn FnOnce(Result<T, Unfinished>) + Send>;

impl<T> Done<T> {
    fn call(&mut self, out: Result<T, Unfinished>) {
        if let Some(f) = self.0.take() {
            f(out);
        }
    }
}

impl<T> Drop for Done<T> {
    fn drop(&mut self) {
        self.call(Err(Unfinished::Dropped));
    }
}

/// A future whose panics become an output.
struct Guarded<T>(BoxFuture<T>);

impl<T> Future for Guarded<T> {
    type Output = Result<T, Unfinished>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(Unfinished::Panicked(crate::panic_text(&*panic)))),
        }
    }
}

struct Task {
    future: Mutex<Option<BoxFuture<()>>>,
    queue: mpsc::Sender<Arc<Task>>,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        let queue = self.queue.clone();
        // The task thread lives as long as the process.
        let _ = queue.send(self);
    }
}

fn own_spawn(future: BoxFuture<()>) {
    static QUEUE: OnceLock<Option<mpsc::Sender<Arc<Task>>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (queue, ready) = mpsc::channel::<Arc<Task>>();
        let started = std::thread::Builder::new()
            .name("msgport-ipc-tasks".into())
            .spawn(move || {
                for task in ready {
                    let waker = Waker::from(task.clone());
                    let mut slot = task.future.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(future) = slot.as_mut() {
                        if future
                            .as_mut()
                            .poll(&mut Context::from_waker(&waker))
                            .is_ready()
                        {
                            *slot = None;
                        }
                    }
                }
            });
        match started {
            Ok(_) => Some(queue),
            Err(e) => {
                tracing::error!("msgport-ipc: no task thread: {e}");
                None
            }
        }
    });
    match queue {
        Some(queue) => {
            let task = Arc::new(Task {
                future: Mutex::new(Some(future)),
                queue: queue.clone(),
            });
            let _ = queue.send(task);
        }
        // No thread could start (logged): dropping the task tells its caller.
        None => drop(future),
    }
}
