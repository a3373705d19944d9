//! Sample mail for `verre up --demo`: a handful of messages verre writes itself (fictional
//! people and companies), some with PDF attachments, spanning the threat levels from a
//! newsletter to a reported data breach, and the small CRM database they are looked up in.
//!
//! Every message has a fixed `Date` and `Message-ID`, so dropping the set into an inbox twice
//! stores each message once (the store deduplicates by content hash).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine as _;
use lopdf::content::{Content, Operation};
use lopdf::{Document, Object, Stream, dictionary};
use sha2::Digest as _;

/// One sample message.
#[derive(Debug, Clone)]
pub struct DemoMail {
    /// A short stable name, used as the Maildir file name.
    pub name: &'static str,
    /// The threat level a careful reader would give it.
    pub expected_threat: &'static str,
    /// The whole RFC 5322 message.
    pub raw: Vec<u8>,
}

struct Spec {
    name: &'static str,
    threat: &'static str,
    from: &'static str,
    subject: &'static str,
    date: &'static str,
    body: &'static str,
    /// (file name, page lines) of a PDF attachment.
    pdf: Option<(&'static str, &'static [&'static str])>,
}

const SPECS: &[Spec] = &[
    Spec {
        name: "01-order-question",
        threat: "low",
        from: "Claire Dubois <claire.dubois@atelier-dubois.example>",
        subject: "Question about purchase order PO-2026-118",
        date: "Mon, 23 Nov 2026 09:12:00 +0100",
        body: "Hello,\n\nPlease find attached our purchase order PO-2026-118 for 40 licences.\n\
               Could you confirm the delivery date and whether the volume discount applies?\n\n\
               Best regards,\nClaire Dubois\nAtelier Dubois SARL",
        pdf: Some((
            "PO-2026-118.pdf",
            &[
                "PURCHASE ORDER PO-2026-118",
                "Buyer: Atelier Dubois SARL, 12 rue des Lilas, 69003 Lyon",
                "Date: 2026-11-23",
                "Item: Annual licence, verre support tier",
                "Quantity: 40",
                "Unit price: EUR 120.00",
                "Total: EUR 4,800.00",
                "Requested delivery: 2026-12-15",
            ],
        )),
    },
    Spec {
        name: "02-supplier-invoice",
        threat: "low",
        from: "Accounts <billing@nordlicht-hosting.example>",
        subject: "Invoice NL-88412 for November 2026",
        date: "Tue, 24 Nov 2026 07:45:00 +0100",
        body: "Dear customer,\n\nYour invoice NL-88412 for November 2026 is attached.\n\
               The amount of EUR 1,290.00 is due on 2026-12-08.\n\nNordlicht Hosting GmbH",
        pdf: Some((
            "NL-88412.pdf",
            &[
                "INVOICE NL-88412",
                "Nordlicht Hosting GmbH, Hafenstrasse 4, 20457 Hamburg",
                "Invoice date: 2026-11-24",
                "Service period: November 2026",
                "Dedicated GPU server, 1 month: EUR 1,100.00",
                "Backup storage 2 TB: EUR 190.00",
                "Total due: EUR 1,290.00 by 2026-12-08",
            ],
        )),
    },
    Spec {
        name: "03-delivery-complaint",
        threat: "medium",
        from: "Jonas Weber <j.weber@weber-logistik.example>",
        subject: "Third late delivery this month",
        date: "Wed, 25 Nov 2026 16:03:00 +0100",
        body: "Hello,\n\nThis is the third time this month that your delivery arrived late.\n\
               Our warehouse was staffed for nothing twice. I expect a call from your account\n\
               manager this week and a credit note for the wasted hours.\n\nJonas Weber\n\
               Weber Logistik",
        pdf: None,
    },
    Spec {
        name: "04-legal-threat",
        threat: "high",
        from: "Maître Sophie Laurent <s.laurent@laurent-avocats.example>",
        subject: "Formal notice: breach of contract MSA-2024-07",
        date: "Thu, 26 Nov 2026 11:30:00 +0100",
        body: "Dear Sir or Madam,\n\nOn behalf of my client, Boulangeries Martin SAS, I hereby give\n\
               formal notice of breach of the master services agreement MSA-2024-07 (attached).\n\
               Unless the service levels of clause 7 are restored within 8 days, my client will\n\
               terminate the agreement and seek damages before the competent court.\n\n\
               Sophie Laurent, avocate",
        pdf: Some((
            "formal-notice-MSA-2024-07.pdf",
            &[
                "FORMAL NOTICE (MISE EN DEMEURE)",
                "Re: Master services agreement MSA-2024-07",
                "Client: Boulangeries Martin SAS",
                "Clause 7 (service levels): availability below 99.5% for three months",
                "Deadline to remedy: 8 days from receipt",
                "Failing which: termination and a claim for damages",
            ],
        )),
    },
    Spec {
        name: "05-data-breach",
        threat: "critical",
        from: "Dr. Pieter de Vries <p.devries@kliniek-noord.example>",
        subject: "URGENT: patient records exposed through your portal",
        date: "Fri, 27 Nov 2026 06:58:00 +0100",
        body: "Hello,\n\nThis morning our staff found patient records of other clinics visible in\n\
               our account on your portal. This is a personal data breach under GDPR Art. 33 and\n\
               we must notify the authority within 72 hours. Our incident report is attached.\n\
               Please call me immediately on +31 20 555 0142.\n\nDr. Pieter de Vries\n\
               Kliniek Noord",
        pdf: Some((
            "incident-report-KN-2026-11-27.pdf",
            &[
                "INCIDENT REPORT KN-2026-11-27",
                "Reported by: Dr. Pieter de Vries, Kliniek Noord",
                "Detected: 2026-11-27 06:40 CET",
                "Observation: records of other clinics visible in our portal account",
                "Categories: health data (GDPR Art. 9)",
                "Records visible: at least 230",
                "Requested: immediate containment and a written statement",
            ],
        )),
    },
    Spec {
        name: "06-newsletter",
        threat: "low",
        from: "Events <news@eurotech-summit.example>",
        subject: "Early-bird tickets for EuroTech Summit 2027",
        date: "Sat, 28 Nov 2026 08:00:00 +0100",
        body: "EuroTech Summit 2027, Berlin, 14-16 April.\n\nEarly-bird tickets are 30% off until\n\
               31 December. Unsubscribe at any time from your account settings.",
        pdf: None,
    },
];

/// The pipeline `verre up` writes on its first start; `{crm_webhook_url}` stands for the
/// CRM webhook's address.
pub const UP_PIPELINE: &str = include_str!("../assets/up-pipeline.toml");

/// The business database `verre up`'s pipeline cross-references.
pub const CRM_SCHEMA_SQL: &str = "\
CREATE TABLE IF NOT EXISTS customers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE, tier TEXT NOT NULL);
";

/// The customers among the demo mails' senders.
pub const DEMO_CRM_SQL: &str = "\
INSERT OR IGNORE INTO customers (id, name, email, tier) VALUES
    (1, 'Atelier Dubois SARL', 'claire.dubois@atelier-dubois.example', 'gold'),
    (2, 'Weber Logistik', 'j.weber@weber-logistik.example', 'silver'),
    (3, 'Boulangeries Martin SAS', 'contact@boulangeries-martin.example', 'gold'),
    (4, 'Kliniek Noord', 'p.devries@kliniek-noord.example', 'platinum');
";

/// Create the CRM table in the SQLite file `path` if missing; with `demo`, add the demo
/// customers (once).
pub async fn prepare_crm(path: &Path, demo: bool) -> Result<()> {
    let mut sql = CRM_SCHEMA_SQL.to_string();
    if demo {
        sql.push_str(DEMO_CRM_SQL);
    }
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .with_context(|| format!("preparing {}", path.display()))?;
    Ok(())
}

/// The sample messages, built fresh (PDFs included) each call.
pub fn demo_mails() -> Result<Vec<DemoMail>> {
    SPECS
        .iter()
        .map(|s| {
            Ok(DemoMail {
                name: s.name,
                expected_threat: s.threat,
                raw: message(s)?,
            })
        })
        .collect()
}

/// Write the sample messages into `maildir/new` (creating the Maildir), each once: a message
/// already in `new/` or `cur/` is not written again. Returns the paths written.
pub fn write_demo_maildir(maildir: &Path) -> Result<Vec<PathBuf>> {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub))
            .with_context(|| format!("creating {}", maildir.join(sub).display()))?;
    }
    let mut written = Vec::new();
    for mail in demo_mails()? {
        let file = format!("verre-demo-{}:2,", mail.name);
        let seen = ["new", "cur"].iter().any(|d| {
            std::fs::read_dir(maildir.join(d))
                .map(|entries| {
                    entries.flatten().any(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(&format!("verre-demo-{}", mail.name))
                    })
                })
                .unwrap_or(false)
        });
        if seen {
            continue;
        }
        // Maildir delivery: write in tmp/, then rename into new/ (atomic for readers).
        let tmp = maildir.join("tmp").join(&file);
        std::fs::write(&tmp, &mail.raw).with_context(|| format!("writing {}", tmp.display()))?;
        let dest = maildir.join("new").join(&file);
        std::fs::rename(&tmp, &dest).with_context(|| format!("moving {}", dest.display()))?;
        written.push(dest);
    }
    Ok(written)
}

