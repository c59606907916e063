//! Shutdown in two steps, shared by everything that must stop cleanly.
//!
//! Why two: an orchestrator's SIGTERM means "finish what you accepted, then go" — a radiologist must not
//! lose findings for slices the service already took — but it is followed by SIGKILL after a grace
//! period, so finishing cannot take forever. *Drain* stops taking new streams and instances and lets
//! every accepted slice be answered and every started study be summarised; *abort* (the drain deadline
//! passed, or a second signal) cancels what is left and ends every stream with a clear status.
//! Both are level-triggered and idempotent: a task that starts late still sees them.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Why the drain was cut short; streams say it in their final status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// `[shutdown] drain_deadline_secs` passed.
    DeadlinePassed,
    /// Stopped at once (a second signal, or a caller that would not wait).
    Forced,
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AbortReason::DeadlinePassed => "the drain deadline passed",
            AbortReason::Forced => "the server was told to stop at once",
        })
    }
}

/// The process-wide shutdown state. Cheap to clone; every clone sees the same state.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    drain: CancellationToken,
    abort: CancellationToken,
    reason: Arc<OnceLock<AbortReason>>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop taking new work; finish what was accepted.
    pub fn begin_drain(&self) {
        self.drain.cancel();
    }

    /// Cancel what is left (implies drain), now.
    pub fn abort(&self) {
        self.abort_because(AbortReason::Forced);
    }

    /// Cancel what is left (implies drain); the first reason given is the one reported.
    pub fn abort_because(&self, reason: AbortReason) {
        let _ = self.reason.set(reason);
        self.drain.cancel();
        self.abort.cancel();
    }

    /// Why the drain was cut short; `None` while it was not.
    pub fn abort_reason(&self) -> Option<AbortReason> {
        self.reason.get().copied()
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    pub fn is_aborted(&self) -> bool {
        self.abort.is_cancelled()
    }

    /// Resolves once the drain has begun (at once if it already has).
    pub fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.drain.cancelled()
    }

    /// Resolves once the drain deadline has passed or shutdown was forced.
    pub fn aborted(&self) -> WaitForCancellationFuture<'_> {
        self.abort.cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn abort_implies_drain_and_clones_share_state() {
        let s = Shutdown::new();
        let seen_by_task = s.clone();
        assert!(!s.is_draining() && !s.is_aborted());
        s.begin_drain();
        assert!(seen_by_task.is_draining() && !seen_by_task.is_aborted());
        seen_by_task.draining().await; // resolves at once: level-triggered
        let late = s.clone();
        late.abort_because(AbortReason::DeadlinePassed);
        late.abort();
        assert!(s.is_aborted());
        assert_eq!(
            s.abort_reason(),
            Some(AbortReason::DeadlinePassed),
            "the first reason stands"
        );
        s.aborted().await;
    }
}
