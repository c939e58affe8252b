//! Deterministic simulations of the manager loop (see `sim`): the paper's idle-tax
//! experiment and other workloads, run period by period.

mod sim;

use sim::{tail_mean, Guest, SimHost, SimVm, MIB};
use skiff_mem_policy::{FreeState, PolicyConfig};

fn config(tax_rate: f64) -> PolicyConfig {
    PolicyConfig {
        tax_rate,
        ..PolicyConfig::default()
    }
}

/// The paper's two-VM experiment: equal shares, a budget below the sum of the maxes. A fills
/// its page cache and idles; from period 20 B's working set grows past its share, to 700 MiB.
fn idle_tax_run(tax_rate: f64) -> SimHost {
    let idle = SimVm::new(
        "a",
        64 * MIB,
        768 * MIB,
        1000,
        Guest {
            working_set: Box::new(|_| 32 * MIB),
            cache_growth: 48 * MIB,
        },
    );
    let busy = SimVm::new(
        "b",
        64 * MIB,
        768 * MIB,
        1000,
        Guest {
            working_set: Box::new(|t| {
                (32 * MIB + u64::from(t.saturating_sub(20)) * 16 * MIB).min(700 * MIB)
            }),
            cache_growth: 0,
        },
    );
    let mut host = SimHost::new(1024 * MIB, config(tax_rate), vec![idle, busy]);
    host.run(150);
    host
}

#[test]
fn without_the_tax_idle_and_busy_end_near_half_each() {
    let host = idle_tax_run(0.0);
    let a = tail_mean(&host.vms[0], 20, |h| h.1 as f64);
    let b = tail_mean(&host.vms[1], 20, |h| h.1 as f64);
    let share_a = a / (a + b);
    assert!(
        (0.45..=0.55).contains(&share_a),
        "A holds {:.0} %",
        share_a * 100.0
    );
}

#[test]
fn with_the_tax_the_busy_vm_ends_with_most() {
    let taxed = idle_tax_run(0.75);
    let a = tail_mean(&taxed.vms[0], 20, |h| h.1 as f64);
    let b = tail_mean(&taxed.vms[1], 20, |h| h.1 as f64);
    assert!(b / (a + b) >= 0.7, "B holds {:.0} %", b / (a + b) * 100.0);
    // the idle VM keeps its working set
    assert!(a >= 32.0 * MIB as f64, "A holds {:.0} MiB", a / MIB as f64);
    // and B gets more of its working set into memory than without the tax
    let untaxed = idle_tax_run(0.0);
    let hit_taxed = tail_mean(&taxed.vms[1], 20, |h| h.2);
    let hit_untaxed = tail_mean(&untaxed.vms[1], 20, |h| h.2);
    assert!(
        hit_taxed > hit_untaxed + 0.2,
        "B's working set in RAM: {hit_taxed:.2} with the tax, {hit_untaxed:.2} without"
    );
    // the run settles: the last periods are calm and nobody is paused
    assert!(taxed.states[130..].iter().all(|&s| s == FreeState::High));
}

/// The overcommit run: six 512 MiB VMs (min 128 MiB) in a 2 GiB budget, each booting,
/// touching a little and filling its page cache. Everyone stays within the budget (the
/// simulation asserts it every period), above its min, and the host calms down.
#[test]
fn six_idle_vms_share_two_gib() {
    let vms = (0..6)
        .map(|i| {
            SimVm::new(
                &format!("vm{i}"),
                128 * MIB,
                512 * MIB,
                1000,
                Guest {
                    working_set: Box::new(|_| 24 * MIB),
                    cache_growth: 32 * MIB,
                },
            )
        })
        .collect();
    let mut host = SimHost::new(2048 * MIB, config(0.75), vms);
    host.run(120);
    for vm in &host.vms {
        let (target, resident, hit) = *vm.history.last().expect("ran");
        assert!(target >= 128 * MIB, "{}", vm.id);
        assert!(
            resident <= target + 64 * MIB,
            "{} holds {resident}, target {target}",
            vm.id
        );
        assert_eq!(hit, 1.0, "{}: working set in RAM", vm.id);
    }
    // equal VMs end with equal targets (their estimates differ by a hair: the first ones
    // to boot filled their caches first)
    let targets: Vec<u64> = host
        .vms
        .iter()
        .map(|vm| vm.history.last().expect("ran").0)
        .collect();
    let spread = targets.iter().max().expect("vms") - targets.iter().min().expect("vms");
    assert!(spread <= MIB, "{targets:?}");
    assert_eq!(host.states.last(), Some(&FreeState::High));
}

/// Activity moves from one VM to the other: memory follows, but only after the VM that
/// turned idle has stayed idle a while (the slow average).
#[test]
fn memory_follows_activity_with_a_delay_for_the_idle_turned() {
    let first = SimVm::new(
        "first",
        64 * MIB,
        768 * MIB,
        1000,
        Guest {
            working_set: Box::new(|t| if t < 60 { 600 * MIB } else { 32 * MIB }),
            cache_growth: 0,
        },
    );
    let second = SimVm::new(
        "second",
        64 * MIB,
        768 * MIB,
        1000,
        Guest {
            working_set: Box::new(|t| if t < 60 { 32 * MIB } else { 600 * MIB }),
            cache_growth: 16 * MIB,
        },
    );
    let mut host = SimHost::new(1024 * MIB, config(0.75), vec![first, second]);
    host.run(60);
    let before = host.vms[0].history[59].0;
    host.run(3);
    // three periods after turning idle `first` still keeps most of its target
    let shortly_after = host.vms[0].history[62].0;
    assert!(
        shortly_after as f64 >= before as f64 * 0.8,
        "{} → {} MiB",
        before / MIB,
        shortly_after / MIB
    );
    host.run(100);
    let (first_end, second_end) = (host.vms[0].history[162].1, host.vms[1].history[162].1);
    assert!(
        second_end > 2 * first_end,
        "first {first_end}, second {second_end}"
    );
    assert!(
        host.vms[1].history[162].2 > 0.95,
        "second's working set is in RAM"
    );
}

/// A VM without a balloon that grabs memory faster than anyone can react drives the host to
/// the low state: it is paged out by the hypervisor and paused until under target, then
/// resumed.
#[test]
fn a_surge_without_a_balloon_is_paused_and_paged_out() {
    let mut hog = SimVm::new(
        "hog",
        64 * MIB,
        1024 * MIB,
        1000,
        Guest {
            working_set: Box::new(|t| if t < 10 { 32 * MIB } else { 1024 * MIB }),
            cache_growth: 0,
        },
    );
    hog.has_balloon = false;
    let quiet = SimVm::new(
        "quiet",
        256 * MIB,
        512 * MIB,
        1000,
        Guest {
            working_set: Box::new(|_| 300 * MIB),
            cache_growth: 0,
        },
    );
    let mut host = SimHost::new(1024 * MIB, config(0.75), vec![hog, quiet]);
    host.run(60);
    assert!(host.states.contains(&FreeState::Low), "{:?}", host.states);
    assert!(host.vms[0].times_paused > 0);
    assert_eq!(
        host.vms[1].times_paused, 0,
        "the VM under its target runs on"
    );
    // the quiet VM keeps its working set throughout
    assert!(host.vms[1].history[20..].iter().all(|h| h.2 == 1.0));
    assert!(
        host.vms[0].history.last().expect("ran").1
            <= host.vms[0].history.last().expect("ran").0 + 64 * MIB
    );
}
