//! The machine's device state as plain values, flattened into named fields.
//!
//! Each device KVM emulates in the kernel (the 8259 pair, the IOAPIC, the
//! PIT, kvmclock) is captured into a plain struct that serde can write to a
//! dump, and that converts back to the UAPI struct for a restore. For the
//! oracle every state flattens into fields a person reads
//! (`pic.master.imr`, `ioapic.redir[4].mask`, `pit.channel0.mode`,
//! `kvmclock.clock`), and [`compare`] names every field that differs.
//!
//! Most fields must come back bit for bit. The few that move with time, or
//! are host time rather than guest state, carry a [`Rule`] that says how
//! they are compared and why (printed in the report's allowlist).
//!
//! KVM-free: only the UAPI layouts from kvm-bindings. The KVM side is
//! `KVM_GET_IRQCHIP` (chips 0, 1, 2), `KVM_GET_PIT2` and `KVM_GET_CLOCK`.

use std::collections::HashMap;
use std::fmt;

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_clock_data,
    kvm_ioapic_state, kvm_irqchip, kvm_pic_state, kvm_pit_channel_state, kvm_pit_state2,
};
use serde::{Deserialize, Serialize};

/// Pins of KVM's IOAPIC (`KVM_IOAPIC_NUM_PINS`).
pub const IOAPIC_PINS: usize = kvm_bindings::KVM_IOAPIC_NUM_PINS as usize;

/// Channels of the 8254 PIT.
pub const PIT_CHANNELS: usize = 3;

/// How one field of two states is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The value must come back bit for bit.
    Exact,
    /// The value moves forward with time: a larger value is fine, a smaller
    /// one (time went back, or the device stopped being programmed and
    /// reads 0) is a difference.
    Monotonic {
        /// Why the field moves.
        reason: &'static str,
    },
    /// The value means something only while the sibling field `guard`
    /// (same prefix, e.g. `pit.channel0.count_latched`) is nonzero in the
    /// expected state: compared exactly then, not at all otherwise.
    WhileSet {
        /// The last name segment of the guarding sibling field.
        guard: &'static str,
        /// Why the field is left alone while the guard is clear.
        reason: &'static str,
    },
    /// Host time, not guest state: never compared.
    Ignored {
        /// What the value is.
        reason: &'static str,
    },
}

impl Rule {
    /// The reason for a relaxed rule; `None` for [`Rule::Exact`].
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Exact => None,
            Self::Monotonic { reason }
            | Self::WhileSet { reason, .. }
            | Self::Ignored { reason } => Some(reason),
        }
    }
}

/// One named value of a device state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The name a person reads, e.g. `ioapic.redir[4].mask`.
    pub name: String,
    /// The value, zero-extended to 64 bits.
    pub value: u64,
    /// How the field is compared.
    pub rule: Rule,
}

/// A field that differs between the expected and the actual state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    /// The field's name, e.g. `pic.master.imr`.
    pub name: String,
    /// The expected value; `None` when the expected state lacks the field.
    pub expected: Option<u64>,
    /// The actual value; `None` when the actual state lacks the field.
    pub actual: Option<u64>,
    /// The rule the field broke.
    pub rule: Rule,
}

impl fmt::Display for FieldDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<u64>| v.map_or_else(|| "absent".to_string(), |v| format!("{v:#x}"));
        match (self.rule, self.expected, self.actual) {
            (Rule::Monotonic { reason }, Some(e), Some(a)) => write!(
                f,
                "{}: expected at least {e:#x}, found {a:#x} (went back; {reason})",
                self.name
            ),
            _ => write!(
                f,
                "{}: expected {}, found {}",
                self.name,
                show(self.expected),
                show(self.actual)
            ),
        }
    }
}

/// Collects the fields of one state under a name prefix.
struct Fields<'a> {
    prefix: String,
    out: &'a mut Vec<Field>,
}

impl<'a> Fields<'a> {
    fn new(prefix: impl Into<String>, out: &'a mut Vec<Field>) -> Self {
        Self {
            prefix: prefix.into(),
            out,
        }
    }

    fn sub(&mut self, name: &str) -> Fields<'_> {
        Fields {
            prefix: format!("{}.{name}", self.prefix),
            out: &mut *self.out,
        }
    }

    fn push(&mut self, name: &str, value: impl Into<u64>, rule: Rule) {
        self.out.push(Field {
            name: format!("{}.{name}", self.prefix),
            value: value.into(),
            rule,
        });
    }
}

/// Why a UAPI struct could not be taken as a device state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceStateError {
    /// A `kvm_irqchip` holds another chip than the one asked for.
    WrongChip {
        /// The chip id asked for (0 PIC master, 1 PIC slave, 2 IOAPIC).
        expected: u32,
        /// The chip id the struct holds.
        found: u32,
    },
}

impl fmt::Display for DeviceStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongChip { expected, found } => write!(
                f,
                "KVM irqchip {found} ({}) where irqchip {expected} ({}) was expected",
                chip_name(*found),
                chip_name(*expected)
            ),
        }
    }
}

impl std::error::Error for DeviceStateError {}

