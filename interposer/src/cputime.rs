//! CPU time on the calling thread: what the scanner's budgets count. Wall
//! time would count a busy machine's waits for a core too, which are not
//! the program's loss.

/// CPU seconds the calling thread has used.
pub fn thread_seconds() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// Measures the CPU a piece of work takes on this thread.
pub struct Stopwatch(f64);

impl Stopwatch {
    pub fn start() -> Self {
        Self(thread_seconds())
    }

    /// CPU seconds since `start`.
    pub fn seconds(&self) -> f64 {
        thread_seconds() - self.0
    }
}
