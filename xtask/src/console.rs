//! The emulated host's console as xtask shows it: live, without the markers the host's
//! init prints, ending where the command ended.

use std::io::Write;

use crate::test_report::TestReport;

/// How the host's console output is shown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Everything up to the exit marker.
    Plain,
    /// As Plain, but the output ends with libtest's summary line: lines that come after
    /// it (kernel noise) are shown before the summary is repeated.
    EndWithTestSummary,
}

/// What a console line meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// An ordinary line (shown).
    Line,
    /// The host's heartbeat (hidden): its init prints one every `HEARTBEAT` seconds while
    /// the command runs, so that a quiet test is not taken for a hung host.
    Alive,
    /// The host finished booting and starts the command.
    Up,
    /// The command exited with this status.
    Exit(i32),
}

/// Shows console lines, hides the markers, and recognises them.
pub struct Console {
    up: String,
    alive: String,
    marker: String,
    /// The start of a line that a heartbeat cut (libtest's `test NAME ... ` before the
    /// result): it is put back before the next line.
    carry: String,
    stream: Stream,
    summary: Option<String>,
    held: Vec<String>,
    report: TestReport,
    out: std::io::Stdout,
}

impl Console {
    pub fn new(marker: &str, stream: Stream) -> Self {
        Self {
            up: format!("{marker} up"),
            alive: format!("{marker} alive"),
            marker: format!("{marker} status="),
            carry: String::new(),
            stream,
            summary: None,
            held: Vec::new(),
            report: TestReport::default(),
            out: std::io::stdout(),
        }
    }

    /// Shows a line unless it is a marker.
    pub fn feed(&mut self, line: String) -> Event {
        let line = if self.carry.is_empty() {
            line
        } else {
            std::mem::take(&mut self.carry) + &line
        };
        if let Some(pos) = line.find(&self.alive) {
            self.carry = line[..pos].to_owned();
            return Event::Alive;
        }
        if line.trim_end().ends_with(&self.up) {
            return Event::Up;
        }
        if let Some(pos) = line.find(&self.marker) {
            let status = line[pos + self.marker.len()..].trim().parse().unwrap_or(1);
            let before = &line[..pos];
            if !before.trim().is_empty() {
                self.show(before.to_owned());
            }
            return Event::Exit(status);
        }
        self.show(line);
        Event::Line
    }

    /// The unfinished line a heartbeat cut, if any.
    pub fn unfinished(&self) -> &str {
        &self.carry
    }

    /// libtest's summary line, once it came.
    pub fn summary(&self) -> Option<&str> {
        self.summary.as_deref()
    }

    /// What the test output so far says (meaningful for `EndWithTestSummary`).
    pub fn report(&self) -> &TestReport {
        &self.report
    }

    pub fn into_report(self) -> TestReport {
        self.report
    }

    fn show(&mut self, line: String) {
        self.report.feed(&line);
        let summary = self.stream == Stream::EndWithTestSummary && line.starts_with("test result:");
        if summary {
            self.summary = Some(line.clone());
            self.held.clear();
        } else if self.summary.is_some() {
            if !line.trim().is_empty() {
                self.held.push(line);
            }
            return;
        }
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    /// Flushes held lines, repeating the summary so it stays the last line.
    pub fn finish(&mut self) {
        if self.held.is_empty() {
            return;
        }
        for line in self.held.drain(..) {
            let _ = writeln!(self.out, "{line}");
        }
        if let Some(summary) = &self.summary {
            let _ = writeln!(self.out, "{summary}");
        }
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_marker() {
        let mut console = Console::new("M-1", Stream::Plain);
        assert_eq!(console.feed("hello".into()), Event::Line);
        assert_eq!(console.feed("M-1 up".into()), Event::Up);
        assert_eq!(console.feed("M-1 status=3".into()), Event::Exit(3));
        assert_eq!(console.feed("noise M-1 status=0".into()), Event::Exit(0));
    }

    #[test]
    fn a_heartbeat_is_hidden_and_the_line_it_cut_mended() {
        let mut console = Console::new("M-1", Stream::EndWithTestSummary);
        assert_eq!(console.feed("M-1 alive".into()), Event::Alive);
        assert_eq!(console.feed("test a::b ... M-1 alive".into()), Event::Alive);
        assert_eq!(console.unfinished(), "test a::b ... ");
        assert_eq!(console.feed("ok".into()), Event::Line);
        assert_eq!(console.unfinished(), "");
        assert_eq!(console.report().settled(), ["a::b"]);
    }
}
