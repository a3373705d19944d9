//! `verre eval-extract DIR`: each `X.pdf` in DIR (with its answers in `X.json` beside it)
//! becomes a mail with the PDF attached; the intake pipeline runs over them with an
//! invoice schema; each field is compared with the answer, and accuracy per field printed.
//! `--all-fields` compares [`ALL_FIELDS`] instead of [`FIELDS`], each over the invoices
//! whose answer has it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine as _;
use clap::Args;
use serde_json::{Value, json};
use verre_intake::evidence::{normalise_date, parse_number};
use verre_intake::{Pipeline, Source};

use crate::intake_cmd::{BackendArg, DbArgs, WorkArgs, ingest_and_run};

/// The fields compared, in the order printed.
pub const FIELDS: [&str; 5] = ["invoice_number", "date", "amount", "currency", "issuer"];

/// The fields `--all-fields` compares: [`FIELDS`], then every scalar field that two or
/// more of the answers in ../shared/eval/invoices hold, and the tax amount, order number
/// and due date (not free text such as notes, nor the invoice lines).
pub const ALL_FIELDS: [&str; 19] = [
    "invoice_number",
    "date",
    "amount",
    "currency",
    "issuer",
    "amount_untaxed",
    "amount_tax",
    "date_due",
    "order_id",
    "partner_name",
    "partner_website",
    "partner_street",
    "partner_zip",
    "partner_city",
    "country_code",
    "vat",
    "partner_coc",
    "iban",
    "bic",
];

const DEFAULT_PIPELINE: &str = include_str!("../../../examples/invoice-pipeline.toml");
const FULL_PIPELINE: &str = include_str!("../../../examples/invoice-pipeline-full.toml");