fn message(s: &Spec) -> Result<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = String::new();
    out.push_str(&format!("From: {}\r\n", encode_header(s.from)));
    out.push_str("To: Support <support@verre-demo.example>\r\n");
    out.push_str(&format!("Subject: {}\r\n", s.subject));
    out.push_str(&format!("Date: {}\r\n", s.date));
    out.push_str(&format!("Message-ID: <{}@verre-demo.example>\r\n", s.name));
    out.push_str("MIME-Version: 1.0\r\n");
    let body = s.body.replace('\n', "\r\n");
    match s.pdf {
        None => {
            out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
            out.push_str("Content-Transfer-Encoding: 8bit\r\n\r\n");
            out.push_str(&body);
            out.push_str("\r\n");
        }
        Some((file, lines)) => {
            let boundary = format!("verre-demo-{}", s.name);
            out.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
            ));
            out.push_str(&format!("--{boundary}\r\n"));
            out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
            out.push_str("Content-Transfer-Encoding: 8bit\r\n\r\n");
            out.push_str(&body);
            out.push_str("\r\n");
            out.push_str(&format!("--{boundary}\r\n"));
            out.push_str(&format!(
                "Content-Type: application/pdf; name=\"{file}\"\r\n"
            ));
            out.push_str(&format!(
                "Content-Disposition: attachment; filename=\"{file}\"\r\n"
            ));
            out.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
            let encoded = b64.encode(pdf(lines)?);
            for chunk in encoded.as_bytes().chunks(76) {
                out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
                out.push_str("\r\n");
            }
            out.push_str(&format!("--{boundary}--\r\n"));
        }
    }
    Ok(out.into_bytes())
}

