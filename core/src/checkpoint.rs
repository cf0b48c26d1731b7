//! Which checkpoint is this? Every checkpoint is the same instruction, in
//! whichever kernel is running; the VMM tells them apart by following the
//! transfers of control, and answers accordingly.
//!
//! A kernel that is running and checkpoints is *suspending* (it is about to
//! jump: answer JUMP, and control goes to its peer); a kernel that was away
//! and checkpoints is *resuming* (answer BACK). In ping-pong that gives
//! A.suspend, B.suspend (end of B's first boot), A.resume, then per cycle
//! A.suspend, B.resume, B.suspend, A.resume.

use kjump_abi::abi::{ANSWER_BACK, ANSWER_JUMP, Role};
use serde::{Deserialize, Serialize};

/// Which way a kernel passes its checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// On its way out: the VMM answers JUMP.
    Suspend,
    /// Coming back: the VMM answers BACK.
    Resume,
}

impl Direction {
    pub fn answer(self) -> u32 {
        match self {
            Self::Suspend => ANSWER_JUMP,
            Self::Resume => ANSWER_BACK,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Suspend => "suspend",
            Self::Resume => "resume",
        }
    }
}

/// One checkpoint's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointId {
    /// Counts from 0 over the whole run.
    pub index: u64,
    /// The A→B→A cycle this checkpoint belongs to, from 1.
    pub cycle: u64,
    pub kernel: Kernel,
    pub direction: Direction,
}

/// A kernel of the scenario, serialisable as `"a"`/`"b"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernel {
    A,
    B,
}

impl From<Role> for Kernel {
    fn from(r: Role) -> Self {
        match r {
            Role::A => Self::A,
            // C enters A as B does: in A's sequence it stands for B.
            Role::B | Role::C => Self::B,
        }
    }
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
        }
    }
    pub fn peer(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }
    /// Index of the kernel in per-kernel arrays: A 0, B 1.
    pub fn idx(self) -> usize {
        self as usize
    }
}

/// Where each kernel is: running, away (suspended, its memory parked), or
/// not booted yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelState {
    NotBooted,
    Running,
    Away,
}

