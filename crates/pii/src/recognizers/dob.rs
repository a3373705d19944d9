//! Dates of birth: a date (numeric, ISO, or with a month name in English, French, German,
//! Dutch, Italian or Spanish) reported only when a birth word comes shortly before it
//! ("born", "date of birth", "DOB", "né(e) le", "geboren", "Geburtsdatum", …). Other dates
//! — invoice dates, due dates — are not personal data on their own.

use std::sync::LazyLock;

use regex::Regex;

use super::{is_word_bounded, window_before};
use crate::detect::{Candidate, DetectOptions, PiiKind};

const MONTHS: &str = "jan(?:uary|vier|uar|uari)?|gennaio|j[äa]nner|feb(?:ruary|ruar|ruari|braio)?|f[ée]v(?:rier)?|m[äa]r(?:ch|s|z|zo)?|maerz|maart|apr(?:il|ile)?|avr(?:il)?|may|mai|mei|maggio|mayo|june?|juin|juni|giugno|junio|july?|juil(?:let)?|juli|luglio|julio|aug(?:ust|ustus)?|ao[ûu]t|agosto|sep(?:t|tember|tembre)?|sett(?:embre)?|oct(?:ober|obre)?|okt(?:ober)?|ottobre|nov(?:ember|embre)?|dec(?:ember)?|d[ée]c(?:embre)?|dez(?:ember)?|dicembre|diciembre|enero|febrero|marzo|abril|agosto|septiembre|setiembre|octubre|noviembre";

pub(super) static DATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)[0-9]{{1,2}}[./\-][0-9]{{1,2}}[./\-](?:[0-9]{{4}}|[0-9]{{2}})|[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}|[0-9]{{1,2}}(?:er|st|nd|rd|th|\.)?\s+(?:de\s+)?(?:{MONTHS})\.?\s+(?:de\s+)?[0-9]{{4}}|(?:{MONTHS})\.?\s+[0-9]{{1,2}}(?:st|nd|rd|th)?,?\s+[0-9]{{4}}"
    ))
    .expect("date pattern")
});

/// Lower-case words that say the next date is a birth date; each must start a word
/// ("année" does not hold "née").
const BIRTH_WORDS: [&str; 30] = [
    "born",
    "birth",
    "dob",
    "d.o.b",
    "birthday",
    "né le",
    "née le",
    "né(e) le",
    "né(e)",
    "né à",
    "née à",
    "naissance",
    "geboren",
    "geb.",
    "geb am",
    "geburtsdatum",
    "geburtstag",
    "geboortedatum",
    "nato il",
    "nata il",
    "nato a",
    "nata a",
    "nato ad",
    "nata ad",
    "nascita",
    "nacimiento",
    "nacido",
    "nacida",
    "nac.",
    "f. nac",
];

/// Whether a birth word starts a word in `before`.
fn has_birth_word(before: &str) -> bool {
    BIRTH_WORDS.iter().any(|w| {
        before.match_indices(w).any(|(i, _)| {
            !before[..i]
                .chars()
                .next_back()
                .is_some_and(char::is_alphabetic)
        })
    })
}

/// The German genealogical star right before the date: `* 16.12.1963` at the start of
/// the line, or after a comma or a parenthesis (`Hülya Demir, * 25. Juni 1938`); the
/// date ends the line or the clause.
fn after_birth_star(text: &str, start: usize, end: usize) -> bool {
    let line = &text[super::near_line_start(text, start, 128)..start];
    let Some(lead) = line
        .strip_suffix("* ")
        .or_else(|| line.strip_suffix("*\u{a0}"))
    else {
        return false;
    };
    let lead = lead.trim_end_matches([' ', '\t']);
    let lead_ok =
        lead.trim_start_matches(['>', ' ', '\t']).is_empty() || lead.ends_with([',', '(']);
    let rest = text[end..].trim_start_matches([' ', '\t']);
    let end_ok = rest.is_empty()
        || rest.starts_with(['\n', '\r', ',', ')', ';'])
        || rest.starts_with("in ")
        || rest.starts_with("à ");
    lead_ok && end_ok
}

