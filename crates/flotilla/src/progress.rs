//! The live display of `flotilla dev --demo` and `flotilla watch`: progress bars (indicatif)
//! when stdout is a terminal and the output is a table, plain lines otherwise. Scripts and
//! tests run without a terminal and get exactly the plain lines.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::Format;

/// True when progress should be drawn as bars: a table on a terminal.
pub fn live(format: Format) -> bool {
    format == Format::Table && std::io::stdout().is_terminal()
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>24.bold} [{bar:30.cyan/blue}] {pos:>5}/{len:<5} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn line_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>24.bold} {wide_msg}").unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// Bars that redraw in place: one per tracked item (a task set), and info lines under them.
pub struct Bars {
    multi: MultiProgress,
    bars: Vec<ProgressBar>,
    lines: Vec<ProgressBar>,
}

impl Bars {
    /// `items`: (label, total) per bar; `lines`: labels of the info lines.
    pub fn new(items: &[(String, u64)], lines: &[&str]) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout_with_hz(4));
        let bars = items
            .iter()
            .map(|(label, total)| {
                let b = multi.add(ProgressBar::new(*total).with_style(bar_style()).with_prefix(label.clone()));
                b.enable_steady_tick(Duration::from_millis(250));
                b
            })
            .collect();
        let lines =
            lines.iter().map(|l| multi.add(ProgressBar::new_spinner().with_style(line_style()).with_prefix(l.to_string()))).collect();
        Bars { multi, bars, lines }
    }

    /// Sets bar `i` to `done` of `total` with a message.
    pub fn set(&self, i: usize, done: u64, total: u64, message: String) {
        if let Some(b) = self.bars.get(i) {
            b.set_length(total.max(1));
            b.set_position(done.min(total));
            b.set_message(message);
        }
    }

    pub fn line(&self, i: usize, message: String) {
        if let Some(l) = self.lines.get(i) {
            l.set_message(message);
        }
    }

    /// Prints a line above the bars (they are redrawn below it).
    pub fn println(&self, text: &str) {
        let _ = self.multi.println(text);
    }

    /// Leaves the bars as they are drawn last and stops redrawing.
    pub fn finish(&self) {
        for b in self.bars.iter().chain(&self.lines) {
            b.finish();
        }
        // The last drawn line has no newline of its own: what follows starts below it.
        println!();
    }
}
