//! A tiny simulated host for the policy: guests whose working sets and page caches change
//! over time, balloons that move at a finite rate, hypervisor reclaim, pausing, and the
//! manager loop applying a plan every period. Sizes are bytes; one step is one period.
//!
//! The guest model: a guest's RAM holds its working set (active) and page cache (idle); free
//! guest memory is not resident (free page reporting returns it). A guest grows towards its
//! working set and then fills free memory with cache, as far as its size (max − balloon) and
//! the host's free memory allow. Inflating the balloon takes free memory first, then cache,
//! then working set (the guest swaps); hypervisor reclaim pages out cache first (the coldest
//! pages), then working set.

use skiff_mem_policy::{
    Action, BalloonInput, FreeState, HostInput, MemoryPolicy, PolicyConfig, VmInput,
    WorkingSetEstimator, WorkingSetParams,
};

pub const MIB: u64 = 1 << 20;

/// How far a balloon moves in one period.
const BALLOON_STEP: u64 = 64 * MIB;
/// Pages sampled per period for the working-set estimate.
const SAMPLED: u32 = 100;

pub struct Guest {
    /// The working set the guest wants at a period.
    pub working_set: Box<dyn Fn(u32) -> u64>,
    /// Page cache the guest adds per period while it has room.
    pub cache_growth: u64,
}

pub struct SimVm {
    pub id: String,
    pub min: u64,
    pub max: u64,
    pub shares: u64,
    pub has_balloon: bool,
    guest: Guest,
    ws: u64,
    cache: u64,
    balloon_target: u64,
    balloon_actual: u64,
    paused: bool,
    estimator: WorkingSetEstimator,
    /// Per period: (target, resident, fraction of the wanted working set in RAM).
    pub history: Vec<(u64, u64, f64)>,
    pub times_paused: u32,
}

impl SimVm {
    pub fn new(id: &str, min: u64, max: u64, shares: u64, guest: Guest) -> Self {
        SimVm {
            id: id.into(),
            min,
            max,
            shares,
            has_balloon: true,
            guest,
            ws: 0,
            cache: 0,
            balloon_target: 0,
            balloon_actual: 0,
            paused: false,
            estimator: WorkingSetEstimator::new(WorkingSetParams::default()),
            history: Vec::new(),
            times_paused: 0,
        }
    }

    pub fn resident(&self) -> u64 {
        self.ws + self.cache
    }

    fn size(&self) -> u64 {
        self.max - self.balloon_actual
    }

    /// Shrink the guest to `size` bytes: cache goes first, then working set.
    fn squeeze_to(&mut self, size: u64) {
        let over = self.resident().saturating_sub(size);
        let from_cache = over.min(self.cache);
        self.cache -= from_cache;
        self.ws -= over - from_cache;
    }

    fn move_balloon(&mut self) {
        if self.balloon_actual < self.balloon_target {
            self.balloon_actual += (self.balloon_target - self.balloon_actual).min(BALLOON_STEP);
        } else {
            self.balloon_actual -= (self.balloon_actual - self.balloon_target).min(BALLOON_STEP);
        }
        self.squeeze_to(self.size());
    }

    /// The guest runs one period, taking at most `host_free` new bytes; returns what it took.
    fn run(&mut self, period: u32, host_free: u64) -> u64 {
        if self.paused {
            return 0;
        }
        let wanted = (self.guest.working_set)(period).min(self.size());
        let before = self.resident();
        if self.ws > wanted {
            // a shrinking working set leaves its pages behind as idle cache
            self.cache += self.ws - wanted;
            self.ws = wanted;
        }
        // room for the working set comes from the guest's own cache first
        let grow = wanted - self.ws;
        let from_cache = grow.min(self.cache);
        self.cache -= from_cache;
        self.ws += from_cache;
        let taken = (grow - from_cache).min(host_free);
        self.ws += taken;
        let room = self.size() - self.resident();
        let cache = self.guest.cache_growth.min(room).min(host_free - taken);
        self.cache += cache;
        self.resident() - before
    }

