//! Person names. A name is a chain of one to four capitalised words on one line
//! ("Jean-Pierre", "O'Brien", "DUPONT", initials "J."), with particles ("van der", "de",
//! "von") between them, and it is reported when something says it is a name:
//!
//! | rule | example | score |
//! |---|---|---|
//! | a name the caller supplied ([`DetectOptions::extra_names`]) | "Dupont" | 1.0 |
//! | after a title | "M. Dupont", "Frau Dr. Sabine Weber" | 0.85 |
//! | after a profession with an article | "il geometra Santoro", "der Architekt Krause" | 0.8 |
//! | after a greeting | "Dear Anna,", "Bonjour Claire" | 0.8 |
//! | alone on its line after a closing, or after "Thanks, " at the end of a line | "Best regards,\nTom Baker" | 0.8 |
//! | after a label for a person ("Kontoinhaber:", "Prénom :", "Patient:") | | 0.75 |
//! | after a generic label ("Name:", "From:") with a known name inside, or a word of it in the address that follows | "From: Kevin Walsh <…>" | 0.75 |
//! | after an introduction or a relation | "my name is …", "I, …,", "my sister …" | 0.75 |
//! | a known given name followed by a surname | "Olivier Jacquet" | 0.7 (0.85 with a known surname) |
//! | a name found by a rule above, written again elsewhere in the text (and its last word if the lexicon knows it) | "Signed, Olumide Adeyemi" | 0.7 |
//!
//! Titles are not part of the span. A chain followed by an organisation word ("GmbH",
//! "Street") is an organisation or a place, not a person.

use std::sync::LazyLock;

use regex::Regex;

use super::{char_at, char_before, is_word_bounded};
use crate::detect::{Candidate, DetectOptions, PiiKind};
use crate::names::{
    is_ambiguous_given, is_given, is_not_a_name, is_organisation_suffix, is_surname,
};

/// A capitalised word: a capital, then letters, apostrophes or hyphens inside.
static WORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\p{Lu}(?:[\p{L}\p{M}]|['’\-][\p{L}])*").expect("word pattern"));
static PARTICLE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:(?:van der|van den|van de|van 't|van ’t|van het|von der|von dem|von und zu|von|van|tom|zur|zum|vom|Zur|Zum|Vom|de la|de las|de los|del|i|y|della|delle|degli|de|du|des|der|den|di|da|dos|das|do|le|la|lo|ten|ter|zu|in 't|op 't|'t|’t|Van der|Van den|Van de|Van 't|Von der|Von|Van|De la|De|Du|Des|Di|Da|Del|Della|Dalla|Dal|Le|La|Lo|Ten|Ter|Zu)[ \u{a0}]|[dD]['’]|l['’])")
        .expect("particle pattern")
});
static TITLE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)(?:(?:[Ss]ig\.r[aei]|[Ss]ig\.n[ae]|[Dd]ott\.ssa)(?-u:\b)|(?:[Ss]igg|[Dd]ott|[Aa]vv|[Ss]rta|[Ss]ra|[Ss]r|[Mm]evr|[Mm]w|[Dd]hr|[Dd]ña)\.|(?:[Gg]eom|[Aa]rch|[Rr]ag|[Ee]gr|[Mm]ag|[Ll]ic|[Dd]ra|[Dd]rs|[Ii]r|mr|[Pp]rof\.ssa|Dipl\.-Kfm)\.|(?:Notar|Notarin|Notaio|Rechtsanwalt|Rechtsanwältin|Avvocato|Avvocata|Abogado|Abogada|Advocaat|Advocate)[ \u{a0}]|(?:Mr|Mrs|Ms|Mx|Dr|Prof|Herrn|Herr|Frau|Doña|doña|Dña|dña|don|Dhr|Mevr|Mme|Mlle|Mmes|Sig|Sra|Ing|Dipl\.-Ing)(?-u:\b)\.?|(?:M|Hr|Fr|Pr|Sr|St)\.|(?:Mister|Miss|Sir|Monsieur|Madame|Mademoiselle|Docteur|Doktor|Professor|Professeur|Maître|Meneer|Mevrouw|Signor|Signora|Signorina|Señor|Señora|Señorita|Lord|Lady|monsieur|madame|mademoiselle|meneer|mevrouw|signor|signora|signorina|señor|señora|señorita|[Dd]e heer|[Gg]eachte heer)(?-u:\b))")
        .expect("title pattern")
});
static GREETING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?-u:\b)(?:dear|hi|hello|hey|bonjour|bonsoir|salut|cher|chère|liebe|lieber|hallo|moin|servus|beste|geachte|ciao|caro|cara|gentile|hola|estimado|estimada|querido|querida|hoi|hej|goedemorgen|goedemiddag|guten morgen|guten tag|grüß gott|grüezi|buongiorno|buenos días|buenas|coucou|qué tal|que tal|dag|salve|moin moin)[ \t]+")
        .expect("greeting pattern")
});
/// A profession named with an article or a possessive, then the surname: "il geometra
/// Santoro", "l'avvocato Bianchi", "der Architekt Krause", "el notario Ruiz". Only the
/// professions that are used as forms of address in these languages; the name must pass
/// the same checks as after a title.
static PROFESSION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?-u:\b)(?:il|lo|la|l'|l’|el|le|der|die|den|dem|de|het|the|our|your|my|mio|mia|nostro|nostra|vostro|vostra|suo|sua|mon|ma|notre|votre|mein|meine|meinem|meinen|unser|unsere|unserem|unseren|ihr|ihre|ihrem|ihren|mijn|onze|uw|mi|su|nuestro|nuestra)[ \t]*(?:geometra|ingegnere|avvocato|avvocata|architetto|architetta|notaio|ragioniere|ragioniera|commercialista|dottore|dottoressa|dottor|perito|arquitecto|arquitecta|abogado|abogada|notario|notaria|gestor|gestora|aparejador|aparejadora|avocat|avocate|notaire|architecte|expert-comptable|huissier|architekt|architektin|anwalt|anwältin|steuerberater|steuerberaterin|gutachter|gutachterin|notar|notarin|notaris|advocaat|architect|boekhouder|deurwaarder|lawyer|attorney|notary|surveyor|accountant)[ \t]+")
        .expect("profession pattern")
});
/// A person naming themselves, or someone named by their relation to the writer.
static INTRODUCTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?-u:\b)(?:my name is|je m'appelle|mon nom est|ich heiße|ich heisse|mein name ist|mijn naam is|mi chiamo|me llamo|the undersigned|je soussignée?|der unterzeichnende|die unterzeichnende|de parte de|(?:my|our|your|his|her|mon|ma|notre|votre|son|sa|mein|meine|unser|unsere|ihr|ihre|mijn|onze|uw|jouw|je|haar|zijn|su|sus|mi|tu|nuestro|nuestra|vuestro|vuestra|suo|sua|mio|mia|tuo|tua|vostro|vostra|nostro|nostra)\s+(?:hijo|hija|hermano|hermana|marido|esposa|esposo|madre|padre|compañero|compañera|figlio|figlia|fratello|sorella|marito|moglie|collega|wife|husband|partner|son|daughter|mother|father|sister|brother|colleague|manager|assistant|lawyer|femme|mari|conjoint|conjointe|fils|fille|mère|père|sœur|soeur|frère|collègue|avocat|avocate|frau|mann|sohn|tochter|mutter|vater|schwester|bruder|kollege|kollegin|anwalt|anwältin|vrouw|man|zoon|dochter|moeder|vader|zus|broer|collega))[ \t,]+")
        .expect("introduction pattern")
});
/// "I, Name Surname, …" at the start of a sentence, as in declarations and mandates.
static FIRST_PERSON: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?m)(?:^|[.!?:][ \t]+)I,[ \t]+").expect("first person pattern"));
static CLOSING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?im)^[ \t>]*(?:best regards|kind regards|warm regards|regards|best wishes|best|sincerely|yours sincerely|yours truly|yours faithfully|cheers|thanks|thank you|many thanks|cordialement|bien cordialement|bien à vous|salutations distinguées|salutations|meilleures salutations|amicalement|mit freundlichen grüßen|mit freundlichen grüssen|mit freundlichen gruessen|freundliche grüße|viele grüße|beste grüße|liebe grüße|mfg|gruß|grüße|met vriendelijke groeten|met vriendelijke groet|vriendelijke groeten|vriendelijke groet|groeten|cordiali saluti|distinti saluti|saluti|saludos|atentamente|un saludo|merci d'avance|merci beaucoup|merci|vielen dank|danke schön|danke|bedankt|grazie|gracias|all the best|take care|à bientôt|bis bald|bonne journée|bonne soirée|bonne fin de journée|schönen gruß|schöne grüße|herzliche grüße|groetjes|hartelijke groet|bises|bisous|grosses bises|amitiés|lg|vg|signed|signé|gezeichnet|unterzeichnet)(?:[ \t]*[,.!]?[ \t]*\r?\n(?:[ \t]*\r?\n)?[ \t>]*|[ \t]*,[ \t]+)")
        .expect("closing pattern")
});
/// Labels whose value is a person's name.
static PERSON_FIELD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?im)^[ \t]*(?:full name|your name|customer name|nom|nom complet|prénom et nom|nom et prénom|prénom|vorname|nachname|familienname|name des kontoinhabers|kontoinhaber|kontoinhaberin|account holder|account name|titulaire du compte|titulaire|contact person|ansprechpartner|ansprechpartnerin|kontaktperson|patient|employee|employé|employée|mitarbeiter|mitarbeiterin|attn|attention|z\. ?hd\.?|à l'attention de|naam|voornaam|achternaam|signed|signé|unterschrift|beneficiary|bénéficiaire|begünstigter|cardholder|card holder|titular|nome|cognome|nombre|apellidos|dipendente|ship to|deliver to|delivery to|bill to|billing name|invoice to|lieferung an|liefern an|rechnung an|livraison à|livrer à|facturer à|t\.n\.v\.|ter attentie van|nominativo|nome e cognome|nombre y apellidos|nombre completo|apellidos y nombre|patientin|paciente|paziente|teilnehmer|teilnehmerin|participant|participante|partecipante|deelnemer|alumno|alumna|alunno|alunna|schüler|schülerin|leerling)[ \t]*:[ \t]*"?"#)
        .expect("person field pattern")
});
/// Labels whose value is often, not always, a person: a product's "Name", a mail header.
static GENERIC_FIELD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?im)^[ \t]*(?:name|contact|sender|recipient|destinataire|expéditeur|empfänger|absender|from|to|cc|bcc|reply-to|an|von|de|à|a|para|aan|van|da|signature)[ \t]*:[ \t]*"?"#)
        .expect("generic field pattern")
});
/// "Weber, Julia": surname, comma, given name, as address books write display names.
static SURNAME_FIRST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(\p{Lu}[\p{L}\p{M}'’\-]+),[ \t]+(\p{Lu}[\p{L}\p{M}'’\-]+)\b")
        .expect("surname-first pattern")
});
/// The local part of an address right after a display name (`Kevin Walsh <kevin.w@`).
static ADDRESS_AFTER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"^"?[ \t]*<([^@<>\s]+)@"#).expect("address pattern"));

