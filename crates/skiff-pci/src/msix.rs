//! MSI-X: the vector table and pending-bit array a device exposes in a BAR, and the rules
//! for when a vector may fire. A masked vector (per entry, or the whole function) does not
//! interrupt: its pending bit is set and it fires when unmasked, as the spec requires.

use std::sync::{Mutex, MutexGuard};

pub const ENTRY_SIZE: usize = 16;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_MASKED: u32 = 1;

/// Where an MSI goes: the address/data pair the guest programmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// Delivers a device's MSI-X vectors (on KVM: one irqfd and one GSI route per vector).
pub trait MsiRouter: Send + Sync {
    /// Vector `vector` now sends `message`.
    fn set_route(&self, vector: u16, message: MsiMessage);
    /// Raises vector `vector` with the message last routed.
    fn inject(&self, vector: u16);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

impl Default for Entry {
    fn default() -> Self {
        // Vectors come out of reset masked.
        Entry {
            address: 0,
            data: 0,
            control: ENTRY_MASKED,
        }
    }
}

impl Entry {
    fn to_bytes(self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[..8].copy_from_slice(&self.address.to_le_bytes());
        b[8..12].copy_from_slice(&self.data.to_le_bytes());
        b[12..].copy_from_slice(&self.control.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; ENTRY_SIZE]) -> Self {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Entry {
            address: u64::from(word(0)) | u64::from(word(4)) << 32,
            data: word(8),
            control: word(12),
        }
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: self.address,
            data: self.data,
        }
    }
}

/// The MSI-X state of one function, shared by its config space, its BAR and its device
/// back end (which calls [`MsixState::signal`] from its own thread).
pub struct MsixState {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    /// The message each vector was last routed with, to skip redundant route updates.
    routed: Vec<Option<MsiMessage>>,
    enabled: bool,
    function_masked: bool,
    router: std::sync::Arc<dyn MsiRouter>,
}

impl MsixState {
    /// `vectors` is 1 to 2048.
    pub fn new(vectors: u16, router: std::sync::Arc<dyn MsiRouter>) -> Self {
        let n = usize::from(vectors.clamp(1, 2048));
        MsixState {
            entries: vec![Entry::default(); n],
            pending: vec![0; n.div_ceil(64)],
            routed: vec![None; n],
            enabled: false,
            function_masked: false,
            router,
        }
    }

    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Bytes the table takes in its BAR; the PBA takes [`MsixState::pba_size`].
    pub fn table_size(&self) -> u64 {
        (self.entries.len() * ENTRY_SIZE) as u64
    }

    pub fn pba_size(&self) -> u64 {
        (self.pending.len() * 8) as u64
    }

    pub fn message_control(&self) -> u16 {
        let mut control = self.entries.len() as u16 - 1;
        if self.enabled {
            control |= CONTROL_ENABLE;
        }
        if self.function_masked {
            control |= CONTROL_FUNCTION_MASK;
        }
        control
    }

    pub fn set_message_control(&mut self, control: u16) {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        for v in 0..self.entries.len() {
            self.refresh(v);
        }
    }

    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.table_byte(offset + i as u64).unwrap_or(0);
        }
    }

    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let mut touched = Vec::new();
        for (i, byte) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                break;
            };
            let v = (at / ENTRY_SIZE as u64) as usize;
            let Some(entry) = self.entries.get_mut(v) else {
                break;
            };
            let mut bytes = entry.to_bytes();
            bytes[(at % ENTRY_SIZE as u64) as usize] = *byte;
            *entry = Entry::from_bytes(&bytes);
            if touched.last() != Some(&v) {
                touched.push(v);
            }
        }
        for v in touched {
            self.refresh(v);
        }
    }

    /// The pending-bit array is read-only to the guest.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset as usize + i;
            *byte = self
                .pending
                .get(at / 8)
                .map_or(0, |q| q.to_le_bytes()[at % 8]);
        }
    }

    /// Raises `vector`, or marks it pending while masked. Returns whether it was delivered.
    pub fn signal(&mut self, vector: u16) -> bool {
        let v = usize::from(vector);
        if v >= self.entries.len() || !self.enabled {
            // With MSI-X off the device would use INTx, which Skiff does not offer.
            return false;
        }
        if self.masked(v) {
            self.pending[v / 64] |= 1 << (v % 64);
            return false;
        }
        self.route(v);
        self.router.inject(vector);
        true
    }

    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pending
            .get(v / 64)
            .is_some_and(|q| q & (1 << (v % 64)) != 0)
    }

    /// Back to the power-on state (the device was reset): everything masked, nothing pending.
    pub fn reset(&mut self) {
        self.entries.fill(Entry::default());
        self.pending.fill(0);
        self.enabled = false;
        self.function_masked = false;
    }

    fn masked(&self, v: usize) -> bool {
        self.function_masked || self.entries[v].control & ENTRY_MASKED != 0
    }

    fn table_byte(&self, at: u64) -> Option<u8> {
        let entry = self.entries.get((at / ENTRY_SIZE as u64) as usize)?;
        Some(entry.to_bytes()[(at % ENTRY_SIZE as u64) as usize])
    }

    /// After a change to vector `v` or the function: route it if it can fire, and deliver
    /// what was held back while it was masked.
    fn refresh(&mut self, v: usize) {
        if !self.enabled || self.masked(v) {
            return;
        }
        self.route(v);
        if self.pending[v / 64] & (1 << (v % 64)) != 0 {
            self.pending[v / 64] &= !(1 << (v % 64));
            self.router.inject(v as u16);
        }
    }

    fn route(&mut self, v: usize) {
        let message = self.entries[v].message();
        if self.routed[v] != Some(message) {
            self.router.set_route(v as u16, message);
            self.routed[v] = Some(message);
        }
    }
}