/// A display name with non-ASCII characters as an RFC 2047 encoded word.
fn encode_header(mailbox: &str) -> String {
    if mailbox.is_ascii() {
        return mailbox.to_string();
    }
    match mailbox.split_once(" <") {
        Some((name, addr)) => format!(
            "=?utf-8?B?{}?= <{addr}",
            base64::engine::general_purpose::STANDARD.encode(name)
        ),
        None => mailbox.to_string(),
    }
}

/// A one-page PDF with `lines` of Helvetica text, top to bottom.
pub fn pdf(lines: &[&str]) -> Result<Vec<u8>> {
    let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    pdf_document(&[lines])
}

/// A PDF with one page per entry of `pages`, each its lines of Helvetica text.
pub fn pdf_document(pages: &[Vec<String>]) -> Result<Vec<u8>> {
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font_id = doc.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "Type1",
        "BaseFont" => "Helvetica",
        "Encoding" => "WinAnsiEncoding",
    });
    let resources_id = doc.add_object(dictionary! {
        "Font" => dictionary! { "F1" => font_id },
    });
    let mut kids: Vec<Object> = Vec::new();
    for lines in pages {
        let mut operations = vec![
            Operation::new("BT", vec![]),
            Operation::new("Tf", vec!["F1".into(), 12.into()]),
            Operation::new("TL", vec![18.into()]),
            Operation::new("Td", vec![72.into(), 760.into()]),
        ];
        for line in lines {
            operations.push(Operation::new(
                "Tj",
                vec![Object::string_literal(line.as_bytes().to_vec())],
            ));
            operations.push(Operation::new("T*", vec![]));
        }
        operations.push(Operation::new("ET", vec![]));
        let content = Content { operations };
        let content_id = doc.add_object(Stream::new(
            dictionary! {},
            content.encode().context("encoding a PDF page")?,
        ));
        let page_id = doc.add_object(dictionary! {
            "Type" => "Page",
            "Parent" => pages_id,
            "Contents" => content_id,
        });
        kids.push(page_id.into());
    }
    let count = kids.len() as i64;
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Kids" => kids,
            "Count" => count,
            "Resources" => resources_id,
            "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        }),
    );
    let catalog_id = doc.add_object(dictionary! {
        "Type" => "Catalog",
        "Pages" => pages_id,
    });
    doc.trailer.set("Root", catalog_id);
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).context("writing the PDF")?;
    Ok(bytes)
}