pub(super) fn find(text: &str, opts: &DetectOptions, out: &mut Vec<Candidate>) {
    let mut found = Vec::new();
    let mut push = |start: usize, end: usize, score: f32| {
        found.push(Candidate {
            kind: PiiKind::Person,
            start,
            end,
            score,
        });
    };
    for m in TITLE.find_iter(text) {
        if let Some((start, end)) = surname_after_title(text, skip_titles(text, m.end())) {
            push(start, end, 0.85);
        }
    }
    for m in PROFESSION.find_iter(text) {
        // A lower-case particle here names an office more often than a family ("il
        // geometra del Comune", "el abogado del Estado"): only "Van Damme", "De Luca".
        let pos = skip_titles(text, m.end());
        if text[pos..].chars().next().is_some_and(char::is_lowercase) {
            continue;
        }
        if let Some((start, end)) = surname_after_title(text, pos) {
            push(start, end, 0.8);
        }
    }
    let mut greetings = Vec::new();
    for m in GREETING.find_iter(text) {
        greetings.push(m.start());
        if let Some((start, end)) = chain(text, skip_titles(text, m.end()), Strictness::Any) {
            push(start, end, 0.8);
        }
    }
    for m in INTRODUCTION.find_iter(text) {
        if let Some((start, end)) = chain(text, skip_titles(text, m.end()), Strictness::Any) {
            push(start, end, 0.75);
        } else if SELF_NAMING.is_match(m.as_str())
            && let Some(c) = LOWERCASE_NAME.captures(&text[m.end()..])
            && let Some(name) = c.get(1)
        {
            // "mein Name ist brinkmann.": a name written in lower case, ending the clause.
            let (start, end) = (m.end() + name.start(), m.end() + name.end());
            if text[end..]
                .chars()
                .next()
                .is_none_or(|c| ".,;!?\n\r".contains(c))
                && name
                    .as_str()
                    .split(' ')
                    .all(|w| !STOP_WORDS.contains(&w) && !NOT_A_NAME_LOWER.contains(&w))
            {
                push(start, end, 0.75);
            }
        }
    }
    for m in FIRST_PERSON.find_iter(text) {
        if let Some((start, end)) = chain(text, m.end(), Strictness::Any)
            && text[end..].starts_with(',')
        {
            push(start, end, 0.75);
        }
    }
    for m in CLOSING.find_iter(text) {
        if let Some((start, end)) = chain(text, m.end(), Strictness::Any)
            && ends_line(text, end)
        {
            push(start, end, 0.8);
        }
    }
    signature_lines(text, &mut push);
    for c in CAPS_THEN_GIVEN.captures_iter(text) {
        let (Some(caps), Some(given)) = (c.get(1), c.get(2)) else {
            continue;
        };
        if is_given(given.as_str())
            && !is_ambiguous_given(given.as_str())
            && !is_not_a_name(caps.as_str())
            && caps.as_str().chars().count() >= 2
            && is_word_bounded(text, caps.start(), given.end())
        {
            push(caps.start(), given.end(), 0.75);
        }
    }
    display_names(text, &mut push);
    for c in QUOTED_SURNAME_FIRST.captures_iter(text) {
        let Some(name) = c.get(1) else { continue };
        if name
            .as_str()
            .split(", ")
            .all(|part| name_shaped(part) && !part.split(' ').any(is_not_a_name))
        {
            push(name.start(), name.end(), 0.75);
        }
    }
    vocatives(text, &mut push);
    for m in PERSON_FIELD.find_iter(text) {
        if let Some((start, end)) = chain(text, skip_titles(text, m.end()), Strictness::Any) {
            push(start, end, 0.75);
        }
    }
    for m in PERSON_FIELD
        .find_iter(text)
        .chain(GENERIC_FIELD.find_iter(text))
    {
        if let Some(c) = SURNAME_FIRST.captures(&text[m.end()..])
            && is_given(&c[2])
            && !is_not_a_name(&c[1])
        {
            push(m.end(), m.end() + c[0].len(), 0.75);
        }
    }
    for m in GENERIC_FIELD.find_iter(text) {
        if let Some((start, end)) = chain(text, skip_titles(text, m.end()), Strictness::Any)
            && (known_name_inside(&text[start..end])
                || named_in_address(text, start, end)
                || (m.as_str().trim_start().to_lowercase().starts_with("name")
                    && ends_line(text, end)
                    && FORM_LABEL.is_match(next_line(text, end))))
        {
            push(start, end, 0.75);
        }
    }
    for m in BIRTH_AFTER.find_iter(text) {
        // The lead is followed by the date, not a header row's next column.
        let date_follows = text[m.end()..]
            .char_indices()
            .take_while(|&(i, c)| i < 40 && c != '\n')
            .any(|(_, c)| c.is_ascii_digit());
        if date_follows && let Some((start, end)) = name_before(text, m.start()) {
            push(start, end, 0.75);
        }
    }
    for m in WORD.find_iter(text) {
        let word = m.as_str();
        if char_before(text, m.start()).is_some_and(char::is_alphanumeric)
            || !is_given(word)
            || after_place_word(text, m.start())
            // "Dag Ineke,": the Dutch greeting, not the given name Dag.
            || greetings.binary_search(&m.start()).is_ok()
        {
            continue;
        }
        if let Some((start, end)) = chain(text, m.start(), Strictness::Lexicon)
            && end > m.end()
        {
            let surname_known = WORD
                .find_iter(&text[m.end()..end])
                .any(|w| is_surname(w.as_str()));
            if is_ambiguous_given(word) && !surname_known {
                continue;
            }
            push(start, end, if surname_known { 0.85 } else { 0.7 });
        } else if !is_ambiguous_given(word)
            && !is_not_a_name(word)
            && word.chars().count() >= 3
            && !after_capitalised_word(text, m.start())
            && !text[..m.start()]
                .strip_suffix(' ')
                .and_then(|h| h.chars().next_back())
                .is_some_and(|c| c.is_ascii_digit())
            && word.chars().skip(1).any(char::is_lowercase)
            && given_alone(text, m.end())
        {
            // A known given name alone, followed by a verb or punctuation: "Bram is out",
            // "Kobe reprend mes dossiers", "de parte de Xabier.".
            push(m.start(), m.end(), 0.7);
        }
    }
    // A name found once is a name wherever else it is written in the same text
    // ("Signed, Olumide Adeyemi" after "I, Olumide Adeyemi, born …"), and so is its last
    // word when the lexicon knows it as a name ("Herr Zimmermann" after "Klaus Zimmermann").
    let mut again: Vec<String> = Vec::new();
    for c in &found {
        let name = &text[c.start..c.end];
        again.push(name.to_string());
        let words: Vec<&str> = WORD.find_iter(name).map(|w| w.as_str()).collect();
        if let [_, .., last] = words[..]
            && last.chars().count() >= 3
            && (is_surname(last) || is_given(last))
        {
            again.push(last.to_string());
        }
    }
    let mut caller = Vec::new();
    for name in &opts.extra_names {
        let name = name.trim();
        caller.push(name.to_string());
        caller.extend(
            name.split_whitespace()
                .filter(|w| {
                    w.chars().count() >= 3 && w.chars().next().is_some_and(char::is_uppercase)
                })
                .map(str::to_string),
        );
    }
    let mut seen_again = Vec::new();
    occurrences(text, again, 0.7, Case::AsWritten, &mut seen_again);
    // A given name found alone ("Hallo Ayşe,") is the start of the full name where a
    // surname follows it elsewhere ("Ayşe Çelik hat angerufen").
    for c in &mut seen_again {
        if WORD.find_iter(&text[c.start..c.end]).count() == 1
            && let Some((start, end)) = chain(text, c.start, Strictness::Any)
            && start == c.start
            && end > c.end
            && !text[c.end..end].contains('\n')
            && WORD.find_iter(&text[c.end..end]).count() <= 2
        {
            c.end = end;
        }
    }
    // "Müller Metallbau GmbH" after "Thomas Müller" names the company, not the person.
    seen_again.retain(|c| !followed_by_organisation(text, c.end));
    out.append(&mut seen_again);
    occurrences(text, caller, 1.0, Case::Any, out);
    out.append(&mut found);
}

