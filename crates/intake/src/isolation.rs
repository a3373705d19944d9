//! Untrusted mail is parsed in a child process. A hostile PDF can overflow pdf-extract's
//! stack (a form XObject that draws itself) or make lopdf inflate gigabytes (nested Flate
//! streams); neither can be caught in-process, and either would end `verre up` with its
//! API, review UI and deliveries. So the parse stage runs `verre __parse-untrusted` (the
//! same binary, a hidden subcommand) with an address-space and a CPU-time limit and a
//! wall-clock timeout, sends it the raw message on stdin and reads the parsed message as
//! JSON on stdout. The child gets no environment (no data key, no secrets) and cannot
//! write files.
//!
//! When the child dies or hits a limit, the message is parsed again without its
//! documents, then each document alone: a document that kills its child ends as a part
//! noted `unreadable: <why>` and the message goes on to the next stages. A message whose
//! MIME structure alone kills the child fails the stage with `unreadable: <why>` (to
//! quarantine). The parent never parses the hostile bytes itself.
//!
//! Embedded without the `verre` binary (a library user, this crate's tests), the parser
//! runs in-process unless `VERRE_PARSER_BIN` names a `verre` binary to run; that choice is
//! logged once, as it gives up the protection.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use verre_store::NewPart;

use crate::parse::{
    DocumentText, ParseError, ParsedMail, join_pages, pages_without_text, parse_mail, pdf_pages,
};

/// The hidden subcommand of `verre` that [`serve_child`] answers.
pub const SUBCOMMAND: &str = "__parse-untrusted";

/// How much of the child's stdout is read: a parsed message is its text, far below this.
const MAX_ANSWER_BYTES: usize = 256 << 20;
/// How much of the child's stderr is read to tell why it died.
const MAX_STDERR_BYTES: usize = 64 << 10;

/// How the parse stage reads a raw message.
#[derive(Debug, Clone)]
pub enum MailParser {
    /// In this process: a hostile document can end the process. Only for embedding where
    /// no `verre` binary is at hand.
    InProcess,
    /// In a child process under limits.
    Child(ChildParser),
}

/// A child process that parses one message (or one of its documents) under limits.
#[derive(Debug, Clone)]
pub struct ChildParser {
    /// The `verre` binary.
    pub program: PathBuf,
    pub limits: ParserLimits,
}

/// What one child process may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
    /// Address space (RLIMIT_AS), bytes.
    pub memory_bytes: u64,
    /// CPU time (RLIMIT_CPU), seconds.
    pub cpu_seconds: u64,
    /// Wall-clock time before the child is killed.
    pub timeout: Duration,
}

impl Default for ParserLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 1 << 30,
            cpu_seconds: 30,
            timeout: Duration::from_secs(60),
        }
    }
}

impl ParserLimits {
    /// The defaults, each overridden by its variable when set: `VERRE_PARSER_MEMORY_MIB`,
    /// `VERRE_PARSER_CPU_SECS`, `VERRE_PARSER_TIMEOUT_SECS`.
    pub fn from_env() -> anyhow::Result<Self> {
        let read = |name: &str| -> anyhow::Result<Option<u64>> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Some)
                    .ok_or_else(|| {
                        anyhow::anyhow!("{name}={v:?}: expected a whole number above 0")
                    }),
                Err(_) => Ok(None),
            }
        };
        let mut limits = Self::default();
        if let Some(mib) = read("VERRE_PARSER_MEMORY_MIB")? {
            limits.memory_bytes = mib << 20;
        }
        if let Some(s) = read("VERRE_PARSER_CPU_SECS")? {
            limits.cpu_seconds = s;
        }
        if let Some(s) = read("VERRE_PARSER_TIMEOUT_SECS")? {
            limits.timeout = Duration::from_secs(s);
        }
        Ok(limits)
    }
}

impl MailParser {
    /// A child running `program` (the `verre` binary) with limits from the environment.
    pub fn child(program: impl Into<PathBuf>) -> anyhow::Result<Self> {
        Ok(MailParser::Child(ChildParser {
            program: program.into(),
            limits: ParserLimits::from_env()?,
        }))
    }