/// A mail with a plain-text body and one PDF attachment.
pub fn mail_with_pdf(from: &str, subject: &str, body: &str, file: &str, pdf: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = format!(
        "From: {from}\r\nTo: Legal <legal@verre-demo.example>\r\nSubject: {subject}\r\n\
         Date: Mon, 7 Dec 2026 03:00:00 +0000\r\nMessage-ID: <{}@verre-demo.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"verre-doc\"\r\n\r\n\
         --verre-doc\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n\
         --verre-doc\r\nContent-Type: application/pdf; name=\"{file}\"\r\n\
         Content-Disposition: attachment; filename=\"{file}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        &hex::encode(sha2::Sha256::digest(pdf))[..16],
        body.replace('\n', "\r\n"),
    );
    for chunk in b64.encode(pdf).as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push_str("\r\n");
    }
    out.push_str("--verre-doc--\r\n");
    out.into_bytes()
}

// ---- long documents, for tests and trials of whole-document reading ----

/// Clause sentences without names, dates or amounts: the body of a long document's pages.
const CLAUSES: [&str; 12] = [
    "The parties shall cooperate in good faith in the performance of this Agreement.",
    "Each party shall keep the other party's confidential information secret.",
    "Notices under this Agreement shall be given in writing to the addresses on file.",
    "No failure to exercise a right shall operate as a waiver of that right.",
    "The services shall be performed with reasonable skill, care and diligence.",
    "Each party remains responsible for its own employees and subcontractors.",
    "Changes to the scope of the services require a written change request.",
    "The supplier shall maintain adequate insurance for the duration of the services.",
    "Records relating to the services shall be kept for the statutory period.",
    "Any amendment to this Agreement must be signed by both parties.",
    "If any provision is held invalid, the remaining provisions stay in force.",
    "Headings are for convenience only and do not affect interpretation.",
];

/// A generated contract whose three key facts sit on known pages.
#[derive(Debug, Clone)]
pub struct LongContract {
    pub pdf: Vec<u8>,
    pub counterparty: &'static str,
    /// ISO date of the termination deadline.
    pub deadline: &'static str,
    pub penalty: f64,
    /// 1-based pages of the counterparty, the deadline and the penalty in the PDF.
    pub pages: [u32; 3],
}

/// A `pages`-page contract: the counterparty on page 1, the termination deadline on page
/// 37, the penalty on page 49 (of a 50-page document), every other page clauses. With
/// `shuffle` the pages are laid out in another order (a fixed permutation from the seed)
/// and `pages` says where the facts went.
pub fn long_contract(pages: usize, shuffle: Option<u64>) -> Result<LongContract> {
    anyhow::ensure!(
        pages >= 50,
        "the contract has the facts up to page 49 of 50"
    );
    let counterparty = "Northwind Logistics B.V.";
    let mut content: Vec<Vec<String>> = (0..pages)
        .map(|i| {
            let mut lines = vec![format!("MASTER SERVICES AGREEMENT - Section {}", i + 1)];
            for k in 0..8 {
                lines.push(CLAUSES[(i * 5 + k * 7) % CLAUSES.len()].to_string());
            }
            lines
        })
        .collect();
    content[0].splice(
        1..1,
        [
            "This Agreement is made between Verre Demo Services SARL (the Client) and".to_string(),
            format!("{counterparty} (the Counterparty), registered in Rotterdam."),
        ],
    );
    content[36].splice(
        1..1,
        [
            "Termination. Either party may terminate this Agreement by written notice".to_string(),
            "received no later than 15 September 2027 (the termination deadline).".to_string(),
        ],
    );
    content[48].splice(
        1..1,
        [
            "Penalty. For each breach of the service levels the Counterparty shall pay".to_string(),
            "a contractual penalty of EUR 48,500.00 to the Client.".to_string(),
        ],
    );
    let mut order: Vec<usize> = (0..pages).collect();
    if let Some(seed) = shuffle {
        // A small deterministic shuffle (xorshift), so the test needs no rand crate.
        let mut x = seed.max(1);
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
    }
    let laid_out: Vec<Vec<String>> = order.iter().map(|&i| content[i].clone()).collect();
    let page_of = |i: usize| order.iter().position(|&o| o == i).expect("a permutation") as u32 + 1;
    Ok(LongContract {
        pdf: pdf_document(&laid_out)?,
        counterparty,
        deadline: "2027-09-15",
        penalty: 48500.0,
        pages: [page_of(0), page_of(36), page_of(48)],
    })
}