/// Introductions in which the writer names themself (not a relation).
static SELF_NAMING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(?:my name is|je m'appelle|mon nom est|ich heiße|ich heisse|mein name ist|mijn naam is|mi chiamo|me llamo)")
        .expect("self naming pattern")
});
/// One or two lower-case words.
static LOWERCASE_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(\p{Ll}[\p{Ll}\p{M}'’\-]+(?: \p{Ll}[\p{Ll}\p{M}'’\-]+)?)")
        .expect("lower-case name pattern")
});
/// Lower-case words that end an introduction without being a name.
const NOT_A_NAME_LOWER: &[&str] = &[
    "not",
    "nicht",
    "pas",
    "niet",
    "non",
    "no",
    "egal",
    "unwichtig",
    "irrelevant",
    "here",
    "hier",
    "ici",
    "qui",
    "aquí",
    "hidden",
    "secret",
    "geheim",
    "unknown",
    "unbekannt",
];

/// An all-caps surname before a given name, as forms and lists write them ("MELIS
/// Nicolò", "COURTOIS-MARIN Ségolène").
static CAPS_THEN_GIVEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(\p{Lu}{2,}(?:[\-'’]\p{Lu}{2,})?)[ \u{a0}]+(\p{Lu}\p{Ll}[\p{Ll}\p{M}]*(?:-\p{Lu}\p{Ll}[\p{Ll}\p{M}]*)?)")
        .expect("caps then given pattern")
});
/// Words that are no name in a display name ("info", "service" in `"info service" <info@…>`),
/// and the words of reply lines around one ("schreef büşra demir <bd@…>").
const STOP_WORDS: &[&str] = &[
    "info",
    "service",
    "support",
    "team",
    "office",
    "admin",
    "mail",
    "contact",
    "noreply",
    "no-reply",
    "newsletter",
    "sales",
    "billing",
    "kontakt",
    "buchhaltung",
    "verwaltung",
    "secretariat",
    "secrétariat",
    "secretaría",
    "segreteria",
    "administratie",
    "facturen",
    "invoice",
    "rechnung",
    "factures",
    "compta",
    "comptabilité",
    "the",
    "und",
    "et",
    "and",
    "schrieb",
    "schreef",
    "wrote",
    "écrit",
    "scritto",
    "escribió",
    "geschreven",
    "heeft",
    "het",
    "volgende",
    "om",
    "um",
    "at",
    "on",
    "am",
    "le",
    "el",
    "il",
    "op",
    "a",
    "à",
    "ha",
    "by",
    "from",
    "to",
    "cc",
    "von",
    "an",
    "de",
    "da",
    "van",
    "para",
    "aan",
    "mail",
    "e-mail",
    "email",
];

/// `"Squillace, Ottavio" <…>`, `"Çelik, Ayşe" ha scritto`: an address book's display name,
/// surname first, in quotes before an address or a reply verb.
static QUOTED_SURNAME_FIRST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#""([^",\n<>@]{2,40}, [^",\n<>@]{2,30})"[ \t]*(?:<|ha scritto|wrote|a écrit|escribió|schreef|schrieb|heeft)"#)
        .expect("quoted surname-first pattern")
});

/// Whether `part` is written as a name: capitalised words, with lower-case particles
/// between them ("von dem Knesebeck", "Pérez de Guzmán Ibáñez").
fn name_shaped(part: &str) -> bool {
    let words: Vec<&str> = part.split(' ').collect();
    !words.is_empty()
        && words.len() <= 5
        && words
            .last()
            .is_some_and(|w| w.chars().next().is_some_and(char::is_uppercase))
        && words.iter().all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_alphabetic() || matches!(c, '\'' | '’' | '-' | '.'))
                && (w.chars().next().is_some_and(char::is_uppercase) || PARTICLES.contains(w))
        })
}

/// Names proposed by a statistical recogniser (a named-entity model), cut down to what the
/// rules accept as a name before they go to [`DetectOptions::extra_names`]: only words that
/// start with a capital, or particles between two of them ("Sophie de Vries"); no word the
/// rules know is not a name (greetings, closings, months, departments, place words); and
/// nothing that an organisation word ends ("Boulangerie Levain SARL", "Hotel Adler").
/// What is left of a proposal is each run of such words.
pub fn vet_proposed_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let words: Vec<&str> = name
            .split_whitespace()
            .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
            .filter(|w| !w.is_empty())
            .collect();
        if words.iter().any(|w| is_organisation_suffix(w)) {
            continue;
        }
        let capital = |w: &str| {
            w.chars().next().is_some_and(char::is_uppercase)
                && w.chars().count() >= 2
                && !is_not_a_name(w)
                && !STOP_WORDS.contains(&w.to_lowercase().as_str())
        };
        let mut run: Vec<&str> = Vec::new();
        let mut flush = |run: &mut Vec<&str>| {
            while run.last().is_some_and(|w| !capital(w)) {
                run.pop();
            }
            if !run.is_empty() {
                let joined = run.join(" ");
                if !out.contains(&joined) {
                    out.push(joined);
                }
            }
            run.clear();
        };
        for w in words {
            if capital(w) || PARTICLES.contains(&w.to_lowercase().as_str()) {
                run.push(w);
            } else {
                flush(&mut run);
            }
        }
        flush(&mut run);
    }
    out
}

/// Lower-case particles of surnames.
const PARTICLES: &[&str] = &[
    "van", "von", "de", "der", "den", "dem", "del", "della", "di", "da", "du", "des", "la", "le",
    "los", "las", "lo", "ten", "ter", "tom", "zu", "zur", "y", "i", "'t", "d'", "dos", "das",
];

/// `text` in lower case, with letters folded to ASCII two ways: plain (`ö` → `o`) and as
/// German writes them in addresses (`ö` → `oe`, `ß` → `ss`).
fn folded(text: &str) -> [String; 2] {
    const GROUPS: [(&str, char); 16] = [
        ("àáâãäåāăąạảấầẩẫậắằẳẵặ", 'a'),
        ("èéêëēęěẹẻẽếềểễệ", 'e'),
        ("ìíîïıīịỉĩ", 'i'),
        ("òóôõöøōőơọỏốồổỗộớờởỡợ", 'o'),
        ("ùúûüūůűưụủứừửữự", 'u'),
        ("ýÿỳỵỷỹ", 'y'),
        ("çćč", 'c'),
        ("ñńň", 'n'),
        ("şšśș", 's'),
        ("žźż", 'z'),
        ("ğ", 'g'),
        ("ł", 'l'),
        ("đď", 'd'),
        ("ř", 'r'),
        ("ţťț", 't'),
        ("'’-. ", '\0'),
    ];
    let mut plain = String::new();
    let mut german = String::new();
    for c in text.to_lowercase().chars() {
        match c {
            'ß' => {
                plain.push_str("ss");
                german.push_str("ss");
            }
            'ä' | 'ö' | 'ü' => {
                plain.push(
                    GROUPS
                        .iter()
                        .find(|(g, _)| g.contains(c))
                        .map_or(c, |(_, a)| *a),
                );
                german.push(match c {
                    'ä' => 'a',
                    'ö' => 'o',
                    _ => 'u',
                });
                german.push('e');
            }
            _ => {
                let a = GROUPS
                    .iter()
                    .find(|(g, _)| g.contains(c))
                    .map_or(c, |(_, a)| *a);
                if a != '\0' {
                    plain.push(a);
                    german.push(a);
                }
            }
        }
    }
    [plain, german]
}

