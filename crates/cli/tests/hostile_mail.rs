//! Hostile documents in the inbox (issue 18, item 1): a PDF whose form XObject draws
//! itself (pdf-extract alone recursed until the stack overflowed, which no `catch_unwind`
//! can catch; `intake/src/pdf.rs` now stops such forms at a depth limit, so the page is
//! read) and a Flate bomb (nested Flate streams that inflate to gigabytes). Both are
//! built here. Parsed in `verre`'s child process under limits, the bomb ends as a part
//! noted `unreadable: <why>`, the mail goes on through the pipeline, and the process that
//! runs the pipeline — `verre intake run`, `verre up` — lives on.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

/// The verre process under test may use this much data memory (RLIMIT_DATA): a bomb
/// inflated in it, rather than in its child, ends it.
const PARENT_DATA_LIMIT: u64 = 1536 << 20;
/// The parser child's address-space limit in these tests (`VERRE_PARSER_MEMORY_MIB`).
const CHILD_MEMORY_MIB: &str = "512";
/// What the bomb inflates to.
const BOMB_BYTES: usize = 3 << 30;

/// `verre`, with the parser child limited to [`CHILD_MEMORY_MIB`] and, when given, the
/// process itself to `data_limit` bytes of data memory.
fn verre(data_limit: Option<u64>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_verre"));
    c.env_remove("VERRE_DATABASE")
        .env_remove("VERRE_INTAKE_STUB_DELAY_MS")
        .env_remove("VERRE_INTAKE_STUB_LOG")
        .env_remove("VERRE_PARSER_BIN")
        .env("VERRE_PARSER_MEMORY_MIB", CHILD_MEMORY_MIB)
        .env("VERRE_PARSER_TIMEOUT_SECS", "60");
    let Some(data_limit) = data_limit else {
        return c;
    };
    // SAFETY: between fork and exec, only setrlimit (async-signal-safe).
    unsafe {
        c.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: data_limit as libc::rlim_t,
                rlim_max: data_limit as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

// ---- PDFs built here ----

/// A PDF of `objects` (object n is `objects[n - 1]`, whole `<< >>` or stream text), with
/// a correct cross-reference table; object 1 is the catalog.
fn pdf(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        writeln!(out, "{} 0 obj", i + 1).unwrap();
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    write!(out, "xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).unwrap();
    for o in offsets {
        writeln!(out, "{o:010} 00000 n ").unwrap();
    }
    write!(
        out,
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        objects.len() + 1
    )
    .unwrap();
    out
}

fn stream(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut s = format!("<< {dict} /Length {} >>\nstream\n", data.len()).into_bytes();
    s.extend_from_slice(data);
    s.extend_from_slice(b"\nendstream");
    s
}

/// One page whose content is `content` (with `content_dict` entries such as a filter)
/// and whose resources are `resources`; more objects from 5 on.
fn one_page(resources: &str, content_dict: &str, content: &[u8], more: &[Vec<u8>]) -> Vec<u8> {
    let mut objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        format!("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources {resources} /Contents 4 0 R >>")
            .into_bytes(),
        stream(content_dict, content),
    ];
    objects.extend_from_slice(more);
    pdf(&objects)
}

const FONT: &str = "/Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >>";

/// A page with text, then a form XObject that draws itself.
fn recursive_xobject_pdf() -> Vec<u8> {
    let form = stream(
        "/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /XObject << /X0 5 0 R >> >>",
        b"q /X0 Do Q",
    );
    one_page(
        &format!("<< {FONT} /XObject << /X0 5 0 R >> >>"),
        "",
        b"BT /F1 12 Tf 72 700 Td (Invoice 42) Tj ET q /X0 Do Q",
        &[form],
    )
}

/// A page whose content is Flate inside Flate, inflating to `BOMB_BYTES` zeros.
fn flate_bomb_pdf() -> Vec<u8> {
    let inner = zlib_of_zeros(BOMB_BYTES);
    let mut outer = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    outer.write_all(&inner).unwrap();
    let outer = outer.finish().unwrap();
    one_page(
        &format!("<< {FONT} >>"),
        "/Filter [/FlateDecode /FlateDecode]",
        &outer,
        &[],
    )
}

/// A zlib stream of `total` zero bytes (a multiple of 1 MiB), without compressing them
/// all: 1 MiB is deflated once, ending on a full flush (byte-aligned, referring to
/// nothing before it), and that block is repeated.
fn zlib_of_zeros(total: usize) -> Vec<u8> {
    const CHUNK: usize = 1 << 20;
    assert_eq!(total % CHUNK, 0);
    let mut deflate = flate2::Compress::new(flate2::Compression::fast(), false);
    let mut block = Vec::with_capacity(CHUNK);
    deflate
        .compress_vec(&vec![0u8; CHUNK], &mut block, flate2::FlushCompress::Full)
        .unwrap();
    assert_eq!(
        deflate.total_in(),
        CHUNK as u64,
        "one call deflates the chunk"
    );
    let mut out = vec![0x78, 0x01];
    for _ in 0..total / CHUNK {
        out.extend_from_slice(&block);
    }
    // A final, empty fixed-Huffman block, then Adler-32 of the zeros (a = 1, b = n).
    out.extend_from_slice(&[0x03, 0x00]);
    let b = (total % 65_521) as u32;
    out.extend_from_slice(&((b << 16) | 1).to_be_bytes());
    out
}

#[test]
fn the_bomb_inflates_to_what_it_says() {
    use std::io::Read;
    let small = zlib_of_zeros(3 << 20);
    let mut inflated = Vec::new();
    flate2::read::ZlibDecoder::new(&small[..])
        .read_to_end(&mut inflated)
        .unwrap();
    assert_eq!(inflated.len(), 3 << 20);
    assert!(inflated.iter().all(|b| *b == 0));
}

/// A mail from `from` with a text body and `pdf` attached as `name`.
fn mail_with_pdf(from: &str, subject: &str, name: &str, pdf: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(pdf);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "From: {from}\r\nTo: desk@example.org\r\nSubject: {subject}\r\nDate: Mon, 2 Mar 2026 03:00:00 +0000\r\n\
         Message-ID: <{name}@hostile>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nPlease find the invoice attached.\r\n\
         --b\r\nContent-Type: application/pdf; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        lines.join("\r\n")
    )
    .into_bytes()
}

/// The inbox of these tests: the two hostile PDFs and a plain mail, in `dir`.
fn hostile_mails(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("1-recursive.eml"),
        mail_with_pdf(
            "alice@example.com",
            "Invoice",
            "recursive.pdf",
            &recursive_xobject_pdf(),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("2-bomb.eml"),
        mail_with_pdf("bob@example.net", "Scan", "bomb.pdf", &flate_bomb_pdf()),
    )
    .unwrap();
    std::fs::write(
        dir.join("3-plain.eml"),
        "From: carol@example.net\r\nTo: desk@example.org\r\nSubject: Hello\r\nMessage-ID: <plain@hostile>\r\n\r\nMy order has not arrived.\r\n",
    )
    .unwrap();
}

/// The example pipeline, beside a business database (as in tests/intake.rs).
fn example_pipeline(dir: &Path) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/intake-pipeline.toml");
    let path = dir.join("pipeline.toml");
    std::fs::copy(example, &path).unwrap();
    block_on(async {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", dir.join("crm.db").display());
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, tier TEXT);
             INSERT INTO customers (name, email, tier) VALUES ('Alice', 'alice@example.com', 'gold');",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    });
    path
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// `(filename, supported, note)` of every attachment part, by filename.
fn attachment_notes(db: &str) -> Vec<(String, bool, String)> {
    block_on(async {
        let store = verre_store::Store::open(db).await.unwrap();
        let rows: Vec<(String, i64, Option<String>)> = sqlx::query_as(
            "SELECT filename, supported, note FROM parts WHERE kind = 'attachment' ORDER BY filename",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        rows.into_iter()
            .map(|(f, s, n)| (f, s != 0, n.unwrap_or_default()))
            .collect()
    })
}

fn assert_unreadable(notes: &[(String, bool, String)]) {
    eprintln!("attachment parts: {notes:?}");
    let names: Vec<&str> = notes.iter().map(|(f, _, _)| f.as_str()).collect();
    assert_eq!(names, ["bomb.pdf", "recursive.pdf"], "{notes:?}");
    let (_, supported, note) = &notes[0];
    assert!(!supported, "bomb.pdf: {note}");
    assert!(note.starts_with("unreadable: "), "bomb.pdf: {note}");
    assert!(note.contains("memory limit"), "{notes:?}");
    // The form that draws itself is cut at the reader's depth limit: the page is read.
    let (_, supported, note) = &notes[1];
    assert!(supported, "recursive.pdf: {note}");
    assert!(note.is_empty(), "recursive.pdf: {note}");
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn hostile_pdfs_end_as_unreadable_parts_and_intake_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = example_pipeline(dir.path());
    let inbox = dir.path().join("inbox");
    hostile_mails(&inbox);
    let db = format!("sqlite://{}", dir.path().join("verre.db").display());
    let started = Instant::now();
    let out = verre(Some(PARENT_DATA_LIMIT))
        .args(["intake", "run", inbox.to_str().unwrap()])
        .args(["--pipeline", pipeline.to_str().unwrap()])
        .args(["--database", &db, "--backend", "stub", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verre intake run died: {}",
        describe(&out)
    );
    eprintln!("three hostile mails: {:.1?}", started.elapsed());
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["messages"], 3, "{summary:#}");
    assert_eq!(summary["processed"], 3, "{summary:#}");
    assert_eq!(summary["quarantined"], 0, "{summary:#}");
    assert_unreadable(&attachment_notes(&db));
}

#[test]
fn the_hidden_subcommand_parses_what_it_is_given() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_verre"))
        .args([verre_intake::isolation::SUBCOMMAND, "mail"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["answer"], "mail", "{answer}");
    assert_eq!(answer["parts"][1]["text"], "hello\r\n", "{answer}");
    // A MIME structure mail-parser panics on (found by fuzzing) is answered as unreadable,
    // with why, not a dead child.
    let mut child = Command::new(env!("CARGO_BIN_EXE_verre"))
        .args([verre_intake::isolation::SUBCOMMAND, "mail"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(include_bytes!(
            "../../../fuzz/regressions/mime/mail-parser-invalid-part-id.eml"
        ))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["answer"], "unreadable", "{answer}");
    assert!(
        answer["why"].as_str().unwrap().contains("MIME parser"),
        "{answer}"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_verre"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&help.stdout).contains("parse-untrusted"),
        "hidden from --help"
    );
}

/// `verre up` with the hostile mails in its inbox keeps serving. Needs the default models
/// in `$VERRE_HOME/models` (scripts/test.sh pulls them); skipped without.
#[test]
fn verre_up_keeps_serving_through_hostile_mail() {
    let Some(models) = std::env::var_os("VERRE_HOME")
        .map(|h| PathBuf::from(h).join("models"))
        .filter(|m| m.join("smollm2-135m").exists() && m.join("minilm-l6").exists())
    else {
        eprintln!("skipped: set VERRE_HOME to a home with smollm2-135m and minilm-l6 pulled");
        return;
    };
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&models, home.path().join("models")).unwrap();
    let inbox = home.path().join("inbox");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(inbox.join(sub)).unwrap();
    }
    hostile_mails(&inbox.join("new"));
    let mut up = verre(None)
        .args(["up", "--port", "0", "--poll-secs", "1"])
        // The plumbing is under test, not the model: the small one loads in a moment.
        .args(["--model", "smollm2-135m", "--intake-backend", "stub"])
        .env("VERRE_HOME", home.path())
        .env_remove("VERRE_DATA_KEY")
        .env_remove("VERRE_DATA_KEY_FILE")
        .env_remove("VERRE_CRM_WEBHOOK_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = up.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut api = None;
    while api.is_none() || !printed.iter().any(|l: &String| l.contains("Ctrl-C")) {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("verre up did not start:\n{}", printed.join("\n")));
        if let Some(url) = line
            .split_whitespace()
            .find(|w| w.starts_with("http") && w.ends_with("/v1"))
        {
            api = Some(url.trim_end_matches("/v1").to_string());
        }
        printed.push(line);
    }
    let base = api.unwrap();
    let db = format!("sqlite://{}", home.path().join("verre.db").display());
    // The three mails leave the pipeline (processed or quarantined) while up lives on.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(
            up.try_wait().unwrap().is_none(),
            "verre up died:\n{}",
            printed.join("\n")
        );
        while let Ok(line) = lines.try_recv() {
            printed.push(line);
        }
        let done: i64 = block_on(async {
            let store = verre_store::Store::open(&db).await.unwrap();
            sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE status <> 'pending'")
                .fetch_one(store.pool())
                .await
                .unwrap()
        });
        if done == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mails were not processed:\n{}",
            printed.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Serving: /health answers 200 once the models are loaded (503 "loading" before;
    // intake may finish first). verre up must stay alive all along.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let health = block_on(async {
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(format!("{base}/health"))
                .send()
                .await
                .map(|r| r.status())
        });
        match health {
            Ok(reqwest::StatusCode::OK) => break,
            Ok(reqwest::StatusCode::SERVICE_UNAVAILABLE) => {}
            other => panic!("/health: {other:?}\n{}", printed.join("\n")),
        }
        assert!(
            up.try_wait().unwrap().is_none(),
            "verre up died:\n{}",
            printed.join("\n")
        );
        assert!(
            Instant::now() < deadline,
            "the models never finished loading:\n{}",
            printed.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        up.try_wait().unwrap().is_none(),
        "verre up is still running"
    );
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(up.id() as libc::pid_t, libc::SIGINT) };
    let status = up.wait().unwrap();
    assert!(
        status.success(),
        "verre up: {status}\n{}",
        printed.join("\n")
    );
    assert_unreadable(&attachment_notes(&db));
}
