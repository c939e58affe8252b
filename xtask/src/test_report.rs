//! Reads libtest's output as it streams by: which tests failed, whether a failed
//! test's captured output shows a guest killed by a triple fault (what the emulated
//! host's nested virtualization now and then does; docs/testing.md), and how long each
//! test took.

use std::time::{Duration, Instant};

/// What a Skiff VMM prints when its guest died of a triple fault.
const TRIPLE_FAULT: &str = "guest crashed: triple fault";
/// What a test prints, past libtest's capture, when it retries a step the emulated host
/// broke (`skiff_e2e::retry`).
const RETRY: &str = "SKIFF-E2E-RETRY:";
/// What a test prints, past libtest's capture, as it panics (`skiff_e2e::retry`): its
/// name, then the message's first lines, the later ones indented.
const PANIC: &str = "SKIFF-E2E-PANIC:";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedTest {
    pub name: String,
    /// Its captured output shows a guest that died of a triple fault.
    pub triple_fault: bool,
}

#[derive(Debug)]
pub struct TestReport {
    /// Each test's wall-clock time, in the order they ended: the time since the previous
    /// result line (the suite runs one test at a time), the first counted from the start.
    times: Vec<(String, Duration)>,
    /// When the previous result line (or the report) came.
    last_result: Instant,
    failed: Vec<FailedTest>,
    /// Tests that passed or were ignored.
    settled: Vec<String>,
    /// The retries tests announced (`SKIFF-E2E-RETRY: TEST: why`), in order.
    retries: Vec<String>,
    /// The test whose captured output (`---- NAME stdout ----`) is being read.
    section: Option<String>,
    /// Reading a `failures:` list of names (which also catches a FAILED result that
    /// console noise split from its `test NAME ...` line).
    in_list: bool,
    /// The test whose panic message (`SKIFF-E2E-PANIC: NAME: …`) is being read: known
    /// before libtest's failure sections, which a crashed host never prints.
    panicking: Option<String>,
}

impl Default for TestReport {
    fn default() -> Self {
        Self {
            times: Vec::new(),
            last_result: Instant::now(),
            failed: Vec::new(),
            settled: Vec::new(),
            retries: Vec::new(),
            section: None,
            in_list: false,
            panicking: None,
        }
    }
}

impl TestReport {
    pub fn feed(&mut self, line: &str) {
        if let Some(name) = result_line(line) {
            let now = Instant::now();
            self.times
                .push((name.to_owned(), now.duration_since(self.last_result)));
            self.last_result = now;
        }
        if let Some(rest) = line.split_once(PANIC).map(|(_, rest)| rest.trim_start()) {
            // Anywhere in a line: libtest's `test NAME ... ` stands before it.
            if let Some((name, message)) = rest.split_once(": ") {
                self.panicking = Some(name.to_owned());
                let triple_fault = message.contains(TRIPLE_FAULT);
                self.failed_test(name).triple_fault |= triple_fault;
            }
            return;
        }
        if self.panicking.is_some() && !line.starts_with("    ") {
            self.panicking = None;
        }
        if let Some(name) = self.panicking.clone() {
            if line.contains(TRIPLE_FAULT) {
                self.failed_test(&name).triple_fault = true;
            }
        }
        if let Some(retry) = line.split_once(RETRY).map(|(_, rest)| rest.trim()) {
            // Anywhere in a line: console noise may stand before it.
            self.retries.push(retry.to_owned());
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            self.failed_test(name);
        } else if let Some(name) = settled_test(line) {
            self.settled.push(name.to_owned());
        } else if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        {
            self.section = Some(name.to_owned());
            self.in_list = false;
        } else if line == "failures:" {
            self.section = None;
            self.in_list = true;
        } else if line.starts_with("test result:") {
            self.section = None;
            self.in_list = false;
        } else if let Some(name) = self.listed_name(line) {
            self.failed_test(name);
        } else if line.contains(TRIPLE_FAULT) {
            if let Some(name) = self.section.clone() {
                self.failed_test(&name).triple_fault = true;
            }
        }
    }

    fn listed_name<'a>(&self, line: &'a str) -> Option<&'a str> {
        let name = line.strip_prefix("    ")?;
        (self.in_list && !name.is_empty() && !name.contains(char::is_whitespace)).then_some(name)
    }

    fn failed_test(&mut self, name: &str) -> &mut FailedTest {
        let at = match self.failed.iter().position(|t| t.name == name) {
            Some(at) => at,
            None => {
                self.failed.push(FailedTest {
                    name: name.to_owned(),
                    triple_fault: false,
                });
                self.failed.len() - 1
            }
        };
        &mut self.failed[at]
    }

    pub fn failed(&self) -> &[FailedTest] {
        &self.failed
    }

    /// The retries announced so far: `TEST: why` each.
    pub fn retries(&self) -> &[String] {
        &self.retries
    }

    /// Tests whose result was `ok` or `ignored`.
    pub fn settled(&self) -> &[String] {
        &self.settled
    }

    /// How long each test that ended took, in the order they ended.
    pub fn times(&self) -> &[(String, Duration)] {
        &self.times
    }
}