/// Display names before an address (`Duc Vu <vu.duc@…>`, `Von: brigitte rößler
/// <b.roessler@…>`, `schreef büşra demir <bd@…>`): the words right before `<`, in any
/// case, are a name when the address's local part holds one of them (letters folded to
/// ASCII) or their initials.
fn display_names(text: &str, push: &mut impl FnMut(usize, usize, f32)) {
    for c in ADDRESS_OPEN.captures_iter(text) {
        let (Some(open), Some(local)) = (c.get(0), c.get(1)) else {
            continue;
        };
        let local: String = local
            .as_str()
            .to_lowercase()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let line_start = super::near_line_start(text, open.start(), 256);
        let before = text[line_start..open.start()].trim_end_matches([' ', '\t', '"']);
        // Up to five words back, each letters only; stop at anything else.
        let mut words: Vec<(usize, usize)> = Vec::new();
        let mut end = line_start + before.len();
        while words.len() < 5 {
            let head = &text[line_start..end];
            let word_start = head
                .char_indices()
                .rev()
                .take_while(|(_, c)| c.is_alphabetic() || matches!(c, '\'' | '’' | '-' | '.'))
                .last()
                .map_or(end, |(i, _)| line_start + i);
            if word_start == end {
                break;
            }
            words.push((word_start, end));
            let gap = &text[line_start..word_start];
            let trimmed = gap.trim_end_matches(' ');
            if trimmed.len() == gap.len() || gap.len() - trimmed.len() > 2 {
                break;
            }
            end = line_start + trimmed.len();
        }
        words.reverse();
        // Frame words and particles on the left are no part of the name.
        while let Some(&(s, e)) = words.first() {
            let w = &text[s..e];
            if STOP_WORDS.contains(&w.to_lowercase().as_str()) || PARTICLES.contains(&w) {
                words.remove(0);
            } else {
                break;
            }
        }
        // Mixed case ("terecht bij Thanh Huong Vu"): the capitalised tail is the name.
        let lower = |&(s, e): &(usize, usize)| {
            let w = &text[s..e];
            w.chars().next().is_some_and(char::is_lowercase) && !PARTICLES.contains(&w)
        };
        if words
            .iter()
            .any(|&(s, _)| text[s..].chars().next().is_some_and(char::is_uppercase))
            && let Some(last_lower) = words.iter().rposition(lower)
        {
            words.drain(..=last_lower);
            while words
                .first()
                .is_some_and(|&(s, e)| PARTICLES.contains(&&text[s..e]))
            {
                words.remove(0);
            }
            // In running text a noun may come before the name ("mein Kollege Friedl
            // Jacob (friedl.jacob@…"): beyond two words, a word that is neither in the
            // address nor a given name is left out.
            while words.len() > 2
                && words.first().is_some_and(|&(s, e)| {
                    let w = &text[s..e];
                    !is_given(w)
                        && !folded(w)
                            .iter()
                            .any(|f| f.chars().count() >= 3 && local.contains(f.as_str()))
                })
            {
                words.remove(0);
            }
        }
        let (Some(&(start, _)), Some(&(_, end))) = (words.first(), words.last()) else {
            continue;
        };
        let name_words: Vec<&str> = words.iter().map(|&(s, e)| &text[s..e]).collect();
        if name_words.iter().any(|w| {
            !PARTICLES.contains(w)
                && (is_not_a_name(w) || STOP_WORDS.contains(&w.to_lowercase().as_str()))
        }) {
            continue;
        }
        let in_address = name_words.iter().any(|w| {
            folded(w)
                .iter()
                .any(|f| f.chars().count() >= 3 && local.contains(f.as_str()))
        });
        let initials: String = name_words
            .iter()
            .filter(|w| !PARTICLES.contains(w))
            .filter_map(|w| folded(w)[0].chars().next())
            .collect();
        let by_initials = initials.len() >= 2 && local.starts_with(&initials);
        if in_address || by_initials {
            push(start, end, 0.75);
        }
    }
}

/// The local part of an address in angle brackets, or opening a parenthesis
/// ("Thanh Huong Vu (thanhhuong@…, 030 …)").
static ADDRESS_OPEN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[<(]([^@<>()\s]{1,64})@").expect("address pattern"));

/// A name alone on the first line of a mail's body, followed by a comma ("Orla,",
/// "Léa de Saint-Aubin,"): the person the mail is written to.
fn vocatives(text: &str, push: &mut impl FnMut(usize, usize, f32)) {
    let mut prev_blank = true;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let skip = body.len() - body.trim_start_matches(['>', ' ', '\t']).len();
        let content = body[skip..].trim_end();
        if prev_blank
            && let Some(stem) = content.strip_suffix([',', ':'])
            && !stem.is_empty()
            && !is_signoff(stem)
            && GREETING.find(stem).is_none_or(|g| g.start() > 0)
            && let Some((start, end)) = chain(text, pos + skip, Strictness::Any)
            && end == pos + skip + stem.len()
            && name_shaped(stem)
        {
            push(start, end, 0.75);
        }
        prev_blank = content.is_empty();
        pos += line.len();
    }
}

/// Words that close a mail (lower case), found at the start of a word on a short line:
/// "Herzliche Grüße aus Salzburg", "Gracias de antemano,", "mes salutations distinguées."
const SIGNOFF_WORDS: &[&str] = &[
    "grüße",
    "grüsse",
    "gruß",
    "gruss",
    "groet",
    "groeten",
    "groetjes",
    "saluti",
    "saluto",
    "saludos",
    "saludo",
    "regards",
    "wishes",
    "cordialement",
    "cordiales",
    "cordiali",
    "salutations",
    "gracias",
    "grazie",
    "merci",
    "danke",
    "dank je",
    "bedankt",
    "cheers",
    "thanks",
    "thank you",
    "abrazo",
    "besos",
    "un bacio",
    "a presto",
    "hasta pronto",
    "tot ziens",
    "bis bald",
    "à bientôt",
    "amitiés",
    "bises",
    "atentamente",
    "distinti",
    "sincerely",
    "bien à vous",
    "buona giornata",
    "buona serata",
    "bonne journée",
    "bonne soirée",
    "schönen tag",
    "schönes wochenende",
    "fijne dag",
    "lg",
    "vg",
    "mfg",
    "ciao",
    "un saludo",
    "best",
    "mvg",
    "mvgr",
    "gr",
    "cdlt",
    "bàt",
    "slds",
];

/// [`SIGNOFF_WORDS`] as one pattern, each word whole.
static SIGNOFF: LazyLock<Regex> = LazyLock::new(|| {
    let words: Vec<String> = SIGNOFF_WORDS.iter().map(|w| regex::escape(w)).collect();
    Regex::new(&format!(
        r"(?i)(?:^|[^\p{{L}}])(?:{})(?:$|[^\p{{L}}])",
        words.join("|")
    ))
    .expect("signoff pattern")
});

/// Whether `line` holds a closing word, whole.
fn is_signoff(line: &str) -> bool {
    SIGNOFF.is_match(line)
}

/// Whether a line starts a quoted or forwarded mail ("Am … schrieb", "-----", "From:").
fn starts_quote(line: &str) -> bool {
    let l = line.trim_start();
    l.starts_with('>')
        || l.starts_with("--")
        || l.starts_with("__")
        || [
            " wrote",
            " schrieb",
            "a écrit",
            "escribió",
            "ha scritto",
            "schreef",
            "geschreven",
        ]
        .iter()
        .any(|w| l.contains(w))
        || [
            "From:",
            "Von:",
            "De:",
            "Van:",
            "Da:",
            "Sent:",
            "Gesendet:",
            "Envoyé:",
            "Enviado:",
            "Inviato:",
            "Verzonden:",
            "Original",
            "Ursprüngliche",
        ]
        .iter()
        .any(|w| l.starts_with(w))
}

