//! What the outer QEMU says of a silent emulated host's CPUs. Its monitor shares the
//! console (`-nographic`: Ctrl-A c switches), so a stalled host can be asked, without
//! the host's help, where each CPU is (`info registers -a`) and what waits in its local
//! APIC (`info lapic N`). The answer tells a frozen emulator from a busy host: a CPU
//! halted with interrupts enabled while its APIC holds a deliverable vector is an
//! interrupt the emulator never delivered, and nothing in the host can end that.

use std::io::Write;
use std::process::ChildStdin;
use std::time::Duration;

/// One emulated CPU, as the monitor described it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CpuState {
    pub index: usize,
    pub rip: Option<String>,
    pub halted: bool,
    /// RFLAGS.IF.
    pub interrupts_enabled: bool,
    /// Vectors requested in the APIC and not yet taken (IRR).
    pub requested: Vec<u8>,
    /// Vectors being serviced (ISR).
    pub in_service: Vec<u8>,
    /// Processor priority: vectors of a higher class than its upper nibble are deliverable.
    pub priority: Option<u8>,
}

impl CpuState {
    /// Vectors the CPU should have taken: requested, above the processor priority, while
    /// it sits halted with interrupts enabled and nothing in service.
    pub fn undelivered(&self) -> Vec<u8> {
        if !self.halted || !self.interrupts_enabled || !self.in_service.is_empty() {
            return Vec::new();
        }
        let floor = self.priority.unwrap_or(0) & 0xf0;
        self.requested
            .iter()
            .copied()
            .filter(|v| v & 0xf0 > floor)
            .collect()
    }
}

/// Switches the console to the monitor, asks for every CPU's registers and local APIC,
/// and switches back to the serial line.
pub fn ask(stdin: &mut ChildStdin, cpus: usize) -> std::io::Result<()> {
    let mut send = |bytes: &[u8]| -> std::io::Result<()> {
        stdin.write_all(bytes)?;
        stdin.flush()?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    };
    send(b"\x01c")?;
    send(b"info registers -a\n")?;
    for cpu in 0..cpus {
        send(format!("info lapic {cpu}\n").as_bytes())?;
    }
    send(b"\x01c")
}

/// Reads the monitor's answers to [`ask`] out of the console lines.
pub fn parse(lines: &[String]) -> Vec<CpuState> {
    let mut cpus: Vec<CpuState> = Vec::new();
    let mut registers_of: Option<usize> = None;
    let mut apic_of: Option<usize> = None;
    for line in lines {
        let line = line.trim();
        if let Some(n) = line
            .strip_prefix("CPU#")
            .and_then(|n| n.trim().parse().ok())
        {
            registers_of = Some(n);
            apic_of = None;
            continue;
        }
        if let Some(n) = line
            .strip_prefix("dumping local APIC state for CPU")
            .and_then(|n| n.trim().parse().ok())
        {
            apic_of = Some(n);
            registers_of = None;
            continue;
        }
        if let Some(n) = registers_of {
            if line.starts_with("RIP=") {
                let cpu = entry(&mut cpus, n);
                cpu.rip = field(line, "RIP=").map(str::to_owned);
                cpu.halted = field(line, "HLT=") == Some("1");
                cpu.interrupts_enabled = field(line, "RFL=")
                    .and_then(|f| u64::from_str_radix(f, 16).ok())
                    .is_some_and(|flags| flags & (1 << 9) != 0);
            }
        } else if let Some(n) = apic_of {
            let cpu = entry(&mut cpus, n);
            if let Some(rest) = line.strip_prefix("IRR") {
                cpu.requested = vectors(rest);
            } else if let Some(rest) = line.strip_prefix("ISR") {
                cpu.in_service = vectors(rest);
            } else if line.starts_with("APR") {
                cpu.priority = field(line, "PPR ")
                    .and_then(|p| u8::from_str_radix(p.trim_start_matches("0x"), 16).ok());
            }
        }
    }
    cpus.sort_by_key(|c| c.index);
    cpus
}

