//! The loop: pick a corpus entry, mutate it, run the target, keep what is new, save what
//! fails. See the crate documentation for what counts as a finding.

use std::collections::HashSet;
use std::ffi::CString;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::mutate::Mutator;
use crate::targets::Target;

/// How one target is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Stop after this long...
    pub duration: Duration,
    /// ...or after this many executions, whichever comes first.
    pub max_execs: u64,
    pub seed: u64,
    /// `fuzz/`: seeds in `corpus/<target>/`, findings to `crashes/<target>/`.
    pub root: PathBuf,
    /// One execution longer than this is a finding (a hang): the process ends.
    pub exec_timeout: Duration,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub execs: u64,
    pub seeds: usize,
    /// Inputs kept because their outcome was new.
    pub kept: usize,
    /// Distinct outcome classes seen.
    pub classes: usize,
    /// The classes themselves, sorted (`verre-fuzz --show-classes`).
    pub class_names: Vec<String>,
    /// Panics caught, each saved under `crashes/<target>/`.
    pub panics: Vec<(PathBuf, String)>,
    pub elapsed: Duration,
}

impl Stats {
    pub fn line(&self, target: &str) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "{target}: {} execs in {:.1} s ({:.0}/s), {} seeds, {} kept, {} outcome classes, {} panics",
            self.execs,
            secs,
            self.execs as f64 / secs,
            self.seeds,
            self.kept,
            self.classes,
            self.panics.len()
        )
    }
}

/// The seeds of a target: every file in `fuzz/corpus/<target>/` (an empty input if none).
pub fn seeds(root: &Path, target: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = read_dir_files(&root.join("corpus").join(target))?;
    if out.is_empty() {
        out.push(Vec::new());
    }
    Ok(out)
}

/// The findings kept as regression inputs: every file in `fuzz/regressions/<target>/`.
pub fn regressions(root: &Path, target: &str) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let dir = root.join("regressions").join(target);
    let mut out = Vec::new();
    if dir.is_dir() {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        paths.sort();
        for p in paths.into_iter().filter(|p| p.is_file()) {
            let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            out.push((p, bytes));
        }
    }
    Ok(out)
}

fn read_dir_files(dir: &Path) -> Result<Vec<Vec<u8>>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| std::fs::read(&p).with_context(|| format!("reading {}", p.display())))
        .collect()
}

/// Run `input` through `target`, a panic caught and returned as its message.
pub fn run_one(target: &Target, input: &[u8]) -> Result<String, String> {
    install_quiet_panic_hook();
    catch_unwind(AssertUnwindSafe(|| (target.run)(input))).map_err(|_| {
        LAST_PANIC
            .lock()
            .map(|mut p| p.take())
            .ok()
            .flatten()
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

fn install_quiet_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if let Ok(mut p) = LAST_PANIC.lock() {
                *p = Some(format!("{msg}{at}"));
            }
        }));
    });
}

// The input being run, for the signal handler to write out if the process dies on it.
static CURRENT_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);
static DEATH_PATH: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());
static DEATH_FD_FLAGS: AtomicI32 = AtomicI32::new(0);
// Executions started, and when the current one started (ms since the run began).
static EXEC_SEQ: AtomicU64 = AtomicU64::new(0);
static EXEC_START_MS: AtomicU64 = AtomicU64::new(0);

extern "C" fn write_input_and_die(signal: libc::c_int) {
    // Only async-signal-safe calls: open, write, close, signal, raise.
    let path = DEATH_PATH.load(Ordering::SeqCst);
    let ptr = CURRENT_PTR.load(Ordering::SeqCst);
    let len = CURRENT_LEN.load(Ordering::SeqCst);
    unsafe {
        if !path.is_null() && !ptr.is_null() {
            let fd = libc::open(path, DEATH_FD_FLAGS.load(Ordering::SeqCst), 0o644);
            if fd >= 0 {
                libc::write(fd, ptr as *const libc::c_void, len);
                libc::close(fd);
            }
            let msg = b"\nfuzz: the process died on an input; it is saved under fuzz/crashes/ (see the line above)\n";
            libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len());
        }
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

fn arm_death_handler(path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())?;
    // Leaked on purpose: the handler may read it until the process ends.
    DEATH_PATH.store(c.into_raw(), Ordering::SeqCst);
    DEATH_FD_FLAGS.store(
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        Ordering::SeqCst,
    );
    eprintln!(
        "fuzz: if the process dies, its input goes to {}",
        path.display()
    );
    let handler = write_input_and_die as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGABRT, libc::SIGBUS, libc::SIGILL, libc::SIGFPE] {
        unsafe { libc::signal(signal, handler) };
    }
    Ok(())
}