/// Signatures: a name on the line after a closing line ("Gracias de antemano,\nGuillermo"),
/// and a name alone on its line, after a blank line, that ends a short message before the
/// quoted mail ("dank je, is geregeld.\n\nHüseyin\n\n---------- Doorgestuurd …").
fn signature_lines(text: &str, push: &mut impl FnMut(usize, usize, f32)) {
    let mut lines: Vec<(usize, &str)> = Vec::new();
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let skip = body.len() - body.trim_start_matches(['>', ' ', '\t']).len();
        lines.push((pos + skip, body[skip..].trim_end()));
        pos += line.len();
    }
    let next_nonempty = |from: usize, gap: usize| {
        lines
            .iter()
            .skip(from)
            .take(gap + 1)
            .find(|(_, l)| !l.is_empty())
            .copied()
    };
    for (idx, &(base, line)) in lines.iter().enumerate() {
        if line.is_empty() {
            continue;
        }
        // The signature delimiter "-- ": the line after it names the writer.
        if line == "--"
            && let Some((next, _)) = next_nonempty(idx + 1, 1)
            && let Some((start, end)) = chain(text, next, Strictness::Any)
            && ends_line(text, end)
        {
            push(start, end, 0.8);
        }
        if line.chars().count() <= 60
            && !line.contains(|c: char| c.is_ascii_digit() || c == '@' || c == ':')
            && is_signoff(line)
            && let Some((next, _)) = next_nonempty(idx + 1, 1)
            && let Some((start, end)) = chain(text, next, Strictness::Any)
            && ends_line(text, end)
        {
            push(start, end, 0.8);
        }
        // A name alone on its line closing a short message.
        let blank_before = idx >= 2 && lines[idx - 1].1.is_empty();
        if !blank_before {
            continue;
        }
        let Some((start, end)) = chain(text, base, Strictness::Any) else {
            continue;
        };
        let prev = lines[..idx - 1].iter().rev().find(|(_, l)| !l.is_empty());
        let after_prose =
            prev.is_some_and(|(_, l)| l.ends_with(['.', '!', ',']) && l.contains(' '));
        let ends_mail = match next_nonempty(idx + 1, lines.len()) {
            None => true,
            Some((_, l)) => starts_quote(l),
        };
        if end == base + line.len()
            && after_prose
            && ends_mail
            && text[start..end]
                .chars()
                .filter(|c| c.is_alphabetic())
                .count()
                >= 3
        {
            push(start, end, 0.75);
        }
    }
}

/// Labels of a form's lines about a person, after a "Name:" line.
static FORM_LABEL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^[ \t>]*(?:dob|d\.o\.b|date of birth|birth|born|geburtsdatum|geb\.|geboren|geboortedatum|date de naissance|née?|data di nascita|nat[oa]|fecha de nacimiento|fecha nac|nacid[oa]|e-?mail|courriel|correo|tel|phone|telefon|téléphone|telefoon|teléfono|telefono|mobil|móvil|cellulare|gsm|iban|address|adresse|anschrift|adres|dirección|indirizzo|\*)\b")
        .expect("form label pattern")
});
/// A birth date's lead right after a name: "Tuncay Şahin (Geboortedatum …", "(Ciarán
/// Whitfield, Date of birth …", "Hülya Demir, * 25. Juni 1938".
static BIRTH_AFTER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)[ \t]*[,(][ \t]*(?:geb\.|geboren|born|date of birth|dob(?-u:\b)|d\.o\.b|née?(?-u:\b)|nat[oa](?-u:\b)|nacid[oa](?-u:\b)|geboortedatum|geburtsdatum|data di nascita|fecha de nacimiento|fecha nac|date de naissance|\*[ \u{a0}]*[0-9])")
        .expect("birth after pattern")
});

/// The line after the one holding byte `i` ("" at the end of the text).
fn next_line(text: &str, i: usize) -> &str {
    let Some(nl) = text[i..].find('\n') else {
        return "";
    };
    let rest = &text[i + nl + 1..];
    rest.split('\n').next().unwrap_or("")
}

/// The name that ends at byte `end`: its last two capitalised words (three when the
/// first is a known given name: "Xabier Cañizares Domínguez"), with particles between.
fn name_before(text: &str, end: usize) -> Option<(usize, usize)> {
    let line = &text[super::near_line_start(text, end, 256)..end];
    let base = end - line.len();
    // Words back from the end, separated by one space.
    let mut starts: Vec<usize> = Vec::new();
    let mut cut = line.len();
    while starts.len() < 6 {
        let head = &line[..cut];
        let word_start = head
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_alphabetic() || matches!(c, '\'' | '’' | '-' | '.'))
            .last()
            .map(|(i, _)| i)?;
        if word_start == cut {
            break;
        }
        starts.push(word_start);
        if !line[..word_start].ends_with(' ') || line[..word_start].ends_with("  ") {
            break;
        }
        cut = word_start - 1;
    }
    let mut capitalised = 0;
    let mut start = None;
    for &s in &starts {
        let w = &line[s..];
        let w = w.split(' ').next().unwrap_or("");
        if PARTICLES.contains(&w) {
            continue;
        }
        if !w.chars().next().is_some_and(char::is_uppercase)
            || is_not_a_name(w)
            || RELATION_NOUNS.contains(&w.to_lowercase().as_str())
            || TITLE
                .find(w)
                .is_some_and(|t| t.start() == 0 && t.end() >= w.len() - 1)
        {
            break;
        }
        capitalised += 1;
        if capitalised <= 2 || (capitalised == 3 && is_given(w)) {
            start = Some(s);
        }
        if capitalised >= 3 {
            break;
        }
    }
    let start = base + start?;
    let (s, e) = chain(text, start, Strictness::Any)?;
    (s == start && e == end).then_some((s, e))
}

/// Whether the word before `start` on its line, one space away, is capitalised: the
/// given name is then part of a longer name, a place's or an organisation's ("Santa
/// Teresa", "Assicurazioni Aurora", "rue Victor Hugo").
fn after_capitalised_word(text: &str, start: usize) -> bool {
    let Some(head) = text[..start].strip_suffix([' ', '\u{a0}']) else {
        return false;
    };
    let word: String = head
        .chars()
        .rev()
        .take_while(|c| c.is_alphabetic() || matches!(c, '\'' | '’' | '-' | '.'))
        .collect();
    // A relation noun is capitalised in German ("meinen Mann Markus", "Ihr Sohn Paweł")
    // and at a sentence's start elsewhere: the name after it stands alone.
    let word: String = word.chars().rev().collect();
    word.chars().next().is_some_and(char::is_uppercase)
        && !RELATION_NOUNS.contains(&word.to_lowercase().as_str())
}

/// How street names end in Dutch and German compounds ("Frankstraat", "Goethestraße").
const STREET_ENDINGS: &[&str] = &[
    "straat", "laan", "gracht", "plein", "kade", "singel", "steeg", "straße", "strasse", "gasse",
    "allee", "platz", "ufer", "damm",
];

/// Nouns for a person's relation to someone, written before their name ("Ihr Sohn Paweł").
const RELATION_NOUNS: &[&str] = &[
    "sohn",
    "tochter",
    "kind",
    "kollege",
    "kollegin",
    "patient",
    "patientin",
    "mitarbeiter",
    "mitarbeiterin",
    "fils",
    "fille",
    "enfant",
    "collègue",
    "hijo",
    "hija",
    "niño",
    "niña",
    "figlio",
    "figlia",
    "bambino",
    "bambina",
    "zoon",
    "dochter",
    "kind",
    "collega",
    "son",
    "daughter",
    "child",
    "colleague",
    "patient",
    "paciente",
    "paziente",
    "schüler",
    "schülerin",
    // Family and partners.
    "mann",
    "ehemann",
    "ehefrau",
    "partner",
    "partnerin",
    "freund",
    "freundin",
    "bruder",
    "schwester",
    "vater",
    "mutter",
    "opa",
    "oma",
    "onkel",
    "tante",
    "neffe",
    "nichte",
    "enkel",
    "enkelin",
    "broer",
    "zus",
    "vader",
    "moeder",
    "vriend",
    "vriendin",
    "mari",
    "frère",
    "sœur",
    "père",
    "mère",
    "oncle",
    "ami",
    "amie",
    "marito",
    "moglie",
    "fratello",
    "sorella",
    "nonno",
    "nonna",
    "zio",
    "zia",
    "amico",
    "amica",
    "marido",
    "esposo",
    "esposa",
    "hermano",
    "hermana",
    "abuelo",
    "abuela",
    "tío",
    "tía",
    "amigo",
    "amiga",
    "husband",
    "wife",
    "brother",
    "sister",
    "father",
    "mother",
    "grandfather",
    "grandmother",
    "uncle",
    "aunt",
    "friend",
    "nephew",
    "niece",
];

