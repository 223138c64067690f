//! Slots through which the actors of a consumer path find their downstream's address when
//! they start (sink first), and find the new one after that actor restarted.

use std::sync::{Arc, Mutex};

use ractor::{ActorRef, SpawnErr};

pub(crate) type Slot<T> = Arc<Mutex<Option<ActorRef<T>>>>;

pub(crate) fn slot<T>() -> Slot<T> {
    Arc::new(Mutex::new(None))
}

pub(crate) fn fill<T>(slot: &Slot<T>, actor: &ActorRef<T>) {
    *slot.lock().expect("slot lock") = Some(actor.clone());
}

/// The address in `slot`, if that actor still runs (a stale address would fail the first send).
pub(crate) fn take<T>(slot: &Slot<T>, what: &str) -> Result<ActorRef<T>, SpawnErr> {
    slot.lock()
        .expect("slot lock")
        .clone()
        .filter(|a| a.get_status() < ractor::ActorStatus::Stopping)
        .ok_or_else(|| SpawnErr::StartupFailed(format!("{what} is not running").into()))
}