    /// For library users: a child running `$VERRE_PARSER_BIN` when it is set, else
    /// in-process (logged once: a hostile document can then end this process).
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_program(std::env::var_os("VERRE_PARSER_BIN"))
    }

    /// A child running `program`, or in-process without one.
    pub fn from_program(program: Option<OsString>) -> anyhow::Result<Self> {
        match program {
            Some(program) if !program.is_empty() => Self::child(program),
            _ => Ok(MailParser::InProcess),
        }
    }

    /// [`MailParser::from_env`] for a constructor that cannot fail: limits that do not
    /// parse are logged and the defaults used, the child is kept.
    pub fn from_env_or_defaults() -> Self {
        Self::from_env().unwrap_or_else(|e| {
            tracing::error!("{e:#}; the parser process runs with the default limits");
            match std::env::var_os("VERRE_PARSER_BIN") {
                Some(program) if !program.is_empty() => MailParser::Child(ChildParser {
                    program: program.into(),
                    limits: ParserLimits::default(),
                }),
                _ => MailParser::InProcess,
            }
        })
    }

    /// Parse `raw`. Documents that crash or exhaust the child are parts marked
    /// `unreadable: <why>`; see the module documentation.
    pub fn parse(&self, raw: &[u8]) -> Result<ParsedMail, ParseError> {
        match self {
            MailParser::InProcess => {
                static WARNED: Once = Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        "mail is parsed in this process (no verre binary configured; set \
                         VERRE_PARSER_BIN): a hostile document can end it"
                    )
                });
                parse_mail(raw)
            }
            MailParser::Child(child) => child.parse(raw),
        }
    }
}

/// What the child is asked to do, as its one argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildMode {
    /// The whole message, documents included.
    Mail,
    /// The message with no document read (each listed in `not_read`).
    MailWithoutDocuments,
    /// Only the pages of the document that is part `idx`.
    Document(i64),
}

impl ChildMode {
    fn arg(self) -> String {
        match self {
            ChildMode::Mail => "mail".into(),
            ChildMode::MailWithoutDocuments => "mail-without-documents".into(),
            ChildMode::Document(idx) => format!("document:{idx}"),
        }
    }

    pub fn parse(arg: &str) -> Option<Self> {
        match arg {
            "mail" => Some(ChildMode::Mail),
            "mail-without-documents" => Some(ChildMode::MailWithoutDocuments),
            _ => arg
                .strip_prefix("document:")?
                .parse()
                .ok()
                .map(ChildMode::Document),
        }
    }
}

/// The child's answer on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
enum Answer {
    Mail {
        fields: Value,
        parts: Vec<NewPart>,
        /// Document parts left unread (`mail-without-documents`).
        not_read: Vec<i64>,
    },
    NotMime {
        bytes: usize,
    },
    Empty,
    /// The MIME structure itself could not be read (the parser gave up on it).
    Unreadable {
        why: String,
    },
    Pages {
        pages: Vec<String>,
    },
    DocumentFailed {
        error: String,
    },
    NoSuchDocument,
}

/// The hidden subcommand: read a raw message on stdin, parse it as `mode` asks, write the
/// answer as JSON on stdout. Runs in the child, under the limits its parent set.
pub fn serve_child(mode: &str) -> anyhow::Result<()> {
    let mode = ChildMode::parse(mode).ok_or_else(|| anyhow::anyhow!("unknown mode {mode:?}"))?;
    let mut raw = Vec::new();
    std::io::stdin().read_to_end(&mut raw)?;
    let answer = answer(&raw, mode);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &answer)?;
    out.flush()?;
    Ok(())
}

