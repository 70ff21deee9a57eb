//! The fuzz loop: replay the regressions and the corpus, then mutate for a time budget.
//!
//! Each input runs under `catch_unwind` with a quiet panic hook, on an armed
//! [`super::alloc`] thread, watched by a watchdog thread. A panic, a property violation (the
//! check's `Err`), an allocation above the target's limit or a slow input is a finding: the
//! input is written to `target/fuzz-findings/<target>/<kind>-<hash>.bin` and its path
//! printed, and the run goes on; the report lists them all. An input running past the hang
//! limit is saved and the process aborted (a hang cannot be interrupted).
//!
//! Guidance without instrumentation: a mutant whose outcome (the check's `Ok` label, e.g. the
//! error message with numbers blanked) has not been seen before joins the corpus, so that
//! inputs reaching new error paths get mutated further.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::alloc;
use super::mutate::Mutator;

/// What a target checks on one input: `Ok(label)` when the parser behaved (accepted or
/// rejected the input with an error; the label describes which), `Err(message)` when a
/// property was violated (e.g. two decoders disagree).
pub type Check<'a> = dyn Fn(&[u8]) -> Result<String, String> + Sync + 'a;

/// One parser to fuzz.
pub struct Target<'a> {
    /// Name: the corpus is `fuzz/corpus/<name>/`, regressions `fuzz/regressions/<name>/`.
    pub name: &'a str,
    /// Format tokens the mutator inserts (markers, keys, punctuation).
    pub dict: &'a [&'a [u8]],
    /// Largest input generated.
    pub max_len: usize,
    /// Largest single allocation allowed while parsing an input of `n` bytes.
    pub alloc_limit: fn(usize) -> usize,
    /// The property checked on every input.
    pub check: &'a Check<'a>,
}

/// A failing input, saved to `path`.
#[derive(Debug, Clone)]
pub struct Finding {
    /// `panic`, `property`, `alloc`, `slow`.
    pub kind: &'static str,
    /// What happened.
    pub message: String,
    /// Where the input was written.
    pub path: PathBuf,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: String,
    /// Inputs run (regressions, corpus, mutants).
    pub execs: u64,
    /// Corpus size at the end (seeds plus mutants kept for new outcomes).
    pub corpus: usize,
    /// Distinct outcomes seen.
    pub outcomes: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    /// Panic listing the findings, if any.
    pub fn assert_clean(&self) {
        if self.findings.is_empty() {
            return;
        }
        let list: Vec<String> = self
            .findings
            .iter()
            .map(|f| {
                format!(
                    "  {}: {}\n    input: {}",
                    f.kind,
                    f.message,
                    f.path.display()
                )
            })
            .collect();
        panic!(
            "fuzz target `{}`: {} finding(s) after {} inputs:\n{}\nreplay one by copying it to \
             fuzz/regressions/{}/",
            self.target,
            self.findings.len(),
            self.execs,
            list.join("\n"),
            self.target
        );
    }
}

/// The repository root (this crate's parent folder).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate folder has a parent")
        .to_path_buf()
}

/// The committed seed corpus of a target.
pub fn corpus_dir(target: &str) -> PathBuf {
    repo_root().join("fuzz/corpus").join(target)
}

/// The committed inputs that once failed for a target.
pub fn regressions_dir(target: &str) -> PathBuf {
    repo_root().join("fuzz/regressions").join(target)
}

/// Where findings are written.
pub fn findings_dir(target: &str) -> PathBuf {
    repo_root().join("target/fuzz-findings").join(target)
}

/// The files of a folder, sorted by name (none if it does not exist).
pub fn read_dir_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds per target (`MTPATH_FUZZ_SECS`, default 4).
pub fn budget() -> Duration {
    Duration::from_secs_f64(env_f64("MTPATH_FUZZ_SECS", 4.0).max(0.0))
}

