//! Fuzzing with proptest, on the stable toolchain and inside `cargo test`: arbitrary bytes,
//! and structure-aware inputs made by mutating the seeds of a committed corpus
//! (`crates/<crate>/tests/corpus/<target>/`, every file of which is also run as a regression
//! case). `FUZZ_CASES` sets the cases per property: a short run by default (`make test`), a
//! long one when set (`make chaos` sets `FUZZ_CASES=200000`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

/// Cases per property when `FUZZ_CASES` is not set.
pub const DEFAULT_CASES: u32 = 512;

/// Cases per fuzz property: `FUZZ_CASES`, else [`DEFAULT_CASES`]. A value that is not a
/// positive number is a mistake worth stopping for, not a reason to run the short form.
pub fn cases() -> u32 {
    match std::env::var("FUZZ_CASES") {
        Ok(text) => text
            .trim()
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("FUZZ_CASES must be a positive number, got `{text}`")),
        Err(_) => DEFAULT_CASES,
    }
}

/// The proptest configuration of a fuzz property: [`cases`] cases; failures are not persisted
/// to files (a failing input is printed, and belongs in the corpus once fixed).
pub fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

/// The corpus directory `tests/corpus/<target>` of the crate at `manifest_dir`.
pub fn corpus_dir(manifest_dir: &str, target: &str) -> PathBuf {
    Path::new(manifest_dir)
        .join("tests")
        .join("corpus")
        .join(target)
}

/// Every file of the corpus, sorted by name: (file name, bytes). Panics when the corpus is
/// missing or empty: a fuzz target without seeds would quietly fuzz less.
pub fn corpus(manifest_dir: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(manifest_dir, target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the fuzz corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (name, bytes)
        })
        .collect();
    assert!(
        !files.is_empty(),
        "the fuzz corpus {} is empty",
        dir.display()
    );
    files.sort();
    files
}

/// How long a call that overran its limit may still run before [`within`] stops the test
/// process: time for a slow but finite call to come back, so that its failure goes through the
/// test harness (and proptest shrinks the input) instead of ending the process.
pub const HUNG_CALL_GRACE: Duration = Duration::from_secs(10);

/// Runs `f` and panics, naming `what`, if it has not returned within `limit`: an input that
/// makes a parser hang (or go quadratic) is a failure like a panic.
///
/// A watchdog enforces the limit: `f` runs on a thread of its own and the panic is raised as
/// soon as the limit passes, while `f` still runs. `f` may borrow the caller's input, so the
/// panic can only leave this function once `f` has returned; if `f` is still running
/// [`HUNG_CALL_GRACE`] later, the message is written to stderr and the test process exits
/// with status 101, so a hang fails the suite instead of hanging it.
pub fn within<T: Send>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send) -> T {
    watch(limit, what, f, |returned| {
        stop_if_still_running(what, limit, returned, HUNG_CALL_GRACE);
    })
}

