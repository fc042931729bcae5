//! The live view in a real terminal: tmux runs the real binary against a
//! real workload, and the test reads the screen and presses keys.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{workload, PROBE};

/// A tmux session on a tmux server of its own, killed when dropped: a
/// server shared with the previous test would be exiting for a moment once
/// that test killed its session, and take a session started then with it.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(width: u16, height: u16, command: &str) -> Self {
        static SESSIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let session = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmux = Self { socket: format!("probe-test-{}-{session}", std::process::id()) };
        let output = tmux
            .command()
            .args(["new-session", "-d", "-x", &width.to_string(), "-y", &height.to_string()])
            .arg(command)
            .output()
            .expect("tmux is missing: run the tests with `cargo xtask test`, which installs it");
        assert!(
            output.status.success(),
            "tmux cannot start a session: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        tmux
    }

    /// A tmux command to this session's server.
    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.socket]);
        command
    }

    fn screen(&self) -> String {
        self.capture(&[])
    }

    /// The screen with the lines scrolled off it.
    fn history(&self) -> String {
        self.capture(&["-S", "-"])
    }

    /// The pane's title, which an OSC 0 sequence written to it would set.
    fn title(&self) -> String {
        let output = self.command().args(["display-message", "-p", "#{pane_title}"]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn capture(&self, options: &[&str]) -> String {
        let output = self.command().args(["capture-pane", "-p"]).args(options).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let status = self.command().arg("send-keys").args(keys).status().unwrap();
        assert!(status.success());
    }

    /// Waits until the screen satisfies `done`, and returns it.
    fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "no {what} after {limit:?}; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
    }
}

/// The line of the first thread row (indented, under its process) that
/// holds `text`.
fn line_of(screen: &str, text: &str) -> usize {
    screen
        .lines()
        .position(|line| line.starts_with("  ") && line.contains(text))
        .unwrap_or_else(|| panic!("no thread row with {text:?} in:\n{screen}"))
}

#[test]
fn the_live_view_shows_sorts_and_quits_to_the_summary() {
    // One thread storms getppid, one sleeps 2 ms at a time; the COMMAND's
    // own output must land in its pane, not over the table.
    let command = format!(
        "{PROBE} -i 300ms -- sh -c 'echo hello-from-the-command; exec {} --getppid 1000000000 --sleep 100000x2'; echo probe-exit=$?; sleep 60",
        workload().display()
    );
    let tmux = Tmux::start(100, 30, &command);
    let screen = tmux.wait_for(Duration::from_secs(10), "rows for both threads", |screen| {
        screen.contains("getppid") && screen.contains("clock_nanosleep")
    });
    assert!(screen.contains("COMMAND output"), "{screen}");
    assert!(screen.contains("hello-from-the-command"), "{screen}");
    assert!(screen.lines().next().unwrap().starts_with("probe · "), "{screen}");
    // Busiest first: the storm's row is above the sleeper's.
    assert!(line_of(&screen, "getppid") < line_of(&screen, "clock_nanosleep"), "{screen}");

    // `s` again reverses the order.
    tmux.keys(&["s"]);
    let screen = tmux.wait_for(Duration::from_secs(3), "the reversed order", |screen| {
        line_of(screen, "clock_nanosleep") < line_of(screen, "getppid")
    });
    assert!(screen.contains("SYS/s▲"), "{screen}");

    // A thread's detail, with its slowest calls, then back.
    tmux.keys(&["Down", "Down", "Enter"]);
    // (A capture may catch the screen half drawn: wait for both.)
    tmux.wait_for(Duration::from_secs(3), "the detail screen with slowest calls", |screen| {
        screen.contains("since probe started") && screen.contains("slowest ")
    });
    tmux.keys(&["Escape"]);
    tmux.wait_for(Duration::from_secs(3), "the table", |screen| screen.contains("PID/TID"));

    let quit = Instant::now();
    tmux.keys(&["q"]);
    let screen =
        tmux.wait_for(Duration::from_secs(5), "the summary", |screen| screen.contains("probe-exit="));
    assert!(quit.elapsed() < Duration::from_secs(2), "q took {:?}", quit.elapsed());
    let history = tmux.history();
    assert!(history.contains("probe summary:"), "{history}");
    assert!(screen.contains("probe-exit=0"), "{screen}");
    assert!(!screen.contains("PID/TID "), "the live view is gone: {screen}");
}

#[test]
fn a_hostile_thread_name_is_shown_not_obeyed() {
    // The COMMAND runs under a name that sets the terminal's title, then
    // clears the screen: as its comm, it reaches every row of the view.
    let dir = std::env::temp_dir().join(format!("probe-test-hostile-tui-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let name = "\x1b]0;owned\x07\x1b[2J";
    let link = dir.join(name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(workload(), &link).unwrap();
    let command = format!("{PROBE} -i 300ms -- '{}' --getppid 1000000000; sleep 60", link.display());
    let tmux = Tmux::start(120, 30, &command);
    // The name shown escaped, over the rows, the header still on top (a
    // capture may catch the screen half drawn: wait for all of it).
    tmux.wait_for(Duration::from_secs(10), "the escaped name over the rows", |screen| {
        screen.contains("getppid")
            && screen.contains("\\x1b]0;owned\\x07\\x1b[2J")
            && screen.lines().next().is_some_and(|line| line.starts_with("probe · "))
    });
    assert_ne!(tmux.title(), "owned", "the name set the terminal's title");
    // With the attributes tmux keeps: no escape of the name's own either.
    let raw = tmux.capture(&["-e"]);
    assert!(!raw.contains("\x1b]") && !raw.contains("\x1b[2J"), "{raw:?}");
    tmux.keys(&["q"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn slow_calls_come_to_a_pane_of_their_own() {
    // Three 30 ms sleeps, and a spinner that keeps the view up.
    let command =
        format!("{PROBE} --tui --slow 20ms -- {} --sleeps 30,30,30 --spin 4000", workload().display());
    let tmux = Tmux::start(140, 30, &command);
    // The pane shows the latest four: the sleeps, and the main thread's
    // waits (which may come before and after them).
    let count = |screen: &str| -> u64 {
        let Some(at) = screen.find("slow calls: ") else { return 0 };
        screen[at + 12..].split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    // A sleep's line in the pane (the table's busiest-syscall column may
    // show "clock_nanosleep 30.2ms" too, without the call's " = 0").
    let sleep = |line: &&str| line.contains("clock_nanosleep 30") && line.contains(" = ");
    let screen = tmux.wait_for(Duration::from_secs(10), "the slow calls' pane with the sleeps", |screen| {
        count(screen) >= 3 && screen.lines().any(|line| sleep(&line))
    });
    // Each with where it was made and what woke it.
    let line = screen.lines().find(sleep).unwrap();
    assert!(line.contains("sleep_once"), "{line}");
    assert!(line.contains("in do_nanosleep"), "{line}");
    assert!(line.contains("woken by an interrupt"), "{line}");
    tmux.keys(&["q"]);
}