fn answer(raw: &[u8], mode: ChildMode) -> Answer {
    let mut not_read = Vec::new();
    let mut document = None;
    let parsed = crate::parse::parse_mail_reading(raw, &mut |idx, bytes| match mode {
        ChildMode::Mail => match pdf_pages(bytes) {
            Ok(pages) => DocumentText::Pages(pages),
            Err(e) => DocumentText::Failed(e),
        },
        ChildMode::MailWithoutDocuments => {
            not_read.push(idx);
            DocumentText::Unreadable("not read".into())
        }
        ChildMode::Document(wanted) => {
            if idx == wanted {
                document = Some(pdf_pages(bytes));
            }
            DocumentText::Unreadable("not read".into())
        }
    });
    match (mode, parsed) {
        (_, Err(ParseError::NotMime(bytes))) => Answer::NotMime { bytes },
        (_, Err(ParseError::Empty)) => Answer::Empty,
        (_, Err(ParseError::Unreadable(why))) => Answer::Unreadable { why },
        (ChildMode::Document(_), Ok(_)) => match document {
            Some(Ok(pages)) => Answer::Pages { pages },
            Some(Err(error)) => Answer::DocumentFailed { error },
            None => Answer::NoSuchDocument,
        },
        (_, Ok(mail)) => Answer::Mail {
            fields: mail.fields,
            parts: mail.parts,
            not_read,
        },
    }
}

impl ChildParser {
    fn parse(&self, raw: &[u8]) -> Result<ParsedMail, ParseError> {
        let whole = match self.run(raw, ChildMode::Mail) {
            Ok(answer) => return mail_of(answer),
            Err(why) => why,
        };
        tracing::warn!(
            "parsing a message in a child process failed ({whole}); reading its documents one by one"
        );
        let answer = self
            .run(raw, ChildMode::MailWithoutDocuments)
            .map_err(ParseError::Unreadable)?;
        let Answer::Mail {
            fields,
            mut parts,
            not_read,
        } = answer
        else {
            return mail_of(answer);
        };
        for idx in not_read {
            let Some(part) = parts.iter_mut().find(|p| p.idx == idx) else {
                continue;
            };
            match self.run(raw, ChildMode::Document(idx)) {
                Ok(Answer::Pages { pages }) => {
                    part.text = Some(join_pages(&pages));
                    part.note = pages_without_text(&pages);
                    part.pages = Some(pages);
                    part.supported = true;
                }
                Ok(Answer::DocumentFailed { error }) => {
                    part.note = Some(format!("PDF text could not be extracted: {error}"));
                }
                Ok(other) => {
                    part.note = Some(format!("unreadable: unexpected answer {other:?}"));
                }
                Err(why) => {
                    tracing::warn!(part = idx, "a document of a message is unreadable: {why}");
                    part.note = Some(format!("unreadable: {why}"));
                }
            }
        }
        Ok(ParsedMail { fields, parts })
    }

    /// Run one child on `raw`; its answer, or why there is none.
    fn run(&self, raw: &[u8], mode: ChildMode) -> Result<Answer, String> {
        let limits = self.limits;
        let mut command = Command::new(&self.program);
        command
            .arg(SUBCOMMAND)
            .arg(mode.arg())
            .env_clear()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs in the forked child before exec; it only calls setrlimit, which
            // is async-signal-safe, and allocates nothing.
            unsafe {
                command.pre_exec(move || apply_limits(limits));
            }
        }
        // The message reaches the child as a file in memory, not through a pipe: a child
        // that dies before reading it all can then never raise SIGPIPE in this process
        // (`verre intake` restores SIGPIPE's default, which ends a process).
        let input = message_file(raw)
            .map_err(|e| format!("handing the message to the parser process: {e}"))?;
        command.stdin(input);
        let started = Instant::now();
        let mut child = command.spawn().map_err(|e| {
            format!(
                "the parser process {} could not be started: {e}",
                self.program.display()
            )
        })?;
        let stdout = child.stdout.take();
        let reader = std::thread::spawn(move || read_capped(stdout, MAX_ANSWER_BYTES));
        let stderr = child.stderr.take();
        let errors = std::thread::spawn(move || read_capped(stderr, MAX_STDERR_BYTES));

        let status = wait_until(&mut child, started + limits.timeout);
        let answer = reader.join().unwrap_or_default();
        let errors = errors.join().unwrap_or_default();
        let Some(status) = status else {
            return Err(format!(
                "the parser took longer than {} s and was stopped",
                limits.timeout.as_secs()
            ));
        };
        if !status.success() {
            return Err(why_it_died(status, &errors, limits));
        }
        if answer.len() > MAX_ANSWER_BYTES {
            return Err(format!(
                "the parser's answer is larger than {} MiB",
                MAX_ANSWER_BYTES >> 20
            ));
        }
        serde_json::from_slice(&answer)
            .map_err(|e| format!("the parser's answer could not be read: {e}"))
    }
}