/// Locks a mutex, recovering from poisoning: one panicked thread must not stop interrupts.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Default)]
    pub(crate) struct Recorder {
        pub routes: Mutex<Vec<(u16, MsiMessage)>>,
        pub injected: Mutex<Vec<u16>>,
    }

    impl MsiRouter for Recorder {
        fn set_route(&self, vector: u16, message: MsiMessage) {
            lock(&self.routes).push((vector, message));
        }
        fn inject(&self, vector: u16) {
            lock(&self.injected).push(vector);
        }
    }

    fn program(state: &mut MsixState, v: u64, address: u64, data: u32, masked: bool) {
        let base = v * ENTRY_SIZE as u64;
        state.table_write(base, &(address as u32).to_le_bytes());
        state.table_write(base + 4, &((address >> 32) as u32).to_le_bytes());
        state.table_write(base + 8, &data.to_le_bytes());
        state.table_write(base + 12, &u32::from(masked).to_le_bytes());
    }

    #[test]
    fn table_reads_back_and_starts_masked() {
        let state = MsixState::new(3, Arc::new(Recorder::default()));
        assert_eq!(state.table_size(), 48);
        assert_eq!(state.pba_size(), 8);
        let mut control = [0u8; 4];
        state.table_read(16 + 12, &mut control);
        assert_eq!(u32::from_le_bytes(control), 1);
        let mut outside = [0xaa; 4];
        state.table_read(48, &mut outside);
        assert_eq!(outside, [0; 4]);
    }

    #[test]
    fn delivers_only_when_enabled_and_unmasked() {
        let rec = Arc::new(Recorder::default());
        let mut state = MsixState::new(2, rec.clone());
        assert!(!state.signal(0), "MSI-X disabled");
        program(&mut state, 0, 0xfee0_0000, 0x41, false);
        assert!(lock(&rec.routes).is_empty(), "no route while disabled");
        state.set_message_control(CONTROL_ENABLE);
        assert_eq!(
            *lock(&rec.routes),
            vec![(
                0,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x41
                }
            )]
        );
        assert!(state.signal(0));
        assert!(!state.signal(1), "vector 1 is still masked");
        assert!(state.is_pending(1));
        assert!(!state.signal(7), "no such vector");
        assert_eq!(*lock(&rec.injected), vec![0]);
    }

    #[test]
    fn pending_vectors_fire_on_unmask_and_pba_shows_them() {
        let rec = Arc::new(Recorder::default());
        let mut state = MsixState::new(2, rec.clone());
        state.set_message_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        program(&mut state, 1, 0xfee0_1000, 0x42, false);
        assert!(!state.signal(1));
        let mut pba = [0u8; 8];
        state.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        // PBA writes do not exist: the guest cannot clear a pending bit by itself.
        state.set_message_control(CONTROL_ENABLE);
        assert_eq!(*lock(&rec.injected), vec![1]);
        assert!(!state.is_pending(1));
        // Masking the entry again holds the next signal back.
        state.table_write(16 + 12, &1u32.to_le_bytes());
        assert!(!state.signal(1));
        state.table_write(16 + 12, &0u32.to_le_bytes());
        assert_eq!(*lock(&rec.injected), vec![1, 1]);
    }

    #[test]
    fn reprogramming_a_live_vector_updates_its_route_once() {
        let rec = Arc::new(Recorder::default());
        let mut state = MsixState::new(1, rec.clone());
        state.set_message_control(CONTROL_ENABLE);
        program(&mut state, 0, 0xfee0_0000, 0x30, false);
        let n = lock(&rec.routes).len();
        state.table_write(12, &0u32.to_le_bytes()); // same message: no new route
        assert_eq!(lock(&rec.routes).len(), n);
        state.table_write(8, &0x31u32.to_le_bytes());
        assert_eq!(
            lock(&rec.routes).last().copied(),
            Some((
                0,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x31
                }
            ))
        );
        // A 64-bit access covering address low and high works like two dword accesses.
        state.table_write(0, &0x0000_0001_fee0_2000u64.to_le_bytes());
        let mut back = [0u8; 8];
        state.table_read(0, &mut back);
        assert_eq!(u64::from_le_bytes(back), 0x0000_0001_fee0_2000);
    }
}
