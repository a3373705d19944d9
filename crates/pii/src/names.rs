//! Name lexicons: given names and surnames from Faker's person providers (MIT, see
//! `data/LICENSE.faker`; regenerate with `scripts/gen-names.py`), and this crate's own
//! short lists of capitalised words that stop a name (titles, organisation words,
//! greetings, months) and of given names that are also common words.

use std::collections::HashSet;
use std::sync::LazyLock;

static GIVEN: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| include_str!("../data/given_names.txt").lines().collect());
static SURNAMES: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| include_str!("../data/surnames.txt").lines().collect());

/// Given names that are also everyday words or brands; alone they prove nothing, so the
/// dictionary rule wants a known surname after them.
const AMBIGUOUS_GIVEN: &[&str] = &[
    "Ace", "Amber", "Angel", "April", "Art", "August", "Autumn", "Baron", "Bay", "Bill", "Bob",
    "Brand", "Candy", "Cash", "Chance", "Chase", "Christian", "Clay", "Cliff", "Constant",
    "Crystal", "Daisy", "Dale", "Dawn", "Dean", "Destiny", "Don", "Drew", "Duke", "Earl", "Echo",
    "Faith", "Floor", "Forest", "Fortune", "Frank", "Gene", "Glen", "Glory", "Grant", "Guy",
    "Harmony", "Heath", "Holly", "Honor", "Hope", "Hunter", "Iris", "Ivy", "Jack", "Jordan",
    "Joy", "June", "Justice", "King", "Kit", "Lane", "Lily", "Lucky", "Major", "Mark", "Marine",
    "Max", "May", "Mai", "Mercedes", "Miles", "Misty", "Nova", "Olive", "Page", "Paris", "Pat",
    "Patience", "Pearl", "Precious", "Price", "Prince", "Prudence", "Ray", "Reed", "Rich", "River",
    "Rock", "Rod", "Rose", "Royal", "Ruby", "Sage", "Sky", "Sol", "Star", "Sterling", "Stone",
    "Storm", "Sue", "Summer", "Sunny", "Trinity", "Van", "Victory", "Wade", "Will", "Winter",
    "Wolf", "Young",
];

/// Capitalised words that are never part of a person's name here: titles, pronouns,
/// greetings, organisation and address words, months and weekdays.
const NOT_A_NAME: &[&str] = &[
    // Titles and forms of address (a title rule handles the name after them).
    "Mr", "Mrs", "Ms", "Mx", "Miss", "Dr", "Prof", "Sir", "Madam", "Madame", "Monsieur",
    "Mademoiselle", "Mme", "Mlle", "Herr", "Frau", "Fräulein", "Dhr", "Mevr", "Mevrouw",
    "Meneer", "Signor", "Signora", "Señor", "Señora", "Docteur", "Doktor", "Professor",
    "Professeur", "Maître", "Lord", "Lady",
    // Pronouns, articles, greetings and sign-offs.
    "I", "We", "You", "Your", "Yours", "Our", "He", "She", "They", "It", "The", "A", "An",
    "This", "That", "These", "Je", "Nous", "Vous", "Votre", "Notre", "Il", "Elle", "Le", "La",
    "Les", "Un", "Une", "Ich", "Wir", "Sie", "Ihr", "Ihre", "Er", "Es", "Der", "Die", "Das",
    "Ein", "Eine", "De", "Het", "Een", "And", "Or", "Et", "Ou", "Und", "Oder", "En", "Of",
    "Dear", "Hello", "Hi", "Hey", "Bonjour", "Bonsoir", "Salut", "Cher", "Chère", "Hallo",
    "Liebe", "Lieber", "Sehr", "Geehrte", "Geehrter", "Beste", "Geachte", "Moin", "Servus",
    "Ciao", "Caro", "Cara", "Gentile", "Hola", "Estimado", "Estimada", "Querido", "Querida", "Thanks", "Thank", "Merci", "Danke",
    "Please", "Bitte", "Regards", "Best", "Kind", "Cordialement", "Sincerely", "Cheers",
    "All", "Everyone", "Team", "Customer", "Customers", "Client", "Clients", "Kunde", "Kundin",
    "Colleagues", "Collègues", "Kollegen", "Friends", "World", "There", "Valued", "Support",
    "Service", "Services", "Sales", "Admin", "Info", "Contact", "Office", "Manager",
    // Organisation and address words.
    "Inc", "Ltd", "LLC", "Llc", "GmbH", "AG", "KG", "SE", "SA", "SAS", "SARL", "Sarl", "BV",
    "NV", "Co", "Corp", "Company", "Group", "Groupe", "Gruppe", "Holding", "Bank", "Banque",
    "Street", "St", "Road", "Rd", "Avenue", "Ave", "Boulevard", "Rue", "Place", "Platz",
    "Straße", "Strasse", "Str", "Weg", "Allee", "Gasse", "Building", "Floor", "Hotel", "Station",
    "University", "Université", "Universität", "School", "College", "Hospital", "Clinic",
    "Department", "Invoice", "Rechnung", "Facture", "Order", "Total", "Account", "Foundation",
    "Association", "Institute", "Ministry", "Agency", "Partners", "Consulting", "Solutions",
    "Systems", "Technologies", "Software", "International", "Europe", "France", "Germany",
    // Months and weekdays.
    "January", "February", "March", "June", "July", "September", "October", "November",
    "December", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
    "Janvier", "Février", "Mars", "Avril", "Juin", "Juillet", "Août", "Septembre", "Octobre",
    "Novembre", "Décembre", "Lundi", "Mardi", "Mercredi", "Jeudi", "Vendredi", "Samedi",
    "Dimanche", "Januar", "Februar", "März", "Juni", "Juli", "Oktober", "Dezember", "Montag",
    "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag",
];

