//! Progress on stderr: a bar when stderr is a terminal (indicatif), a plain
//! line every few seconds otherwise (logs, CI). Never on stdout, which
//! carries results.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is written.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    unit: &'static str,
    last_line: Mutex<Instant>,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: u64, unit: &'static str) -> Self {
        let label = label.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {human_pos}/{human_len} {msg} ({per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label.clone());
            bar.set_message(unit);
            bar
        });
        Self { bar, label, total, unit, last_line: Mutex::new(Instant::now()) }
    }

    pub fn set(&self, position: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(position),
            None => {
                let mut last = self.last_line.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    eprintln!("{}: {position}/{} {}", self.label, self.total, self.unit);
                }
            }
        }
    }

    /// A result line on stdout, without tearing the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