fn chip_name(id: u32) -> &'static str {
    match id {
        KVM_IRQCHIP_PIC_MASTER => "PIC master",
        KVM_IRQCHIP_PIC_SLAVE => "PIC slave",
        KVM_IRQCHIP_IOAPIC => "IOAPIC",
        _ => "unknown",
    }
}

fn check_chip(chip: &kvm_irqchip, expected: u32) -> Result<(), DeviceStateError> {
    if chip.chip_id == expected {
        Ok(())
    } else {
        Err(DeviceStateError::WrongChip {
            expected,
            found: chip.chip_id,
        })
    }
}

/// Declares [`PicChip`] with one documented `u8` per `kvm_pic_state` field,
/// its conversions and its field list, so the three cannot drift apart.
macro_rules! pic_chip {
    ($($(#[doc = $doc:literal])+ $field:ident,)+) => {
        /// One 8259A as KVM keeps it (`struct kvm_pic_state`,
        /// arch/x86/kvm/i8259.c); names follow that struct.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct PicChip {
            $($(#[doc = $doc])+ pub $field: u8,)+
        }

        impl From<&kvm_pic_state> for PicChip {
            fn from(s: &kvm_pic_state) -> Self {
                Self { $($field: s.$field,)+ }
            }
        }

        impl PicChip {
            /// The UAPI struct, for `KVM_SET_IRQCHIP`.
            pub fn to_kvm(&self) -> kvm_pic_state {
                kvm_pic_state { $($field: self.$field,)+ }
            }

            fn push_fields(&self, mut out: Fields<'_>) {
                $(out.push(stringify!($field), self.$field, Rule::Exact);)+
            }
        }
    };
}

pic_chip! {
    /// Edge detection: the request lines as last sampled.
    last_irr,
    /// Interrupt request register: IRQs raised and not yet acknowledged.
    irr,
    /// Interrupt mask register (OCW1).
    imr,
    /// In-service register: IRQs acknowledged and not yet EOIed.
    isr,
    /// The IRQ of lowest priority + 1, for priority rotation.
    priority_add,
    /// Vector of IRQ 0 (ICW2).
    irq_base,
    /// OCW3 read select: the command port reads the ISR (1) or the IRR (0).
    read_reg_select,
    /// A poll command (OCW3 P) is pending.
    poll,
    /// Special mask mode (OCW3 SMM).
    special_mask,
    /// Position in the ICW initialization sequence; 0 when done.
    init_state,
    /// Automatic EOI mode (ICW4 AEOI).
    auto_eoi,
    /// Rotate priorities on automatic EOI.
    rotate_on_auto_eoi,
    /// Special fully nested mode (ICW4 SFNM).
    special_fully_nested_mode,
    /// ICW4 is expected in the sequence (ICW1 IC4).
    init4,
    /// Edge/level control register (ports 0x4d0/0x4d1): 1 = level-triggered.
    elcr,
    /// The ELCR bits the guest may change.
    elcr_mask,
}

/// The 8259 pair (`KVM_GET_IRQCHIP` chips 0 and 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicState {
    /// The master PIC, ports 0x20/0x21 (chip 0).
    pub master: PicChip,
    /// The slave PIC, ports 0xa0/0xa1, cascaded on IRQ 2 (chip 1).
    pub slave: PicChip,
}

impl PicState {
    /// The pair from `KVM_GET_IRQCHIP` of chips 0 and 1.
    pub fn from_irqchips(
        master: &kvm_irqchip,
        slave: &kvm_irqchip,
    ) -> Result<Self, DeviceStateError> {
        check_chip(master, KVM_IRQCHIP_PIC_MASTER)?;
        check_chip(slave, KVM_IRQCHIP_PIC_SLAVE)?;
        Ok(Self {
            master: PicChip::from(&pic_of(master)),
            slave: PicChip::from(&pic_of(slave)),
        })
    }

    /// Chips 0 and 1 for `KVM_SET_IRQCHIP`.
    pub fn to_irqchips(&self) -> [kvm_irqchip; 2] {
        let mut master = kvm_irqchip {
            chip_id: KVM_IRQCHIP_PIC_MASTER,
            ..Default::default()
        };
        master.chip.pic = self.master.to_kvm();
        let mut slave = kvm_irqchip {
            chip_id: KVM_IRQCHIP_PIC_SLAVE,
            ..Default::default()
        };
        slave.chip.pic = self.slave.to_kvm();
        [master, slave]
    }

    fn push_fields(&self, mut out: Fields<'_>) {
        self.master.push_fields(out.sub("master"));
        self.slave.push_fields(out.sub("slave"));
    }
}

fn pic_of(chip: &kvm_irqchip) -> kvm_pic_state {
    // SAFETY: every member of the `kvm_irqchip` union (`dummy`, `pic`,
    // `ioapic`) is plain integer data with no invalid bit patterns, and the
    // union is at least as large as `kvm_pic_state`, so reading it as a PIC
    // is defined for any contents; the caller checked the chip id.
    unsafe { chip.chip.pic }
}

fn ioapic_of(chip: &kvm_irqchip) -> kvm_ioapic_state {
    // SAFETY: as in `pic_of`: plain integer data in a union large enough
    // for `kvm_ioapic_state`; the caller checked the chip id.
    unsafe { chip.chip.ioapic }
}

/// One 64-bit IOAPIC redirection table entry, kept raw; the accessors
/// decode it per the 82093AA datasheet, section 3.2.4 (the layout of
/// `union kvm_ioapic_redirect_entry`, arch/x86/kvm/ioapic.h).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RedirEntry(pub u64);

impl RedirEntry {
    fn bits(self, low: u32, len: u32) -> u64 {
        (self.0 >> low) & ((1u64 << len) - 1)
    }

    /// Bits 7:0, the interrupt vector.
    pub fn vector(self) -> u64 {
        self.bits(0, 8)
    }

    /// Bits 10:8: 0 fixed, 1 lowest priority, 2 SMI, 4 NMI, 5 INIT, 7 ExtINT.
    pub fn delivery_mode(self) -> u64 {
        self.bits(8, 3)
    }

    /// Bit 11: 0 physical, 1 logical destination.
    pub fn dest_mode(self) -> u64 {
        self.bits(11, 1)
    }

    /// Bit 12 (read-only): a delivery is pending.
    pub fn delivery_status(self) -> u64 {
        self.bits(12, 1)
    }

    /// Bit 13: 0 active high, 1 active low.
    pub fn polarity(self) -> u64 {
        self.bits(13, 1)
    }

    /// Bit 14 (read-only): a level-triggered interrupt awaits its EOI.
    pub fn remote_irr(self) -> u64 {
        self.bits(14, 1)
    }

    /// Bit 15: 0 edge, 1 level.
    pub fn trig_mode(self) -> u64 {
        self.bits(15, 1)
    }

    /// Bit 16: the pin is masked.
    pub fn mask(self) -> u64 {
        self.bits(16, 1)
    }

    /// Bits 55:17, reserved (kept so that no bit escapes the comparison).
    pub fn reserved(self) -> u64 {
        self.bits(17, 39)
    }

    /// Bits 63:56, the destination (APIC id, or logical set).
    pub fn dest_id(self) -> u64 {
        self.bits(56, 8)
    }

    fn push_fields(self, mut out: Fields<'_>) {
        let decoded: [(&str, u64); 10] = [
            ("vector", self.vector()),
            ("delivery_mode", self.delivery_mode()),
            ("dest_mode", self.dest_mode()),
            ("delivery_status", self.delivery_status()),
            ("polarity", self.polarity()),
            ("remote_irr", self.remote_irr()),
            ("trig_mode", self.trig_mode()),
            ("mask", self.mask()),
            ("reserved", self.reserved()),
            ("dest_id", self.dest_id()),
        ];
        for (name, value) in decoded {
            out.push(name, value, Rule::Exact);
        }
    }
}

/// The IOAPIC (`KVM_GET_IRQCHIP` chip 2, `struct kvm_ioapic_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoapicState {
    /// Guest-physical base of the MMIO window (0xfec00000).
    pub base_address: u64,
    /// IOREGSEL: the register the next IOWIN access reaches.
    pub ioregsel: u32,
    /// IOAPIC id (register 0, bits 27:24, kept shifted down).
    pub id: u32,
    /// Pins with a request latched (KVM's software IRR).
    pub irr: u32,
    /// The redirection table, one entry per pin.
    pub redir: [RedirEntry; IOAPIC_PINS],
}

impl Default for IoapicState {
    fn default() -> Self {
        Self::from(&kvm_ioapic_state::default())
    }
}

impl From<&kvm_ioapic_state> for IoapicState {
    fn from(s: &kvm_ioapic_state) -> Self {
        Self {
            base_address: s.base_address,
            ioregsel: s.ioregsel,
            id: s.id,
            irr: s.irr,
            redir: std::array::from_fn(|pin| {
                // SAFETY: `bits` and `fields` of the entry union are both 8
                // bytes of plain integer data, so any contents read as a u64.
                RedirEntry(unsafe { s.redirtbl[pin].bits })
            }),
        }
    }
}

impl IoapicState {
    /// The IOAPIC from `KVM_GET_IRQCHIP` of chip 2.
    pub fn from_irqchip(chip: &kvm_irqchip) -> Result<Self, DeviceStateError> {
        check_chip(chip, KVM_IRQCHIP_IOAPIC)?;
        Ok(Self::from(&ioapic_of(chip)))
    }

    /// The UAPI struct.
    pub fn to_kvm(&self) -> kvm_ioapic_state {
        let mut s = kvm_ioapic_state {
            base_address: self.base_address,
            ioregsel: self.ioregsel,
            id: self.id,
            irr: self.irr,
            ..Default::default()
        };
        for (slot, entry) in s.redirtbl.iter_mut().zip(self.redir) {
            slot.bits = entry.0;
        }
        s
    }

    /// Chip 2 for `KVM_SET_IRQCHIP`.
    pub fn to_irqchip(&self) -> kvm_irqchip {
        let mut chip = kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        chip.chip.ioapic = self.to_kvm();
        chip
    }

    fn push_fields(&self, mut out: Fields<'_>) {
        out.push("id", self.id, Rule::Exact);
        out.push("base_address", self.base_address, Rule::Exact);
        out.push("ioregsel", self.ioregsel, Rule::Exact);
        out.push("irr", self.irr, Rule::Exact);
        for (pin, entry) in self.redir.iter().enumerate() {
            entry.push_fields(out.sub(&format!("redir[{pin}]")));
        }
    }
}

const LATCHED_COUNT: Rule = Rule::WhileSet {
    guard: "count_latched",
    reason: "the count the guest latched (counter latch command): the value depends on \
             when the latch was taken, and the guest reads it only while count_latched \
             is set; otherwise it is a leftover of an earlier latch",
};

const LATCHED_STATUS: Rule = Rule::WhileSet {
    guard: "status_latched",
    reason: "the read-back status byte, whose OUT bit follows the counting; the guest \
             reads it only while status_latched is set",
};

const COUNT_LOAD_TIME: Rule = Rule::Monotonic {
    reason: "host ktime (ns) when the count was last loaded: KVM reloads it on \
             KVM_SET_PIT2 and the guest on reprogramming, both later",
};

/// One 8254 channel as KVM keeps it (`struct kvm_pit_channel_state`,
/// arch/x86/kvm/i8254.c).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitChannel {
    /// The reload value the guest programmed (0 means 0x10000).
    pub count: u32,
    /// The count captured by the last counter latch command.
    pub latched_count: u16,
    /// Nonzero while a latched count waits to be read (its RW mode).
    pub count_latched: u8,
    /// Nonzero while a read-back status byte waits to be read.
    pub status_latched: u8,
    /// The latched read-back status byte.
    pub status: u8,
    /// Which byte the next count read returns (RW state machine).
    pub read_state: u8,
    /// Which byte the next count write sets (RW state machine).
    pub write_state: u8,
    /// The low byte of a 16-bit count write in progress.
    pub write_latch: u8,
    /// Access mode: 1 LSB, 2 MSB, 3 LSB then MSB.
    pub rw_mode: u8,
    /// Counter mode 0-5 (0xff: never programmed).
    pub mode: u8,
    /// BCD counting.
    pub bcd: u8,
    /// The gate input (channel 2: port 0x61 bit 0).
    pub gate: u8,
    /// Host ktime (ns) when the count was loaded.
    pub count_load_time: i64,
}

