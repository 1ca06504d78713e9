//! Where the demo's progress goes: stamped lines, and on a terminal a status
//! line redrawn in place (a progress bar of the nodes switched and the
//! traffic counters).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use switchyard_lab::traffic::Tally;

use super::report::DemoReport;

/// Where progress goes: live lines, and a redrawn status line on a terminal.
#[derive(Clone)]
pub struct Progress {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    tty: bool,
    started: Instant,
    /// Nodes switched so far and in all, for the terminal's progress bar.
    nodes: Arc<Mutex<(usize, usize)>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").field("tty", &self.tty).finish()
    }
}

impl Progress {
    /// Standard output; a status bar only when it is a terminal.
    pub fn stdout() -> Progress {
        let tty = std::io::stdout().is_terminal();
        Progress::to(Box::new(std::io::stdout()), tty)
    }

    pub fn to(out: Box<dyn Write + Send>, tty: bool) -> Progress {
        Progress {
            out: Arc::new(Mutex::new(out)),
            tty,
            started: Instant::now(),
            nodes: Arc::new(Mutex::new((0, 0))),
        }
    }

    fn write(&self, text: &str) {
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Progress output is best effort: a closed pipe must not stop the demo (or its cleanup).
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// A permanent line, stamped with the time since the start.
    pub fn line(&self, text: &str) {
        let clear = if self.tty { "\r\x1b[2K" } else { "" };
        let secs = self.started.elapsed().as_secs_f64();
        self.write(&format!("{clear}[{secs:6.1}s] {text}\n"));
    }

    /// Record rollout progress: `done` of `total` nodes switched.
    pub fn nodes_switched(&self, done: usize, total: usize) {
        *self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (done, total);
    }

    /// The live traffic status: redrawn in place on a terminal, a line every
    /// `every` seconds otherwise.
    fn status(&self, text: &str, every: u64) {
        if self.tty {
            let secs = self.started.elapsed().as_secs_f64();
            let (done, total) = *self
                .nodes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            const WIDTH: usize = 20;
            let filled = (done * WIDTH).checked_div(total).unwrap_or(0);
            let bar = format!(
                "[{}{}] {done}/{total} nodes",
                "#".repeat(filled),
                "-".repeat(WIDTH - filled)
            );
            self.write(&format!("\r\x1b[2K[{secs:6.1}s] {bar} | {text}"));
        } else if self.started.elapsed().as_secs().is_multiple_of(every) {
            self.line(text);
        }
    }
}

/// Prints the traffic status every second while it lives (a thread, stopped on drop).
pub struct StatusLine {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StatusLine {
    pub fn start(progress: &Progress, tally: Tally) -> StatusLine {
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (progress, done) = (progress.clone(), done.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                while !done.load(Ordering::Relaxed) {
                    std::thread::park_timeout(Duration::from_millis(200));
                    let secs = progress.started.elapsed().as_secs();
                    if secs != last {
                        last = secs;
                        progress.status(&DemoReport::snapshot(&tally.total()).traffic_line(), 5);
                    }
                }
            })
        };
        StatusLine {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
