//! Capture and restore of the in-kernel devices (the KVM side of
//! [`kjump_core::devices`]).
//!
//! Needs `KVM_CREATE_IRQCHIP` and `KVM_CREATE_PIT2` done on the VM.

use kvm_bindings::{
    KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    kvm_irqchip,
};
use kvm_ioctls::VmFd;

use crate::faults::DeviceField;

use kjump_core::devices::{ClockState, DeviceState, IoapicState, PicState, PitState};

/// A device state KVM would not give or take.
#[derive(Debug, thiserror::Error)]
pub enum DeviceIoError {
    /// A KVM ioctl on a device failed.
    #[error("{op} failed")]
    Kvm {
        /// The ioctl and its argument, e.g. `KVM_GET_IRQCHIP 2 (IOAPIC)`.
        op: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM answered with another chip than asked for.
    #[error("KVM_GET_IRQCHIP answered with another chip")]
    Chip(#[source] kjump_core::devices::DeviceStateError),
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> DeviceIoError {
    move |source| DeviceIoError::Kvm { op, source }
}

fn get_irqchip(vm: &VmFd, chip_id: u32, op: &'static str) -> Result<kvm_irqchip, DeviceIoError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(kvm(op))?;
    Ok(chip)
}

/// The PIC pair, the IOAPIC, the PIT and kvmclock, in that order.
pub fn capture_devices(vm: &VmFd) -> Result<Vec<DeviceState>, DeviceIoError> {
    let master = get_irqchip(vm, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP 0 (PIC master)")?;
    let slave = get_irqchip(vm, KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP 1 (PIC slave)")?;
    let ioapic = get_irqchip(vm, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP 2 (IOAPIC)")?;
    let pit = vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?;
    let clock = vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?;
    Ok(vec![
        DeviceState::Pic(PicState::from_irqchips(&master, &slave).map_err(DeviceIoError::Chip)?),
        DeviceState::Ioapic(IoapicState::from_irqchip(&ioapic).map_err(DeviceIoError::Chip)?),
        DeviceState::Pit(PitState::from(&pit)),
        DeviceState::Kvmclock(ClockState::from(&clock)),
    ])
}

/// Loads device states into KVM. kvmclock is set to the captured value
/// itself: `KVM_CLOCK_REALTIME` is cleared, or KVM would add the host time
/// elapsed since the capture.
pub fn restore_devices(vm: &VmFd, states: &[DeviceState]) -> Result<(), DeviceIoError> {
    for state in states {
        match state {
            // The UART is the VMM's own device: `Vm::set_serial_state`;
            // so is virtio-blk, which a dump's resume does not restore.
            DeviceState::Uart(_) | DeviceState::VirtioBlk(_) => {}
            DeviceState::Pic(pic) => {
                let [master, slave] = pic.to_irqchips();
                vm.set_irqchip(&master)
                    .map_err(kvm("KVM_SET_IRQCHIP 0 (PIC master)"))?;
                vm.set_irqchip(&slave)
                    .map_err(kvm("KVM_SET_IRQCHIP 1 (PIC slave)"))?;
            }
            DeviceState::Ioapic(ioapic) => vm
                .set_irqchip(&ioapic.to_irqchip())
                .map_err(kvm("KVM_SET_IRQCHIP 2 (IOAPIC)"))?,
            DeviceState::Pit(pit) => vm.set_pit2(&pit.to_kvm()).map_err(kvm("KVM_SET_PIT2"))?,
            DeviceState::Kvmclock(clock) => {
                let mut data = clock.to_kvm();
                data.flags &= !KVM_CLOCK_REALTIME;
                vm.set_clock(&data).map_err(kvm("KVM_SET_CLOCK"))?;
            }
        }
    }
    Ok(())
}

/// Changes one device field behind the guest's back (fault injection);
/// says what it did.
pub fn change_field(vm: &VmFd, field: DeviceField) -> Result<String, DeviceIoError> {
    Ok(match field {
        DeviceField::PicImr => {
            let mut chip =
                get_irqchip(vm, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP 0 (PIC master)")?;
            // SAFETY: chip 0 is a PIC: `pic` is the union member KVM filled.
            let pic = unsafe { &mut chip.chip.pic };
            let old = pic.imr;
            pic.imr ^= 1 << 3;
            let new = pic.imr;
            vm.set_irqchip(&chip)
                .map_err(kvm("KVM_SET_IRQCHIP 0 (PIC master)"))?;
            format!("changed the master 8259's IMR {old:#x} -> {new:#x}")
        }
        DeviceField::IoapicMask => {
            let mut chip = get_irqchip(vm, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP 2 (IOAPIC)")?;
            // SAFETY: chip 2 is the IOAPIC: `ioapic` is the union member KVM
            // filled, and its redirection entries are plain integers.
            let entry = unsafe { &mut chip.chip.ioapic.redirtbl[4].bits };
            let old = *entry;
            *entry ^= 1 << 16;
            let new = *entry;
            vm.set_irqchip(&chip)
                .map_err(kvm("KVM_SET_IRQCHIP 2 (IOAPIC)"))?;
            format!("flipped the mask of IOAPIC pin 4: {old:#x} -> {new:#x}")
        }
        DeviceField::PitCount => {
            let mut pit = vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?;
            let old = pit.channels[0].count;
            pit.channels[0].count = old ^ 0x1234;
            let new = pit.channels[0].count;
            vm.set_pit2(&pit).map_err(kvm("KVM_SET_PIT2"))?;
            format!("changed the PIT's channel 0 count {old:#x} -> {new:#x}")
        }
        DeviceField::ClockBack => {
            let mut clock = vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?;
            let old = clock.clock;
            clock.clock = old.saturating_sub(1_000_000_000);
            clock.flags &= !KVM_CLOCK_REALTIME;
            let new = clock.clock;
            vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
            format!("set the KVM clock back: {old} ns -> {new} ns")
        }
    })
}
