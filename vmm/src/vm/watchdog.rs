//! The watchdog: a run that stops moving forward for a whole timeout is
//! hung, a run may have a total time limit (`--max-time`), and it can be
//! stopped with SIGINT/SIGTERM; a stopped run still ends with the guest's
//! registers.
//!
//! Only the scenario says what moving forward is ([`StopFlag::advance`]: a
//! checkpoint that advances the sequence). Harness messages do not count: a
//! guest that only talks (hello, log, progress, over and over) is hung.
//!
//! [`run_guarded`] runs the scenario (which owns the VM and drives the vCPU
//! through [`crate::vm::Vm::run_until_event`]) on a named thread,
//! `kjump-vcpu0`, while the calling thread waits in an event-manager loop on
//! a timerfd, a signalfd and an eventfd the vCPU thread writes when it is
//! done. When the time is up or a signal comes, the loop raises a
//! [`StopFlag`] and *kicks* the vCPU thread out of `KVM_RUN`: a real-time
//! signal whose handler sets `immediate_exit` in the vCPU's `kvm_run` (so
//! that a kick landing just before `KVM_RUN` is not lost: KVM then returns
//! at once with `EINTR`). The VM sees the flag, reads the registers and
//! returns its timeout error; the scenario ends as it would on any error.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::kvm_run;
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, create_sigset, register_signal_handler};
use vmm_sys_util::timerfd::TimerFd;

/// How often a stopping vCPU thread is kicked again, and how long it gets
/// to stop before the run is abandoned.
const KICK_INTERVAL: Duration = Duration::from_millis(100);
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// A signal that repeats within this time of the first is the same
/// request: `timeout(1)` sends its SIGTERM to the process and then to its
/// process group, so kjump may read it twice.
const SIGNAL_REPEAT: Duration = Duration::from_secs(1);

/// Why a run was stopped from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The scenario did not move forward for this long.
    Timeout(Duration),
    /// The run's total time limit (`--max-time`) passed.
    MaxTime(Duration),
    /// SIGINT or SIGTERM arrived.
    Signal(i32),
}

/// Raised by the watchdog, checked by the VM before every `KVM_RUN`.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<StopInner>);

#[derive(Debug, Default)]
struct StopInner {
    raised: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    /// Counts the scenario's steps forward; the watchdog fires only when it
    /// stood still for a whole timeout.
    progress: AtomicU64,
    /// How many holds are alive: while any is, the watchdog does not count
    /// time (the guest is stopped in the debugger).
    held: AtomicU64,
}

impl StopFlag {
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the flag (the first reason wins).
    pub fn raise(&self, reason: StopReason) {
        let mut r = self.0.reason.lock().unwrap_or_else(PoisonError::into_inner);
        if r.is_none() {
            *r = Some(reason);
        }
        self.0.raised.store(true, Ordering::SeqCst);
    }

    /// The scenario moved forward (a checkpoint that advances its
    /// sequence): the watchdog starts counting again. Nothing else resets
    /// it.
    pub fn advance(&self) {
        self.0.progress.fetch_add(1, Ordering::Relaxed);
    }

    fn progress(&self) -> u64 {
        self.0.progress.load(Ordering::Relaxed)
    }

    /// Holds the watchdog until the guard goes (a guest stopped in the
    /// debugger is not hung); its time starts again from then.
    pub fn hold(&self) -> Hold {
        self.0.held.fetch_add(1, Ordering::SeqCst);
        Hold(self.clone())
    }

    fn held(&self) -> bool {
        self.0.held.load(Ordering::SeqCst) != 0
    }

