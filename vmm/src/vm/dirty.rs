//! The dirty logs: which guest pages were written since the last harvest.
//!
//! KVM's dirty log records the guest's writes: every page of a logged slot
//! is write-protected, and the first write to it faults and sets its bit.
//! vm-memory's bitmap records the VMM's own writes. A harvest must
//! write-protect the reported pages again, or the next write to them goes
//! unseen; on this software KVM backend each such fault costs ~2.4 µs of
//! guest time (measured: a kexec swap of 4,096 pages took 1.6 ms of guest
//! time with the log never harvested, 12 ms with it harvested between
//! jumps, which made dirty logging the largest cost of a checked cycle).
//!
//! With `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` (Linux
//! `Documentation/virt/kvm/api.rst`, `KVM_CLEAR_DIRTY_LOG`) reading the
//! log no longer re-protects anything: the VMM clears, and so
//! write-protects again, the pages it chooses. kjump clears every reported
//! page but those it keeps writable ([`DirtyLog::keep_writable`]: the
//! pages every kexec jump rewrites), and reports those at every harvest,
//! written or not: the oracle reads them every time, so nothing written
//! goes unseen, and the guest writes them without a fault.

use kvm_bindings::{
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, kvm_clear_dirty_log,
    kvm_clear_dirty_log__bindgen_ty_1, kvm_enable_cap,
};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryBackend;
use vm_memory::mmap::MmapRegion;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iowr_nr;

use kjump_core::GuestMem;
use kjump_core::layout::PAGE_SIZE;
use kjump_core::write_log::WriteLog;

use super::{Slot, VmError, kvm_err};

const KVMIO: u32 = 0xAE;
ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);

/// How the VM's dirty logs are harvested (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct DirtyLog {
    /// KVM re-protects only the pages the VMM clears.
    manual: bool,
    /// Per slot, the pages kept writable: (bitmap word, bits), by word.
    keep: Vec<Vec<(usize, u64)>>,
}

impl DirtyLog {
    /// Asks KVM for manual re-protection where it offers it; call before
    /// any memory slot is registered. Without it every harvest re-protects
    /// every reported page, as plain `KVM_GET_DIRTY_LOG` does.
    pub(crate) fn new(vm: &VmFd) -> Self {
        let offered =
            vm.check_extension_raw(libc::c_ulong::from(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2));
        let manual = offered > 0 && {
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                ..Default::default()
            };
            // Not KVM_DIRTY_LOG_INITIALLY_SET: the first harvest must name
            // exactly the pages written since the slot was registered.
            cap.args[0] = u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
            vm.enable_cap(&cap).is_ok()
        };
        log::debug!("KVM dirty log: manual re-protection {manual}");
        Self {
            manual,
            keep: Vec::new(),
        }
    }

    /// From the next harvest on, the pages `pages` (guest-physical page
    /// addresses; any outside RAM are ignored) are not write-protected
    /// again once written, and every harvest names them. Replaces the
    /// previous set: pages that leave it are re-protected at the next
    /// harvest (they are named there once more).
    pub(crate) fn keep_writable(&mut self, slots: &[Slot], pages: &[u64]) {
        self.keep = slots
            .iter()
            .map(|s| {
                let mut words = std::collections::BTreeMap::<usize, u64>::new();
                for p in pages
                    .iter()
                    .filter(|&&p| (s.base..s.base + s.size).contains(&p))
                {
                    let page = ((p - s.base) / PAGE_SIZE) as usize;
                    *words.entry(page / 64).or_default() |= 1 << (page % 64);
                }
                words.into_iter().collect()
            })
            .collect();
    }

    /// Guest-physical addresses of the pages written since the last harvest
    /// (KVM's log and vm-memory's) and of the pages kept writable, sorted;
    /// every other page named is write-protected again.
    pub(crate) fn harvest(
        &mut self,
        vm: &VmFd,
        slots: &[Slot],
        mem: &GuestMem,
    ) -> Result<Vec<u64>, VmError> {
        let mut pages = Vec::new();
        for (i, (slot, region)) in slots.iter().zip(mem.iter()).enumerate() {
            let mut kvm = vm
                .get_dirty_log(slot.slot, slot.size as usize)
                .map_err(kvm_err("read KVM's dirty log"))?;
            let written = nonzero_words(&kvm);
            let mmap: &MmapRegion<WriteLog> = region;
            let vmm = mmap.bitmap().take();
            let keep = self.keep.get(i).map_or(&[][..], Vec::as_slice);
            push_pages(&mut pages, slot.base, &[&written, &vmm, keep]);
            if self.manual {
                // Re-protect what was written, but the pages kept writable.
                for &(w, k) in keep {
                    if let Some(bits) = kvm.get_mut(w) {
                        *bits &= !k;
                    }
                }
                clear(vm, slot, &kvm)?;
            }
        }
        Ok(pages)
    }
}