/// A `pages`-page report in sections, one per topic, each opening with a heading that
/// names its topic and then discussing it: for summaries, where every topic must come
/// through.
pub fn sectioned_report(pages: usize, topics: &[&str]) -> Result<Vec<u8>> {
    anyhow::ensure!(
        !topics.is_empty() && pages >= topics.len(),
        "one page per topic at least"
    );
    let per = pages / topics.len();
    let mut laid_out = Vec::new();
    for (t, topic) in topics.iter().enumerate() {
        let n = if t + 1 == topics.len() {
            pages - per * t
        } else {
            per
        };
        for k in 0..n {
            let mut lines = Vec::new();
            if k == 0 {
                lines.push(format!("Chapter {}: {topic}", t + 1));
            }
            for j in 0..4 {
                lines.push(CLAUSES[(t * 3 + k + j) % CLAUSES.len()].to_string());
                lines.push(format!(
                    "Finding {}.{} of this chapter concerns {topic}.",
                    t + 1,
                    k * 4 + j + 1
                ));
            }
            laid_out.push(lines);
        }
    }
    pdf_document(&laid_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_demo_mail_parses_with_its_attachment_text() {
        let mails = demo_mails().unwrap();
        assert!(mails.len() >= 5);
        let levels: std::collections::BTreeSet<_> =
            mails.iter().map(|m| m.expected_threat).collect();
        assert!(levels.len() >= 3, "several threat levels: {levels:?}");
        let mut pdfs = 0;
        for (mail, spec) in mails.iter().zip(SPECS) {
            let parsed = crate::parse::parse_mail(&mail.raw).unwrap();
            assert_eq!(parsed.fields["subject"], spec.subject, "{}", mail.name);
            let text: String = parsed
                .parts
                .iter()
                .filter_map(|p| p.text.clone())
                .collect::<Vec<_>>()
                .join("\n");
            assert!(
                text.contains(spec.body.lines().nth(2).unwrap_or("").trim()),
                "{}: body missing from {text:?}",
                mail.name
            );
            if let Some((file, lines)) = spec.pdf {
                pdfs += 1;
                let pdf_part = parsed
                    .parts
                    .iter()
                    .find(|p| p.filename.as_deref() == Some(file))
                    .unwrap_or_else(|| panic!("{}: no part named {file}", mail.name));
                let pdf_text = pdf_part.text.as_deref().unwrap_or_default();
                for line in lines {
                    assert!(
                        pdf_text.contains(line),
                        "{}: PDF text lacks {line:?}: {pdf_text:?}",
                        mail.name
                    );
                }
            }
        }
        assert!(pdfs >= 3);
    }

    #[test]
    fn the_up_pipeline_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.toml");
        std::fs::write(
            &path,
            UP_PIPELINE
                .replace("{crm_webhook_url}", "http://127.0.0.1:9/hook")
                .replace("{model}", "qwen2.5-coder-1.5b"),
        )
        .unwrap();
        let p = crate::Pipeline::load(&path).unwrap();
        assert_eq!(p.extract.model, "qwen2.5-coder-1.5b");
        assert!(p.draft.is_some() && p.crossref.is_some());
        assert_eq!(p.labels.len(), 2);
    }

    #[test]
    fn the_demo_maildir_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_demo_maildir(dir.path()).unwrap();
        assert_eq!(first.len(), SPECS.len());
        let again = write_demo_maildir(dir.path()).unwrap();
        assert!(again.is_empty());
        let source = crate::Source::detect(dir.path().to_str().unwrap()).unwrap();
        assert!(matches!(source, crate::Source::Maildir(_)));
        assert_eq!(source.read_all().unwrap().len(), SPECS.len());
    }
}