/// One line per CPU, and a verdict when the emulator lost an interrupt.
pub fn describe(cpus: &[CpuState]) -> Vec<String> {
    let mut out: Vec<String> = cpus
        .iter()
        .map(|c| {
            format!(
                "CPU {}: {} at {}, interrupts {}, APIC requested {:?}, in service {:?}, priority {}",
                c.index,
                if c.halted { "halted" } else { "running" },
                c.rip.as_deref().unwrap_or("?"),
                if c.interrupts_enabled { "enabled" } else { "disabled" },
                c.requested,
                c.in_service,
                c.priority.map_or("?".to_owned(), |p| format!("{p:#04x}"))
            )
        })
        .collect();
    for c in cpus {
        let lost = c.undelivered();
        if !lost.is_empty() {
            out.push(format!(
                "CPU {} sits halted with interrupts enabled while its APIC holds deliverable \
                 vectors {lost:?}: the outer QEMU stopped delivering interrupts to it (an \
                 emulated-host fault; nothing inside the host can wake it)",
                c.index
            ));
        }
    }
    if cpus.is_empty() {
        out.push("the outer QEMU's monitor did not answer".to_owned());
    }
    out
}

fn entry(cpus: &mut Vec<CpuState>, index: usize) -> &mut CpuState {
    let at = match cpus.iter().position(|c| c.index == index) {
        Some(at) => at,
        None => {
            cpus.push(CpuState {
                index,
                ..CpuState::default()
            });
            cpus.len() - 1
        }
    };
    &mut cpus[at]
}

/// The word after `key` in a monitor line (`RIP=ffff... RFL=00000202 ...`).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    line[start..].split_whitespace().next()
}

/// The vector numbers of an `IRR`/`ISR` line (`(none)` is none).
fn vectors(rest: &str) -> Vec<u8> {
    rest.split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The monitor's answers from a frozen host (2026-12-08, QEMU 10.0.2), abridged.
    const FROZEN: &str = "\
(qemu) info registers -a

CPU#0
RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000000 RDX=0000000000000000
RIP=ffffffffb6017a0b RFL=00000202 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1
CR0=80050033 CR2=00007fe660001000 CR3=0000000237dc0000 CR4=00751eb0

CPU#1
RIP=ffffffffb6017a0b RFL=00000202 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1
(qemu) info lapic 0
dumping local APIC state for CPU 0 

LVTT\t 0x000000ec active-hi edge                 one-shot     Fixed  (vec 236)
ISR\t (none)
IRR\t 34 236 251 

APR 0x00 TPR 0x10 DFR 0x0f LDR 0x01 PPR 0x10
(qemu) info lapic 1
dumping local APIC state for CPU 1 

ISR\t (none)
IRR\t (none)

APR 0x01 TPR 0x10 DFR 0x0f LDR 0x02 PPR 0x10
";

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_halted_cpu_with_deliverable_vectors_is_an_emulator_fault() {
        let cpus = parse(&lines(FROZEN));
        assert_eq!(cpus.len(), 2);
        assert!(cpus[0].halted && cpus[0].interrupts_enabled);
        assert_eq!(cpus[0].requested, [34, 236, 251]);
        assert_eq!(cpus[0].priority, Some(0x10));
        assert_eq!(cpus[0].undelivered(), [34, 236, 251]);
        assert!(cpus[1].undelivered().is_empty());
        let said = describe(&cpus);
        assert!(said[2].contains("CPU 0 sits halted"), "{said:?}");
        assert_eq!(said.len(), 3);
    }

    #[test]
    fn a_masked_or_busy_cpu_is_not_called_frozen() {
        let masked = FROZEN.replace(
            "RFL=00000202 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1\nCR0",
            "RFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1\nCR0",
        );
        assert!(parse(&lines(&masked))[0].undelivered().is_empty());
        let running = FROZEN.replacen("HLT=1", "HLT=0", 1);
        assert!(parse(&lines(&running))[0].undelivered().is_empty());
        let low = FROZEN.replace(
            "PPR 0x10\n(qemu) info lapic 1",
            "PPR 0xf0\n(qemu) info lapic 1",
        );
        assert!(parse(&lines(&low))[0].undelivered().is_empty());
        assert_eq!(describe(&[]), ["the outer QEMU's monitor did not answer"]);
    }
}