impl From<&kvm_pit_channel_state> for PitChannel {
    fn from(c: &kvm_pit_channel_state) -> Self {
        Self {
            count: c.count,
            latched_count: c.latched_count,
            count_latched: c.count_latched,
            status_latched: c.status_latched,
            status: c.status,
            read_state: c.read_state,
            write_state: c.write_state,
            write_latch: c.write_latch,
            rw_mode: c.rw_mode,
            mode: c.mode,
            bcd: c.bcd,
            gate: c.gate,
            count_load_time: c.count_load_time,
        }
    }
}

impl PitChannel {
    /// The UAPI struct.
    pub fn to_kvm(&self) -> kvm_pit_channel_state {
        kvm_pit_channel_state {
            count: self.count,
            latched_count: self.latched_count,
            count_latched: self.count_latched,
            status_latched: self.status_latched,
            status: self.status,
            read_state: self.read_state,
            write_state: self.write_state,
            write_latch: self.write_latch,
            rw_mode: self.rw_mode,
            mode: self.mode,
            bcd: self.bcd,
            gate: self.gate,
            count_load_time: self.count_load_time,
        }
    }

    fn push_fields(&self, mut out: Fields<'_>) {
        out.push("count", self.count, Rule::Exact);
        out.push("latched_count", self.latched_count, LATCHED_COUNT);
        out.push("count_latched", self.count_latched, Rule::Exact);
        out.push("status_latched", self.status_latched, Rule::Exact);
        out.push("status", self.status, LATCHED_STATUS);
        out.push("read_state", self.read_state, Rule::Exact);
        out.push("write_state", self.write_state, Rule::Exact);
        out.push("write_latch", self.write_latch, Rule::Exact);
        out.push("rw_mode", self.rw_mode, Rule::Exact);
        out.push("mode", self.mode, Rule::Exact);
        out.push("bcd", self.bcd, Rule::Exact);
        out.push("gate", self.gate, Rule::Exact);
        // ktime_get() is nonnegative, so the two's-complement bits order
        // the same as the signed value.
        out.push(
            "count_load_time",
            self.count_load_time as u64,
            COUNT_LOAD_TIME,
        );
    }
}