/// Follows the transfers of control from checkpoint to checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    running: Kernel,
    state: [KernelState; 2],
    next_index: u64,
    cycle: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// Kernel A runs first.
    pub fn new() -> Self {
        Self {
            running: Kernel::A,
            state: [KernelState::Running, KernelState::NotBooted],
            next_index: 0,
            cycle: 1,
        }
    }

    /// The tracker as it is right after checkpoint `id` was answered (to go
    /// on from a dump taken there), or `None` if `id` is not a checkpoint of
    /// the ping-pong sequence: A.suspend #0, B.suspend #1 and A.resume #2
    /// in cycle 1, then A.suspend, B.resume, B.suspend, A.resume in each
    /// later cycle, indices counting on.
    pub fn resume_after(id: CheckpointId) -> Option<Self> {
        use Direction::{Resume, Suspend};
        use Kernel::{A, B};
        let pos = match (id.cycle, id.kernel, id.direction) {
            (0, ..) => return None,
            (1, A, Suspend) => 0,
            (1, B, Suspend) => 1,
            (1, A, Resume) => 2,
            (1, B, Resume) => return None,
            (c, k, d) => {
                let step = match (k, d) {
                    (A, Suspend) => 0,
                    (B, Resume) => 1,
                    (B, Suspend) => 2,
                    (A, Resume) => 3,
                };
                (c - 2).checked_mul(4)?.checked_add(3 + step)?
            }
        };
        if pos != id.index {
            return None;
        }
        let k = id.kernel;
        let mut state = [KernelState::Away; 2];
        let (running, cycle) = match id.direction {
            // Control goes to the peer, which boots (only after A's first
            // suspend) or resumes; both kernels' next checkpoints are
            // resumes, except the booting one's.
            Suspend => {
                if id.index == 0 {
                    state[k.peer().idx()] = KernelState::Running;
                }
                (k.peer(), id.cycle)
            }
            // The resumed kernel runs on; the peer is away.
            Resume => {
                state[k.idx()] = KernelState::Running;
                (
                    k,
                    if k == A {
                        id.cycle.checked_add(1)?
                    } else {
                        id.cycle
                    },
                )
            }
        };
        Some(Self {
            running,
            state,
            next_index: id.index.checked_add(1)?,
            cycle,
        })
    }

    /// The kernel executing now (whose console lines these are).
    pub fn running(&self) -> Kernel {
        self.running
    }

    pub fn state(&self, k: Kernel) -> KernelState {
        self.state[k.idx()]
    }

    /// Completed A→B→A cycles.
    pub fn cycles_completed(&self) -> u64 {
        self.cycle - 1
    }

    /// What the checkpoint that just trapped is, and moves on. The answer
    /// to give the guest is `id.direction.answer()`.
    // Not an iterator: each call answers a trap that happened.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> CheckpointId {
        let k = self.running;
        let direction = match self.state[k.idx()] {
            KernelState::Away => Direction::Resume,
            KernelState::Running | KernelState::NotBooted => Direction::Suspend,
        };
        let id = CheckpointId {
            index: self.next_index,
            cycle: self.cycle,
            kernel: k,
            direction,
        };
        self.next_index += 1;
        match direction {
            Direction::Suspend => {
                // Control goes to the peer, which boots or resumes.
                self.state[k.idx()] = KernelState::Away;
                self.running = k.peer();
                if self.state[k.peer().idx()] == KernelState::NotBooted {
                    self.state[k.peer().idx()] = KernelState::Running;
                }
            }
            Direction::Resume => {
                self.state[k.idx()] = KernelState::Running;
                // A is back: one A→B→A cycle is complete.
                if k == Kernel::A {
                    self.cycle += 1;
                }
            }
        }
        id
    }

    /// Kernel A, running, loaded kernel B afresh (hibernate: B powered
    /// the machine off, and A, restored from its image, loads B again):
    /// B boots at A's next jump instead of being resumed. Nothing changes
    /// while B runs.
    pub fn peer_reloaded(&mut self) {
        if self.running == Kernel::A {
            self.state[Kernel::B.idx()] = KernelState::NotBooted;
        }
    }

    /// True when `k`'s memory is parked (the peer runs), so its pages that
    /// were swapped are found in their source pages.
    pub fn is_away(&self, k: Kernel) -> bool {
        self.state[k.idx()] == KernelState::Away
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: usize) -> Vec<(u64, &'static str, &'static str)> {
        let mut t = Tracker::new();
        (0..n)
            .map(|_| {
                let id = t.next();
                (id.cycle, id.kernel.name(), id.direction.name())
            })
            .collect()
    }

    #[test]
    fn ping_pong_sequence() {
        assert_eq!(
            seq(7),
            [
                (1, "a", "suspend"),
                (1, "b", "suspend"),
                (1, "a", "resume"),
                (2, "a", "suspend"),
                (2, "b", "resume"),
                (2, "b", "suspend"),
                (2, "a", "resume"),
            ]
        );
    }

    #[test]
    fn a_reloaded_peer_boots_again_instead_of_resuming() {
        // Hibernate: A suspends, C (in B's place) jumps to A, A resumes and
        // loads B afresh; B's next checkpoint is the end of its boot.
        let mut t = Tracker::new();
        let steps = |t: &mut Tracker, n| {
            (0..n)
                .map(|_| {
                    let id = t.next();
                    (id.cycle, id.kernel.name(), id.direction.name())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            steps(&mut t, 3),
            [(1, "a", "suspend"), (1, "b", "suspend"), (1, "a", "resume")]
        );
        t.peer_reloaded();
        assert_eq!(t.state(Kernel::B), KernelState::NotBooted);
        assert_eq!(
            steps(&mut t, 3),
            [(2, "a", "suspend"), (2, "b", "suspend"), (2, "a", "resume")]
        );
        assert_eq!(t.cycles_completed(), 2);
        // Without the reload, B would have been resumed.
        let mut t = Tracker::new();
        steps(&mut t, 4);
        assert_eq!(steps(&mut t, 1), [(2, "b", "resume")]);
        // While B runs, nothing changes.
        let mut t = Tracker::new();
        t.next();
        t.peer_reloaded();
        assert_eq!(t.state(Kernel::B), KernelState::Running);
    }

    #[test]
    fn resume_after_any_checkpoint_goes_on_like_the_run() {
        let mut t = Tracker::new();
        for _ in 0..41 {
            let id = t.next();
            let r = Tracker::resume_after(id).unwrap_or_else(|| panic!("{id:?} refused"));
            assert_eq!(r, t, "after {id:?}");
            // And it goes on identically.
            let (mut a, mut b) = (t.clone(), r);
            for _ in 0..9 {
                assert_eq!(a.next(), b.next(), "after {id:?}");
            }
            assert_eq!(a, b);
        }
    }

    #[test]
    fn resume_after_refuses_checkpoints_not_in_the_sequence() {
        let id = |index, cycle, kernel, direction| CheckpointId {
            index,
            cycle,
            kernel,
            direction,
        };
        use Direction::{Resume, Suspend};
        for bad in [
            id(0, 0, Kernel::A, Suspend),
            id(1, 1, Kernel::B, Resume),
            id(4, 1, Kernel::A, Suspend),
            id(3, 2, Kernel::B, Resume),
            id(8, 3, Kernel::A, Resume),
            id(u64::MAX, u64::MAX, Kernel::A, Resume),
            id(u64::MAX, u64::MAX / 4 + 2, Kernel::A, Resume),
        ] {
            assert_eq!(Tracker::resume_after(bad), None, "{bad:?}");
        }
        let last = Tracker::resume_after(id(10, 3, Kernel::A, Resume)).unwrap();
        assert_eq!(last.cycles_completed(), 3);
        assert_eq!(last.running(), Kernel::A);
        assert!(last.is_away(Kernel::B) && !last.is_away(Kernel::A));
    }

    #[test]
    fn running_kernel_and_parking_follow_the_jumps() {
        let mut t = Tracker::new();
        assert_eq!(t.running(), Kernel::A);
        assert_eq!(t.state(Kernel::B), KernelState::NotBooted);
        t.next(); // A suspends
        assert_eq!(t.running(), Kernel::B);
        assert!(t.is_away(Kernel::A) && !t.is_away(Kernel::B));
        t.next(); // B suspends
        assert_eq!(t.running(), Kernel::A);
        assert!(t.is_away(Kernel::A) && t.is_away(Kernel::B));
        let id = t.next(); // A resumes
        assert_eq!(
            (id.direction.answer(), t.cycles_completed()),
            (ANSWER_BACK, 1)
        );
        assert!(!t.is_away(Kernel::A) && t.is_away(Kernel::B));
    }
}