/// Whether a lone given name ending at `end` is followed by what follows a name in a
/// sentence: a lower-case word, or punctuation that ends a clause.
fn given_alone(text: &str, end: usize) -> bool {
    let rest = &text[end..];
    let Some(c) = rest.chars().next() else {
        return true;
    };
    match c {
        ' ' => rest[1..].chars().next().is_some_and(char::is_lowercase),
        ',' | '.' | ';' | '!' | '?' | ')' | '\n' | ':' => true,
        _ => false,
    }
}

/// How [`occurrences`] compares letters.
#[derive(Clone, Copy, PartialEq)]
enum Case {
    /// Names the caller vouches for: "DUPONT" is "Dupont".
    Any,
    /// Names found in the text: "Rose Martin" does not make every "rose" a person.
    AsWritten,
}

/// Every word-bounded occurrence of `names`, with any white space between words.
fn occurrences(
    text: &str,
    mut needles: Vec<String>,
    score: f32,
    case: Case,
    out: &mut Vec<Candidate>,
) {
    needles.retain(|n| !n.trim().is_empty());
    if needles.is_empty() {
        return;
    }
    // One pattern for all names, longest first so that a full name wins over its parts;
    // any run of white space between words, as a line may wrap inside a name.
    needles.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    needles.dedup();
    let alternatives: Vec<String> = needles
        .iter()
        .map(|n| {
            n.split_whitespace()
                .map(regex::escape)
                .collect::<Vec<_>>()
                .join(r"\s+")
        })
        .collect();
    let flags = if case == Case::Any { "(?i)" } else { "" };
    let Ok(re) = Regex::new(&format!("{flags}(?:{})", alternatives.join("|"))) else {
        return;
    };
    for m in re.find_iter(text) {
        if is_word_bounded(text, m.start(), m.end()) {
            out.push(Candidate {
                kind: PiiKind::Person,
                start: m.start(),
                end: m.end(),
                score,
            });
        }
    }
}

/// Whether a street or square word comes right before `start` ("avenue Jean Jaurès",
/// "Calle de Vicenta Carrera", "Via Giuseppe Verdi"): a place named after a person.
fn after_place_word(text: &str, start: usize) -> bool {
    let before = super::window_before(text, start, 24);
    let mut before = before.trim_end();
    for particle in [
        " de la", " del", " de", " du", " des", " della", " di", " van",
    ] {
        if let Some(rest) = before.strip_suffix(particle) {
            before = rest;
            break;
        }
    }
    let last = before
        .rsplit(|c: char| !c.is_alphanumeric() && c != '.')
        .next()
        .unwrap_or("");
    PLACE_WORDS.contains(&last.trim_end_matches('.'))
}

/// Lower-case words that name a street or a square before the name it carries.
const PLACE_WORDS: &[&str] = &[
    "rue",
    "avenue",
    "av",
    "boulevard",
    "bd",
    "place",
    "allée",
    "impasse",
    "chemin",
    "quai",
    "square",
    "via",
    "viale",
    "piazza",
    "piazzale",
    "corso",
    "largo",
    "vicolo",
    "calle",
    "avenida",
    "avda",
    "plaza",
    "paseo",
    "carrer",
    "passeig",
    "travesía",
    "straat",
    "laan",
    "plein",
    "weg",
    "kade",
    "singel",
    "gracht",
    "straße",
    "strasse",
    "str",
    "platz",
    "allee",
    "gasse",
    "street",
    "road",
    // Rooms, buildings and saints named after people ("zaal Rembrandt", "San Rocco").
    "zaal",
    "sala",
    "salle",
    "saal",
    "raum",
    "room",
    "aula",
    "hotel",
    "colegio",
    "collège",
    "lycée",
    "école",
    "scuola",
    "istituto",
    "schule",
    "gymnasium",
    "school",
    "hospital",
    "ospedale",
    "hôpital",
    "clinica",
    "klinik",
    "san",
    "santa",
    "santo",
    "saint",
    "sainte",
    "sankt",
    "st",
];

/// Whether one of the next two capitalised words on the line is an organisation word.
fn followed_by_organisation(text: &str, mut end: usize) -> bool {
    for _ in 0..2 {
        let Some(word) = word_at(text, end) else {
            return false;
        };
        if is_organisation_suffix(&text[word.start..word.end]) {
            return true;
        }
        end = word.end;
    }
    false
}

/// Whether a word of `name` is a known given name or surname.
fn known_name_inside(name: &str) -> bool {
    WORD.find_iter(name).any(|w| {
        let w = w.as_str();
        (is_given(w) && !is_ambiguous_given(w)) || is_surname(w)
    })
}

/// Whether a display name is followed by an address whose local part contains one of
/// its words ("Test User <test@example.org>").
fn named_in_address(text: &str, start: usize, end: usize) -> bool {
    let Some(local) = ADDRESS_AFTER.captures(&text[end..]).and_then(|c| c.get(1)) else {
        return false;
    };
    let local = local.as_str().to_lowercase();
    WORD.find_iter(&text[start..end])
        .any(|w| w.as_str().chars().count() >= 3 && local.contains(&w.as_str().to_lowercase()))
}

/// How much a word after the first must prove to join the chain.
#[derive(Clone, Copy, PartialEq)]
enum Strictness {
    /// Any capitalised word that is not a stop word (after a greeting, a field label).
    Any,
    /// A known given name or surname, or any word right after a given name or an
    /// initial (after a title, in the dictionary rule).
    Lexicon,
}

/// A word of a name: its span, and whether it is an initial ("J.").
struct NameWord {
    start: usize,
    end: usize,
    initial: bool,
}

/// The capitalised word starting at `pos` after spaces or tabs (never a newline).
fn word_at(text: &str, pos: usize) -> Option<NameWord> {
    let rest = &text[pos..];
    let start = pos + (rest.len() - rest.trim_start_matches([' ', '\t', '\u{a0}']).len());
    let m = WORD.find_at(text, start).filter(|m| m.start() == start)?;
    let mut end = m.end();
    let word = m.as_str();
    for possessive in ["'s", "’s"] {
        if word.len() > 3 && word.ends_with(possessive) {
            end -= possessive.len();
        }
    }
    if char_at(text, end).is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '@') {
        return None;
    }
    // "Ch. Pölzl", "Th. Weber": a given name cut to its first sounds is an initial too.
    let mut initial = word.chars().count() == 1
        || (["Ch", "Chr", "Th", "Ph", "Wm", "Jos", "Joh"].contains(&word)
            && char_at(text, end) == Some('.'));
    if initial {
        if char_at(text, end) != Some('.') {
            return None;
        }
        end += 1;
        // "A.J.M.": more initials glued to the first.
        while let Some(c) = char_at(text, end)
            && c.is_uppercase()
            && char_at(text, end + c.len_utf8()) == Some('.')
        {
            end += c.len_utf8() + 1;
        }
        // "H.-Dieter", "J.-P.": an abbreviated first part of a double name.
        if text[end..].starts_with('-')
            && let Some(rest) = WORD.find_at(text, end + 1).filter(|w| w.start() == end + 1)
        {
            end = rest.end();
            if rest.as_str().chars().count() == 1 && char_at(text, end) == Some('.') {
                end += 1;
            } else {
                initial = false;
            }
        }
    }
    Some(NameWord {
        start,
        end,
        initial,
    })
}

/// After a title, further titles ("Herr Dr. Prof.") are skipped too.
fn skip_titles(text: &str, mut pos: usize) -> usize {
    loop {
        let rest = &text[pos..];
        let trimmed = rest.trim_start_matches([' ', '\t', '\u{a0}']);
        let at = pos + rest.len() - trimmed.len();
        match TITLE.find_at(text, at).filter(|m| m.start() == at) {
            Some(m) => pos = m.end(),
            None => return pos,
        }
    }
}

/// The name after a title: a chain, or a surname that starts with its particle
/// ("Frau von Liebelt", "M. de La Fontaine", "mevrouw van 't Erve"), taken whole.
fn surname_after_title(text: &str, pos: usize) -> Option<(usize, usize)> {
    let rest = &text[pos..];
    let start = pos + rest.len() - rest.trim_start_matches([' ', '\t', '\u{a0}']).len();
    // The particle first: "Frau Van Rossum" is one surname, not "Van" and a word after it.
    if let Some(particle) = PARTICLE.find(&text[start..])
        && let Some((_, end)) = chain(text, start + particle.end(), Strictness::Lexicon)
    {
        return Some((start, end));
    }
    chain(text, pos, Strictness::Lexicon)
}

