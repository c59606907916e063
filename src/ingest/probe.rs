//! Counters the resource tests read. Not an API: the figures are process-wide and only meaningful to a
//! test that runs one server in its process.

use std::sync::atomic::{AtomicUsize, Ordering};

static DECODES_RUNNING: AtomicUsize = AtomicUsize::new(0);
static DECODES_PEAK: AtomicUsize = AtomicUsize::new(0);
static DECODES_STARTED: AtomicUsize = AtomicUsize::new(0);
static TASKS_HELD: AtomicUsize = AtomicUsize::new(0);

/// Instance tasks held by sessions now, running or finished but not yet reaped.
pub fn tasks_held() -> usize {
    TASKS_HELD.load(Ordering::SeqCst)
}

/// One session's share of [`tasks_held`], given back when the session ends.
#[derive(Default)]
pub(crate) struct HeldTasks(usize);

impl HeldTasks {
    pub(crate) fn set(&mut self, now: usize) {
        if now >= self.0 {
            TASKS_HELD.fetch_add(now - self.0, Ordering::SeqCst);
        } else {
            TASKS_HELD.fetch_sub(self.0 - now, Ordering::SeqCst);
        }
        self.0 = now;
    }
}

impl Drop for HeldTasks {
    fn drop(&mut self) {
        TASKS_HELD.fetch_sub(self.0, Ordering::SeqCst);
    }
}

/// Decodes running now (on the blocking pool).
pub fn decodes_running() -> usize {
    DECODES_RUNNING.load(Ordering::SeqCst)
}

/// Most decodes that ever ran at once in this process.
pub fn decodes_peak() -> usize {
    DECODES_PEAK.load(Ordering::SeqCst)
}

/// Decodes started in this process.
pub fn decodes_started() -> usize {
    DECODES_STARTED.load(Ordering::SeqCst)
}

/// `client_ref` copies held by sessions and their tasks now.
pub fn client_refs_live() -> usize {
    crate::results::hub::client_refs_live()
}

/// Most `client_ref` copies ever held at once in this process.
pub fn client_refs_peak() -> usize {
    crate::results::hub::client_refs_peak()
}

/// Restarts the peaks from what runs now.
pub fn reset_peaks() {
    DECODES_PEAK.store(decodes_running(), Ordering::SeqCst);
    crate::results::hub::reset_client_refs_peak();
}

/// Held for the duration of one decode.
pub(crate) struct Decoding(());

impl Decoding {
    pub(crate) fn start() -> Self {
        DECODES_STARTED.fetch_add(1, Ordering::SeqCst);
        let now = DECODES_RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        DECODES_PEAK.fetch_max(now, Ordering::SeqCst);
        Self(())
    }
}

impl Drop for Decoding {
    fn drop(&mut self) {
        DECODES_RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}
