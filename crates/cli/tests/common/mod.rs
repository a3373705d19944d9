//! Helpers shared by the CLI tests that start `verre` processes.
#![allow(dead_code)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

pub fn models() -> Option<PathBuf> {
    let models = std::env::var_os("VERRE_HOME")
        .map(|h| PathBuf::from(h).join("models"))
        .filter(|m| m.join("smollm2-135m").exists() && m.join("minilm-l6").exists());
    if models.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "VERRE_HOME must hold smollm2-135m and minilm-l6 in CI"
        );
        eprintln!("skipped: set VERRE_HOME to a home with smollm2-135m and minilm-l6 pulled");
    }
    models
}

pub fn verre(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_verre"));
    c.env("VERRE_HOME", home)
        .env_remove("VERRE_DATABASE")
        .env_remove("VERRE_DATA_KEY")
        .env_remove("VERRE_DATA_KEY_FILE")
        .env_remove("VERRE_CRM_WEBHOOK_SECRET")
        .env_remove("VERRE_INTAKE_STUB_DELAY_MS")
        .env_remove("VERRE_INTAKE_STUB_LOG")
        .env_remove("VERRE_PARSER_BIN");
    c
}

/// A home with the test store's models in it.
pub fn home(models: &Path) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(models, home.path().join("models")).unwrap();
    home
}

/// A started process whose stderr is read line by line.
pub struct Running {
    pub child: Child,
    pub lines: Receiver<String>,
    pub printed: Vec<String>,
}

impl Running {
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            printed: Vec::new(),
        }
    }

    /// Read lines until one satisfies `pick`; its answer.
    pub fn wait_for<T>(&mut self, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no {what}:\n{}", self.printed.join("\n")));
            let found = pick(&line);
            self.printed.push(line);
            if let Some(found) = found {
                return found;
            }
        }
    }

    pub fn alive(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.printed.push(line);
        }
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the process died:\n{}",
            self.printed.join("\n")
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_address(line: &str) -> Option<String> {
    line.split_whitespace()
        .find(|w| w.starts_with("http://"))
        .map(|w| w.trim_end_matches("/v1").to_string())
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed:\n{}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The API key `verre up`'s first start wrote to `$VERRE_HOME/first-start-secrets`.
pub fn first_api_key(home: &Path) -> String {
    let secrets = std::fs::read_to_string(home.join("first-start-secrets")).unwrap();
    secrets
        .lines()
        .find_map(|l| l.strip_prefix("api_key = "))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no api_key in the first-start secrets:\n{secrets}"))
}

/// The status of a one-token chat request to `model` at `base` with `key`.
pub fn chat_status(base: &str, key: &str, model: &str) -> u16 {
    let body = format!(
        r#"{{"model": "{model}", "max_tokens": 1, "messages": [{{"role": "user", "content": "Hi"}}]}}"#
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
}
