//! Global state of a single-CPU kernel that never enables interrupts: no
//! locks are needed, only protection against re-entry (an exception or a
//! panic while a global is borrowed), which these cells turn into a clear
//! panic instead of aliasing `&mut`.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// A global value borrowed mutably by one closure at a time.
pub struct Exclusive<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the `busy` flag hands out at most one `&mut T` at a time, and the
// kernel runs on one CPU; `T: Send` because the value may be used from any
// context (kmain, handlers).
unsafe impl<T: Send> Sync for Exclusive<T> {}

impl<T> Exclusive<T> {
    pub const fn new(value: T) -> Self {
        Self {
            busy: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` with the value. Panics when the value is already borrowed
    /// (re-entry from a handler or from inside `f`).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        assert!(
            !self.busy.swap(true, Ordering::Acquire),
            "global state re-entered"
        );
        // SAFETY: `busy` was false and is now true: no other reference to the
        // value exists until it is cleared below.
        let r = f(unsafe { &mut *self.value.get() });
        self.busy.store(false, Ordering::Release);
        r
    }

    /// The value's address, for tables the CPU reads (GDT, IDT, TSS).
    pub const fn as_ptr(&self) -> *mut T {
        self.value.get()
    }
}

const EMPTY: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;

/// A global set once at boot and read-only afterwards.
pub struct Once<T> {
    state: AtomicU8,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: the value is written once, before `state` becomes READY, and only
// shared references are handed out afterwards.
unsafe impl<T: Sync + Send> Sync for Once<T> {}

impl<T> Once<T> {
    pub const fn new() -> Self {
        Self {
            state: AtomicU8::new(EMPTY),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// Stores `value` and returns it. Panics when called twice.
    pub fn init(&'static self, value: T) -> &'static T {
        let prev = self
            .state
            .compare_exchange(EMPTY, BUSY, Ordering::Acquire, Ordering::Acquire);
        assert!(prev.is_ok(), "boot-time global initialised twice");
        // SAFETY: the state moved EMPTY -> BUSY here, so nobody else holds a
        // reference to the slot.
        unsafe { (*self.value.get()).write(value) };
        self.state.store(READY, Ordering::Release);
        self.get().expect("just initialised")
    }

    /// The value, once initialised.
    pub fn get(&'static self) -> Option<&'static T> {
        if self.state.load(Ordering::Acquire) != READY {
            return None;
        }
        // SAFETY: READY is stored only after `init` wrote the value, and no
        // `&mut` to it is handed out after that.
        Some(unsafe { (*self.value.get()).assume_init_ref() })
    }
}
