//! The restart policy as a pure function: what to do when a VMM process ended.

use std::time::Duration;

use skiff_api::RestartPolicy;

use crate::model::{Desired, ExitReason};

/// The first restart comes quickly (a VM killed by accident is back within a second); each
/// failure in a row doubles the wait, up to a minute, so a VM that cannot boot does not
/// keep a host busy. Reboots count as well: the first is immediate, then 1 s, 2 s, 4 s, …,
/// so a guest that resets as it boots is restarted at most 6 times in any minute.
pub const FIRST_DELAY: Duration = Duration::from_millis(500);
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run this long counts as healthy: the next failure starts again from `FIRST_DELAY`.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterExit {
    /// The VM is down as it should be: stopped on request, or powered off by its guest.
    Stopped,
    /// Start it again after this delay.
    Restart(Duration),
    /// Down, with a failure, and not to be started again.
    Failed,
}

/// `failures_in_a_row` counts earlier failures and reboots without a healthy run in between.
pub fn after_exit(
    policy: RestartPolicy,
    desired: Desired,
    exit: &ExitReason,
    failures_in_a_row: u32,
) -> AfterExit {
    if desired == Desired::Stopped {
        return AfterExit::Stopped;
    }
    if exit.is_reboot() {
        return AfterExit::Restart(match failures_in_a_row {
            0 => Duration::ZERO,
            n => backoff(n),
        });
    }
    if !exit.is_failure() {
        return AfterExit::Stopped;
    }
    match policy {
        RestartPolicy::Never => AfterExit::Failed,
        RestartPolicy::OnFailure => AfterExit::Restart(backoff(failures_in_a_row)),
    }
}

/// FIRST_DELAY × 2^n, at most MAX_DELAY.
pub fn backoff(failures_in_a_row: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures_in_a_row.min(16))
        .unwrap_or(u32::MAX);
    FIRST_DELAY.saturating_mul(factor).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: Desired = Desired::Running;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(7), MAX_DELAY);
        assert_eq!(backoff(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn failures_follow_the_policy() {
        let killed = ExitReason::Signal(libc::SIGKILL);
        for failure in [
            ExitReason::Code(1),
            ExitReason::Code(3),
            ExitReason::Code(4),
            killed,
            ExitReason::Unknown,
        ] {
            assert_eq!(
                after_exit(RestartPolicy::OnFailure, RUN, &failure, 2),
                AfterExit::Restart(Duration::from_secs(2)),
                "{failure}"
            );
            assert_eq!(
                after_exit(RestartPolicy::Never, RUN, &failure, 0),
                AfterExit::Failed
            );
        }
    }

    /// A guest that resets as it boots: restarts at 0, 1, 3, 7, 15, 31, 63 s (its boots
    /// taking no time): never more than 6 in a minute.
    #[test]
    fn a_reboot_loop_restarts_at_most_six_times_a_minute() {
        let mut at = Duration::ZERO;
        let mut restarts = Vec::new();
        for n in 0..12 {
            let AfterExit::Restart(delay) =
                after_exit(RestartPolicy::Never, RUN, &ExitReason::Code(5), n)
            else {
                panic!("a reboot restarts");
            };
            at += delay;
            restarts.push(at);
        }
        for (i, start) in restarts.iter().enumerate() {
            let within_a_minute = restarts[i..]
                .iter()
                .take_while(|t| **t < *start + Duration::from_secs(60))
                .count();
            assert!(within_a_minute <= 6, "{restarts:?}");
        }
    }

    #[test]
    fn clean_ends_reboots_and_requested_stops() {
        for policy in [RestartPolicy::Never, RestartPolicy::OnFailure] {
            assert_eq!(
                after_exit(policy, RUN, &ExitReason::Code(0), 0),
                AfterExit::Stopped
            );
            assert_eq!(
                after_exit(policy, RUN, &ExitReason::Code(5), 0),
                AfterExit::Restart(Duration::ZERO),
                "a guest reboot restarts at once"
            );
            assert_eq!(
                after_exit(policy, RUN, &ExitReason::Code(5), 4),
                AfterExit::Restart(Duration::from_secs(8)),
                "the fifth quick reboot in a row waits"
            );
            for exit in [
                ExitReason::Code(5),
                ExitReason::Signal(9),
                ExitReason::Code(0),
            ] {
                assert_eq!(
                    after_exit(policy, Desired::Stopped, &exit, 0),
                    AfterExit::Stopped,
                    "a VM being stopped stays stopped"
                );
            }
        }
    }
}
