//! Issue 18, item 3, through the binary: erasure and retention under a running `verre up`
//! are not undone by its inbox. `verre up` takes each mail out of its Maildir once stored;
//! erased and purged bytes delivered again are "forgotten", not stored; `verre erase`
//! removes the subject's mail still waiting in the inbox; after a restart nothing comes
//! back. Also the low items: `verre erase|purge|audit|intake show` find the `data-keys`
//! and `verre.toml` that `verre up` made in `$VERRE_HOME`, and `verre purge --dry-run`
//! reports what the run then removes.
//!
//! Needs the small models in `$VERRE_HOME/models` (scripts/test.sh pulls them); skipped
//! without.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;

const JEANNE: &str = "jeanne.martin@example.fr";

fn mail(from: &str, subject: &str, body: &str) -> String {
    format!(
        "From: {from}\r\nTo: desk@example.org\r\nSubject: {subject}\r\nMessage-ID: <{subject}@up-gdpr>\r\n\r\n{body}\r\n"
    )
}

struct Up {
    child: Child,
    lines: Receiver<String>,
    printed: Vec<String>,
}

impl Up {
    fn log(&mut self) -> String {
        while let Ok(l) = self.lines.try_recv() {
            self.printed.push(l);
        }
        self.printed.join("\n")
    }

    fn alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("verre up ended ({status}):\n{}", self.log());
        }
    }

    fn stop(mut self) {
        // SAFETY: a signal to the child this test started.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "verre up: {status}\n{}", self.log());
    }
}