/// The PIT (`KVM_GET_PIT2`, `struct kvm_pit_state2`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitState {
    /// Channels 0 (IRQ 0), 1 (legacy refresh) and 2 (PC speaker).
    pub channels: [PitChannel; PIT_CHANNELS],
    /// `KVM_PIT_FLAGS_HPET_LEGACY` (1), `KVM_PIT_FLAGS_SPEAKER_DATA_ON` (2).
    pub flags: u32,
}

impl From<&kvm_pit_state2> for PitState {
    fn from(s: &kvm_pit_state2) -> Self {
        Self {
            channels: std::array::from_fn(|i| PitChannel::from(&s.channels[i])),
            flags: s.flags,
        }
    }
}

impl PitState {
    /// The UAPI struct, for `KVM_SET_PIT2`.
    pub fn to_kvm(&self) -> kvm_pit_state2 {
        kvm_pit_state2 {
            channels: std::array::from_fn(|i| self.channels[i].to_kvm()),
            flags: self.flags,
            ..Default::default()
        }
    }

    fn push_fields(&self, mut out: Fields<'_>) {
        for (i, channel) in self.channels.iter().enumerate() {
            channel.push_fields(out.sub(&format!("channel{i}")));
        }
        out.push("flags", self.flags, Rule::Exact);
    }
}

