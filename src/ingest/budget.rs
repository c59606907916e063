//! Byte budgets shared by every stream, so the service's memory is bounded by configuration and not by
//! how many clients connect.
//!
//! Why: each stream already bounds its own work (`max_in_flight_per_stream`), but that bound multiplies
//! with the number of streams — 32 pushers of a CT series held 32× the memory of one. Two budgets sit
//! across all streams instead:
//! - *request bytes*: Part-10 bytes received and not yet decoded. A session takes its share *before*
//!   it reads a message (sized as its previous message, then fitted to the real size), so a full
//!   budget stops every session reading and HTTP/2 flow control slows the pushers while the bytes are
//!   still with them. The share is given back when the decode ends.
//! - *decoded bytes*: pixels held as stored samples between decode and scoring. The decoder reserves
//!   its share once the header told the size and before any pixel is decoded ([`DecodeBudget`]); the
//!   reservation lives in the `DecodedInstance` and is given back when its last frame was scored or
//!   skipped. Native little endian frames are slices of the received message, so for them this share
//!   is the message's memory, kept past the decode.
//!
//! A request larger than a whole budget is not refused: it waits until it can hold *all* of the budget
//! and then runs alone (the semaphore is FIFO, so it is not starved by smaller requests behind it).
//! The per-instance limits (`max_instance_bytes`, `max_decoded_bytes`) stay what refuses an instance;
//! the budgets only decide when it runs.
//!
//! What the budgets do not cover, per open stream: the HTTP/2 receive window (`stream_window_bytes`)
//! and the message tonic is assembling before the session takes it. The instance's bytes are a
//! `bytes::Bytes` split off tonic's receive buffer (see build.rs), not a copy: once taken, the
//! message *is* that buffer's memory, counted here, and freed when its decode ends (tonic moves on to
//! a new buffer for the next message while the old one is shared, and reuses the old one when it is
//! not). Peak memory is therefore about: idle process + both budgets + streams × (one message +
//! window) + the completed studies the registry retains; `main.rs` tunes glibc's mmap threshold, and
//! `tests/memory.rs` measures the result: 32 streams within 1.5× of one.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::decode::{DecodeBudget, DecodeError, Reservation};

/// Budgets count in units of this many bytes (a semaphore holds at most ~2^61 permits, and one
/// `acquire_many` at most 2^32 - 1: KiB units cover 4 TiB per request).
const UNIT: u64 = 1024;

/// A FIFO budget of bytes shared by every stream.
#[derive(Debug)]
pub struct ByteBudget {
    what: &'static str,
    semaphore: Arc<Semaphore>,
    units: u32,
}