pub(super) fn find(text: &str, _opts: &DetectOptions, out: &mut Vec<Candidate>) {
    for m in DATE.find_iter(text) {
        if !is_word_bounded(text, m.start(), m.end()) {
            continue;
        }
        // The birth word must be close: on the same line or the one before (forms put
        // the label above the value), within 40 bytes.
        let before = window_before(text, m.start(), 40);
        let before = match before.rmatch_indices('\n').nth(1) {
            Some((i, _)) => &before[i + 1..],
            None => &before[..],
        };
        // A birth word speaks for the first date after it, not for one after another
        // date ("née le 02/09/2019) le 13/05/2024").
        let before = match before.rfind(|c: char| c.is_ascii_digit()) {
            Some(i) => &before[i + 1..],
            None => before,
        };
        if has_birth_word(before) || after_birth_star(text, m.start(), m.end()) {
            out.push(Candidate {
                kind: PiiKind::DateOfBirth,
                start: m.start(),
                end: m.end(),
                score: 0.9,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{DetectOptions, PiiKind, detect};

    fn dobs(text: &str) -> Vec<String> {
        detect(text, &DetectOptions::only(&[PiiKind::DateOfBirth]))
            .into_iter()
            .map(|s| s.text)
            .collect()
    }

    #[test]
    fn finds_birth_dates_next_to_birth_words() {
        assert_eq!(
            dobs("Jean Dupont, né le 3 avril 1979 à Lyon"),
            ["3 avril 1979"]
        );
        assert_eq!(dobs("Date of birth: 12/03/1985"), ["12/03/1985"]);
        assert_eq!(dobs("geb. 07.05.1962 in Köln"), ["07.05.1962"]);
        assert_eq!(dobs("born on March 4, 1990."), ["March 4, 1990"]);
        assert_eq!(dobs("Geburtsdatum:\n1. März 1975"), ["1. März 1975"]);
        assert_eq!(dobs("DOB 1988-11-30"), ["1988-11-30"]);
    }

    #[test]
    fn italian_spanish_and_star_lead_forms() {
        assert_eq!(dobs("nato a Catania il 16/2/1985"), ["16/2/1985"]);
        assert_eq!(dobs("nata ad Ancona il 3 marzo 1950"), ["3 marzo 1950"]);
        assert_eq!(dobs("Sofia, nata il 9 gennaio 2017"), ["9 gennaio 2017"]);
        assert_eq!(
            dobs("nacido el 4 de setiembre de 1999"),
            ["4 de setiembre de 1999"]
        );
        assert_eq!(
            dobs("su hijo Tarek (Fecha nac.: 28/04/2013) el"),
            ["28/04/2013"]
        );
        assert_eq!(
            dobs("nacida el 7 de marzo de 1966."),
            ["7 de marzo de 1966"]
        );
        assert_eq!(
            dobs("Name: Irmgard Heckelmann\n> * 23.1.1997\n"),
            ["23.1.1997"]
        );
        assert_eq!(
            dobs("Patientin: Hülya Demir, * 25. Juni 1938, Versichert"),
            ["25. Juni 1938"]
        );
        assert_eq!(
            dobs("Elle est née à Lyon le 3 avril 1979"),
            ["3 avril 1979"]
        );
    }

    #[test]
    fn birth_words_speak_for_the_next_date_only() {
        assert_eq!(
            dobs("votre fille (née le 02/09/2019) le 13/05/2024 à 14h30"),
            ["02/09/2019"]
        );
    }

    #[test]
    fn birth_words_start_a_word() {
        assert!(dobs("dans l'année 12/03/2023").is_empty());
        assert!(dobs("* 12.03.2024 Lieferung erfolgt").is_empty());
        assert!(dobs("Preis 3 * 12.03.2024").is_empty());
    }

    #[test]
    fn ignores_other_dates() {
        assert!(dobs("Invoice date: 12/03/2023, due 2023-04-04").is_empty());
        assert!(dobs("Rechnungsdatum 7. Mai 2014").is_empty());
        assert!(dobs("born\n\n\nlong ago, then 01/02/2000").is_empty());
    }
}