/// kvmclock, the VM's paravirtual clock (`KVM_GET_CLOCK`,
/// `struct kvm_clock_data`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockState {
    /// Guest clock in ns.
    pub clock: u64,
    /// `KVM_CLOCK_TSC_STABLE` (2), `KVM_CLOCK_REALTIME` (4),
    /// `KVM_CLOCK_HOST_TSC` (8).
    pub flags: u32,
    /// Host CLOCK_REALTIME (ns) at the capture, with `KVM_CLOCK_REALTIME`.
    pub realtime: u64,
    /// Host TSC at the capture, with `KVM_CLOCK_HOST_TSC`.
    pub host_tsc: u64,
}

impl From<&kvm_clock_data> for ClockState {
    fn from(c: &kvm_clock_data) -> Self {
        Self {
            clock: c.clock,
            flags: c.flags,
            realtime: c.realtime,
            host_tsc: c.host_tsc,
        }
    }
}

impl ClockState {
    /// The UAPI struct, for `KVM_SET_CLOCK` (which honours only
    /// `KVM_CLOCK_REALTIME` among the flags: with it, KVM adds the host
    /// time elapsed since `realtime`).
    pub fn to_kvm(&self) -> kvm_clock_data {
        kvm_clock_data {
            clock: self.clock,
            flags: self.flags,
            realtime: self.realtime,
            host_tsc: self.host_tsc,
            ..Default::default()
        }
    }

    fn push_fields(&self, mut out: Fields<'_>) {
        out.push(
            "clock",
            self.clock,
            Rule::Monotonic {
                reason: "guest ns since the VM started; advances with host time, \
                         also while no vCPU runs",
            },
        );
        out.push(
            "flags",
            self.flags,
            Rule::Ignored {
                reason: "whether KVM runs the clock from the host's master clock \
                         (TSC_STABLE) and fills realtime and host_tsc: host \
                         timekeeping, 0 until the first KVM_SET_CLOCK or vCPU entry, \
                         not guest state",
            },
        );
        out.push(
            "realtime",
            self.realtime,
            Rule::Ignored {
                reason: "the host's CLOCK_REALTIME at the capture: host time, not guest state",
            },
        );
        out.push(
            "host_tsc",
            self.host_tsc,
            Rule::Ignored {
                reason: "the host's TSC at the capture: host time, not guest state",
            },
        );
    }
}

pub use crate::state::DeviceState;

impl DeviceState {
    /// The device's name, the first segment of its field names.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Uart(_) => "uart",
            Self::Pic(_) => "pic",
            Self::Ioapic(_) => "ioapic",
            Self::Pit(_) => "pit",
            Self::Kvmclock(_) => "kvmclock",
            Self::VirtioBlk(_) => crate::virtio::NAME,
        }
    }

    /// Every field of the state, in the device's own order.
    pub fn fields(&self) -> Vec<Field> {
        if let Self::VirtioBlk(s) = self {
            return s.fields();
        }
        let mut out = Vec::new();
        let sink = Fields::new(self.name(), &mut out);
        match self {
            // The UART is compared register by register, its receive FIFO
            // as bytes: `oracle::compare_uart`.
            Self::Uart(_) => {}
            Self::Pic(s) => s.push_fields(sink),
            Self::Ioapic(s) => s.push_fields(sink),
            Self::Pit(s) => s.push_fields(sink),
            Self::Kvmclock(s) => s.push_fields(sink),
            // Flattened by its own module (`virtio_blk.*`).
            Self::VirtioBlk(_) => {}
        }
        out
    }
}

/// The fields that differ between two states of a device, in field order.
pub fn compare(expected: &DeviceState, actual: &DeviceState) -> Vec<FieldDiff> {
    compare_fields(&expected.fields(), &actual.fields())
}

/// The fields that differ between two captures of the whole machine's
/// devices; a device captured on one side only shows as absent fields.
pub fn compare_all(expected: &[DeviceState], actual: &[DeviceState]) -> Vec<FieldDiff> {
    let flatten = |states: &[DeviceState]| states.iter().flat_map(DeviceState::fields).collect();
    let (e, a): (Vec<Field>, Vec<Field>) = (flatten(expected), flatten(actual));
    compare_fields(&e, &a)
}