fn mail_of(answer: Answer) -> Result<ParsedMail, ParseError> {
    match answer {
        Answer::Mail { fields, parts, .. } => Ok(ParsedMail { fields, parts }),
        Answer::NotMime { bytes } => Err(ParseError::NotMime(bytes)),
        Answer::Empty => Err(ParseError::Empty),
        Answer::Unreadable { why } => Err(ParseError::Unreadable(why)),
        other => Err(ParseError::Unreadable(format!(
            "unexpected answer from the parser: {other:?}"
        ))),
    }
}

/// `raw` in an anonymous file in memory (Linux), read from its start.
#[cfg(target_os = "linux")]
fn message_file(raw: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::Seek;
    use std::os::fd::FromRawFd;
    // SAFETY: a plain syscall with a NUL-terminated name; the descriptor it returns is
    // owned by the File from here on.
    let fd = unsafe { libc::memfd_create(c"verre-mail".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(raw)?;
    file.rewind()?;
    Ok(file)
}

/// `raw` in an unnamed temporary file, read from its start.
#[cfg(not(target_os = "linux"))]
fn message_file(raw: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::Seek;
    let mut file = tempfile_in_tmp()?;
    file.write_all(raw)?;
    file.rewind()?;
    Ok(file)
}

#[cfg(not(target_os = "linux"))]
fn tempfile_in_tmp() -> std::io::Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!(
        "verre-mail-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// Everything `from` gives, up to `cap + 1` bytes (one more than allowed tells it was
/// cut).
fn read_capped(from: Option<impl Read>, cap: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(from) = from {
        let _ = from.take(cap as u64 + 1).read_to_end(&mut bytes);
    }
    bytes
}

/// The child's exit status, or `None` when `deadline` passed first (the child is then
/// killed and reaped).
fn wait_until(child: &mut std::process::Child, deadline: Instant) -> Option<ExitStatus> {
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => break,
            Ok(None) => {
                std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Why a child ended without an answer, in words for a part's note (no content of the
/// message: the child's own messages are only matched, never quoted).
fn why_it_died(status: ExitStatus, stderr: &[u8], limits: ParserLimits) -> String {
    let said = |what: &str| stderr.windows(what.len()).any(|w| w == what.as_bytes());
    if said("memory allocation of") || said("capacity overflow") || said("out of memory") {
        return format!(
            "the parser reached its memory limit ({} MiB)",
            limits.memory_bytes >> 20
        );
    }
    if said("has overflowed its stack") {
        return "the parser overflowed its stack (a document nested too deep)".into();
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return match signal {
                libc::SIGXCPU => format!(
                    "the parser reached its CPU time limit ({} s)",
                    limits.cpu_seconds
                ),
                libc::SIGKILL => "the parser was killed (CPU or memory limit)".into(),
                _ => format!("the parser crashed (signal {signal})"),
            };
        }
    }
    if said("panicked") {
        return "the parser panicked".into();
    }
    format!("the parser failed ({status})")
}

/// The child's limits, set between fork and exec.
#[cfg(unix)]
fn apply_limits(limits: ParserLimits) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    type Resource = libc::__rlimit_resource_t;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    type Resource = libc::c_int;
    fn set(resource: Resource, soft: u64, hard: u64) -> std::io::Result<()> {
        let limit = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: a plain syscall on a value on the stack.
        match unsafe { libc::setrlimit(resource, &limit) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
    set(libc::RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)?;
    // SIGXCPU at the soft limit, SIGKILL a second later.
    set(
        libc::RLIMIT_CPU,
        limits.cpu_seconds,
        limits.cpu_seconds.saturating_add(1),
    )?;
    // No core files with a message's content in them, and no files written at all.
    set(libc::RLIMIT_CORE, 0, 0)?;
    set(libc::RLIMIT_FSIZE, 0, 0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIL: &[u8] = b"From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n";

    /// A stand-in for `verre`: a shell script run with the subcommand and mode as $1, $2.
    fn script(body: &str) -> ChildParser {
        let dir = std::env::temp_dir().join(format!("verre-isolation-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("child-{:x}.sh", hash_of(body)));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        ChildParser {
            program: path,
            limits: ParserLimits {
                timeout: Duration::from_secs(2),
                ..Default::default()
            },
        }
    }

    fn hash_of(text: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        h.finish()
    }

    #[test]
    fn modes_round_trip() {
        for mode in [
            ChildMode::Mail,
            ChildMode::MailWithoutDocuments,
            ChildMode::Document(3),
        ] {
            assert_eq!(ChildMode::parse(&mode.arg()), Some(mode));
        }
        assert_eq!(ChildMode::parse("document:x"), None);
    }

    #[test]
    fn the_child_answer_is_the_in_process_parse() {
        let Answer::Mail { parts, .. } = answer(MAIL, ChildMode::Mail) else {
            panic!("not a mail answer");
        };
        let direct = parse_mail(MAIL).unwrap();
        assert_eq!(parts.len(), direct.parts.len());
        assert_eq!(parts[1].text.as_deref(), Some("hello\r\n"));
        let json = serde_json::to_vec(&answer(MAIL, ChildMode::Mail)).unwrap();
        assert!(mail_of(serde_json::from_slice(&json).unwrap()).is_ok());
        assert!(matches!(
            answer(b"", ChildMode::Mail),
            Answer::NotMime { .. } | Answer::Empty
        ));
    }

    #[test]
    fn a_crash_a_hang_and_garbage_are_reasons_not_panics() {
        let crash = script("kill -SEGV $$");
        let why = crash.run(MAIL, ChildMode::Mail).unwrap_err();
        assert!(why.contains("crashed (signal 11)"), "{why}");
        // The message itself cannot be read: the stage fails with the reason.
        let e = crash.parse(MAIL).unwrap_err();
        assert!(
            e.to_string().starts_with("unreadable: the parser crashed"),
            "{e}"
        );

        let hang = script("exec sleep 30");
        let started = Instant::now();
        let why = hang.run(MAIL, ChildMode::Mail).unwrap_err();
        assert!(why.contains("longer than 2 s"), "{why}");
        assert!(started.elapsed() < Duration::from_secs(10));

        let oom = script("echo 'memory allocation of 4294967296 bytes failed' >&2; kill -ABRT $$");
        let why = oom.run(MAIL, ChildMode::Mail).unwrap_err();
        assert!(why.contains("memory limit (1024 MiB)"), "{why}");

        let garbage = script("cat >/dev/null; echo not json");
        let why = garbage.run(MAIL, ChildMode::Mail).unwrap_err();
        assert!(why.contains("could not be read"), "{why}");

        let missing = ChildParser {
            program: PathBuf::from("/nonexistent/verre"),
            limits: ParserLimits::default(),
        };
        let why = missing.run(MAIL, ChildMode::Mail).unwrap_err();
        assert!(why.contains("could not be started"), "{why}");
    }

    #[test]
    fn the_child_gets_no_environment_and_its_limits() {
        assert!(
            std::env::var_os("HOME").is_some(),
            "the test needs HOME set"
        );
        let probe = script(
            "cat >/dev/null; [ -z \"$HOME\" ] || exit 3; \
             [ \"$(ulimit -c)\" = 0 ] || exit 4; [ \"$(ulimit -t)\" = 30 ] || exit 5; \
             echo '{\"answer\": \"empty\"}'",
        );
        match probe.run(MAIL, ChildMode::Mail) {
            Ok(Answer::Empty) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn in_process_without_a_binary() {
        assert!(matches!(
            MailParser::from_program(None).unwrap(),
            MailParser::InProcess
        ));
        assert!(matches!(
            MailParser::from_program(Some("/usr/bin/verre".into())).unwrap(),
            MailParser::Child(_)
        ));
        assert!(MailParser::InProcess.parse(MAIL).is_ok());
    }
}