/// The words of a dense bitmap that have bits set, as (word, bits).
fn nonzero_words(bitmap: &[u64]) -> Vec<(usize, u64)> {
    bitmap
        .iter()
        .enumerate()
        .filter(|(_, w)| **w != 0)
        .map(|(i, w)| (i, *w))
        .collect()
}

/// Appends the page addresses of the bits set in any of `maps` (sparse
/// bitmaps of one slot from `base`: (word, bits), by word), in order.
fn push_pages(pages: &mut Vec<u64>, base: u64, maps: &[&[(usize, u64)]]) {
    let mut at = vec![0usize; maps.len()];
    loop {
        // The lowest word any map has next, and its bits in every map.
        let Some(word) = maps
            .iter()
            .zip(&at)
            .filter_map(|(m, &i)| m.get(i).map(|&(w, _)| w))
            .min()
        else {
            return;
        };
        let mut bits = 0;
        for (m, i) in maps.iter().zip(at.iter_mut()) {
            if let Some(&(w, b)) = m.get(*i)
                && w == word
            {
                bits |= b;
                *i += 1;
            }
        }
        while bits != 0 {
            let bit = u64::from(bits.trailing_zeros());
            pages.push(base + (word as u64 * 64 + bit) * PAGE_SIZE);
            bits &= bits - 1;
        }
    }
}

/// The span of `bitmap` with bits set, as (first word, words): KVM wants
/// the first page a multiple of 64, and the count too unless the span ends
/// the slot.
fn span(bitmap: &[u64]) -> Option<(usize, usize)> {
    let first = bitmap.iter().position(|&w| w != 0)?;
    let last = bitmap.iter().rposition(|&w| w != 0)?;
    Some((first, last + 1 - first))
}

/// Clears (and write-protects) the pages of `bitmap` in `slot`'s dirty log.
fn clear(vm: &VmFd, slot: &Slot, bitmap: &[u64]) -> Result<(), VmError> {
    let Some((first, n)) = span(bitmap) else {
        return Ok(());
    };
    let slot_pages = slot.size / PAGE_SIZE;
    let first_page = first as u64 * 64;
    let num_pages = (n as u64 * 64).min(slot_pages - first_page);
    let mut bits = bitmap[first..first + n].to_vec();
    let arg = kvm_clear_dirty_log {
        slot: slot.slot,
        num_pages: u32::try_from(num_pages).expect("a slot has fewer than 2^32 pages"),
        first_page,
        __bindgen_anon_1: kvm_clear_dirty_log__bindgen_ty_1 {
            dirty_bitmap: bits.as_mut_ptr().cast(),
        },
    };
    clear_dirty_log(vm, &arg).map_err(kvm_err("clear KVM's dirty log"))
}

fn clear_dirty_log(vm: &VmFd, arg: &kvm_clear_dirty_log) -> Result<(), kvm_ioctls::Error> {
    // SAFETY: `vm` is a VM fd; KVM reads `arg` and the bitmap it points to,
    // which holds at least `num_pages` bits and outlives the call (the
    // caller's `bits`); the return value is checked.
    let ret = unsafe { ioctl_with_ref(vm, KVM_CLEAR_DIRTY_LOG(), arg) };
    if ret == 0 {
        Ok(())
    } else {
        Err(kvm_ioctls::Error::last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_become_sorted_page_addresses() {
        let mut p = Vec::new();
        push_pages(
            &mut p,
            0x1_0000_0000,
            &[&[(0, 0b101), (1, 1 << 63)], &[(0, 0b010)], &[(2, 1)]],
        );
        assert_eq!(
            p,
            [
                0x1_0000_0000,
                0x1_0000_1000,
                0x1_0000_2000,
                0x1_0000_0000 + 127 * 0x1000,
                0x1_0000_0000 + 128 * 0x1000
            ]
        );
    }

    #[test]
    fn pages_kept_writable_are_marked_in_their_slot() {
        let slots = [
            Slot {
                slot: 0,
                base: 0,
                size: 0x10_0000,
            },
            Slot {
                slot: 1,
                base: 1 << 32,
                size: 0x8_0000,
            },
        ];
        let mut d = DirtyLog::default();
        d.keep_writable(&slots, &[0x3000, 0x4000, (1 << 32) + 0x41000, 0x20_0000]);
        assert_eq!(d.keep[0], [(0, (1 << 3) | (1 << 4))]);
        assert_eq!(d.keep[1], [(1, 1 << 1)]);
        assert_eq!(nonzero_words(&[0, 5, 0, 1]), [(1, 5), (3, 1)]);
        assert_eq!(span(&[0, 0, 5, 0, 1, 0]), Some((2, 3)));
        assert_eq!(span(&[0, 0]), None);
    }
}
