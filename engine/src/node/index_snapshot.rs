//! The task that builds index.so snapshot images on their owner core, one slice per turn.
//! An `IndexService` whose log has grown past its limit starts a snapshot build and runs its
//! first slice at once (`service::index::snapshot`); if the build is unfinished, it wakes this
//! task (one per shard, started with it), which calls `snapshot_step` — at most
//! `snapshot::SLICE_IDS` ids encoded — and then sleeps [`SLICE_PAUSE`] before the next
//! slice. Sleeping, not yielding: a yielded task that is runnable again keeps the core from
//! polling its sockets until glommio's preemption timer (100 ms) fires, while a sleeping
//! one lets the core run everything that is ready and poll its sockets and timers first.
//! No `RefCell` borrow is held across the pause, so requests run between slices as usual.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Duration;

use glommio::channels::local_channel::{self, LocalReceiver};

use crate::service::index::IndexService;

/// The pause between two slices of a snapshot build.
pub const SLICE_PAUSE: Duration = Duration::from_micros(50);

/// Starts the slicing task of `service` (on the calling core) and hands the service its
/// wake-up.
pub fn start(service: &Rc<RefCell<IndexService>>) {
    let (tx, rx) = local_channel::new_bounded::<()>(1);
    service.borrow_mut().on_snapshot_slices(Box::new(move || {
        // Full: a wake-up is already pending, which is all this one would say.
        let _ = tx.try_send(());
    }));
    glommio::spawn_local(slices(Rc::downgrade(service), rx)).detach();
}

/// Runs the builds of `service` to their end after each wake-up. Ends with the service
/// (its wake-up, which holds the sender, goes with it).
async fn slices(service: Weak<RefCell<IndexService>>, wakes: LocalReceiver<()>) {
    while wakes.recv().await.is_some() {
        loop {
            let Some(service) = service.upgrade() else {
                return;
            };
            let more = service.borrow_mut().snapshot_step();
            drop(service);
            if !more {
                break;
            }
            glommio::timer::sleep(SLICE_PAUSE).await;
        }
    }
}