    fn input(&self) -> VmInput {
        VmInput {
            allocated_bytes: self.resident(),
            active_fraction: (self.estimator.periods() > 0).then(|| self.estimator.estimate()),
            balloon: self.has_balloon.then_some(BalloonInput {
                target_bytes: self.balloon_target,
                actual_bytes: self.balloon_actual,
            }),
            guest_free_bytes: Some(self.size() - self.resident()),
            overhead_bytes: OVERHEAD,
            paused_by_policy: self.paused,
            ..VmInput::new(self.id.clone(), self.min, self.max, self.shares)
        }
    }

    fn sample(&mut self) {
        let resident = self.resident();
        let touched = if resident == 0 {
            0
        } else {
            (f64::from(SAMPLED) * self.ws as f64 / resident as f64).round() as u32
        };
        self.estimator.observe(SAMPLED, touched);
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::SetBalloon { bytes } => self.balloon_target = bytes,
            Action::HypervisorReclaim { bytes } => {
                let target = self.resident().saturating_sub(bytes);
                self.squeeze_to(target);
            }
            Action::Pause => {
                self.paused = true;
                self.times_paused += 1;
            }
            Action::Resume => self.paused = false,
        }
    }
}

/// Host memory each VM costs outside guest RAM.
pub const OVERHEAD: u64 = 16 * MIB;

pub struct SimHost {
    pub budget: u64,
    pub vms: Vec<SimVm>,
    pub policy: MemoryPolicy,
    pub states: Vec<FreeState>,
    period: u32,
}

impl SimHost {
    pub fn new(budget: u64, config: PolicyConfig, vms: Vec<SimVm>) -> Self {
        SimHost {
            budget,
            vms,
            policy: MemoryPolicy::new(config).expect("valid config"),
            states: Vec::new(),
            period: 0,
        }
    }

    pub fn used(&self) -> u64 {
        self.vms.iter().map(|vm| vm.resident() + OVERHEAD).sum()
    }

    /// One period: balloons move, guests run, the manager samples, plans and acts. Checks
    /// the invariants the policy promises.
    pub fn step(&mut self) {
        for vm in &mut self.vms {
            vm.move_balloon();
        }
        for i in 0..self.vms.len() {
            let free = self.budget.saturating_sub(self.used());
            self.vms[i].run(self.period, free);
        }
        assert!(self.used() <= self.budget, "host out of memory");
        for vm in &mut self.vms {
            vm.sample();
        }
        let host = HostInput {
            budget_bytes: self.budget,
            free_bytes: self.budget - self.used(),
            swap_free_bytes: u64::MAX,
        };
        let inputs: Vec<VmInput> = self.vms.iter().map(SimVm::input).collect();
        let plan = self.policy.plan(&host, &inputs).expect("plan");
        self.states.push(plan.state);
        for (vm, planned) in self.vms.iter_mut().zip(plan.vms) {
            for action in planned.actions {
                vm.apply(action);
            }
            assert!(
                vm.balloon_target <= vm.max - vm.min,
                "{}: balloon past min",
                vm.id
            );
            let ws_wanted = (vm.guest.working_set)(self.period).max(1);
            vm.history.push((
                planned.target.target_bytes,
                vm.resident(),
                vm.ws as f64 / ws_wanted as f64,
            ));
        }
        self.period += 1;
    }

    pub fn run(&mut self, periods: u32) {
        for _ in 0..periods {
            self.step();
        }
    }
}

/// The mean of the last `n` values of a VM's history field.
pub fn tail_mean(vm: &SimVm, n: usize, field: impl Fn(&(u64, u64, f64)) -> f64) -> f64 {
    let tail = &vm.history[vm.history.len() - n..];
    tail.iter().map(field).sum::<f64>() / n as f64
}