/// The span of the name that starts at `pos`, if any.
fn chain(text: &str, pos: usize, strictness: Strictness) -> Option<(usize, usize)> {
    let first = word_at(text, pos)?;
    if first.initial {
        // "J. Weber", "J.-P. de Kerangal": an initial wants a word after it.
        let gap = &text[first.end..];
        let mut next = first.end + gap.len() - gap.trim_start_matches([' ', '\u{a0}']).len();
        if let Some(p) = PARTICLE.find(&text[next..]) {
            next += p.end();
        }
        word_at(text, next)?;
    }
    let first_text = &text[first.start..first.end];
    if is_not_a_name(first_text) {
        return None;
    }
    let mut end = first.end;
    let mut vouches_for_next = first.initial || is_given(first_text);
    // After a given name and its surname, one more word may follow unvouched: the second
    // surname of "Núria Domínguez Azcárate".
    let mut second_surname = false;
    for _ in 0..3 {
        let gap = &text[end..];
        let spaces = gap.len() - gap.trim_start_matches([' ', '\u{a0}']).len();
        if spaces == 0 || spaces > 2 {
            break;
        }
        let mut next = end + spaces;
        if let Some(p) = PARTICLE.find(&text[next..]) {
            next += p.end();
        }
        let Some(word) = word_at(text, next) else {
            break;
        };
        let word_text = &text[word.start..word.end];
        if is_not_a_name(word_text) {
            break;
        }
        let vouched = strictness == Strictness::Any
            || vouches_for_next
            || second_surname
            || is_given(word_text)
            || is_surname(word_text);
        if !vouched {
            break;
        }
        second_surname = vouches_for_next && !word.initial && !is_given(word_text);
        end = word.end;
        vouches_for_next = word.initial || is_given(word_text);
    }
    if text[first.start..end]
        .chars()
        .filter(|c| c.is_alphabetic())
        .count()
        < 2
    {
        return None;
    }
    // "Peter Müller GmbH" is a company, "Thomas Street" a place.
    if let Some(after) = word_at(text, end)
        && is_organisation_suffix(&text[after.start..after.end])
    {
        return None;
    }
    // "Anne Frankstraat", "Johan de Wittlaan": a street named after a person.
    let last = text[first.start..end]
        .rsplit(' ')
        .next()
        .unwrap_or("")
        .to_lowercase();
    if last.chars().count() > 6 && STREET_ENDINGS.iter().any(|s| last.ends_with(s)) {
        return None;
    }
    Some((first.start, end))
}

/// Whether only a separator or the end of the line follows `end`.
fn ends_line(text: &str, end: usize) -> bool {
    let rest = text[end..].trim_start_matches([' ', '\t', ',']);
    rest.is_empty() || rest.starts_with(['\n', '\r', '|', '–', '-', '('])
}

#[cfg(test)]
mod tests {
    use crate::{DetectOptions, PiiKind, detect};

    fn persons(text: &str) -> Vec<String> {
        detect(text, &DetectOptions::only(&[PiiKind::Person]))
            .into_iter()
            .map(|s| s.text)
            .collect()
    }

    #[test]
    fn a_given_name_after_a_capitalised_relation_noun() {
        assert_eq!(
            persons("erreichen Sie meinen Mann Markus unter dieser Nummer."),
            ["Markus"]
        );
        assert_eq!(persons("Ihr Sohn Jonas ist krank."), ["Jonas"]);
        // Another capitalised word before it still makes it part of a longer name.
        assert!(persons("im Hotel Santa Teresa übernachten").is_empty());
    }

    #[test]
    fn proposed_names_keep_only_what_can_be_a_name() {
        use super::vet_proposed_names;
        assert_eq!(
            vet_proposed_names(["Sophie de Vries", "De Jong belde", "juf Marieke"]),
            ["Sophie de Vries", "De Jong", "Marieke"]
        );
        // An organisation word anywhere drops the whole proposal.
        assert!(vet_proposed_names(["Boulangerie Levain SARL", "Hotel Adler"]).is_empty());
        // Closings, months and lower-case words are not names.
        assert!(vet_proposed_names(["Cordialement", "Januar", "bonne", "x"]).is_empty());
        assert_eq!(vet_proposed_names(["(Marlowe", "Marlowe"]), ["Marlowe"]);
    }

    #[test]
    fn a_surname_after_a_profession_and_its_article() {
        assert_eq!(persons("Ho sentito il geometra Santoro ieri."), ["Santoro"]);
        assert_eq!(persons("Parli con l'avvocato Bianchi."), ["Bianchi"]);
        assert_eq!(persons("Der Architekt Krause kommt am Montag."), ["Krause"]);
        assert_eq!(persons("Lo firmó el notario Ruiz Olmedo."), ["Ruiz Olmedo"]);
        assert_eq!(persons("Onze notaris Van Damme belt."), ["Van Damme"]);
        // No name after it, or a place or an institution: nothing.
        assert!(persons("il geometra del Comune ha risposto").is_empty());
        assert!(persons("der Architekt des Neubaus").is_empty());
        assert!(persons("the lawyer Services GmbH").is_empty());
    }

    #[test]
    fn titles_greetings_closings_and_fields() {
        assert_eq!(
            persons("Sehr geehrte Frau Dr. Sabine Weber,"),
            ["Sabine Weber"]
        );
        assert_eq!(persons("M. Dupont a appelé."), ["Dupont"]);
        assert_eq!(persons("Dear Anna, thanks."), ["Anna"]);
        assert_eq!(persons("Best regards,\nTom Baker\nACME Ltd"), ["Tom Baker"]);
        assert_eq!(persons("see you then.\nThanks, Megan\n"), ["Megan"]);
        assert_eq!(persons("Merci d'avance,\nY. Benali"), ["Y. Benali"]);
        assert!(persons("Thanks, The Team\nThank you for your order, we ship soon").is_empty());
        assert_eq!(persons("Kontoinhaber: Lukas Brenner"), ["Lukas Brenner"]);
        assert_eq!(
            persons("Mme Claire van der Berg est là"),
            ["Claire van der Berg"]
        );
        assert_eq!(persons("Herr Johann der Ältere"), ["Johann der Ältere"]);
        assert_eq!(persons("M. Jean d'Ormesson"), ["Jean d'Ormesson"]);
    }

    #[test]
    fn surnames_with_particles_are_taken_whole() {
        assert_eq!(persons("Frau von Liebelt ruft an."), ["von Liebelt"]);
        assert_eq!(persons("M. de la Bourdon a écrit."), ["de la Bourdon"]);
        assert_eq!(persons("Geachte mevrouw van 't Erve,"), ["van 't Erve"]);
        assert_eq!(persons("de heer van den Corput belde"), ["van den Corput"]);
        assert_eq!(persons("Buongiorno Sig.ra Di Salvemini,"), ["Di Salvemini"]);
        assert_eq!(
            persons("Il collega Luchino De Traetta segue l'ordine."),
            ["Luchino De Traetta"]
        );
        assert_eq!(persons("Merci, Françoise Le Gall"), ["Françoise Le Gall"]);
        assert_eq!(persons("el Sr. de Sosa llamó"), ["de Sosa"]);
        assert_eq!(persons("Gruß\nH.-Dieter Niit"), ["H.-Dieter Niit"]);
    }

    #[test]
    fn titles_and_greetings_are_not_names() {
        assert_eq!(persons("Gentile Sig.ra Platini,"), ["Platini"]);
        assert_eq!(persons("Estimada Sra. Valero:"), ["Valero"]);
        assert!(persons("Beste Grüße\nIhr Kundenservice").is_empty());
        assert!(persons("Boulangerie, 12 avenue Jean Jaurès, Lyon").is_empty());
        assert!(persons("Calle de Vicenta Carrera 4").is_empty());
    }

    #[test]
    fn introductions_relations_and_names_seen_before() {
        assert_eq!(
            persons(
                "I, Olumide Adeyemi, born in Lagos, authorise my sister Funmilayo Adeyemi.\nSigned,\nOlumide Adeyemi"
            ),
            ["Olumide Adeyemi", "Funmilayo Adeyemi", "Olumide Adeyemi"]
        );
        assert_eq!(
            persons("Bonjour, je m'appelle Kofi Boateng."),
            ["Kofi Boateng"]
        );
        assert_eq!(
            persons("Anwesend: Klaus Zimmermann. Später sagte Zimmermann nichts."),
            ["Klaus Zimmermann", "Zimmermann"]
        );
        assert_eq!(
            persons("Thomas Müller\nMüller Metallbau GmbH"),
            ["Thomas Müller"]
        );
        assert_eq!(
            persons("Mon conjoint, M. Antoine Girard, appelle."),
            ["Antoine Girard"]
        );
        assert_eq!(
            persons("Ship to: Kwame Mensah\nHoi Daan,"),
            ["Kwame Mensah", "Daan"]
        );
        assert_eq!(
            persons("From: \"Weber, Julia\" <j.weber@example.de>\nName: Smith, Invoice"),
            ["Weber, Julia", "Smith"]
        );
    }