/// Fuzz one target (see the crate documentation).
pub fn run(target: &Target, options: &Options) -> Result<Stats> {
    let seeds = seeds(&options.root, target.name)?;
    let crashes = options.root.join("crashes").join(target.name);
    std::fs::create_dir_all(&crashes).with_context(|| format!("creating {}", crashes.display()))?;
    arm_death_handler(&crashes.join(format!("died-{}.bin", std::process::id())))?;
    let started = Instant::now();
    spawn_watchdog(started, options.exec_timeout);

    let mut corpus = seeds.clone();
    let mut classes: HashSet<String> = HashSet::new();
    let mut stats = Stats {
        seeds: seeds.len(),
        ..Default::default()
    };
    // The seeds themselves first: each must pass before any mutant runs.
    let mut queue: Vec<Vec<u8>> = seeds;
    let mut mutator = Mutator::new(options.seed, target.tokens, target.max_len);
    loop {
        if stats.execs >= options.max_execs || started.elapsed() >= options.duration {
            break;
        }
        let input = match queue.pop() {
            Some(i) => i,
            None => {
                let a = mutator.rng.below(corpus.len());
                let b = mutator.rng.below(corpus.len());
                mutator.mutate(&corpus[a], &corpus[b])
            }
        };
        CURRENT_PTR.store(input.as_ptr() as *mut u8, Ordering::SeqCst);
        CURRENT_LEN.store(input.len(), Ordering::SeqCst);
        EXEC_START_MS.store(started.elapsed().as_millis() as u64, Ordering::SeqCst);
        EXEC_SEQ.fetch_add(1, Ordering::SeqCst);
        let outcome = run_one(target, &input);
        stats.execs += 1;
        match outcome {
            Ok(class) => {
                if classes.insert(class) && corpus.len() < 4096 {
                    corpus.push(input.clone());
                    stats.kept += 1;
                }
            }
            Err(panic) => {
                let path = crashes.join(format!("panic-{:016x}.bin", fnv(&input)));
                std::fs::write(&path, &input)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!(
                    "{}: PANIC {panic}\n  input saved to {}",
                    target.name,
                    path.display()
                );
                if !stats.panics.iter().any(|(_, p)| *p == panic) {
                    stats.panics.push((path, panic));
                }
            }
        }
        CURRENT_PTR.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
    stats.classes = classes.len();
    stats.class_names = classes.into_iter().collect();
    stats.class_names.sort();
    stats.elapsed = started.elapsed();
    Ok(stats)
}

/// A thread that ends the process (input saved by the abort handler) when one execution
/// runs past `timeout`.
fn spawn_watchdog(started: Instant, timeout: Duration) {
    std::thread::spawn(move || {
        let mut seen = (0, 0);
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let now = (
                EXEC_SEQ.load(Ordering::SeqCst),
                EXEC_START_MS.load(Ordering::SeqCst),
            );
            if now != seen {
                seen = now;
                continue;
            }
            let running_ms = (started.elapsed().as_millis() as u64).saturating_sub(now.1);
            if now.0 > 0
                && !CURRENT_PTR.load(Ordering::SeqCst).is_null()
                && running_ms > timeout.as_millis() as u64
            {
                eprintln!(
                    "fuzz: one execution has run {running_ms} ms, over the {} ms limit (a hang)",
                    timeout.as_millis()
                );
                std::process::abort();
            }
        }
    });
}

/// A stable name for an input (FNV-1a).
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Cap this process's address space (`RLIMIT_AS`): an allocation past it fails and the
/// process aborts with its input saved, instead of the machine swapping.
pub fn limit_memory(bytes: u64) -> Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
        anyhow::bail!(
            "setting the memory limit: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
