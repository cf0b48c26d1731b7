//! The harness port: how a guest kernel talks to the kjump VMM.
//!
//! Two I/O ports, both 32 bits wide:
//!
//! * [`HARNESS_PORT`]: `out dx, eax` with the guest-physical address (below
//!   4 GiB) of a [`HarnessMsg`]. The VMM reads and validates the message and
//!   any text it points to; the guest may reuse the buffer once `out` returns.
//! * [`CHECKPOINT_PORT`]: `in eax, dx` is the checkpoint instruction. The VMM
//!   snapshots the vCPU and RAM and answers [`ANSWER_JUMP`] ("you are leaving:
//!   jump") or [`ANSWER_BACK`] ("you are back: return to your caller").
//!
//! The layout of every message is `#[repr(C)]` and fixed-width so that the
//! host can decode it from raw guest bytes ([`HarnessMsg::from_bytes`]).

/// `out` the physical address of a [`HarnessMsg`] here.
pub const HARNESS_PORT: u16 = 0x7e0;
/// `in eax, dx` here is the checkpoint instruction.
pub const CHECKPOINT_PORT: u16 = 0x7e4;
/// First port after the harness range (`HARNESS_PORT..HARNESS_PORT_END`).
pub const HARNESS_PORT_END: u16 = 0x7e8;

/// Checkpoint answer: leave now (the kernel goes on into the relocation code).
pub const ANSWER_JUMP: u32 = u32::from_le_bytes(*b"JUMP");
/// Checkpoint answer: the kernel was resumed; return from the jump call.
pub const ANSWER_BACK: u32 = u32::from_le_bytes(*b"BACK");

/// First word of every message.
pub const MSG_MAGIC: u32 = u32::from_le_bytes(*b"KJMP");
/// Longest text the VMM accepts in one message.
pub const MAX_TEXT: u64 = 4096;

/// What a message is about. `args` and the text mean different things per kind.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgKind {
    /// A kernel came up. `args[0]`: role ([`Role`]); text: a banner.
    Hello = 1,
    /// A line of log text (the console is the UART; this is for the report).
    Log = 2,
    /// A cycle finished. `args[0]`: cycles completed so far.
    Progress = 3,
    /// The scenario is over. `args[0]`: 0 pass, 1 fail; text: why.
    Verdict = 4,
    /// The guest panicked. `args[0]`: line; text: `file:line: message`.
    Panic = 5,
    /// A CPU exception reached the guest's IDT. See [`ExceptionArgs`].
    Exception = 6,
    /// The kimage the kernel is about to jump with. See [`KimageArgs`].
    Kimage = 7,
}

impl MsgKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Log,
            3 => Self::Progress,
            4 => Self::Verdict,
            5 => Self::Panic,
            6 => Self::Exception,
            7 => Self::Kimage,
            _ => return None,
        })
    }
}

/// Which kernel of the scenario a guest is.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    A = 0,
    B = 1,
    /// The restore kernel of the hibernate scenario: boots in a fresh VM,
    /// loads A's image and jumps to A's re-entry point as B would.
    C = 2,
}

impl Role {
    pub fn from_u64(v: u64) -> Option<Self> {
        match v {
            0 => Some(Self::A),
            1 => Some(Self::B),
            2 => Some(Self::C),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
            Self::C => "c",
        }
    }
    /// The kernel this one jumps to: C, like B, enters A.
    pub fn peer(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B | Self::C => Self::A,
        }
    }
}

/// Indices into [`HarnessMsg::args`] for [`MsgKind::Exception`].
pub struct ExceptionArgs;
impl ExceptionArgs {
    pub const VECTOR: usize = 0;
    pub const ERROR_CODE: usize = 1;
    pub const RIP: usize = 2;
    pub const CS: usize = 3;
    pub const RFLAGS: usize = 4;
    pub const RSP: usize = 5;
    pub const CR2: usize = 6;
}

/// Indices into [`HarnessMsg::args`] for [`MsgKind::Kimage`].
pub struct KimageArgs;
impl KimageArgs {
    /// The kimage `head` entry (Linux format, see [`crate::kimage`]).
    pub const HEAD: usize = 0;
    /// Physical address of the first control page (see [`crate::control`]).
    pub const CONTROL: usize = 1;
    /// Number of contiguous control pages (code + context + stack, swap
    /// page, page tables).
    pub const CONTROL_PAGES: usize = 2;
    /// 0 swap, 1 backup (see [`crate::control::MODE_SWAP`]).
    pub const MODE: usize = 3;
    /// The role of the kernel that owns the kimage.
    pub const ROLE: usize = 4;
    /// First byte and end of the RAM the peer is given (B's region).
    pub const PEER_START: usize = 5;
    pub const PEER_END: usize = 6;
    /// Backup mode only: head of the second list (see [`crate::control::DATA_HEAD2`]).
    pub const HEAD2: usize = 7;
}

/// One message on the harness port. 88 bytes, little endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HarnessMsg {
    pub magic: u32,
    pub kind: u32,
    pub args: [u64; 8],
    /// Guest-physical address of UTF-8 text, or 0.
    pub text_ptr: u64,
    pub text_len: u64,
}

impl HarnessMsg {
    pub const SIZE: usize = 88;

    pub const fn new(kind: MsgKind) -> Self {
        Self {
            magic: MSG_MAGIC,
            kind: kind as u32,
            args: [0; 8],
            text_ptr: 0,
            text_len: 0,
        }
    }

    /// Decodes a message from the bytes the guest pointed at.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let mut args = [0u64; 8];
        for (i, a) in args.iter_mut().enumerate() {
            *a = u64_at(8 + 8 * i);
        }
        Self {
            magic: u32_at(0),
            kind: u32_at(4),
            args,
            text_ptr: u64_at(72),
            text_len: u64_at(80),
        }
    }

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.kind.to_le_bytes());
        for (i, a) in self.args.iter().enumerate() {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        b[72..80].copy_from_slice(&self.text_ptr.to_le_bytes());
        b[80..88].copy_from_slice(&self.text_len.to_le_bytes());
        b
    }
}

const _: () = assert!(core::mem::size_of::<HarnessMsg>() == HarnessMsg::SIZE);

/// Exception vector names, for reports (SDM vol. 3A, table 6-1).
pub fn vector_name(v: u64) -> &'static str {
    const NAMES: [&str; 21] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "coprocessor segment overrun",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack fault",
        "#GP general protection",
        "#PF page fault",
        "reserved",
        "#MF x87 floating point",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD floating point",
        "#VE virtualization",
    ];
    NAMES.get(v as usize).copied().unwrap_or("unknown vector")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips_through_bytes() {
        let mut m = HarnessMsg::new(MsgKind::Exception);
        m.args = [6, 0, 0x20_1234, 8, 0x2, 0x30_0000, 0, 7];
        m.text_ptr = 0x1000;
        m.text_len = 12;
        assert_eq!(HarnessMsg::from_bytes(&m.to_bytes()), m);
        assert_eq!(MsgKind::from_u32(m.kind), Some(MsgKind::Exception));
    }

    #[test]
    fn answers_differ_and_kinds_are_closed() {
        assert_ne!(ANSWER_JUMP, ANSWER_BACK);
        assert_eq!(MsgKind::from_u32(0), None);
        assert_eq!(MsgKind::from_u32(8), None);
        assert_eq!(vector_name(14), "#PF page fault");
        assert_eq!(vector_name(99), "unknown vector");
    }
}