/// The run's seed (`MTPATH_FUZZ_SEED`: a number, or `random`; default 1).
pub fn seed() -> u64 {
    match std::env::var("MTPATH_FUZZ_SEED").ok().as_deref() {
        Some("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        Some(s) => s.parse().unwrap_or(1),
        None => 1,
    }
}

/// The input running on a harness thread, for the watchdog and the allocator.
struct Slot {
    target: String,
    input: Mutex<Vec<u8>>,
    started: Mutex<Option<Instant>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Slot>>> = const { RefCell::new(None) };
    /// Set while a fuzzed call runs: panics are recorded here instead of printed.
    static QUIET: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn save(target: &str, kind: &str, input: &[u8]) -> PathBuf {
    let dir = findings_dir(target);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{kind}-{:016x}.bin", crate::rng::fnv1a(input)));
    if let Err(e) = std::fs::write(&path, input) {
        eprintln!("fuzz: cannot write {}: {e}", path.display());
    }
    path
}

/// Save the input running on this thread (the allocator calls this before refusing an
/// absurd request, which aborts the process).
pub(crate) fn save_current_input(kind: &str, message: &str) {
    let _ = CURRENT.try_with(|c| {
        if let Some(slot) = c.borrow().as_ref() {
            let input = slot.input.lock().map(|i| i.clone()).unwrap_or_default();
            let path = save(&slot.target, kind, &input);
            eprintln!(
                "fuzz target `{}`: {kind} ({message}); input saved to {}",
                slot.target,
                path.display()
            );
        }
    });
}

/// Route panics on fuzzing threads to [`QUIET`]; other threads keep the default output.
fn install_panic_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let quiet = QUIET
                .try_with(|q| {
                    let mut q = q.borrow_mut();
                    if q.is_some() {
                        let msg = info
                            .payload()
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| info.payload().downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "panic".into());
                        let at = info
                            .location()
                            .map(|l| format!(" at {}:{}", l.file(), l.line()))
                            .unwrap_or_default();
                        *q = Some(format!("{msg}{at}"));
                        true
                    } else {
                        false
                    }
                })
                .unwrap_or(false);
            if !quiet {
                previous(info);
            }
        }));
    });
}

/// The hang limit (`MTPATH_FUZZ_HANG_SECS`, default 10 s).
fn hang_limit() -> Duration {
    Duration::from_secs_f64(env_f64("MTPATH_FUZZ_HANG_SECS", 10.0).max(0.1))
}

/// The slow limit: an input taking longer (default 2 s, `MTPATH_FUZZ_SLOW_SECS`) is reported.
fn slow_limit() -> Duration {
    Duration::from_secs_f64(env_f64("MTPATH_FUZZ_SLOW_SECS", 2.0).max(0.01))
}

