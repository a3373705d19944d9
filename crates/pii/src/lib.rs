//! PII detection and per-request pseudonymisation for verre.
//!
//! Two halves, used by the gateway (before a request leaves for a backend that is not
//! local) and by the intake pipeline (PII tags on each mail and PDF):
//!
//! - [`detect`] finds personal data in text: e-mail addresses, phone numbers (validated
//!   with libphonenumber's metadata), IBANs (country length + mod-97), payment cards
//!   (Luhn + issuer prefix), IPv4/IPv6 addresses, URLs, dates of birth (only next to a
//!   word that says so) and person names (context rules plus a dictionary of given
//!   names, see `data/LICENSE.faker`). Spans are byte offsets, sorted and non-overlapping.
//! - [`Pseudonymizer`] replaces each distinct value with a stable placeholder such as
//!   `<PERSON_1>` or `<EMAIL_2>` for the whole request; its [`Restorer`] puts the values
//!   back into an answer: whole text, a stream of chunks ([`StreamRestorer`]) in which a
//!   placeholder may be split anywhere, or JSON such as tool-call arguments.
//!
//! [`eval`] measures precision and recall on labelled text, and what a pseudonymiser
//! leaves in clear ([`eval::measure_leaks`]); docs/GDPR.md has the numbers and the licence
//! of the name lexicon.
//!
//! ```
//! use verre_pii::{DetectOptions, PiiKind, Pseudonymizer, PseudonymizeOptions};
//!
//! let spans = verre_pii::detect("Mail jean.dupont@example.fr", &DetectOptions::default());
//! assert_eq!(spans[0].kind, PiiKind::Email);
//!
//! let mut p = Pseudonymizer::new(PseudonymizeOptions::default());
//! let sent = p.pseudonymize("Dear Jean Dupont, your IBAN FR14 2004 1010 0505 0001 3M02 606.");
//! assert_eq!(sent, "Dear <PERSON_1>, your IBAN <IBAN_1>.");
//! let answer = p.restorer().restore("Done, <PERSON_1>.");
//! assert_eq!(answer, "Done, Jean Dupont.");
//!
//! // Streamed answers: a placeholder may arrive in pieces.
//! let mut stream = p.restorer().stream();
//! let mut shown = stream.push("Bye <PERS");
//! shown += &stream.push("ON_1>!");
//! shown += &stream.finish();
//! assert_eq!(shown, "Bye Jean Dupont!");
//! ```

mod checksum;
mod detect;
pub mod eval;
mod names;
mod pseudonym;
mod recognizers;

pub use checksum::{iban_is_valid, iban_length, luhn_is_valid};
pub use detect::{DetectOptions, PiiKind, PiiSpan, detect};
pub use pseudonym::{Escape, PseudonymizeOptions, Pseudonymizer, Restorer, StreamRestorer};
pub use recognizers::vet_proposed_names;
