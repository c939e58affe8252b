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
    /// The host finished booting and starts the command.
    Up,
    /// The command exited with this status.
    Exit(i32),
}

/// Shows console lines, hides the markers, and recognises them.
pub struct Console {
    up: String,
    marker: String,
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
            marker: format!("{marker} status="),
            stream,
            summary: None,
            held: Vec::new(),
            report: TestReport::default(),
            out: std::io::stdout(),
        }
    }

    /// Shows a line unless it is a marker.
    pub fn feed(&mut self, line: String) -> Event {
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
}