/// The fields that differ between two flattened states, each judged by the
/// expected side's rule: the expected fields in order, then the fields
/// only the actual side has.
pub fn compare_fields(expected: &[Field], actual: &[Field]) -> Vec<FieldDiff> {
    let by_name = |fields: &[Field]| -> HashMap<String, u64> {
        fields.iter().map(|f| (f.name.clone(), f.value)).collect()
    };
    let (exp, act) = (by_name(expected), by_name(actual));
    let mut diffs = Vec::new();
    for f in expected {
        let a = act.get(&f.name).copied();
        if differs(f, a, &exp) {
            diffs.push(FieldDiff {
                name: f.name.clone(),
                expected: Some(f.value),
                actual: a,
                rule: f.rule,
            });
        }
    }
    for f in actual {
        if !exp.contains_key(&f.name) && !matches!(f.rule, Rule::Ignored { .. }) {
            diffs.push(FieldDiff {
                name: f.name.clone(),
                expected: None,
                actual: Some(f.value),
                rule: f.rule,
            });
        }
    }
    diffs
}

fn differs(expected: &Field, actual: Option<u64>, expected_values: &HashMap<String, u64>) -> bool {
    let e = expected.value;
    match (expected.rule, actual) {
        (Rule::Ignored { .. }, _) => false,
        (_, None) => true,
        (Rule::Exact, Some(a)) => a != e,
        (Rule::Monotonic { .. }, Some(a)) => a < e,
        (Rule::WhileSet { guard, .. }, Some(a)) => {
            let guard_name = match expected.name.rsplit_once('.') {
                Some((parent, _)) => format!("{parent}.{guard}"),
                None => guard.to_string(),
            };
            // Without its guard the field is compared exactly.
            let armed = expected_values.get(&guard_name).is_none_or(|g| *g != 0);
            armed && a != e
        }
    }
}