#[derive(Args)]
pub struct EvalArgs {
    /// A folder of invoice PDFs, each with its answers in a .json file of the same name.
    pub dir: PathBuf,
    /// The pipeline to run (default: examples/invoice-pipeline.toml, built in).
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Where the run is stored (default: a temporary SQLite database).
    #[command(flatten)]
    pub db: DbArgs,
    #[arg(long, value_enum, default_value_t = BackendArg::Engine)]
    pub backend: BackendArg,
    /// verre.toml, for a pipeline whose model is a backend of it (default:
    /// $VERRE_HOME/verre.toml, else ./verre.toml, when there is one).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Intake workers sharing the model's engine (their requests are batched).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Send this many mails, going round the invoices again (each mail distinct), to
    /// measure throughput; accuracy is counted over every mail.
    #[arg(long)]
    pub mails: Option<usize>,
    /// Decode token by token: no speculative decoding, no grammar fast-forward (the
    /// fields are the same; for comparing times).
    #[arg(long)]
    pub no_speculation: bool,
    /// Then measure corrections that teach: the wrong fields of the first half of the
    /// invoices are corrected (as a reviewer would), and every invoice is extracted again
    /// with the N most similar corrected documents' fields as examples
    /// (`few_shot_from_corrections = N`); accuracy on the second half is printed without
    /// and with them (and on the first half, whose own corrections it is shown).
    #[arg(long, value_name = "N")]
    pub few_shot: Option<usize>,
    /// With --few-shot N: choose the examples field by field (`few_shot_per_field`): each
    /// corrected field from the N most similar documents that corrected it, with no
    /// similarity floor.
    #[arg(long, requires = "few_shot")]
    pub few_shot_per_field: bool,
    /// Compare every field of ALL_FIELDS (19) that an answer holds, not only the five;
    /// without --pipeline, run examples/invoice-pipeline-full.toml (built in), whose schema
    /// has them all.
    #[arg(long)]
    pub all_fields: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn eval_extract(args: EvalArgs) -> Result<()> {
    crate::intake_cmd::runtime()?.block_on(eval(args))
}

async fn eval(args: EvalArgs) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cases = Vec::new();
    let mail_dir = tmp.path().join("mail");
    std::fs::create_dir(&mail_dir)?;
    let mut pdfs: Vec<PathBuf> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("reading {}", args.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("pdf")))
        .collect();
    pdfs.sort();
    anyhow::ensure!(!pdfs.is_empty(), "no .pdf files in {}", args.dir.display());
    let mails = args.mails.unwrap_or(pdfs.len()).max(1);
    for (i, pdf) in pdfs.iter().cycle().take(mails).enumerate() {
        let answer_path = pdf.with_extension("json");
        let text = std::fs::read_to_string(&answer_path)
            .with_context(|| format!("reading {}", answer_path.display()))?;
        let answer: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", answer_path.display()))?;
        let answer = match answer {
            Value::Array(mut a) if !a.is_empty() => a.swap_remove(0),
            other => other,
        };
        let name = format!("{:03}.eml", i + 1);
        std::fs::write(
            mail_dir.join(&name),
            invoice_mail(i + 1, i + 1, &std::fs::read(pdf)?),
        )?;
        cases.push((
            pdf.file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            name,
            answer,
        ));
    }

    let (pipeline, pipeline_path) = match &args.pipeline {
        Some(p) => (crate::intake_cmd::load_pipeline(p)?, p.clone()),
        None => {
            let (p, text) = if args.all_fields {
                ("examples/invoice-pipeline-full.toml", FULL_PIPELINE)
            } else {
                ("examples/invoice-pipeline.toml", DEFAULT_PIPELINE)
            };
            (
                Pipeline::parse(Path::new(p), text)
                    .map_err(|e| anyhow::anyhow!("built-in pipeline: {e}"))?,
                p.into(),
            )
        }
    };
    let fields: &[&'static str] = if args.all_fields {
        &ALL_FIELDS
    } else {
        &FIELDS
    };
    let db = DbArgs {
        database: Some(
            args.db
                .database
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", tmp.path().join("eval.db").display())),
        ),
    };
    let work = WorkArgs {
        pipeline: pipeline_path,
        db,
        workers: args.workers,
        backend: args.backend,
        config: args.config.clone(),
        lease_secs: 120,
        no_speculation: args.no_speculation,
    };
    anyhow::ensure!(
        args.few_shot.is_none() || args.mails.is_none(),
        "--few-shot measures over the invoices once each: leave out --mails"
    );
    let second_pipeline = pipeline.clone();
    let source = Source::detect(mail_dir.to_str().context("a UTF-8 temporary path")?)?;
    let (store, ids, summary) = ingest_and_run(&source, &work, pipeline, !args.json).await?;
    let (tally, rows) = score(&store, fields, &cases, &ids).await?;
    let few_shot = match args.few_shot {
        Some(n) => Some(
            feed_back(
                &store,
                &work,
                second_pipeline,
                (fields, &cases, &rows, &pdfs),
                tmp.path(),
                (n, args.few_shot_per_field),
                !args.json,
            )
            .await?,
        ),
        None => None,
    };
    report(&args, fields, &rows, &tally, &summary, few_shot.as_ref())
}

type Case = (String, String, Value);

/// Per field: how many extractions got it right, over how many answers hold it.
type Tally = BTreeMap<&'static str, (usize, usize)>;

