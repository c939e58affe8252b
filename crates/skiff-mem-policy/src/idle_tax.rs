//! The idle-memory tax: what holding memory costs a VM, and its shares-per-page ratio ρ.
//!
//! The paper's ρ = S / (P·(f + k(1−f))) charges a VM's P pages at 1 each for the active
//! fraction f and at k = 1/(1−τ) each for the idle rest. The allocator also needs ρ at sizes
//! other than the current P0, so the charge is extended on both sides:
//!
//! - below P0 the active bytes A = f·P0 stay put: the balloon makes the guest give up idle
//!   pages first, so reclaimed bytes cost k each until only A is left, then 1 each;
//! - above P0 new memory is assumed to be used as the old is: each byte costs f + k(1−f),
//!   the paper's average. A busy VM that wants to grow is not taxed for it.
//!
//! At P0 this is exactly the paper's ρ. The cost only grows with the size, so ρ only falls:
//! what min-funding revocation needs.

/// The cost curve of one VM: `of(bytes)` is what holding `bytes` costs it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PageCost {
    /// A: the active bytes.
    active: f64,
    /// P0: the current size.
    current: f64,
    /// k: the cost of an idle byte.
    idle_factor: f64,
    /// f + k(1−f): the cost of a byte beyond P0.
    growth_factor: f64,
}

impl PageCost {
    /// `fraction` f of the `current` bytes P0 is active.
    pub(crate) fn new(fraction: f64, current: f64, idle_factor: f64) -> Self {
        let fraction = fraction.clamp(0.0, 1.0);
        let current = current.max(0.0);
        PageCost {
            active: fraction * current,
            current,
            idle_factor,
            growth_factor: fraction + idle_factor * (1.0 - fraction),
        }
    }

    pub(crate) fn active(&self) -> f64 {
        self.active
    }

    /// The sizes where the slope changes: A and P0.
    pub(crate) fn bends(&self) -> [f64; 2] {
        [self.active, self.current]
    }

    pub(crate) fn of(&self, bytes: f64) -> f64 {
        let at_current = self.active + self.idle_factor * (self.current - self.active);
        if bytes <= self.active {
            bytes
        } else if bytes <= self.current {
            self.active + self.idle_factor * (bytes - self.active)
        } else {
            at_current + self.growth_factor * (bytes - self.current)
        }
    }

    /// The inverse of `of`: how many bytes cost `cost`.
    pub(crate) fn bytes_for(&self, cost: f64) -> f64 {
        let at_current = self.of(self.current);
        if cost <= self.active {
            cost
        } else if cost <= at_current {
            self.active + (cost - self.active) / self.idle_factor
        } else {
            self.current + (cost - at_current) / self.growth_factor
        }
    }

    /// ρ at `bytes`, in shares per 4 KiB page as in the paper; `None` for an empty VM (its ρ
    /// is infinite: nothing to take).
    pub(crate) fn rho(&self, shares: u64, bytes: f64) -> Option<f64> {
        let pages = self.of(bytes) / crate::PAGE_SIZE as f64;
        (pages > 0.0).then(|| shares as f64 / pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_papers_formula_at_the_current_size() {
        let page = crate::PAGE_SIZE as f64;
        let (shares, pages, f, tau) = (1000u64, 5000.0, 0.3, 0.75);
        let k = 1.0 / (1.0 - tau);
        let paper = shares as f64 / (pages * (f + k * (1.0 - f)));
        let cost = PageCost::new(f, pages * page, k);
        let rho = cost.rho(shares, pages * page).expect("non-empty");
        assert!((rho - paper).abs() < 1e-12 * paper, "{rho} vs {paper}");
    }

    #[test]
    fn idle_pages_cost_k_growth_the_average_and_the_inverse_undoes_it() {
        // 200 bytes, half of them active, k = 4
        let cost = PageCost::new(0.5, 200.0, 4.0);
        assert_eq!(cost.of(50.0), 50.0);
        assert_eq!(cost.of(150.0), 300.0);
        assert_eq!(cost.of(200.0), 500.0);
        // beyond P0 each byte costs 0.5 + 4·0.5 = 2.5
        assert_eq!(cost.of(300.0), 750.0);
        for bytes in [0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 1e9] {
            assert!((cost.bytes_for(cost.of(bytes)) - bytes).abs() < 1e-6);
        }
        assert_eq!(cost.rho(1, 0.0), None);
        // without a tax every byte costs 1
        let flat = PageCost::new(0.1, 200.0, 1.0);
        assert_eq!(flat.of(123.0), 123.0);
        assert_eq!(flat.of(1234.0), 1234.0);
    }
}