    #[test]
    fn dictionary_rule_wants_a_surname_after_a_given_name() {
        assert_eq!(
            persons("Le dossier de Olivier Jacquet est prêt."),
            ["Olivier Jacquet"]
        );
        assert_eq!(persons("contact JEAN DUPONT today"), ["JEAN DUPONT"]);
        assert!(persons("Will Shipping be late? Grant Application, Olive Oil").is_empty());
        assert!(persons("Peter Müller GmbH, Thomas Street").is_empty());
        assert_eq!(
            persons("Account holder Luís Ferreira IBAN PT50"),
            ["Luís Ferreira"]
        );
        assert!(persons("Dear Sir or Madam, Dear customer").is_empty());
    }

    #[test]
    fn extra_names_match_whole_names_and_their_capitalised_words() {
        let opts = DetectOptions {
            extra_names: vec!["Zoé Kraszewski".into()],
            ..DetectOptions::only(&[PiiKind::Person])
        };
        let found: Vec<String> = detect("zoé kraszewski wrote; later Kraszewski replied", &opts)
            .into_iter()
            .map(|s| s.text)
            .collect();
        assert_eq!(found, ["zoé kraszewski", "Kraszewski"]);
        let found: Vec<String> = detect("signed ZOÉ\n  KRASZEWSKI.", &opts)
            .into_iter()
            .map(|s| s.text)
            .collect();
        assert_eq!(found, ["ZOÉ\n  KRASZEWSKI"]);
    }

    #[test]
    fn names_after_closing_lines_and_ending_short_messages() {
        assert_eq!(persons("Gracias de antemano,\nGuillermo"), ["Guillermo"]);
        assert_eq!(
            persons("Herzliche Grüße aus Salzburg\nZorvan Qelaj"),
            ["Zorvan Qelaj"]
        );
        assert_eq!(
            persons("Mvg,\nRutger Kuipers\nOffice manager"),
            ["Rutger Kuipers"]
        );
        assert_eq!(
            persons(
                "ok, passt so.\n\nZorvan\n\nAm 3.4.2025 schrieb Info <info@example.org>:\n> Text"
            ),
            ["Zorvan"]
        );
        assert!(persons("Bitte beachten.\n\nWichtig\n\nMehr Text folgt hier.").is_empty());
        assert_eq!(
            persons("Bien à vous.\n\n-- \nZorvan Qelaj\nGestionnaire"),
            ["Zorvan Qelaj"]
        );
    }

    #[test]
    fn all_caps_surname_before_a_given_name() {
        assert_eq!(
            persons("Rückfrage von MELIS Giovanni heute"),
            ["MELIS Giovanni"]
        );
        assert!(persons("Das PDF Dokument liegt bei").is_empty());
    }

    #[test]
    fn display_names_that_the_address_confirms() {
        assert_eq!(
            persons("Von: brigitte rößler <b.roessler@example.de>"),
            ["brigitte rößler"]
        );
        assert_eq!(
            persons("Op 1-8-2024 om 9:47 schreef büşra demir <bd@example.nl>:"),
            ["büşra demir"]
        );
        assert_eq!(
            persons("Aan: sanne van beek <sanne.vanb730@example.nl>"),
            ["sanne van beek"]
        );
        assert_eq!(
            persons("Van: GÜLŞEN DOĞAN <dogan@example.nl>"),
            ["GÜLŞEN DOĞAN"]
        );
        assert_eq!(
            persons("Am 24.05.2025 um 10:37 schrieb Duc Vu <vu.duc@example.de>:"),
            ["Duc Vu"]
        );
        assert_eq!(
            persons("Voor vragen kun je terecht bij Thanh Huong Vu (thanhhuong@example.nl)."),
            ["Thanh Huong Vu"]
        );
        assert_eq!(
            persons("mein Kollege Zorvan Qelaj (zorvan.qelaj@example.de) übernimmt"),
            ["Zorvan Qelaj"]
        );
        assert!(persons("From: info service <info@example.com>").is_empty());
        assert!(persons("Von: Buchhaltung <rechnung@example.de>").is_empty());
    }

    #[test]
    fn quoted_surname_first_display_names() {
        assert_eq!(
            persons("Il 21/10/2026 \"Nguyen, Tuấn\" ha scritto:"),
            ["Nguyen, Tuấn"]
        );
        assert_eq!(
            persons("An: \"zu Dohna, Jannik\" <jz@example.de>"),
            ["zu Dohna, Jannik"]
        );
        assert!(persons("Ort: \"Paris, France\" im Kalender").is_empty());
    }

    #[test]
    fn vocative_first_lines() {
        assert_eq!(
            persons("Subject: list\n\nOrla,\n\nhere is the list."),
            ["Orla"]
        );
        assert_eq!(
            persons("Subject: x\n\nLéa de Saint-Aubin,\n\nquick note."),
            ["Léa de Saint-Aubin"]
        );
        assert!(persons("Objet: x\n\nBuongiorno,\n\nnota.").is_empty());
        assert!(persons("Asunto: x\n\nAtentamente,\n\nnota.").is_empty());
    }

    #[test]
    fn more_titles_particles_greetings_and_relations() {
        assert_eq!(persons("Herrn Haselhorst zieht aus."), ["Haselhorst"]);
        assert_eq!(
            persons("Estimada doña Peñalver Llorente:"),
            ["Peñalver Llorente"]
        );
        assert_eq!(persons("Sehr geehrter Herr tom Dieck,"), ["tom Dieck"]);
        assert_eq!(persons("Coucou Zorvan,"), ["Zorvan"]);
        assert_eq!(persons("Dag Zorvan,"), ["Zorvan"]);
        assert_eq!(
            persons("la cita de su hijo Zorvan Qelaj el lunes"),
            ["Zorvan Qelaj"]
        );
        assert_eq!(persons("Dile que vas de parte de Zorvan."), ["Zorvan"]);
    }

    #[test]
    fn lower_case_names_after_a_self_introduction_and_particles_after_titles() {
        assert_eq!(persons("Hallo, mein Name ist brinkmann."), ["brinkmann"]);
        assert_eq!(
            persons("hi, my name is bart janssens, I live"),
            ["bart janssens"]
        );
        assert!(persons("my name is not important.").is_empty());
        assert_eq!(persons("Sehr geehrte Frau Van Rossum,"), ["Van Rossum"]);
        assert_eq!(persons("Gentile Geom. Zorvani,"), ["Zorvani"]);
        assert_eq!(persons("Geachte mr. Zorvani,"), ["Zorvani"]);
    }

    #[test]
    fn initials_glued_and_hyphenated() {
        assert_eq!(persons("Gruß\nCh. Pölzl"), ["Ch. Pölzl"]);
        assert_eq!(persons("Gruß\nA.J.M. Verhoeven"), ["A.J.M. Verhoeven"]);
        assert_eq!(
            persons("Cordialement,\nJ.-P. de Kerangal"),
            ["J.-P. de Kerangal"]
        );
    }

    #[test]
    fn second_surname_and_a_given_name_seen_before() {
        assert_eq!(
            persons("Le escribe Lucía Fernández Zubiarrenza hoy."),
            ["Lucía Fernández Zubiarrenza"]
        );
        assert_eq!(
            persons("Hallo Zorvan,\nwie besprochen hat Zorvan Çelikbaş angerufen."),
            ["Zorvan", "Zorvan Çelikbaş"]
        );
    }

    #[test]
    fn a_known_given_name_alone_before_a_verb() {
        assert_eq!(
            persons("quick heads-up: Bram is out until Monday"),
            ["Bram"]
        );
        assert!(persons("Per informazioni chiamate il numero verde").is_empty());
        assert!(persons("in zaal Rembrandt.").is_empty());
        assert!(persons("Postfach 309, 72988 Henry").is_empty());
        assert!(persons("Colegio Santa Teresa").is_empty());
        assert!(persons("Kantoor: Anne Frankstraat 12, Utrecht").is_empty());
    }

    #[test]
    fn names_before_a_birth_date_and_on_form_lines() {
        assert_eq!(
            persons("Zorvan Qelaj (Geboortedatum 28/09/1980) wil zich inschrijven"),
            ["Zorvan Qelaj"]
        );
        assert_eq!(
            persons("Ihr Sohn Zorvan Qelaj (geb. am 7.12.2009) hat"),
            ["Zorvan Qelaj"]
        );
        assert_eq!(
            persons("Name: Zorvan Qelaj\nDOB: 01/02/1990"),
            ["Zorvan Qelaj"]
        );
        assert!(persons("Name: Eckregal Fjord\nPreis: 200 €").is_empty());
        assert!(persons("Cognome,Nome,Email,Cellulare,Data di nascita\n").is_empty());
    }
}