/// Each extraction against its answer: a tally per field, and a row per case. A field the
/// answer does not hold (or holds as null) is not compared.
async fn score(
    store: &verre_store::Store,
    fields: &[&'static str],
    cases: &[Case],
    ids: &[i64],
) -> Result<(Tally, Vec<Value>)> {
    let mut tally: Tally = fields.iter().map(|f| (*f, (0, 0))).collect();
    let mut rows = Vec::new();
    for ((stem, _, answer), id) in cases.iter().zip(ids) {
        let got = store.stage_output(*id, "extract").await?;
        let mut row = json!({"file": stem, "message": id});
        match &got {
            None => {
                let reason = store
                    .quarantined()
                    .await?
                    .into_iter()
                    .find(|q| q.message_id == *id)
                    .map(|q| format!("{}: {}", q.stage, q.reason))
                    .unwrap_or_else(|| "not extracted".into());
                row["error"] = json!(reason);
                // Every field the answer holds counts as missed.
                for f in fields.iter().filter(|f| !answer[**f].is_null()) {
                    tally.get_mut(f).expect("a compared field").1 += 1;
                }
            }
            Some(got) => {
                for f in fields.iter().filter(|f| !answer[**f].is_null()) {
                    let ok = field_matches(f, &got[*f], &answer[*f]);
                    let t = tally.get_mut(f).expect("a compared field");
                    *t = (t.0 + ok as usize, t.1 + 1);
                    row[*f] = json!({"expected": answer[*f], "got": got[*f], "ok": ok});
                }
            }
        }
        rows.push(row);
    }
    Ok((tally, rows))
}

/// A tally as JSON: per field `{"correct", "of"}`.
fn tally_json(tally: &Tally) -> Value {
    tally
        .iter()
        .map(|(f, (c, n))| (f.to_string(), json!({"correct": c, "of": n})))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Corrections that teach, measured: the wrong fields of the first half (rounded up) of
/// the invoices corrected with their answers, each with the words of the document the
/// answer stands in, then every invoice extracted again, in the same store, with
/// `few_shot_from_corrections = n` (and `few_shot_per_field` when `per_field`). Accuracy on the second half (the measurement) without
/// and with, and on the first half without and, sent again, with its own corrections.
async fn feed_back(
    store: &verre_store::Store,
    work: &WorkArgs,
    mut pipeline: Pipeline,
    (fields, cases, rows, pdfs): (&[&'static str], &[Case], &[Value], &[PathBuf]),
    tmp: &Path,
    (n, per_field): (usize, bool),
    progress: bool,
) -> Result<Value> {
    let half = cases.len().div_ceil(2);
    let first_ids: Vec<i64> = rows[..half]
        .iter()
        .map(|r| r["message"].as_i64().unwrap_or(-1))
        .collect();
    let second_ids: Vec<i64> = rows[half..]
        .iter()
        .map(|r| r["message"].as_i64().unwrap_or(-1))
        .collect();
    // Before anything is run again: the leave-one-out pass below replaces the first half's
    // extractions.
    let (first, _) = score(store, fields, &cases[..half], &first_ids).await?;
    let (without, _) = score(store, fields, &cases[half..], &second_ids).await?;
    let mut corrections = 0;
    for ((_, _, answer), row) in cases.iter().zip(rows).take(half) {
        let Some(id) = row["message"]
            .as_i64()
            .filter(|_| row.get("error").is_none())
        else {
            continue;
        };
        let evidence = store.evidence(id).await?.unwrap_or_default();
        let document = evidence["document"].as_str().unwrap_or("");
        let wrong = fields
            .iter()
            .filter(|f| !answer[**f].is_null() && row[**f]["ok"] != json!(true));
        for f in wrong {
            let span = verre_intake::evidence::find_value(document, &answer[*f]);
            let correction = verre_store::FieldCorrection {
                value: answer[*f].clone(),
                previous: row[*f]["got"].clone(),
                quote: span.map(|(s, e)| document[s..e].to_string()),
                context: span.map(|(s, e)| verre_intake::evidence::context_of(document, s, e)),
            };
            store
                .correct_field(id, f, &correction, "eval-extract")
                .await?;
            corrections += 1;
        }
    }
    let second = &cases[half..];
    pipeline.extract.few_shot = n;
    pipeline.extract.few_shot_per_field = per_field;
    // Leave one out, on the first half only: each of its invoices is extracted again as the
    // same message, which is never shown its own corrections, so it sees those of the other
    // first-half invoices. This is the measurement a design may be chosen by: it never
    // looks at the second half. One at a time, so that every other corrected document
    // keeps its evidence while an invoice is extracted.
    let idle = tmp.join("mail-none");
    std::fs::create_dir_all(&idle)?;
    let idle = Source::detect(idle.to_str().context("a UTF-8 temporary path")?)?;
    for id in first_ids.iter().filter(|id| **id >= 0) {
        store.rerun_stage(*id, "extract", "eval-extract").await?;
        ingest_and_run(&idle, work, pipeline.clone(), false).await?;
    }
    let (loo, mut loo_rows) = score(store, fields, &cases[..half], &first_ids).await?;
    for (row, id) in loo_rows.iter_mut().zip(&first_ids) {
        let evidence = store.evidence(*id).await?.unwrap_or_default();
        row["few_shot"] = evidence.get("few_shot").cloned().unwrap_or(json!([]));
    }
    let mail_dir = tmp.join("mail-again");
    std::fs::create_dir_all(&mail_dir)?;
    // Every invoice again, as other mails (another Message-ID): the second half is the
    // measurement; the first half, sent again, shows whether the model follows its own
    // corrections at all. The attachment keeps its first name: the model reads the file
    // name, and a prompt that differs only there changed answers (invoice-5.pdf vs
    // invoice-1005.pdf: coolblue1's partner_city and partner_coc), so only the examples may
    // differ between the two runs.
    for (i, pdf) in pdfs.iter().enumerate() {
        let name = format!("{:04}.eml", 1001 + i);
        std::fs::write(
            mail_dir.join(name),
            invoice_mail(1001 + i, i + 1, &std::fs::read(pdf)?),
        )?;
    }
    let source = Source::detect(mail_dir.to_str().context("a UTF-8 temporary path")?)?;
    let (store, ids, summary) = ingest_and_run(&source, work, pipeline, progress).await?;
    let (first_again, mut first_rows) = score(&store, fields, &cases[..half], &ids[..half]).await?;
    let (with, mut with_rows) = score(&store, fields, second, &ids[half..]).await?;
    // Which corrected fields each extraction was shown, and how like its document theirs was.
    for (row, id) in first_rows.iter_mut().chain(with_rows.iter_mut()).zip(&ids) {
        let evidence = store.evidence(*id).await?.unwrap_or_default();
        row["few_shot"] = evidence.get("few_shot").cloned().unwrap_or(json!([]));
    }
    Ok(json!({
        "fed_back": half,
        "corrections": corrections,
        "examples": n,
        "second_half": second.iter().map(|c| &c.0).collect::<Vec<_>>(),
        "first_half_without": tally_json(&first),
        "first_half_again_with": tally_json(&first_again),
        "first_half_leave_one_out": tally_json(&loo),
        "cases_leave_one_out": loo_rows,
        "without": tally_json(&without),
        "with": tally_json(&with),
        "cases_first_again": first_rows,
        "cases_with": with_rows,
        "seconds": summary.seconds,
    }))
}

fn report(
    args: &EvalArgs,
    fields: &[&'static str],
    rows: &[Value],
    tally: &Tally,
    summary: &crate::intake_cmd::Summary,
    few_shot: Option<&Value>,
) -> Result<()> {
    let n = rows.len();
    // Over the invoices whose answer holds the field.
    let accuracy: BTreeMap<&str, f64> = tally
        .iter()
        .map(|(f, (c, of))| (*f, *c as f64 / (*of).max(1) as f64))
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "documents": n, "accuracy": accuracy, "fields": tally_json(tally), "cases": rows,
                "prompt_tokens": summary.prompt_tokens, "completion_tokens": summary.completion_tokens,
                "seconds": summary.seconds, "quarantined": summary.quarantined,
                "workers": args.workers, "few_shot": few_shot,
            }))?
        );
        return Ok(());
    }
    for row in rows {
        println!("{}:", row["file"].as_str().unwrap_or(""));
        if let Some(e) = row.get("error") {
            println!("  not extracted: {}", e.as_str().unwrap_or(""));
            continue;
        }
        for f in fields.iter().filter(|f| row.get(**f).is_some()) {
            let r = &row[*f];
            println!(
                "  {} {:<15} expected {:<28} got {}",
                if r["ok"] == json!(true) {
                    "ok  "
                } else {
                    "MISS"
                },
                f,
                r["expected"].to_string(),
                r["got"]
            );
        }
    }
    println!("\naccuracy over {n} invoice(s), each field over the answers that hold it:");
    for f in fields {
        let (c, of) = tally[f];
        println!("  {:<15} {c}/{of} ({:.0}%)", f, accuracy[f] * 100.0);
    }
    println!(
        "tokens {} prompt + {} completion, {:.1} s, {} quarantined",
        summary.prompt_tokens, summary.completion_tokens, summary.seconds, summary.quarantined
    );
    if let Some(f) = few_shot {
        println!(
            "\ncorrections that teach: {} wrong field(s) of the first {} invoice(s) corrected; the other {} extracted again with the {} most similar corrected document(s) as examples:",
            f["corrections"],
            f["fed_back"],
            f["second_half"].as_array().map_or(0, Vec::len),
            f["examples"]
        );
        let count = |part: &str, field: &str| {
            let t = &f[part][field];
            match (t["correct"].as_u64(), t["of"].as_u64()) {
                (Some(c), Some(of)) if of > 0 => format!("{c}/{of}"),
                _ => "-".into(),
            }
        };
        println!(
            "  {:<15} {:>13} {:>16} {:>15} {:>14} {:>11}",
            "field",
            "first without",
            "first again with",
            "first leave-out",
            "second without",
            "second with"
        );
        for field in fields {
            println!(
                "  {:<15} {:>13} {:>16} {:>15} {:>14} {:>11}",
                field,
                count("first_half_without", field),
                count("first_half_again_with", field),
                count("first_half_leave_one_out", field),
                count("without", field),
                count("with", field)
            );
        }
        println!(
            "(first leave-out: each first-half invoice shown the other first-half invoices' corrections, never its own)"
        );
        println!("examples shown (document, field, similarity):");
        let runs = [
            ("leave-out", "cases_leave_one_out"),
            ("again", "cases_first_again"),
            ("second", "cases_with"),
        ];
        let rows = runs.iter().flat_map(|(run, key)| {
            f[*key]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |row| (run, row))
        });
        for (run, row) in rows {
            let shown: Vec<String> = row["few_shot"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    format!(
                        "message {} {} ({:.2})",
                        e["message"],
                        e["field"].as_str().unwrap_or(""),
                        e["similarity"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            println!(
                "  {} ({run}): {}",
                row["file"].as_str().unwrap_or(""),
                if shown.is_empty() {
                    "none".to_string()
                } else {
                    shown.join(", ")
                }
            );
        }
    }
    Ok(())
}

/// Mail `n`, a plain mail with the invoice attached as `invoice-{attachment}.pdf`. The
/// subject and file name say nothing about the invoice, so only the PDF's text can answer.
fn invoice_mail(n: usize, attachment: usize, pdf: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(pdf);
    let wrapped: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "From: Accounts <accounts@example.com>\r\nTo: intake@example.org\r\nSubject: Invoice {n}\r\n\
         Date: Mon, 2 Mar 2026 09:00:00 +0000\r\nMessage-ID: <eval-{n}@example.com>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"verre-eval\"\r\n\r\n\
         --verre-eval\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease find the invoice attached.\r\n\
         --verre-eval\r\nContent-Type: application/pdf; name=\"invoice-{attachment}.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"invoice-{attachment}.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {}\r\n--verre-eval--\r\n",
        wrapped.join("\r\n")
    )
}

/// Does an extracted value match the answer? Each field is compared the way a person
/// checking the invoice would: numbers as numbers, dates as dates, names loosely.
pub fn field_matches(field: &str, got: &Value, expected: &Value) -> bool {
    match field {
        "amount" | "amount_untaxed" | "amount_tax" => match (number(got), number(expected)) {
            (Some(a), Some(b)) => (a - b).abs() < 0.005,
            _ => false,
        },
        "date" | "date_due" => match (got.as_str().and_then(normalise_date), expected.as_str()) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        },
        "currency" => match (got.as_str(), expected.as_str()) {
            (Some(a), Some(b)) => currency_code(a).as_deref() == Some(b),
            _ => false,
        },
        // Numbers and codes: the same letters and digits, spacing and punctuation aside.
        "invoice_number" | "order_id" | "vat" | "partner_coc" | "iban" | "bic" | "partner_zip" => {
            match (got.as_str().map(alnum), expected.as_str().map(alnum)) {
                (Some(a), Some(b)) => !a.is_empty() && a == b,
                _ => false,
            }
        }
        "country_code" => match (got.as_str(), expected.as_str()) {
            (Some(a), Some(b)) => a.trim().eq_ignore_ascii_case(b.trim()),
            _ => false,
        },
        "partner_website" => match (got.as_str().map(host), expected.as_str().map(host)) {
            (Some(a), Some(b)) => !a.is_empty() && a == b,
            _ => false,
        },
        "issuer" | "partner_name" | "partner_street" | "partner_city" => {
            match (got.as_str().map(words), expected.as_str().map(words)) {
                // "Amazon Web Services, Inc." names "Amazon Web Services"; either may be the
                // longer.
                (Some(a), Some(b)) => {
                    !a.is_empty() && !b.is_empty() && (a.contains(&b) || b.contains(&a))
                }
                _ => false,
            }
        }
        _ => got == expected,
    }
}