/// `verre` with `$VERRE_HOME` = `home`, no data key in the environment (the commands must
/// find `verre up`'s), run from `cwd` (no verre.toml there).
fn verre(home: &Path, cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_verre"));
    c.env("VERRE_HOME", home)
        .current_dir(cwd)
        .env_remove("VERRE_DATABASE")
        .env_remove("VERRE_DATA_KEY")
        .env_remove("VERRE_DATA_KEY_FILE")
        .env_remove("VERRE_AUDIT_KEY_FILE")
        .env_remove("VERRE_AUDIT_SINK_FILE")
        .env_remove("VERRE_CRM_WEBHOOK_SECRET")
        .env_remove("VERRE_INTAKE_STUB_DELAY_MS");
    c
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}\nstdout: {}\nstderr: {}",
        cmd.get_args().collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn start(home: &Path, cwd: &Path) -> Up {
    let mut child = verre(home, cwd)
        .args(["up", "--port", "0", "--poll-secs", "1"])
        .args(["--model", "smollm2-135m", "--intake-backend", "stub"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut up = Up {
        child,
        lines,
        printed: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while !up.printed.iter().any(|l| l.contains("Ctrl-C")) {
        match up.lines.recv_timeout(Duration::from_millis(500)) {
            Ok(l) => up.printed.push(l),
            Err(_) => up.alive(),
        }
        assert!(
            Instant::now() < deadline,
            "verre up did not start:\n{}",
            up.log()
        );
    }
    up
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn query(home: &Path, sql: &'static str) -> i64 {
    block_on(async {
        let store = verre_store::Store::open_in_home(home).await.unwrap();
        sqlx::query_scalar(sql)
            .fetch_one(store.pool())
            .await
            .unwrap()
    })
}

fn inbox_files(home: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for sub in ["new", "cur"] {
        for e in std::fs::read_dir(home.join("inbox").join(sub)).unwrap() {
            files.push(e.unwrap().path());
        }
    }
    files
}

/// Wait until `done` holds, with `up` alive all along.
fn wait(up: &mut Up, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !done() {
        up.alive();
        assert!(Instant::now() < deadline, "{what}:\n{}", up.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn deliver(home: &Path, name: &str, text: &str) {
    // As an MTA delivers: written in tmp/, then renamed into new/.
    let tmp = home.join("inbox/tmp").join(name);
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, home.join("inbox/new").join(name)).unwrap();
}

#[test]
fn erasure_and_retention_hold_under_verre_up_and_across_a_restart() {
    let Some(models) = std::env::var_os("VERRE_HOME")
        .map(|h| PathBuf::from(h).join("models"))
        .filter(|m| m.join("smollm2-135m").exists() && m.join("minilm-l6").exists())
    else {
        eprintln!("skipped: set VERRE_HOME to a home with smollm2-135m and minilm-l6 pulled");
        return;
    };
    let home_dir = tempfile::tempdir().unwrap();
    let home = home_dir.path();
    std::os::unix::fs::symlink(&models, home.join("models")).unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let cwd = cwd.path();

    let jeanne = mail(
        &format!("Jeanne Martin <{JEANNE}>"),
        "order",
        "Where is my order?",
    );
    let paul = mail("paul@example.de", "invoice", "Rechnung anbei.");
    let carol = mail("carol@example.net", "hello", "carol-kingfisher-19");

    let mut up = start(home, cwd);
    for (name, text) in [("1", &jeanne), ("2", &paul), ("3", &carol)] {
        deliver(home, name, text);
    }
    wait(
        &mut up,
        "the three mails were not stored and processed",
        || {
            query(
                home,
                "SELECT COUNT(*) FROM messages WHERE status <> 'pending'",
            ) == 3
        },
    );
    assert!(
        inbox_files(home).is_empty(),
        "verre up takes what it stored: {:?}",
        inbox_files(home)
    );

    // Erasure while verre up runs, with the data key verre up made (not in the env here).
    let out = run_ok(verre(home, cwd).args(["erase", "--subject", JEANNE, "--json"]));
    let erased: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        erased["messages"].as_array().unwrap().len(),
        1,
        "{erased:#}"
    );
    assert_eq!(query(home, "SELECT COUNT(*) FROM messages"), 2);
    // The same mail delivered again: forgotten, its file removed, nothing stored.
    deliver(home, "1-again", &jeanne);
    wait(&mut up, "the redelivered mail stayed in the inbox", || {
        inbox_files(home).is_empty()
    });
    assert_eq!(query(home, "SELECT COUNT(*) FROM messages"), 2);
    assert!(up.log().contains("1 forgotten"), "{}", up.log());

    // Retention, with the verre.toml verre up wrote: Paul's mail is decided and old.
    block_on(async {
        let store = verre_store::Store::open_in_home(home).await.unwrap();
        let id: i64 = sqlx::query_scalar("SELECT id FROM messages WHERE source_ref = '2'")
            .fetch_one(store.pool())
            .await
            .unwrap();
        store.reject(id, "alice", "not for us").await.unwrap();
        sqlx::query("UPDATE messages SET received_at = received_at - $1")
            .bind(400i64 * 24 * 3600 * 1000)
            .execute(store.pool())
            .await
            .unwrap();
    });
    let dry: Value = serde_json::from_slice(
        &run_ok(verre(home, cwd).args(["purge", "--dry-run", "--json"])).stdout,
    )
    .unwrap();
    let done: Value =
        serde_json::from_slice(&run_ok(verre(home, cwd).args(["purge", "--json"])).stdout).unwrap();
    for key in ["raw_purged", "messages_deleted", "rows", "audit_removed"] {
        assert_eq!(dry[key], done[key], "{key}: dry run {dry:#}\nrun {done:#}");
    }
    assert_eq!(done["messages_deleted"], 1, "{done:#}");
    assert_eq!(query(home, "SELECT COUNT(*) FROM messages"), 1);
    deliver(home, "2-again", &paul);
    wait(
        &mut up,
        "the purged mail delivered again stayed in the inbox",
        || inbox_files(home).is_empty(),
    );
    assert_eq!(query(home, "SELECT COUNT(*) FROM messages"), 1);
    up.stop();

    // While verre up is stopped: the old files delivered again, and new mail from Jeanne
    // that was never stored. Erasure reaches the inbox.
    deliver(home, "1-third", &jeanne);
    deliver(home, "2-third", &paul);
    let newer = mail(
        "someone@example.org",
        "about-jeanne",
        &format!("Please forward to {JEANNE}."),
    );
    deliver(home, "4", &newer);
    let out = run_ok(verre(home, cwd).args(["erase", "--subject", JEANNE]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed 2 file(s)"), "{text}");
    assert_eq!(inbox_files(home).len(), 1, "Paul's file waits for verre up");

    let mut up = start(home, cwd);
    wait(&mut up, "the inbox was not read after the restart", || {
        inbox_files(home).is_empty()
    });
    // A poll more, to be sure nothing else arrives.
    std::thread::sleep(Duration::from_secs(2));
    up.alive();
    assert_eq!(
        query(home, "SELECT COUNT(*) FROM messages"),
        1,
        "only Carol's mail:\n{}",
        up.log()
    );
    up.stop();

    // The other commands find verre up's data key too, and the chain verifies.
    let carol_id = query(home, "SELECT id FROM messages");
    // Its parse output is stored encrypted: shown only with the key.
    let out = run_ok(verre(home, cwd).args(["intake", "show", &carol_id.to_string()]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"from\": \"carol@example.net\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    run_ok(verre(home, cwd).args(["audit", "verify"]));
}
