//! Follows a VM's serial log as QEMU writes it: splits it into lines stamped with the
//! time they were seen, tells boots apart, and notes the first login prompt and the first
//! "finished" status of each boot, so boot timings do not depend on when callers look.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::contract::status::{parse_status_line, Status};

const POLL: Duration = Duration::from_millis(200);
/// The first line the kernel prints; seeing it twice in one boot means the guest rebooted.
const KERNEL_BANNER: &str = "Linux version ";

/// One line of the serial log.
#[derive(Debug, Clone)]
pub struct SerialLine {
    pub at: Instant,
    /// Index into [`SerialState::boots`].
    pub boot: usize,
    pub text: String,
}

/// One power-on (or reboot) of the guest.
#[derive(Debug, Clone)]
pub struct BootRecord {
    pub power_on: Instant,
    /// Index of this boot's first line in [`SerialState::lines`].
    pub first_line: usize,
    pub kernel_seen: bool,
    pub login_prompt: Option<Instant>,
    pub finished: Option<Instant>,
}

impl BootRecord {
    fn new(power_on: Instant, first_line: usize) -> Self {
        BootRecord {
            power_on,
            first_line,
            kernel_seen: false,
            login_prompt: None,
            finished: None,
        }
    }
}

/// Everything seen on the serial console so far.
#[derive(Debug)]
pub struct SerialState {
    pub lines: Vec<SerialLine>,
    /// The unterminated tail (a getty prints `host login: ` with no newline).
    pub partial: String,
    pub boots: Vec<BootRecord>,
    /// Set when the log could not be read; the watcher stops.
    pub error: Option<String>,
    /// Where a stopped watcher left the file: the bytes read, and those of an unfinished
    /// line, so that a resumed one goes on from there.
    followed: u64,
    unfinished: Vec<u8>,
}

impl SerialState {
    pub(crate) fn new(power_on: Instant) -> Self {
        SerialState {
            lines: Vec::new(),
            partial: String::new(),
            boots: vec![BootRecord::new(power_on, 0)],
            error: None,
            followed: 0,
            unfinished: Vec::new(),
        }
    }

    pub fn current_boot(&self) -> usize {
        self.boots.len() - 1
    }

    /// Starts a new boot record now (the caller is resetting or rebooting the guest).
    pub(crate) fn begin_boot(&mut self, at: Instant) {
        let first_line = self.lines.len();
        self.boots.push(BootRecord::new(at, first_line));
    }

    /// Status reports of one boot, in order.
    pub fn statuses(&self, boot: usize) -> impl Iterator<Item = Status> + '_ {
        self.lines
            .iter()
            .skip(self.boots[boot].first_line)
            .filter(move |l| l.boot == boot)
            .filter_map(|l| parse_status_line(&l.text))
    }

    /// The last non-empty line, for progress display.
    pub fn last_line(&self) -> Option<&str> {
        let partial = self.partial.trim();
        if !partial.is_empty() {
            return Some(partial);
        }
        self.lines
            .iter()
            .rev()
            .map(|l| l.text.trim())
            .find(|t| !t.is_empty())
    }

    pub(crate) fn push_line(&mut self, text: String, at: Instant) {
        let boot = self.current_boot();
        if text.contains(KERNEL_BANNER) {
            if self.boots[boot].kernel_seen {
                // A reboot nobody announced (e.g. from inside the guest).
                self.begin_boot(at);
            } else {
                self.boots[boot].kernel_seen = true;
            }
        }
        let boot = self.current_boot();
        let record = &mut self.boots[boot];
        if record.login_prompt.is_none() && is_login_prompt(&text) {
            record.login_prompt = Some(at);
        }
        if record.finished.is_none() && parse_status_line(&text).is_some_and(|s| s.is_finished()) {
            record.finished = Some(at);
        }
        self.lines.push(SerialLine { at, boot, text });
    }

    pub(crate) fn set_partial(&mut self, text: String, at: Instant) {
        let boot = self.current_boot();
        if self.boots[boot].login_prompt.is_none() && is_login_prompt(&text) {
            self.boots[boot].login_prompt = Some(at);
        }
        self.partial = text;
    }
}

fn is_login_prompt(text: &str) -> bool {
    text.trim_end().ends_with("login:")
}

/// Console text as a person reads it: escape sequences and carriage returns removed.
pub(crate) fn clean_line(bytes: &[u8]) -> String {
    let raw = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ parameters final-byte; other escapes are two characters.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' | '\0' => {}
            c => out.push(c),
        }
    }
    out
}

/// The background thread following a serial log file.
pub(crate) struct Watcher {
    pub state: Arc<Mutex<SerialState>>,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Watcher {
    pub fn spawn(path: PathBuf, power_on: Instant) -> Watcher {
        let mut watcher = Watcher {
            state: Arc::new(Mutex::new(SerialState::new(power_on))),
            path,
            stop: Arc::new(AtomicBool::new(false)),
            handle: None,
        };
        watcher.resume();
        watcher
    }

    /// Follows the log (again, after [`Watcher::finish`]: QEMU was started again) from
    /// where the last thread stopped.
    pub fn resume(&mut self) {
        if self.handle.is_some() {
            return;
        }
        self.stop.store(false, Ordering::SeqCst);
        let state = Arc::clone(&self.state);
        let stop = Arc::clone(&self.stop);
        let path = self.path.clone();
        self.handle = Some(std::thread::spawn(move || follow(&path, &state, &stop)));
    }

    pub fn lock(&self) -> MutexGuard<'_, SerialState> {
        // A panic in the watcher would be a bug; the data it left is still worth reading.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads what is left in the log, then stops the thread.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.finish();
    }
}