    /// Why the run must stop, if it must.
    pub fn reason(&self) -> Option<StopReason> {
        if !self.0.raised.load(Ordering::SeqCst) {
            return None;
        }
        *self.0.reason.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// While alive, the watchdog does not fire ([`StopFlag::hold`]).
pub struct Hold(StopFlag);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.advance();
        self.0.0.held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The watchdog failed, or the vCPU thread did.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// setting up the event loop failed
    #[error("cannot set up the watchdog: {what}")]
    Setup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// the event loop failed
    #[error("the watchdog's event loop failed")]
    EventLoop(#[source] event_manager::Error),
    /// the vCPU thread did not stop after the kick
    #[error("{}, and the vCPU thread did not stop within {} s of being told to", describe(.reason), .grace.as_secs_f64())]
    Unresponsive { reason: StopReason, grace: Duration },
    /// a second signal came while the vCPU thread was stopping
    #[error("{}; {} came while the vCPU thread was stopping, so kjump did not wait for it", describe(.reason), signal_name(*.signal))]
    Abandoned { reason: StopReason, signal: i32 },
    /// the vCPU thread panicked
    #[error("the vCPU thread panicked: {0}")]
    Panicked(String),
}

fn describe(r: &StopReason) -> String {
    match r {
        StopReason::Timeout(t) => format!(
            "the run made no progress for {} s (watchdog)",
            t.as_secs_f64()
        ),
        StopReason::MaxTime(t) => format!(
            "the run reached its time limit of {} s (--max-time)",
            t.as_secs_f64()
        ),
        StopReason::Signal(s) => format!("the run was interrupted by {}", signal_name(*s)),
    }
}

/// `SIGINT`, `SIGTERM`, or `signal N`.
pub fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

fn setup<E: Into<io::Error>>(what: &'static str) -> impl FnOnce(E) -> WatchdogError {
    move |e| WatchdogError::Setup {
        what,
        source: e.into(),
    }
}

// ---- the kick --------------------------------------------------------------

thread_local! {
    /// The `kvm_run` of the vCPU this thread is running, while it runs it.
    static KICK_TARGET: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal that kicks a vCPU thread.
pub fn kick_signal() -> c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    let run = KICK_TARGET.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` was set on this very thread by `KickGuard::arm`,
        // whose caller guarantees the `kvm_run` mapping outlives the guard,
        // and the guard clears it on drop; the handler runs on this thread,
        // so the mapping is alive. KVM reads the flag at its next `KVM_RUN`
        // entry; a one-byte volatile store is async-signal-safe.
        unsafe { std::ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
    }
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), on_kick).map_err(io::Error::from);
    });
    result
}

/// While alive, a kick of the current thread sets `immediate_exit` in this
/// `kvm_run`.
pub struct KickGuard {
    previous: *mut kvm_run,
}

impl KickGuard {
    /// Points this thread's kick at `run` until the guard is dropped.
    ///
    /// # Safety
    ///
    /// `run` (a vCPU's `kvm_run` mapping) must stay mapped until the guard
    /// is dropped; the kick handler writes to it from this thread.
    pub unsafe fn arm(run: *mut kvm_run) -> Self {
        let previous = KICK_TARGET.with(|t| t.replace(run));
        Self { previous }
    }
}

impl Drop for KickGuard {
    fn drop(&mut self) {
        KICK_TARGET.with(|t| t.set(self.previous));
    }
}

// ---- the event loop ----------------------------------------------------------

/// What woke the watchdog's loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    Timer,
    Signal(i32),
    Done,
}

type Wakes = Rc<RefCell<VecDeque<Wake>>>;

/// Reads a readable fd and reports one wake-up.
struct FdWatch {
    fd: RawFd,
    wakes: Wakes,
    read: Box<dyn FnMut() -> Option<Wake>>,
}

impl MutEventSubscriber for FdWatch {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let readable = EventSet::IN | EventSet::ERROR | EventSet::HANG_UP;
        if events.event_set().intersects(readable)
            && let Some(w) = (self.read)()
        {
            self.wakes.borrow_mut().push_back(w);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            log::error!("watchdog: cannot watch fd {}: {e}", self.fd);
        }
    }
}

/// SIGINT and SIGTERM blocked on this thread (and so on threads it starts)
/// and readable from a signalfd; the old mask comes back on drop.
struct SignalGuard {
    fd: OwnedFd,
    old_mask: libc::sigset_t,
}

impl SignalGuard {
    fn new(signals: &[c_int]) -> io::Result<Self> {
        let set = create_sigset(signals).map_err(io::Error::from)?;
        let old_mask = block_signals(&set)?;
        match open_signalfd(&set) {
            Ok(fd) => Ok(Self { fd, old_mask }),
            Err(e) => {
                restore_mask(&old_mask);
                Err(e)
            }
        }
    }

    /// Reads one pending signal's number.
    fn read(&self) -> Option<i32> {
        read_signalfd(self.fd.as_raw_fd())
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        restore_mask(&self.old_mask);
    }
}

fn block_signals(set: &libc::sigset_t) -> io::Result<libc::sigset_t> {
    // SAFETY: all-zero is a valid (empty) sigset_t.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live sigset_t values; the return value is checked.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, &mut old) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(old)
}

fn restore_mask(old: &libc::sigset_t) {
    // SAFETY: `old` is a sigset_t that pthread_sigmask filled in.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
    if r != 0 {
        log::warn!(
            "cannot restore the signal mask: {}",
            io::Error::from_raw_os_error(r)
        );
    }
}

fn open_signalfd(set: &libc::sigset_t) -> io::Result<OwnedFd> {
    // SAFETY: `set` is a valid sigset_t; -1 asks for a new fd; checked below.
    let fd = unsafe { libc::signalfd(-1, set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn read_signalfd(fd: RawFd) -> Option<i32> {
    // SAFETY: all-zero is a valid signalfd_siginfo.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: the kernel writes at most `size` bytes into `info`, which is
    // that big; the result is checked.
    let n = unsafe { libc::read(fd, (&raw mut info).cast::<c_void>(), size) };
    (n == size as isize).then_some(info.ssi_signo as i32)
}

/// Tells the watchdog's loop the vCPU thread is done, even if it panicked.
struct NotifyOnDrop(EventFd);

impl Drop for NotifyOnDrop {
    fn drop(&mut self) {
        if let Err(e) = self.0.write(1) {
            log::error!("cannot tell the watchdog the vCPU thread is done: {e}");
        }
    }
}

/// How a guarded run is watched.
#[derive(Clone, Debug)]
pub struct WatchdogConfig {
    /// How long the scenario may stand still ([`StopFlag::advance`]).
    pub timeout: Duration,
    /// Wall-clock limit of the whole run, if any.
    pub max_time: Option<Duration>,
    /// Stop on SIGINT/SIGTERM (blocks them on the calling thread while the
    /// run lasts; for the command line, not for tests).
    pub handle_signals: bool,
    /// How long a kicked vCPU thread gets to stop.
    pub grace: Duration,
}

impl WatchdogConfig {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            max_time: None,
            handle_signals: false,
            grace: DEFAULT_GRACE,
        }
    }
}

/// When the run stands still too long or runs out of time: the watchdog's
/// clock, apart from its event loop so that it is tested with chosen times.
#[derive(Clone, Copy, Debug)]
struct Deadlines {
    timeout: Duration,
    max_time: Option<Duration>,
    start: Instant,
    /// When the scenario last moved forward (or the run started).
    moved: Instant,
    progress_seen: u64,
}

impl Deadlines {
    fn new(cfg: &WatchdogConfig, now: Instant) -> Self {
        Self {
            timeout: cfg.timeout,
            max_time: cfg.max_time,
            start: now,
            moved: now,
            progress_seen: 0,
        }
    }

    /// At `now`, with the scenario's step count `progress` and whether the
    /// watchdog is `held` (a guest stopped in the debugger is not hung; the
    /// total limit still counts): why the run must stop, or how long until
    /// the next look.
    fn check(&mut self, now: Instant, progress: u64, held: bool) -> Result<Duration, StopReason> {
        let ran = now.saturating_duration_since(self.start);
        if let Some(max) = self.max_time
            && ran >= max
        {
            return Err(StopReason::MaxTime(max));
        }
        if progress != self.progress_seen || held {
            self.progress_seen = progress;
            self.moved = now;
        }
        let still = now.saturating_duration_since(self.moved);
        if still >= self.timeout {
            return Err(StopReason::Timeout(self.timeout));
        }
        let mut next = self.timeout - still;
        if let Some(max) = self.max_time {
            next = next.min(max - ran);
        }
        // A timerfd armed with zero is disarmed.
        Ok(next.max(Duration::from_millis(1)))
    }
}

/// Runs `body` on the vCPU thread `kjump-vcpu0` under the watchdog and
/// returns what it returned. `body` gets the [`StopFlag`] to hand to its VM
/// ([`crate::vm::VmConfig::stop`]): a stopped run returns through `body`
/// like any failed one.
pub fn run_guarded<T, F>(cfg: &WatchdogConfig, body: F) -> Result<T, WatchdogError>
where
    F: FnOnce(StopFlag) -> T + Send + 'static,
    T: Send + 'static,
{
    install_kick_handler().map_err(setup("install the vCPU kick handler"))?;
    let signals = if cfg.handle_signals {
        Some(Rc::new(
            SignalGuard::new(&[libc::SIGINT, libc::SIGTERM])
                .map_err(setup("watch SIGINT/SIGTERM"))?,
        ))
    } else {
        None
    };
    let done = EventFd::new(EFD_NONBLOCK).map_err(setup("create an eventfd"))?;
    let timer = Rc::new(RefCell::new(
        TimerFd::new().map_err(setup("create a timerfd"))?,
    ));
    let mut deadlines = Deadlines::new(cfg, Instant::now());
    let first = deadlines
        .check(Instant::now(), 0, false)
        .unwrap_or(Duration::from_millis(1));
    timer
        .borrow_mut()
        .reset(first, None)
        .map_err(setup("arm the timerfd"))?;

    let mut em: EventManager<Box<dyn MutEventSubscriber>> =
        EventManager::new().map_err(WatchdogError::EventLoop)?;
    let wakes: Wakes = Rc::default();
    let t = timer.clone();
    em.add_subscriber(Box::new(FdWatch {
        fd: timer.borrow().as_raw_fd(),
        wakes: wakes.clone(),
        read: Box::new(move || t.borrow_mut().wait().ok().map(|_| Wake::Timer)),
    }));
    if let Some(sig) = &signals {
        let s = sig.clone();
        em.add_subscriber(Box::new(FdWatch {
            fd: sig.fd.as_raw_fd(),
            wakes: wakes.clone(),
            read: Box::new(move || s.read().map(Wake::Signal)),
        }));
    }
    let done_reader = done.try_clone().map_err(setup("clone an eventfd"))?;
    em.add_subscriber(Box::new(FdWatch {
        fd: done.as_raw_fd(),
        wakes: wakes.clone(),
        read: Box::new(move || done_reader.read().ok().map(|_| Wake::Done)),
    }));

    let stop = StopFlag::new();
    let thread_stop = stop.clone();
    let handle = thread::Builder::new()
        .name("kjump-vcpu0".into())
        .spawn(move || {
            let _notify = NotifyOnDrop(done);
            body(thread_stop)
        })
        .map_err(setup("start the vCPU thread"))?;

    let mut stopping: Option<(StopReason, Instant)> = None;
    let mut last_signal: Option<(i32, Instant)> = None;
    loop {
        em.run().map_err(WatchdogError::EventLoop)?;
        let pending: Vec<Wake> = wakes.borrow_mut().drain(..).collect();
        for wake in pending {
            let reason = match (wake, stopping) {
                (Wake::Done, _) => {
                    drop(signals);
                    return handle
                        .join()
                        .map_err(|p| WatchdogError::Panicked(panic_text(&*p)));
                }
                (Wake::Timer, None) => {
                    match deadlines.check(Instant::now(), stop.progress(), stop.held()) {
                        Err(reason) => reason,
                        Ok(next) => {
                            timer
                                .borrow_mut()
                                .reset(next, None)
                                .map_err(setup("re-arm the timerfd"))?;
                            continue;
                        }
                    }
                }
                (Wake::Signal(s), None) => {
                    last_signal = Some((s, Instant::now()));
                    StopReason::Signal(s)
                }
                (Wake::Timer, Some((reason, since))) => {
                    if since.elapsed() >= cfg.grace {
                        return Err(WatchdogError::Unresponsive {
                            reason,
                            grace: cfg.grace,
                        });
                    }
                    // Kick again: the thread may have been between two runs.
                    let _ = handle.kill(kick_signal());
                    continue;
                }
                // The same signal again at once: one request delivered twice
                // (timeout(1) signals the process and its group).
                (Wake::Signal(s), Some(_))
                    if last_signal
                        .is_some_and(|(l, at)| l == s && at.elapsed() < SIGNAL_REPEAT) =>
                {
                    continue;
                }
                // A second ^C: the user does not want to wait.
                (Wake::Signal(signal), Some((reason, _))) => {
                    return Err(WatchdogError::Abandoned { reason, signal });
                }
            };
            log::info!("watchdog: {}; stopping the vCPU", describe(&reason));
            stop.raise(reason);
            let _ = handle.kill(kick_signal());
            stopping = Some((reason, Instant::now()));
            timer
                .borrow_mut()
                .reset(KICK_INTERVAL, Some(KICK_INTERVAL))
                .map_err(setup("re-arm the timerfd"))?;
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_result_comes_back_on_a_named_thread() {
        let r = run_guarded(&WatchdogConfig::new(Duration::from_secs(30)), |stop| {
            assert!(stop.reason().is_none());
            thread::current().name().map(str::to_owned)
        })
        .unwrap();
        assert_eq!(r.as_deref(), Some("kjump-vcpu0"));
    }

    #[test]
    fn timeout_raises_the_flag_and_kicks() {
        let start = Instant::now();
        let r = run_guarded(&WatchdogConfig::new(Duration::from_millis(200)), |stop| {
            // Wait for the flag like a vCPU loop would, sleeping in between
            // (the kick signal interrupts the sleep).
            while stop.reason().is_none() {
                thread::sleep(Duration::from_millis(5));
            }
            stop.reason()
        })
        .unwrap();
        assert_eq!(r, Some(StopReason::Timeout(Duration::from_millis(200))));
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_thread_that_ignores_the_flag_is_abandoned() {
        let cfg = WatchdogConfig {
            grace: Duration::from_millis(300),
            ..WatchdogConfig::new(Duration::from_millis(50))
        };
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let res = run_guarded(&cfg, move |_| {
            while !r.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
            }
        });
        release.store(true, Ordering::SeqCst);
        assert!(matches!(
            res,
            Err(WatchdogError::Unresponsive {
                reason: StopReason::Timeout(_),
                ..
            })
        ));
    }

    #[test]
    fn a_panic_is_reported() {
        let r = run_guarded(&WatchdogConfig::new(Duration::from_secs(30)), |_| -> () {
            panic!("boom");
        });
        assert!(matches!(r, Err(WatchdogError::Panicked(m)) if m == "boom"));
    }

    #[test]
    fn kick_sets_immediate_exit_only_while_armed() {
        install_kick_handler().unwrap();
        // SAFETY: kvm_run is plain data; all-zero is a valid value.
        let mut run: kvm_run = unsafe { std::mem::zeroed() };
        let raise = || {
            // SAFETY: raising a signal on the current thread, whose handler is installed.
            let r = unsafe { libc::pthread_kill(libc::pthread_self(), kick_signal()) };
            assert_eq!(r, 0);
        };
        raise();
        assert_eq!(run.immediate_exit, 0);
        {
            // SAFETY: `run` outlives the guard (it is dropped at the end of
            // this block).
            let _g = unsafe { KickGuard::arm(&raw mut run) };
            raise();
        }
        assert_eq!(run.immediate_exit, 1);
        run.immediate_exit = 0;
        raise();
        assert_eq!(run.immediate_exit, 0, "disarmed when the guard went");
    }

    #[test]
    fn only_advances_keep_the_run_alive_and_max_time_ends_it() {
        let cfg = WatchdogConfig {
            max_time: Some(Duration::from_secs(100)),
            ..WatchdogConfig::new(Duration::from_secs(10))
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut d = Deadlines::new(&cfg, t0);
        assert_eq!(d.check(at(0), 0, false), Ok(Duration::from_secs(10)));
        assert_eq!(d.check(at(9), 0, false), Ok(Duration::from_secs(1)));
        // Standing still for a whole timeout: hung.
        assert_eq!(
            d.check(at(10), 0, false),
            Err(StopReason::Timeout(cfg.timeout))
        );
        // A step forward at 9 s: the count starts again from there.
        let mut d = Deadlines::new(&cfg, t0);
        assert_eq!(d.check(at(9), 1, false), Ok(Duration::from_secs(10)));
        assert_eq!(d.check(at(18), 1, false), Ok(Duration::from_secs(1)));
        assert_eq!(
            d.check(at(19), 1, false),
            Err(StopReason::Timeout(cfg.timeout))
        );
        // Steps forward all the time: the total limit still ends it, and
        // the timer is armed for it when it comes first.
        let mut d = Deadlines::new(&cfg, t0);
        for s in 1..95 {
            assert!(d.check(at(s), s, false).is_ok());
        }
        assert_eq!(d.check(at(95), 95, false), Ok(Duration::from_secs(5)));
        assert_eq!(
            d.check(at(100), 100, false),
            Err(StopReason::MaxTime(Duration::from_secs(100)))
        );
        // Held (the guest stopped in a debugger): not hung, however long;
        // the total limit still counts.
        let mut d = Deadlines::new(&cfg, t0);
        assert!(d.check(at(50), 0, true).is_ok());
        assert_eq!(d.check(at(59), 0, false), Ok(Duration::from_secs(1)));
        assert_eq!(
            d.check(at(100), 0, true),
            Err(StopReason::MaxTime(Duration::from_secs(100)))
        );
    }

    #[test]
    fn a_held_watchdog_does_not_fire() {
        let cfg = WatchdogConfig::new(Duration::from_millis(100));
        let r = run_guarded(&cfg, |stop| {
            {
                let _held = stop.hold();
                thread::sleep(Duration::from_millis(450));
                assert!(stop.reason().is_none(), "fired while held");
            }
            // Released: a whole timeout without progress is a hang again.
            while stop.reason().is_none() {
                thread::sleep(Duration::from_millis(5));
            }
            stop.reason()
        })
        .unwrap();
        assert_eq!(r, Some(StopReason::Timeout(Duration::from_millis(100))));
    }

    #[test]
    fn a_body_that_advances_runs_past_the_timeout_until_max_time() {
        let cfg = WatchdogConfig {
            max_time: Some(Duration::from_millis(600)),
            ..WatchdogConfig::new(Duration::from_millis(150))
        };
        let start = Instant::now();
        let r = run_guarded(&cfg, |stop| {
            while stop.reason().is_none() {
                stop.advance();
                thread::sleep(Duration::from_millis(5));
            }
            stop.reason()
        })
        .unwrap();
        assert_eq!(r, Some(StopReason::MaxTime(Duration::from_millis(600))));
        assert!(start.elapsed() >= Duration::from_millis(600));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn stop_reasons_read_as_the_real_reason() {
        let e = WatchdogError::Abandoned {
            reason: StopReason::Signal(libc::SIGTERM),
            signal: libc::SIGINT,
        };
        assert_eq!(
            e.to_string(),
            "the run was interrupted by SIGTERM; SIGINT came while the vCPU thread was stopping, so kjump did not wait for it"
        );
        let e = WatchdogError::Unresponsive {
            reason: StopReason::MaxTime(Duration::from_secs(30)),
            grace: DEFAULT_GRACE,
        };
        assert_eq!(
            e.to_string(),
            "the run reached its time limit of 30 s (--max-time), and the vCPU thread did not stop within 10 s of being told to"
        );
    }

    #[test]
    fn first_stop_reason_wins() {
        let f = StopFlag::new();
        assert_eq!(f.reason(), None);
        f.raise(StopReason::Signal(2));
        f.raise(StopReason::Timeout(Duration::from_secs(1)));
        assert_eq!(f.clone().reason(), Some(StopReason::Signal(2)));
    }
}
