//! Which checkpoint is this? Every checkpoint is the same instruction, in
//! whichever kernel is running; the VMM tells them apart by following the
//! transfers of control, and answers accordingly.
//!
//! A kernel that is running and checkpoints is *suspending* (it is about to
//! jump: answer JUMP, and control goes to its peer); a kernel that was away
//! and checkpoints is *resuming* (answer BACK). In ping-pong that gives
//! A.suspend, B.suspend (end of B's first boot), A.resume, then per cycle
//! A.suspend, B.resume, B.suspend, A.resume.

use kjump_guest::abi::{ANSWER_BACK, ANSWER_JUMP, Role};
use serde::Serialize;

/// Which way a kernel passes its checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointId {
    /// Counts from 0 over the whole run.
    pub index: u64,
    /// The A→B→A cycle this checkpoint belongs to, from 1.
    pub cycle: u64,
    pub kernel: Kernel,
    pub direction: Direction,
}

/// A kernel of the scenario, serialisable as `"a"`/`"b"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernel {
    A,
    B,
}

impl From<Role> for Kernel {
    fn from(r: Role) -> Self {
        match r {
            Role::A => Self::A,
            Role::B => Self::B,
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
    fn idx(self) -> usize {
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
#[derive(Debug)]
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