/// The relaxed fields of the states, with their reasons: the device part
/// of the report's allowlist.
pub fn allowlist(states: &[DeviceState]) -> Vec<(String, &'static str)> {
    states
        .iter()
        .flat_map(DeviceState::fields)
        .filter_map(|f| f.rule.reason().map(|r| (f.name, r)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_ioapic_state__bindgen_ty_1;

    fn pic() -> PicState {
        let chip = |base: u8| PicChip {
            last_irr: 0x01,
            irr: 0x02,
            imr: 0xff,
            isr: 0x04,
            priority_add: 3,
            irq_base: base,
            read_reg_select: 1,
            poll: 0,
            special_mask: 0,
            init_state: 0,
            auto_eoi: 0,
            rotate_on_auto_eoi: 0,
            special_fully_nested_mode: 0,
            init4: 1,
            elcr: 0x0c,
            elcr_mask: 0xf8,
        };
        PicState {
            master: chip(0x20),
            slave: chip(0x28),
        }
    }

    fn ioapic() -> IoapicState {
        IoapicState {
            base_address: 0xfec0_0000,
            ioregsel: 0x10,
            id: 0,
            irr: 0,
            redir: std::array::from_fn(|pin| RedirEntry(0x1_0000 | (0x30 + pin as u64))),
        }
    }

    fn pit() -> PitState {
        let channel = |gate: u8| PitChannel {
            count: 0x10000,
            mode: 0xff,
            gate,
            count_load_time: 1_000_000,
            ..Default::default()
        };
        PitState {
            channels: [channel(1), channel(1), channel(0)],
            flags: 0,
        }
    }

    fn clock(ns: u64) -> ClockState {
        ClockState {
            clock: ns,
            flags: 2,
            realtime: 0,
            host_tsc: 0,
        }
    }

    fn machine() -> Vec<DeviceState> {
        vec![
            DeviceState::Pic(pic()),
            DeviceState::Ioapic(ioapic()),
            DeviceState::Pit(pit()),
            DeviceState::Kvmclock(clock(5_000_000)),
        ]
    }

    fn names(diffs: &[FieldDiff]) -> Vec<&str> {
        diffs.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn a_state_compared_with_itself_has_no_diffs() {
        for s in machine() {
            assert_eq!(compare(&s, &s), [], "{}", s.name());
        }
        assert_eq!(compare_all(&machine(), &machine()), []);
    }

    #[test]
    fn a_changed_master_imr_names_exactly_that_field() {
        let mut changed = pic();
        changed.master.imr = 0xfb;
        let diffs = compare(&DeviceState::Pic(pic()), &DeviceState::Pic(changed));
        assert_eq!(
            diffs,
            [FieldDiff {
                name: "pic.master.imr".into(),
                expected: Some(0xff),
                actual: Some(0xfb),
                rule: Rule::Exact,
            }]
        );
        assert_eq!(
            diffs[0].to_string(),
            "pic.master.imr: expected 0xff, found 0xfb"
        );
    }

    #[test]
    fn a_slave_field_is_named_under_slave() {
        let mut changed = pic();
        changed.slave.elcr = 0;
        let diffs = compare(&DeviceState::Pic(pic()), &DeviceState::Pic(changed));
        assert_eq!(names(&diffs), ["pic.slave.elcr"]);
    }

    #[test]
    fn an_unmasked_redirection_entry_names_its_mask() {
        let mut changed = ioapic();
        changed.redir[4].0 &= !(1 << 16);
        let diffs = compare(
            &DeviceState::Ioapic(ioapic()),
            &DeviceState::Ioapic(changed),
        );
        assert_eq!(names(&diffs), ["ioapic.redir[4].mask"]);
        assert_eq!((diffs[0].expected, diffs[0].actual), (Some(1), Some(0)));
    }

    #[test]
    fn a_changed_destination_names_dest_id() {
        let mut changed = ioapic();
        changed.redir[23].0 |= 0x03 << 56;
        let diffs = compare(
            &DeviceState::Ioapic(ioapic()),
            &DeviceState::Ioapic(changed),
        );
        assert_eq!(names(&diffs), ["ioapic.redir[23].dest_id"]);
    }

    #[test]
    fn the_redirection_decoding_matches_the_kvm_bitfields() {
        // Every field set to a distinct nonzero value.
        let raw = 0xa5u64 << 56 // dest_id
            | 1 << 16 // mask
            | 1 << 15 // trig_mode
            | 1 << 14 // remote_irr
            | 1 << 13 // polarity
            | 1 << 12 // delivery_status
            | 1 << 11 // dest_mode
            | 5 << 8 // delivery_mode INIT
            | 0xec; // vector
        let e = RedirEntry(raw);
        let k = kvm_ioapic_state__bindgen_ty_1 { bits: raw };
        // SAFETY: both union members are 8 bytes of plain integer data.
        let f = unsafe { k.fields };
        assert_eq!(e.vector(), u64::from(f.vector));
        assert_eq!(e.delivery_mode(), u64::from(f.delivery_mode()));
        assert_eq!(e.dest_mode(), u64::from(f.dest_mode()));
        assert_eq!(e.delivery_status(), u64::from(f.delivery_status()));
        assert_eq!(e.polarity(), u64::from(f.polarity()));
        assert_eq!(e.remote_irr(), u64::from(f.remote_irr()));
        assert_eq!(e.trig_mode(), u64::from(f.trig_mode()));
        assert_eq!(e.mask(), u64::from(f.mask()));
        assert_eq!(e.dest_id(), u64::from(f.dest_id));
        assert_eq!(
            (
                e.vector(),
                e.delivery_mode(),
                e.mask(),
                e.dest_id(),
                e.reserved()
            ),
            (0xec, 5, 1, 0xa5, 0)
        );
        assert_eq!(RedirEntry(1 << 17 | 1 << 55).reserved(), 1 | 1 << 38);
    }

    #[test]
    fn a_clock_going_back_is_a_diff_and_going_forward_is_not() {
        let before = DeviceState::Kvmclock(clock(5_000_000));
        let later = DeviceState::Kvmclock(clock(7_000_000));
        assert_eq!(compare(&before, &later), []);
        let diffs = compare(&later, &before);
        assert_eq!(names(&diffs), ["kvmclock.clock"]);
        assert!(
            diffs[0].to_string().starts_with(
                "kvmclock.clock: expected at least 0x6acfc0, found 0x4c4b40 (went back;"
            ),
            "{}",
            diffs[0]
        );
    }

    #[test]
    fn host_time_in_the_clock_is_never_compared() {
        let mut other = clock(5_000_000);
        other.flags = 0xe;
        other.realtime = 1;
        other.host_tsc = 2;
        let diffs = compare(
            &DeviceState::Kvmclock(clock(5_000_000)),
            &DeviceState::Kvmclock(other),
        );
        assert_eq!(diffs, []);
    }

    #[test]
    fn a_pit_count_load_time_may_advance_not_go_back_nor_stop() {
        let mut later = pit();
        later.channels[0].count_load_time += 10;
        let (e, l) = (DeviceState::Pit(pit()), DeviceState::Pit(later));
        assert_eq!(compare(&e, &l), []);
        assert_eq!(names(&compare(&l, &e)), ["pit.channel0.count_load_time"]);
        let mut stopped = pit();
        stopped.channels[1].count_load_time = 0;
        assert_eq!(
            names(&compare(&e, &DeviceState::Pit(stopped))),
            ["pit.channel1.count_load_time"]
        );
    }

    #[test]
    fn a_latched_count_is_compared_only_while_latched() {
        let mut stale = pit();
        stale.channels[0].latched_count = 0x1234;
        assert_eq!(
            compare(&DeviceState::Pit(pit()), &DeviceState::Pit(stale)),
            []
        );

        let mut latched = pit();
        latched.channels[0].count_latched = 3;
        latched.channels[0].latched_count = 0x4321;
        let mut lost = latched;
        lost.channels[0].latched_count = 0x1111;
        let diffs = compare(&DeviceState::Pit(latched), &DeviceState::Pit(lost));
        assert_eq!(names(&diffs), ["pit.channel0.latched_count"]);

        // A latch the restore dropped shows on the guard itself.
        let diffs = compare(&DeviceState::Pit(latched), &DeviceState::Pit(pit()));
        assert_eq!(
            names(&diffs),
            ["pit.channel0.latched_count", "pit.channel0.count_latched"]
        );
    }

    #[test]
    fn a_read_back_status_is_compared_only_while_latched() {
        let mut stale = pit();
        stale.channels[2].status = 0x80;
        assert_eq!(
            compare(&DeviceState::Pit(pit()), &DeviceState::Pit(stale)),
            []
        );
        let mut latched = pit();
        latched.channels[2].status_latched = 1;
        latched.channels[2].status = 0x36;
        let mut other = latched;
        other.channels[2].status = 0xb6;
        let diffs = compare(&DeviceState::Pit(latched), &DeviceState::Pit(other));
        assert_eq!(names(&diffs), ["pit.channel2.status"]);
    }

    #[test]
    fn a_device_missing_on_one_side_shows_as_absent_fields() {
        let mut fewer = machine();
        fewer.pop();
        let diffs = compare_all(&machine(), &fewer);
        // The host-time fields are ignored even when absent.
        assert_eq!(names(&diffs), ["kvmclock.clock"]);
        assert_eq!(diffs[0].actual, None);
        let diffs = compare_all(&fewer, &machine());
        assert_eq!(names(&diffs), ["kvmclock.clock"]);
        assert_eq!(diffs[0].expected, None);
        assert_eq!(
            diffs[0].to_string(),
            "kvmclock.clock: expected absent, found 0x4c4b40"
        );
    }

    #[test]
    fn every_field_is_named_once_and_the_names_read_as_documented() {
        let fields: Vec<Field> = machine().iter().flat_map(DeviceState::fields).collect();
        let mut names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names.len(),
            2 * 16 + (4 + IOAPIC_PINS * 10) + (3 * 13 + 1) + 4
        );
        for n in [
            "pic.master.imr",
            "pic.master.irr",
            "pic.master.isr",
            "pic.master.irq_base",
            "pic.master.elcr",
            "pic.slave.elcr_mask",
            "ioapic.id",
            "ioapic.base_address",
            "ioapic.irr",
            "ioapic.ioregsel",
            "ioapic.redir[4].vector",
            "ioapic.redir[4].mask",
            "ioapic.redir[4].delivery_mode",
            "ioapic.redir[4].dest_mode",
            "ioapic.redir[4].trig_mode",
            "ioapic.redir[4].remote_irr",
            "ioapic.redir[4].delivery_status",
            "ioapic.redir[4].polarity",
            "ioapic.redir[4].dest_id",
            "pit.channel0.count",
            "pit.channel0.latched_count",
            "pit.channel0.count_latched",
            "pit.channel0.status_latched",
            "pit.channel0.status",
            "pit.channel0.read_state",
            "pit.channel0.write_state",
            "pit.channel0.write_latch",
            "pit.channel0.rw_mode",
            "pit.channel0.mode",
            "pit.channel0.bcd",
            "pit.channel0.gate",
            "pit.channel2.count_load_time",
            "pit.flags",
            "kvmclock.clock",
            "kvmclock.flags",
        ] {
            assert!(names.contains(&n), "{n} missing");
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), fields.len(), "duplicate field names");
    }

    #[test]
    fn every_relaxed_field_has_a_reason_and_the_rest_are_exact() {
        let relaxed = allowlist(&machine());
        let relaxed_names: Vec<&str> = relaxed.iter().map(|(n, _)| n.as_str()).collect();
        let mut expected = vec![];
        for c in 0..PIT_CHANNELS {
            expected.push(format!("pit.channel{c}.latched_count"));
            expected.push(format!("pit.channel{c}.status"));
            expected.push(format!("pit.channel{c}.count_load_time"));
        }
        expected.extend(
            [
                "kvmclock.clock",
                "kvmclock.flags",
                "kvmclock.realtime",
                "kvmclock.host_tsc",
            ]
            .map(String::from),
        );
        assert_eq!(relaxed_names, expected);
        assert!(relaxed.iter().all(|(_, r)| !r.is_empty()));
    }

    #[test]
    fn the_states_survive_json() {
        let states = machine();
        let json = serde_json::to_string(&states).expect("serialize");
        assert!(json.contains(r#""device":"ioapic""#), "{json}");
        let back: Vec<DeviceState> = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, states);
    }

    #[test]
    fn the_states_survive_the_uapi_structs() {
        let p = pic();
        let [m, s] = p.to_irqchips();
        assert_eq!(PicState::from_irqchips(&m, &s), Ok(p));
        let io = ioapic();
        assert_eq!(IoapicState::from_irqchip(&io.to_irqchip()), Ok(io));
        let mut t = pit();
        t.flags = 2;
        t.channels[0].latched_count = 7;
        assert_eq!(PitState::from(&t.to_kvm()), t);
        let c = ClockState {
            clock: 1,
            flags: 0xe,
            realtime: 3,
            host_tsc: 4,
        };
        assert_eq!(ClockState::from(&c.to_kvm()), c);
    }

    #[test]
    fn a_chip_of_the_wrong_kind_is_refused() {
        let [m, s] = pic().to_irqchips();
        let err = PicState::from_irqchips(&s, &m).expect_err("swapped chips");
        assert_eq!(
            err,
            DeviceStateError::WrongChip {
                expected: 0,
                found: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "KVM irqchip 1 (PIC slave) where irqchip 0 (PIC master) was expected"
        );
        assert!(IoapicState::from_irqchip(&m).is_err());
    }
}
