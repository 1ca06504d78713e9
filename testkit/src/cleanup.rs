//! What a test or harness must undo even when it is interrupted: every
//! network namespace ([`crate::netns`]), and whatever else a user of this
//! registry makes (the lab's control-plane processes and directories), is
//! registered here with the action that removes it. The owner removes it on
//! drop and then drops its [`Registration`]; on SIGINT/SIGTERM/SIGHUP the
//! handler thread ([`install_signal_cleanup`], installed by the programs that
//! want it) runs every registered action, newest first, and exits. Child
//! processes also die with their parent ([`child_setup`]: PR_SET_PDEATHSIG),
//! so a SIGKILLed run leaves only files and namespaces, which sweepers find by
//! the dead pid in their names ([`crate::netns::sweep_orphans`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

type Action = Box<dyn Fn() + Send>;

/// Live registrations by sequence number: iteration order is creation order.
static LIVE: Mutex<BTreeMap<u64, Action>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

fn live() -> std::sync::MutexGuard<'static, BTreeMap<u64, Action>> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An entry in the registry; dropping it removes the entry without running
/// the action (the owner has undone the thing itself).
#[derive(Debug)]
pub struct Registration {
    id: u64,
}

/// `make` a thing and register the action that undoes it (built from what
/// `make` returned), with the registry locked throughout, so the signal
/// thread never misses one that is half made. When `make` fails nothing is
/// registered.
pub fn guarded<T, E, U>(
    make: impl FnOnce() -> Result<T, E>,
    undo: impl FnOnce(&T) -> U,
) -> Result<(T, Registration), E>
where
    U: Fn() + Send + 'static,
{
    let mut live = live();
    let made = make()?;
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    live.insert(id, Box::new(undo(&made)));
    Ok((made, Registration { id }))
}

impl Drop for Registration {
    fn drop(&mut self) {
        live().remove(&self.id);
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set in place.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Block SIGINT/SIGTERM/SIGHUP in every thread and handle them in one thread
/// that runs every registered undo action, newest first, then exits with 130.
/// Call first in main, before any other thread starts.
pub fn install_signal_cleanup() {
    let set = signal_set();
    // SAFETY: blocking signals in the calling (main) thread; threads spawned later inherit it.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigwait on a valid, blocked set.
        unsafe {
            libc::sigwait(&set, &mut sig);
        }
        // Held until exit: nothing new is registered after this point.
        let live = live();
        for undo in live.values().rev() {
            undo();
        }
        eprintln!("interrupted (signal {sig}): cleaned up");
        std::process::exit(130);
    });
}

/// For child processes: restore the default signal mask and die with the parent.
pub fn child_setup() {
    let set = signal_set();
    // SAFETY: unblocking signals and setting the parent-death signal for this process.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
}