/// Words after a name that make it an organisation's name ("Peter Müller GmbH").
const ORGANISATION_SUFFIXES: &[&str] = &[
    "Inc", "Ltd", "LLC", "GmbH", "AG", "KG", "SE", "SA", "SAS", "SARL", "BV", "B.V", "NV",
    "Co", "Corp", "Group", "Groupe", "Holding", "Bank", "Street", "Road", "Avenue", "Straße",
    "Strasse", "Platz", "Weg", "Allee", "Foundation", "University", "Hospital", "Hotel",
];

static AMBIGUOUS_SET: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| AMBIGUOUS_GIVEN.iter().copied().collect());
static NOT_A_NAME_SET: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| NOT_A_NAME.iter().copied().collect());

/// `DUPONT` → `Dupont`, so that names in capitals are found in the lists.
fn title_case(word: &str) -> std::borrow::Cow<'_, str> {
    if word.chars().count() > 1 && word.chars().all(|c| !c.is_lowercase()) {
        let mut chars = word.chars();
        let first = chars.next().map(|c| c.to_string()).unwrap_or_default();
        return (first + &chars.as_str().to_lowercase()).into();
    }
    word.into()
}

/// Whether `word` (or every part of a hyphenated `word`) is a known given name.
pub(crate) fn is_given(word: &str) -> bool {
    let word = title_case(word);
    GIVEN.contains(word.as_ref())
        || (word.contains('-') && word.split('-').all(|p| !p.is_empty() && GIVEN.contains(p)))
}

/// Whether `word` is a given name that needs more evidence than itself.
pub(crate) fn is_ambiguous_given(word: &str) -> bool {
    AMBIGUOUS_SET.contains(title_case(word).as_ref())
}

/// Whether `word` (or a part of a hyphenated `word`) is a known surname.
pub(crate) fn is_surname(word: &str) -> bool {
    let word = title_case(word);
    SURNAMES.contains(word.as_ref()) || (word.contains('-') && word.split('-').any(|p| SURNAMES.contains(p)))
}

/// Whether `word` can never be part of a person's name.
pub(crate) fn is_not_a_name(word: &str) -> bool {
    NOT_A_NAME_SET.contains(word) || NOT_A_NAME_SET.contains(title_case(word).as_ref())
}

/// Whether `word` after a name makes the whole an organisation or a place.
pub(crate) fn is_organisation_suffix(word: &str) -> bool {
    ORGANISATION_SUFFIXES.contains(&word.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexicons_are_loaded_and_case_folded() {
        assert!(GIVEN.len() > 5000 && SURNAMES.len() > 5000);
        for name in ["Jean", "Marie", "Hans", "Sabine", "Olivier", "JEAN", "Jean-Pierre", "Élise"] {
            assert!(is_given(name), "{name}");
        }
        for name in ["Dupont", "Müller", "MÜLLER", "Smith"] {
            assert!(is_surname(name), "{name}");
        }
        assert!(!is_given("Invoice") && !is_given("jean") && !is_given("Jean-"));
        assert!(is_not_a_name("GmbH") && is_not_a_name("MONSIEUR"));
    }
}