impl ByteBudget {
    /// A budget of `bytes` (at least one unit), named in logs as `what`.
    pub fn new(what: &'static str, bytes: usize) -> Self {
        let units = (bytes as u64).div_ceil(UNIT).clamp(1, u64::from(u32::MAX)) as u32;
        Self {
            what,
            semaphore: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// The budget's size in bytes (rounded up to whole KiB).
    pub fn capacity_bytes(&self) -> u64 {
        u64::from(self.units) * UNIT
    }

    /// Bytes currently held.
    pub fn held_bytes(&self) -> u64 {
        (u64::from(self.units) - self.semaphore.available_permits() as u64) * UNIT
    }

    /// The units `bytes` takes: rounded up, and at most the whole budget (so it always fits).
    fn units_for(&self, bytes: u64) -> u32 {
        bytes.div_ceil(UNIT).min(u64::from(self.units)) as u32
    }

    /// Waits until `bytes` may be held; the permit gives them back when dropped.
    pub async fn acquire(&self, bytes: u64) -> OwnedSemaphorePermit {
        let units = self.units_for(bytes);
        match self.semaphore.clone().acquire_many_owned(units).await {
            Ok(permit) => permit,
            // The semaphore is owned here and never closed.
            Err(_) => unreachable!("the {} budget is never closed", self.what),
        }
    }

    /// Makes `permit` hold `bytes` (at most the whole budget): gives the excess back at once; to grow,
    /// gives it all back and queues for the whole amount. Never waits while holding a share: holders
    /// waiting for a little more could otherwise hold the whole budget between them, and wait forever.
    pub async fn resize(
        &self,
        mut permit: OwnedSemaphorePermit,
        bytes: u64,
    ) -> OwnedSemaphorePermit {
        let want = self.units_for(bytes) as usize;
        let held = permit.num_permits();
        if want < held {
            drop(permit.split(held - want));
        } else if want > held {
            drop(permit);
            return self.acquire(bytes).await;
        }
        permit
    }

    /// [`acquire`](Self::acquire) for a blocking thread (never call it on an async worker).
    pub fn acquire_blocking(&self, bytes: u64) -> OwnedSemaphorePermit {
        futures::executor::block_on(self.acquire(bytes))
    }
}

impl DecodeBudget for ByteBudget {
    fn reserve(&self, bytes: u64) -> Result<Reservation, DecodeError> {
        if u64::from(self.units) * UNIT < bytes {
            tracing::debug!(
                budget = self.what,
                bytes,
                "instance larger than the whole budget: it waits to run alone"
            );
        }
        Ok(Reservation::new(self.acquire_blocking(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rounds_up_to_units_and_gives_back_on_drop() {
        let budget = ByteBudget::new("test", 10 * 1024);
        assert_eq!(budget.capacity_bytes(), 10 * 1024);
        let a = budget.acquire_blocking(1);
        assert_eq!(budget.held_bytes(), 1024, "one byte takes one unit");
        let b = budget.reserve(4 * 1024 + 1).expect("fits");
        assert_eq!(budget.held_bytes(), 6 * 1024);
        drop(a);
        drop(b);
        assert_eq!(budget.held_bytes(), 0);
    }

    #[test]
    fn a_request_larger_than_the_budget_waits_for_all_of_it_then_runs_alone() {
        let budget = Arc::new(ByteBudget::new("test", 4 * 1024));
        let small = budget.acquire_blocking(1024);
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || {
                let big = budget.reserve(1 << 30).expect("never refused");
                let held = budget.held_bytes();
                drop(big);
                held
            })
        };
        // While the small share is held the big request cannot have the whole budget.
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "took the budget while part of it was held"
        );
        drop(small);
        let held = waiter.join().expect("waiter");
        assert_eq!(held, 4 * 1024, "it held the whole budget, not more");
        assert_eq!(budget.held_bytes(), 0);
    }

    #[tokio::test]
    async fn resize_gives_back_or_takes_the_difference() {
        let budget = ByteBudget::new("test", 8 * 1024);
        let share = budget.acquire(4 * 1024).await;
        let share = budget.resize(share, 1024).await;
        assert_eq!(budget.held_bytes(), 1024);
        let share = budget.resize(share, 100 * 1024).await;
        assert_eq!(budget.held_bytes(), 8 * 1024, "at most the whole budget");
        drop(share);
        assert_eq!(budget.held_bytes(), 0);
    }

    #[tokio::test]
    async fn holders_that_all_grow_do_not_deadlock() {
        let budget = Arc::new(ByteBudget::new("test", 4 * 1024));
        let a = budget.acquire(2 * 1024).await;
        let b = budget.acquire(2 * 1024).await;
        // Both want 3 KiB: holding their 2 KiB while waiting for 1 more would deadlock.
        let grow_a = tokio::spawn({
            let budget = budget.clone();
            async move { budget.resize(a, 3 * 1024).await }
        });
        let b = budget.resize(b, 3 * 1024).await;
        drop(b);
        let a = grow_a.await.expect("a grew");
        assert_eq!(a.num_permits(), 3);
    }

    #[tokio::test]
    async fn fifo_a_large_waiter_is_not_overtaken_by_small_ones() {
        let budget = Arc::new(ByteBudget::new("test", 4 * 1024));
        let first = budget.acquire(3 * 1024).await;
        let big = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.acquire(4 * 1024).await })
        };
        tokio::task::yield_now().await;
        // 1 KiB is free, but the big request queued first: a small one must wait behind it.
        let small = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.acquire(1024).await })
        };
        tokio::task::yield_now().await;
        assert!(
            !small.is_finished(),
            "a small request overtook the queued big one"
        );
        drop(first);
        let big = big.await.expect("big");
        assert!(!small.is_finished());
        drop(big);
        drop(small.await.expect("small"));
    }
}