/// A website's host, lower case, without `www.`: "http://www.azure-interior.com/" and
/// "azure-interior.com" name the same site.
fn host(s: &str) -> String {
    let s = s.trim().to_lowercase();
    let s = s.split_once("://").map_or(s.as_str(), |(_, rest)| rest);
    let s = s.split('/').next().unwrap_or("");
    s.strip_prefix("www.").unwrap_or(s).to_string()
}

fn alnum(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

fn words(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                ' '
            }
        })
        .collect();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64().or_else(|| parse_number(v.as_str()?))
}

fn currency_code(s: &str) -> Option<String> {
    let t = s.trim();
    let by_symbol = [
        ("€", "EUR"),
        ("$", "USD"),
        ("£", "GBP"),
        ("₹", "INR"),
        ("rs", "INR"),
        ("euro", "EUR"),
        ("dollar", "USD"),
        ("rupee", "INR"),
    ];
    let lower = t.to_lowercase();
    if t.len() == 3 && t.chars().all(|c| c.is_ascii_alphabetic()) {
        return Some(t.to_ascii_uppercase());
    }
    by_symbol
        .iter()
        .find(|(sym, _)| lower.contains(sym))
        .map(|(_, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_compare_like_a_person_would() {
        assert!(field_matches("amount", &json!("€ 717,97"), &json!(717.97)));
        assert!(field_matches("amount", &json!("1,234.50"), &json!(1234.5)));
        assert!(field_matches("amount", &json!(4.11), &json!(4.11)));
        assert!(!field_matches("amount", &json!(4.12), &json!(4.11)));
        assert!(field_matches(
            "date",
            &json!("7. Mai 2014"),
            &json!("2014-05-07")
        ));
        assert!(field_matches(
            "date",
            &json!("19 avril 2014"),
            &json!("2014-04-19")
        ));
        assert!(field_matches(
            "date",
            &json!("August 3, 2014"),
            &json!("2014-08-03")
        ));
        assert!(field_matches(
            "date",
            &json!("07.05.2014"),
            &json!("2014-05-07")
        ));
        assert!(field_matches(
            "date",
            &json!("2023-03-20"),
            &json!("2023-03-20")
        ));
        assert!(!field_matches("date", &json!("2023"), &json!("2023-03-20")));
        assert!(field_matches("currency", &json!("€"), &json!("EUR")));
        assert!(field_matches("currency", &json!("usd"), &json!("USD")));
        assert!(field_matches(
            "invoice_number",
            &json!("BLR_WFLD20151000982590"),
            &json!("#BLR_WFLD20151000982590")
        ));
        assert!(field_matches(
            "issuer",
            &json!("Amazon Web Services, Inc."),
            &json!("Amazon Web Services")
        ));
        assert!(!field_matches("issuer", &json!(""), &json!("Flipkart")));
    }

    /// An invoice sent again differs from its first mail in the headers the prompt does not
    /// show, never in the attachment's name, which it does.
    #[test]
    fn an_invoice_sent_again_keeps_its_attachment_name() {
        let first = invoice_mail(5, 5, b"%PDF-1.4");
        let again = invoice_mail(1005, 5, b"%PDF-1.4");
        let attachment = |m: &str| {
            m[m.find("--verre-eval\r\nContent-Type: application/pdf")
                .unwrap()..]
                .to_string()
        };
        assert_eq!(attachment(&first), attachment(&again));
        assert!(
            again.contains("Message-ID: <eval-1005@example.com>"),
            "{again}"
        );
    }

    #[test]
    fn the_full_pipeline_asks_for_every_field_compared() {
        let p = Pipeline::parse(Path::new("invoice-pipeline-full.toml"), FULL_PIPELINE).unwrap();
        let properties = p.extract.schema["properties"].as_object().unwrap();
        let asked: Vec<&str> = properties.keys().map(String::as_str).collect();
        for f in ALL_FIELDS {
            assert!(properties.contains_key(f), "{f} not in {asked:?}");
            assert!(
                p.extract.prompt.contains(f),
                "the prompt does not say what {f} is"
            );
        }
        assert_eq!(properties.len(), ALL_FIELDS.len());
    }

    #[test]
    fn every_field_of_all_fields_has_its_comparison() {
        assert!(field_matches("amount_tax", &json!("16,94"), &json!(16.94)));
        assert!(field_matches(
            "amount_untaxed",
            &json!(593.36),
            &json!(593.36)
        ));
        assert!(!field_matches(
            "amount_untaxed",
            &json!(717.97),
            &json!(593.36)
        ));
        assert!(field_matches(
            "date_due",
            &json!("04/04/2023"),
            &json!("2023-04-04")
        ));
        assert!(field_matches(
            "vat",
            &json!("DE232446240"),
            &json!("DE 232 446 240")
        ));
        assert!(field_matches(
            "iban",
            &json!("NL50 INGB 0683 2513 09"),
            &json!("NL50INGB0683251309")
        ));
        assert!(!field_matches(
            "partner_coc",
            &json!("2433008"),
            &json!("24330087")
        ));
        assert!(field_matches(
            "partner_website",
            &json!("www.azure-interior.com"),
            &json!("http://www.azure-interior.com")
        ));
        assert!(field_matches(
            "partner_website",
            &json!("https://aws.amazon.com/"),
            &json!("aws.amazon.com")
        ));
        assert!(!field_matches(
            "partner_website",
            &json!("amazon.com"),
            &json!("aws.amazon.com")
        ));
        assert!(field_matches("country_code", &json!("nl"), &json!("NL")));
        assert!(field_matches(
            "partner_name",
            &json!("Coolblue B.V."),
            &json!("Coolblue B.V.")
        ));
        assert!(field_matches(
            "partner_street",
            &json!("Weena 664,"),
            &json!("Weena 664")
        ));
        assert!(field_matches(
            "partner_zip",
            &json!("3012CN"),
            &json!("3012 CN")
        ));
        // A null where the answer has a value is a miss, whatever the field.
        for f in ALL_FIELDS {
            assert!(!field_matches(f, &Value::Null, &json!("x")), "{f}");
        }
    }
}