/// [`within`] with what happens on an overrun, before the panic, left to `on_overrun`; it gets
/// the receiver that hears when `f` returns.
fn watch<T: Send>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send,
    on_overrun: impl FnOnce(mpsc::Receiver<()>),
) -> T {
    let (returned_tx, returned) = mpsc::channel();
    std::thread::scope(|scope| {
        let call = std::thread::Builder::new()
            .name(format!("within: {what}"))
            .spawn_scoped(scope, move || {
                let out = f();
                // Nobody listens once the caller gave up and the grace passed.
                let _ = returned_tx.send(());
                out
            })
            .unwrap_or_else(|e| panic!("cannot start a thread for {what}: {e}"));
        match returned.recv_timeout(limit) {
            // Returned in time, or panicked (the sender is gone): `join` says which.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
            Err(RecvTimeoutError::Timeout) => {
                on_overrun(returned);
                panic!(
                    "{what} has not returned within {limit:?}: the input makes it hang or blow up"
                );
            }
        }
        match call.join() {
            Ok(out) => out,
            // The caller sees `f`'s own panic, as if `f` had run on its thread.
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// Exits the process with status 101 unless `returned` hears within `grace` that the call
/// came back.
fn stop_if_still_running(
    what: &str,
    limit: Duration,
    returned: mpsc::Receiver<()>,
    grace: Duration,
) {
    let what = what.to_owned();
    std::thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = returned.recv_timeout(grace) {
            // Straight to stderr: the test harness captures `eprintln!` and would never show it.
            let _ = writeln!(
                std::io::stderr(),
                "{what} has not returned within {limit:?}, nor {grace:?} after that: it hangs; \
                 stopping the test process"
            );
            std::process::exit(101);
        }
    });
}

/// One edit of a seed.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Duplicate(Index, usize),
    Truncate(Index),
    /// A range of another seed, inserted.
    Splice(Index, Index, Index, usize),
}

/// Bytes that tend to matter to JSON, protobuf and the rule language.
const INTERESTING: &[u8] =
    b"\x00\x01\x7f\x80\xff\"\\[]{}:,\n\r\t ()T0123456789-+.eEtrufalsnNOTANDORWITHINd><=";

fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![any::<u8>(), proptest::sample::select(INTERESTING.to_vec()),]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8_u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (any::<Index>(), byte()).prop_map(|(at, b)| Mutation::SetByte(at, b)),
        (any::<Index>(), proptest::collection::vec(byte(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<Index>(), 1..32_usize).prop_map(|(at, len)| Mutation::Delete(at, len)),
        (any::<Index>(), 1..64_usize).prop_map(|(at, len)| Mutation::Duplicate(at, len)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<Index>(), any::<Index>(), 1..64_usize)
            .prop_map(|(at, seed, from, len)| Mutation::Splice(at, seed, from, len)),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation, seeds: &[Vec<u8>]) {
    // Positions index the current bytes, end included (insertions may append).
    let at = |i: &Index, bytes: &Vec<u8>| i.index(bytes.len() + 1);
    match mutation {
        Mutation::FlipBit(i, bit) => {
            if !bytes.is_empty() {
                let at = i.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
        }
        Mutation::SetByte(i, b) => {
            if !bytes.is_empty() {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
        }
        Mutation::Insert(i, new) => {
            let at = at(i, bytes);
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Delete(i, len) => {
            let at = at(i, bytes);
            let end = (at + len).min(bytes.len());
            bytes.drain(at..end);
        }
        Mutation::Duplicate(i, len) => {
            let at = at(i, bytes);
            let end = (at + len).min(bytes.len());
            let copy = bytes[at..end].to_vec();
            bytes.splice(end..end, copy);
        }
        Mutation::Truncate(i) => {
            let at = at(i, bytes);
            bytes.truncate(at);
        }
        Mutation::Splice(i, seed, from, len) => {
            let other = &seeds[seed.index(seeds.len())];
            let from = from.index(other.len() + 1);
            let end = (from + len).min(other.len());
            let at = at(i, bytes);
            bytes.splice(at..at, other[from..end].iter().copied());
        }
    }
}

/// Structure-aware inputs: a seed with 1 to 8 mutations (bit flips, interesting bytes,
/// insertions, deletions, duplicated ranges, truncation, ranges spliced in from other seeds).
pub fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty(), "mutations need at least one seed");
    let count = seeds.len();
    (0..count, proptest::collection::vec(mutation(), 1..8)).prop_map(move |(seed, edits)| {
        let mut bytes = seeds[seed].clone();
        for edit in &edits {
            apply(&mut bytes, edit, &seeds);
        }
        bytes
    })
}

/// Arbitrary bytes (up to 4 KiB) half of the time, mutated seeds the other half.
pub fn bytes(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..4096),
        mutated(seeds),
    ]
}

/// `message` with unknown fields appended, one of each wire type protobuf has (varint,
/// 64-bit, length-delimited, 32-bit), under field numbers no schema of ours uses: what a
/// message written by a newer producer looks like to an older consumer.
pub fn with_unknown_fields(message: &[u8]) -> Vec<u8> {
    let mut out = message.to_vec();
    // Field 1000, varint: tag (1000 << 3 | 0) = 8000 → 0xc0 0x3e; value 300 → 0xac 0x02.
    out.extend_from_slice(&[0xc0, 0x3e, 0xac, 0x02]);
    // Field 1001, 64-bit: tag 8009 → 0xc9 0x3e; 8 bytes.
    out.extend_from_slice(&[0xc9, 0x3e, 1, 2, 3, 4, 5, 6, 7, 8]);
    // Field 1002, length-delimited: tag 8018 → 0xd2 0x3e; length 5; "extra".
    out.extend_from_slice(&[0xd2, 0x3e, 5]);
    out.extend_from_slice(b"extra");
    // Field 1003, 32-bit: tag 8029 → 0xdd 0x3e; 4 bytes.
    out.extend_from_slice(&[0xdd, 0x3e, 9, 9, 9, 9]);
    out
}

/// A length-delimited field `field` holding `bytes` (e.g. a nested message), to build inputs
/// by hand.
pub fn length_delimited(field: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 10);
    varint(&mut out, u64::from(field) << 3 | 2);
    varint(&mut out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_well_formed_protobuf() {
        // Parse the appended tail by hand: four fields of the four wire types.
        let tail = with_unknown_fields(&[]);
        let mut fields = Vec::new();
        let mut i = 0;
        while i < tail.len() {
            let tag = u32::from(tail[i] & 0x7f) | u32::from(tail[i + 1]) << 7;
            i += 2;
            let (number, wire_type) = (tag >> 3, tag & 7);
            i += match wire_type {
                0 => 2,
                1 => 8,
                2 => 1 + usize::from(tail[i]),
                5 => 4,
                other => panic!("wire type {other}"),
            };
            fields.push((number, wire_type));
        }
        assert_eq!(i, tail.len());
        assert_eq!(fields, [(1000, 0), (1001, 1), (1002, 2), (1003, 5)]);
        assert_eq!(length_delimited(4, b"ab"), [0x22, 2, b'a', b'b']);
    }

    #[test]
    fn a_call_within_its_limit_returns_its_value() {
        let input = [1_u8, 2, 3];
        let sum = within(Duration::from_secs(5), "summing a borrowed input", || {
            input.iter().map(|&b| u32::from(b)).sum::<u32>()
        });
        assert_eq!(sum, 6);
    }

    #[test]
    #[should_panic(expected = "sleeping past the limit has not returned within 20ms")]
    fn a_call_past_its_limit_panics_naming_the_input() {
        within(Duration::from_millis(20), "sleeping past the limit", || {
            std::thread::sleep(Duration::from_millis(300));
        });
    }

    #[test]
    #[should_panic(expected = "the call's own panic")]
    fn a_panic_inside_the_call_is_the_callers_panic() {
        within(Duration::from_secs(5), "a panicking call", || {
            panic!("the call's own panic")
        });
    }

    #[test]
    fn the_panic_is_raised_while_the_call_still_runs() {
        // The call waits up to 10 s to be let go, and only the overrun handler lets it go: if
        // it was let go, the watchdog acted while the call was still running.
        let (release, released) = mpsc::channel::<()>();
        let let_go = &std::sync::atomic::AtomicBool::new(false);
        let started = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            watch(
                Duration::from_millis(50),
                "a blocked call",
                move || {
                    let was_let_go = released.recv_timeout(Duration::from_secs(10)).is_ok();
                    let_go.store(was_let_go, std::sync::atomic::Ordering::SeqCst);
                },
                |_returned| release.send(()).unwrap(),
            );
        }));
        let message = *outcome
            .expect_err("a call past its limit did not panic")
            .downcast::<String>()
            .unwrap();
        assert!(
            message.contains("a blocked call has not returned within 50ms"),
            "{message}"
        );
        assert!(
            let_go.load(std::sync::atomic::Ordering::SeqCst),
            "the call was never let go: the watchdog did not act while it ran"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the panic took {:?}",
            started.elapsed()
        );
    }

    /// Set for the child process of `a_call_that_never_returns_stops_the_test_process`.
    const HANG_CHILD: &str = "TESTKIT_FUZZ_HANG_CHILD";

    /// A call that never returns, when run as that child (alone, it passes at once).
    #[test]
    fn never_returning_call_child() {
        if std::env::var_os(HANG_CHILD).is_none() {
            return;
        }
        let limit = Duration::from_millis(50);
        watch(
            limit,
            "a call that never returns",
            || {
                loop {
                    std::thread::park();
                }
            },
            |returned| {
                stop_if_still_running(
                    "a call that never returns",
                    limit,
                    returned,
                    Duration::from_millis(200),
                );
            },
        );
    }

    #[test]
    fn a_call_that_never_returns_stops_the_test_process() {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "fuzz::tests::never_returning_call_child",
                "--exact",
                "--test-threads=1",
            ])
            .env(HANG_CHILD, "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                child.kill().unwrap();
                panic!("the test process with a hung call still runs after 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(101), "{stderr}");
        assert!(
            stderr.contains(
                "a call that never returns has not returned within 50ms, nor 200ms after that"
            ),
            "{stderr}"
        );
    }

    #[test]
    fn mutations_change_seeds_and_stay_in_bounds() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let seeds = vec![b"{\"a\":1}".to_vec(), Vec::new(), b"T1 AND T2".to_vec()];
        let mut runner = TestRunner::deterministic();
        let strategy = mutated(seeds.clone());
        let mut changed = 0;
        for _ in 0..500 {
            let value = strategy.new_tree(&mut runner).unwrap().current();
            changed += usize::from(!seeds.contains(&value));
        }
        assert!(
            changed > 300,
            "only {changed} of 500 inputs differ from a seed"
        );
    }
}
