//! One status line per phase on stderr, as kind prints them: a spinner while it runs, then a tick
//! or a cross with a short detail.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub struct StatusLine {
    bar: ProgressBar,
    title: String,
}

impl StatusLine {
    pub fn start(title: &str) -> StatusLine {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template(" {spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner())
                .tick_strings(&["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏", "✓"]),
        );
        bar.set_message(title.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        StatusLine {
            bar,
            title: title.to_string(),
        }
    }

    pub fn finish(self, ok: bool, detail: &str) {
        self.bar.finish_and_clear();
        let mark = if ok { "✓" } else { "✗" };
        if detail.is_empty() {
            eprintln!(" {mark} {}", self.title);
        } else {
            eprintln!(" {mark} {} ({detail})", self.title);
        }
    }
}