fn follow(path: &PathBuf, state: &Mutex<SerialState>, stop: &AtomicBool) {
    let mut file: Option<File> = None;
    let (mut offset, mut pending) = {
        let mut st = lock(state);
        (st.followed, std::mem::take(&mut st.unfinished))
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Read the last bytes after a stop request, so the final lines are not lost.
        let stopping = stop.load(Ordering::SeqCst);
        if file.is_none() {
            file = File::open(path).ok();
        }
        if let Some(f) = file.as_mut() {
            // QEMU truncates the file when it opens it; start again if it shrank.
            if let Ok(meta) = f.metadata() {
                if meta.len() < offset {
                    offset = 0;
                    pending.clear();
                }
            }
            if let Err(e) = f.seek(SeekFrom::Start(offset)) {
                lock(state).error = Some(format!("seeking in {}: {e}", path.display()));
                return;
            }
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        offset += n as u64;
                        pending.extend_from_slice(&buf[..n]);
                    }
                    Err(e) => {
                        lock(state).error = Some(format!("reading {}: {e}", path.display()));
                        return;
                    }
                }
            }
            let now = Instant::now();
            let mut st = lock(state);
            let mut start = 0;
            while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
                let line = clean_line(&pending[start..start + pos]);
                st.push_line(line, now);
                start += pos + 1;
            }
            pending.drain(..start);
            let partial = clean_line(&pending);
            st.set_partial(partial, now);
        }
        if stopping {
            let mut st = lock(state);
            st.followed = offset;
            st.unfinished = pending;
            return;
        }
        std::thread::sleep(POLL);
    }
}

fn lock(state: &Mutex<SerialState>) -> MutexGuard<'_, SerialState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;

    use super::*;

    #[test]
    fn a_resumed_watcher_goes_on_where_the_last_one_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, "one\ntw").unwrap();
        let mut w = Watcher::spawn(path.clone(), Instant::now());
        w.finish();
        let mut log = fs::OpenOptions::new().append(true).open(&path).unwrap();
        log.write_all(b"o\nthree\n").unwrap();
        w.resume();
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.lock().lines.len() < 3 && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        w.finish();
        let texts: Vec<String> = w.lock().lines.iter().map(|l| l.text.clone()).collect();
        assert_eq!(texts, ["one", "two", "three"]);
    }

    #[test]
    fn strips_escapes_and_carriage_returns() {
        assert_eq!(
            clean_line(b"\x1b[0;32m  OK  \x1b[0m] Started ssh.service\r"),
            "  OK  ] Started ssh.service"
        );
    }

    #[test]
    fn tells_boots_apart_and_times_them() {
        let t0 = Instant::now();
        let mut st = SerialState::new(t0);
        let t1 = t0 + Duration::from_secs(1);
        st.push_line("[    0.000000] Linux version 6.1.0".into(), t1);
        st.set_partial("vm login: ".into(), t1 + Duration::from_secs(5));
        st.push_line(
            r#"imgforge-status: {"state":"ready","boot_id":"a","cloud_init":{"status":"done"}}"#
                .into(),
            t1 + Duration::from_secs(9),
        );
        assert_eq!(st.boots.len(), 1);
        assert_eq!(st.boots[0].login_prompt, Some(t1 + Duration::from_secs(5)));
        assert_eq!(st.boots[0].finished, Some(t1 + Duration::from_secs(9)));
        assert_eq!(st.statuses(0).count(), 1);

        // A second kernel banner is a reboot: its statuses are its own.
        st.push_line(
            "[    0.000000] Linux version 6.1.0".into(),
            t1 + Duration::from_secs(20),
        );
        assert_eq!(st.current_boot(), 1);
        assert_eq!(st.statuses(1).count(), 0);
        assert!(st.boots[1].finished.is_none() && st.boots[1].login_prompt.is_none());
    }

    #[test]
    fn an_announced_reboot_does_not_count_its_kernel_twice() {
        let t0 = Instant::now();
        let mut st = SerialState::new(t0);
        st.push_line("Linux version 6.1.0".into(), t0);
        st.begin_boot(t0);
        st.push_line("Linux version 6.1.0".into(), t0);
        assert_eq!(st.boots.len(), 2);
    }

    #[test]
    fn running_status_is_not_finished() {
        let mut st = SerialState::new(Instant::now());
        st.push_line(
            r#"imgforge-status: {"state":"pending","cloud_init":{"status":"running"}}"#.into(),
            Instant::now(),
        );
        assert!(st.boots[0].finished.is_none());
    }
}