/// The name in any `test NAME ... RESULT` line (one test's end).
fn result_line(line: &str) -> Option<&str> {
    let (name, result) = line.strip_prefix("test ")?.split_once(" ... ")?;
    let ended = result == "ok" || result == "FAILED" || result.starts_with("ignored");
    (ended && !name.contains(char::is_whitespace)).then_some(name)
}

/// The name in `test NAME ... ok` or `test NAME ... ignored[, reason]`.
fn settled_test(line: &str) -> Option<&str> {
    let (name, result) = line.strip_prefix("test ")?.split_once(" ... ")?;
    let settled = result == "ok" || result == "ignored" || result.starts_with("ignored, ");
    (settled && !name.contains(char::is_whitespace)).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lines: &str) -> Vec<FailedTest> {
        let mut report = TestReport::default();
        for line in lines.lines() {
            report.feed(line);
        }
        report.failed().to_vec()
    }

    #[test]
    fn a_panic_line_names_a_triple_fault_before_the_failure_sections() {
        let failed = report(
            "test a ... SKIFF-E2E-PANIC: a: VM 9's socket: gone\n\
             \x20   ----- VMM stderr -----\n\
             \x20   skiff: guest crashed: triple fault on vCPU 0\n\
             FAILED\n\
             test b ... SKIFF-E2E-PANIC: b: assertion failed at x.rs:1\n\
             FAILED\n\
             [ 1045.5] BUG: TASK stack guard page was hit",
        );
        assert_eq!(
            failed,
            [
                FailedTest {
                    name: "a".into(),
                    triple_fault: true
                },
                FailedTest {
                    name: "b".into(),
                    triple_fault: false
                },
            ]
        );
    }

    #[test]
    fn times_each_test_that_ends() {
        let mut report = TestReport::default();
        for line in "running 3 tests\n\
                     test a ... ok\n\
                     test b ... ignored, slow\n\
                     test c ... FAILED\n\
                     test d ... [ 1.0] noise"
            .lines()
        {
            report.feed(line);
        }
        let names: Vec<&str> = report.times().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn counts_the_retries_tests_announce() {
        let mut report = TestReport::default();
        for line in "test a ... ok\n\
                     [ 12.0] x SKIFF-E2E-RETRY: vmm::boots: the guest died; booting it once more\n\
                     SKIFF-E2E-RETRY: memory::ksm: again\n\
                     test vmm::boots ... ok"
            .lines()
        {
            report.feed(line);
        }
        assert_eq!(
            report.retries(),
            [
                "vmm::boots: the guest died; booting it once more",
                "memory::ksm: again"
            ]
        );
        assert!(report.failed().is_empty());
    }

    #[test]
    fn finds_failed_tests_and_the_triple_faults_in_their_output() {
        let failed = report(
            "test vmm::boots ... ok\n\
             test memory_manager::idle_tax ... FAILED\n\
             test net::ping ... [ 812.5] random: crng reseeded\n\
             FAILED\n\
             test vmm::ignored_one ... ignored, slow\n\
             \n\
             failures:\n\
             \n\
             ---- memory_manager::idle_tax stdout ----\n\
             skiff: info: busy: Failed: exit status 4 (VM crashed); VMM said: skiff: guest crashed: triple fault on vCPU 0\n\
             ---- net::ping stdout ----\n\
             assertion failed: replies == 3\n\
             \n\
             failures:\n\
             \x20   memory_manager::idle_tax\n\
             \x20   net::ping\n\
             \n\
             test result: FAILED. 1 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out",
        );
        assert_eq!(
            failed,
            [
                FailedTest {
                    name: "memory_manager::idle_tax".into(),
                    triple_fault: true
                },
                FailedTest {
                    name: "net::ping".into(),
                    triple_fault: false
                },
            ]
        );
    }

    #[test]
    fn passed_and_ignored_tests_are_settled() {
        let mut report = TestReport::default();
        for line in [
            "test vmm::boots ... ok",
            "test vmm::slow ... ignored, a benchmark",
            "test vmm::other ... ignored",
            "test vmm::bad ... FAILED",
            "test vmm::noisy ... [ 1.0] kernel says",
            "test result: ok. 1 passed",
        ] {
            report.feed(line);
        }
        assert_eq!(report.settled(), ["vmm::boots", "vmm::slow", "vmm::other"]);
    }

    #[test]
    fn a_triple_fault_outside_a_failed_tests_output_counts_for_none() {
        let failed = report(
            "skiff: guest crashed: triple fault on vCPU 1\n\
             test vmm::boots ... FAILED\n\
             failures:\n\
             ---- vmm::boots stdout ----\n\
             timed out\n\
             failures:\n\
             skiff: guest crashed: triple fault on vCPU 0",
        );
        assert_eq!(
            failed,
            [FailedTest {
                name: "vmm::boots".into(),
                triple_fault: false
            }]
        );
    }
}