/// The outcome of one call.
enum Outcome {
    Ok(String),
    Violation(&'static str, String),
}

fn run_one(t: &Target, slot: &Slot, input: &[u8]) -> Outcome {
    if let Ok(mut i) = slot.input.lock() {
        i.clear();
        i.extend_from_slice(input);
    }
    let start = Instant::now();
    if let Ok(mut s) = slot.started.lock() {
        *s = Some(start);
    }
    QUIET.with(|q| *q.borrow_mut() = Some(String::new()));
    alloc::arm();
    let result = panic::catch_unwind(AssertUnwindSafe(|| (t.check)(input)));
    let largest = alloc::disarm();
    let panic_msg = QUIET.with(|q| q.borrow_mut().take()).unwrap_or_default();
    let elapsed = start.elapsed();
    if let Ok(mut s) = slot.started.lock() {
        *s = None;
    }
    match result {
        Err(_) => Outcome::Violation("panic", panic_msg),
        Ok(Err(msg)) => Outcome::Violation("property", msg),
        Ok(Ok(label)) => {
            let limit = (t.alloc_limit)(input.len());
            if largest > limit {
                Outcome::Violation(
                    "alloc",
                    format!(
                        "allocated {largest} bytes at once for a {}-byte input (limit {limit}); \
                         outcome: {label}",
                        input.len()
                    ),
                )
            } else if elapsed > slow_limit() {
                Outcome::Violation(
                    "slow",
                    format!(
                        "took {:.1} s for a {}-byte input; outcome: {label}",
                        elapsed.as_secs_f64(),
                        input.len()
                    ),
                )
            } else {
                Outcome::Ok(label)
            }
        }
    }
}

/// Blank out numbers and quoted text so that outcomes differing only in offsets, sizes or
/// echoed input count as one.
fn shape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_digits = false;
    let mut quote: Option<char> = None;
    for c in s.chars().take(200) {
        if let Some(q) = quote {
            if c == q {
                quote = None;
                out.push(c);
            }
            continue;
        }
        if matches!(c, '`' | '"') {
            quote = Some(c);
            out.push(c);
            in_digits = false;
        } else if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// Spawn the watchdog: an input running past the hang limit is saved, then the process
/// aborts (printing where the input is).
fn watchdog(slot: Arc<Slot>, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let limit = hang_limit();
    std::thread::spawn(move || {
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            let started = slot.started.lock().ok().and_then(|s| *s);
            if started.is_some_and(|s| s.elapsed() > limit) {
                let input = slot.input.lock().map(|i| i.clone()).unwrap_or_default();
                let path = save(&slot.target, "hang", &input);
                eprintln!(
                    "fuzz target `{}`: an input ran for over {:.0} s (hang); saved to {}; \
                     aborting",
                    slot.target,
                    limit.as_secs_f64(),
                    path.display()
                );
                std::process::abort();
            }
        }
    })
}

/// Most mutants kept for new outcomes.
const MAX_GROWN: usize = 1000;
/// Most distinct findings saved per run.
const MAX_FINDINGS: usize = 30;

/// Fuzz one target: replay `fuzz/regressions/<name>/` and `fuzz/corpus/<name>/` (plus
/// `extra_seeds`), then mutate for [`budget`] seconds.
pub fn fuzz(t: &Target, extra_seeds: Vec<Vec<u8>>) -> Report {
    install_panic_hook();
    let seed = seed();
    let slot = Arc::new(Slot {
        target: t.name.to_string(),
        input: Mutex::new(Vec::new()),
        started: Mutex::new(None),
    });
    CURRENT.with(|c| *c.borrow_mut() = Some(slot.clone()));
    let done = Arc::new(AtomicBool::new(false));
    let dog = watchdog(slot.clone(), done.clone());

    let mut findings: Vec<Finding> = Vec::new();
    let mut finding_keys = BTreeSet::new();
    let mut outcomes = BTreeSet::new();
    let mut execs = 0u64;
    let mut record = |input: &[u8], outcome: Outcome, findings: &mut Vec<Finding>| -> bool {
        match outcome {
            Outcome::Ok(label) => outcomes.insert(shape(&label)),
            Outcome::Violation(kind, message) => {
                let key = format!("{kind}:{}", shape(&message));
                if findings.len() < MAX_FINDINGS && finding_keys.insert(key) {
                    let path = save(t.name, kind, input);
                    eprintln!(
                        "fuzz target `{}`: {kind}: {message}\n  input saved to {}",
                        t.name,
                        path.display()
                    );
                    findings.push(Finding {
                        kind,
                        message,
                        path,
                    });
                }
                false
            }
        }
    };

    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let files = read_dir_files(&regressions_dir(t.name))
        .into_iter()
        .chain(read_dir_files(&corpus_dir(t.name)))
        .map(|(_, b)| b);
    for input in files.chain(extra_seeds) {
        let outcome = run_one(t, &slot, &input);
        execs += 1;
        record(&input, outcome, &mut findings);
        corpus.push(input);
    }
    assert!(
        !corpus.is_empty(),
        "fuzz target `{}`: no seeds (add files to {})",
        t.name,
        corpus_dir(t.name).display()
    );
    let seeds = corpus.len();

    let mut m = Mutator::new(
        seed ^ crate::rng::fnv1a(t.name.as_bytes()),
        t.dict,
        t.max_len,
    );
    let deadline = Instant::now() + budget();
    let mut input = Vec::new();
    while Instant::now() < deadline {
        m.mutate(&corpus, &mut input);
        let outcome = run_one(t, &slot, &input);
        execs += 1;
        if record(&input, outcome, &mut findings) && corpus.len() < seeds + MAX_GROWN {
            corpus.push(input.clone());
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = dog.join();
    CURRENT.with(|c| *c.borrow_mut() = None);
    eprintln!(
        "fuzz target `{}`: {execs} inputs ({} seeds, {} kept for new outcomes), {} outcomes, \
         {} findings, seed {seed}",
        t.name,
        seeds,
        corpus.len() - seeds,
        outcomes.len(),
        findings.len()
    );
    Report {
        target: t.name.to_string(),
        execs,
        corpus: corpus.len(),
        outcomes: outcomes.len(),
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_blanks_numbers() {
        assert_eq!(shape("bad length 123 at 4"), "bad length # at #");
        assert_eq!(
            shape("unknown key `abc` in \"x\""),
            "unknown key `` in \"\""
        );
    }
}
