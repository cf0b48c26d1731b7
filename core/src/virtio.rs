//! The virtio-blk device's state as a plain value (the VMM's device model,
//! `vm::virtio_blk`, saves and restores it), flattened into the fields the
//! oracle compares: `virtio_blk.status`, `virtio_blk.driver_features`,
//! `virtio_blk.queue0.desc_table`, `virtio_blk.queue0.next_avail`, ...
//!
//! Everything is compared exactly: a kernel that quiesced the device before
//! its jump must find the very status, negotiated features, queue addresses
//! and ring indices it left (the device has no clock of its own).

use serde::{Deserialize, Serialize};

use crate::devices::{Field, Rule};

/// One virtqueue (the fields of virtio-queue's `QueueState`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtqueueState {
    /// The size the device offers (`QueueNumMax`).
    pub max_size: u16,
    /// The size the driver chose (`QueueNum`).
    pub size: u16,
    /// `QueueReady`.
    pub ready: bool,
    /// Guest-physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest-physical address of the available (driver) ring.
    pub avail_ring: u64,
    /// Guest-physical address of the used (device) ring.
    pub used_ring: u64,
    /// The next available-ring index the device will read.
    pub next_avail: u16,
    /// The next used-ring index the device will write.
    pub next_used: u16,
    /// `VIRTIO_F_RING_EVENT_IDX` negotiated.
    pub event_idx: bool,
}

/// The virtio-mmio transport and block device registers a driver sets or
/// the device keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioBlkState {
    /// Device status (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, ...).
    pub status: u32,
    /// Features the device offers.
    pub device_features: u64,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// `DeviceFeaturesSel`.
    pub device_features_sel: u32,
    /// `DriverFeaturesSel`.
    pub driver_features_sel: u32,
    /// `QueueSel`.
    pub queue_sel: u32,
    /// `InterruptStatus` (bit 0: used buffer notification).
    pub interrupt_status: u32,
    /// `ConfigGeneration`.
    pub config_generation: u32,
    /// Disk size in 512-byte sectors (the config space's `capacity`).
    pub capacity: u64,
    /// The request queue.
    pub queues: Vec<VirtqueueState>,
}

/// The device's name, the first segment of its field names.
pub const NAME: &str = "virtio_blk";

impl VirtioBlkState {
    /// Every field, named under `virtio_blk.`; all compared exactly.
    pub fn fields(&self) -> Vec<Field> {
        let mut out = Vec::new();
        let mut push = |name: String, value: u64| {
            out.push(Field {
                name: format!("{NAME}.{name}"),
                value,
                rule: Rule::Exact,
            });
        };
        push("status".into(), self.status.into());
        push("device_features".into(), self.device_features);
        push("driver_features".into(), self.driver_features);
        push(
            "device_features_sel".into(),
            self.device_features_sel.into(),
        );
        push(
            "driver_features_sel".into(),
            self.driver_features_sel.into(),
        );
        push("queue_sel".into(), self.queue_sel.into());
        push("interrupt_status".into(), self.interrupt_status.into());
        push("config_generation".into(), self.config_generation.into());
        push("capacity".into(), self.capacity);
        for (i, q) in self.queues.iter().enumerate() {
            let mut qp = |n: &str, v: u64| push(format!("queue{i}.{n}"), v);
            qp("max_size", q.max_size.into());
            qp("size", q.size.into());
            qp("ready", q.ready.into());
            qp("desc_table", q.desc_table);
            qp("avail_ring", q.avail_ring);
            qp("used_ring", q.used_ring);
            qp("next_avail", q.next_avail.into());
            qp("next_used", q.next_used.into());
            qp("event_idx", q.event_idx.into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{DeviceState, compare, compare_all};

    fn driven() -> VirtioBlkState {
        VirtioBlkState {
            status: 0xf,
            device_features: (1 << 32) | (1 << 9),
            driver_features: 1 << 32,
            device_features_sel: 1,
            driver_features_sel: 1,
            queue_sel: 0,
            interrupt_status: 0,
            config_generation: 0,
            capacity: 2048,
            queues: vec![VirtqueueState {
                max_size: 64,
                size: 8,
                ready: true,
                desc_table: 0x40_0000,
                avail_ring: 0x40_0080,
                used_ring: 0x40_1000,
                next_avail: 3,
                next_used: 3,
                event_idx: false,
            }],
        }
    }

    #[test]
    fn an_unchanged_device_has_no_diffs() {
        let d = DeviceState::VirtioBlk(driven());
        assert!(compare(&d, &d.clone()).is_empty());
        assert_eq!(d.name(), "virtio_blk");
    }

    #[test]
    fn each_changed_field_is_named_with_both_values() {
        let e = DeviceState::VirtioBlk(driven());
        let mut s = driven();
        s.status = 0;
        s.queues[0].next_avail = 4;
        s.queues[0].desc_table = 0x50_0000;
        let diffs = compare(&e, &DeviceState::VirtioBlk(s));
        let shown: Vec<String> = diffs.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "virtio_blk.status: expected 0xf, found 0x0",
                "virtio_blk.queue0.desc_table: expected 0x400000, found 0x500000",
                "virtio_blk.queue0.next_avail: expected 0x3, found 0x4",
            ]
        );
    }

    #[test]
    fn a_device_missing_after_the_jump_shows_as_absent_fields() {
        let diffs = compare_all(&[DeviceState::VirtioBlk(driven())], &[]);
        assert_eq!(diffs.len(), driven().fields().len());
        assert!(diffs.iter().all(|d| d.actual.is_none()));
    }

    #[test]
    fn the_oracle_names_a_queue_index_a_kernel_did_not_find_as_it_left_it() {
        use crate::oracle::compare_devices;
        use crate::state::{MachineState, UartState, VcpuState};
        let machine = |s: VirtioBlkState| {
            MachineState::with_devices(
                VcpuState::default(),
                UartState::default(),
                vec![DeviceState::VirtioBlk(s)],
            )
        };
        let left = machine(driven());
        assert!(compare_devices(&left, &left.clone()).is_empty());
        let mut s = driven();
        s.queues[0].next_used = 2;
        let found = compare_devices(&left, &machine(s));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].device, "virtio_blk.queue0.next_used");
        // A kernel that finds no device at all.
        let gone = MachineState::new(VcpuState::default(), UartState::default());
        let found = compare_devices(&left, &gone);
        assert_eq!(found[0].device, "virtio_blk");
        assert_eq!(found[0].note.as_deref(), Some("the device is gone"));
    }

    #[test]
    fn the_state_survives_a_serde_round_trip() {
        let d = DeviceState::VirtioBlk(driven());
        let json = serde_json::to_string(&d).expect("serializes");
        assert!(json.contains("\"device\":\"virtio_blk\""), "{json}");
        let back: DeviceState = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, d);
    }
}
