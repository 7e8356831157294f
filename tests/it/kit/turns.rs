//! Turns on the machine's CPU. The integration tests run as threads of one process, two at a
//! time on a two-core machine; the heavy ones (QEMU VMs under TCG, Chromium, the bounds
//! benchmarks) were written to have the machine to themselves, and the appliances of the other
//! tests have timeouts tuned for a machine that is not saturated.
//!
//! So a heavy test takes [`alone`]: it waits until no appliance runs and keeps new ones from
//! starting until it ends. Every appliance the kit starts holds a [`Shared`] turn while it
//! runs; a test may start several (a shared turn never waits for a heavy test that is only
//! waiting, so nested turns cannot deadlock), and a heavy test's own appliances share its turn.

use std::cell::Cell;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

struct Turns {
    /// Appliances running now.
    shared: usize,
    /// A heavy test runs now.
    alone: bool,
}

static TURNS: Mutex<Turns> = Mutex::new(Turns {
    shared: 0,
    alone: false,
});
static CHANGED: Condvar = Condvar::new();

thread_local! {
    /// This thread runs the heavy test that holds the machine.
    static ALONE_HERE: Cell<bool> = const { Cell::new(false) };
}

fn turns() -> MutexGuard<'static, Turns> {
    // The lock is only held to read and change the counts, never across a test's code, so a
    // failing test cannot leave it inconsistent.
    TURNS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A heavy test's hold on the whole machine; released when dropped.
pub struct Alone(());

impl Drop for Alone {
    fn drop(&mut self) {
        turns().alone = false;
        ALONE_HERE.with(|here| here.set(false));
        CHANGED.notify_all();
    }
}

/// Waits until no appliance runs and no other heavy test holds the machine, then holds it.
pub fn alone() -> Alone {
    let mut t = turns();
    while t.alone || t.shared > 0 {
        t = CHANGED.wait(t).unwrap_or_else(PoisonError::into_inner);
    }
    t.alone = true;
    ALONE_HERE.with(|here| here.set(true));
    Alone(())
}

/// A running appliance's turn; released when dropped (on any thread).
#[derive(Debug)]
pub struct Shared {
    counted: bool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.counted {
            turns().shared -= 1;
            CHANGED.notify_all();
        }
    }
}

/// A turn now, unless a heavy test holds the machine (the calling heavy test itself excepted).
fn try_shared() -> Option<Shared> {
    if ALONE_HERE.with(Cell::get) {
        return Some(Shared { counted: false });
    }
    let mut t = turns();
    if t.alone {
        return None;
    }
    t.shared += 1;
    Some(Shared { counted: true })
}

/// Waits (blocking this thread) until no heavy test holds the machine.
pub fn shared() -> Shared {
    loop {
        if let Some(turn) = try_shared() {
            return turn;
        }
        let t = turns();
        if t.alone {
            drop(CHANGED.wait(t).unwrap_or_else(PoisonError::into_inner));
        }
    }
}

/// Waits (without blocking the test's runtime, whose tasks may already serve a Talos double)
/// until no heavy test holds the machine.
pub async fn shared_async() -> Shared {
    loop {
        if let Some(turn) = try_shared() {
            return turn;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
