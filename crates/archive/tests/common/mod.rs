//! A generated archive for the retrieval and answer tests: 1,000 business documents of ten
//! kinds (leases, supply agreements, invoices, offer letters, incident reports, board
//! minutes, insurance claims, loans, NDAs, maintenance reports), text and Markdown, one or
//! two pages, sharing boilerplate so that kinds look alike; and 50 questions, each about
//! one fact of one document, phrased in other words than the document's.
//!
//! Deterministic: the same documents and questions on every run (a fixed LCG, no clock).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const DOCUMENTS: usize = 1000;

/// A document: its file name and text (pages separated by form feeds).
pub struct Doc {
    pub name: String,
    pub text: String,
}

/// A question, the document that answers it and the answer's key words.
pub struct Question {
    pub question: String,
    pub document: String,
    pub answer: String,
}

const PREFIXES: &[&str] = &[
    "Norvane",
    "Castellan",
    "Brightwater",
    "Quillon",
    "Marlowe",
    "Ostrava",
    "Pellucid",
    "Ridgeway",
    "Solenne",
    "Tavernier",
    "Umbrel",
    "Valdoro",
    "Wexford",
    "Yardley",
    "Zephyrine",
    "Albedo",
    "Borealis",
    "Corvina",
    "Dunmore",
    "Elmscott",
    "Fairhaven",
    "Galloway",
    "Halvorsen",
    "Ingleby",
    "Juniper",
    "Kestrel",
    "Lindqvist",
    "Montclair",
    "Northgate",
    "Oakhurst",
    "Pemberton",
    "Quarry",
    "Rosewell",
    "Stenbeck",
    "Thornbury",
    "Ulverston",
    "Vantongeren",
    "Whitcombe",
    "Xanthe",
    "Ystad",
];
const SUFFIXES: &[&str] = &[
    "Logistics",
    "Foods",
    "Metals",
    "Textiles",
    "Pharma",
    "Robotics",
    "Shipping",
    "Timber",
    "Ceramics",
    "Optics",
    "Dairy",
    "Plastics",
    "Energy",
    "Printing",
    "Glassworks",
    "Chemicals",
    "Furniture",
    "Hydraulics",
    "Aerospace",
    "Packaging",
    "Vineyards",
    "Software",
    "Cables",
    "Bakeries",
    "Fasteners",
];
const CITIES: &[&str] = &[
    "Lyon", "Gdansk", "Porto", "Antwerp", "Bilbao", "Turin", "Leipzig", "Tampere", "Brno", "Malmo",
    "Graz", "Utrecht", "Nantes", "Cork", "Ghent", "Bergamo", "Wroclaw", "Aarhus", "Seville",
    "Lille", "Bremen", "Kosice", "Linz", "Tartu", "Rijeka",
];
const FIRST: &[&str] = &[
    "Anna", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas",
    "Katya", "Luca", "Maren", "Nils", "Olga", "Pavel", "Quentin", "Rosa", "Sven", "Tilde", "Ugo",
    "Vera", "Willem", "Xenia", "Yusuf", "Zofia", "Aurelio", "Berit", "Cosmin", "Delphine",
];
const LAST: &[&str] = &[
    "Achterberg",
    "Bianchi",
    "Costa",
    "Dvorak",
    "Eriksen",
    "Fontaine",
    "Gruber",
    "Horvath",
    "Ivanova",
    "Jansen",
    "Kowalski",
    "Lindgren",
    "Moreau",
    "Novak",
    "Olsen",
    "Petrov",
    "Quintero",
    "Rossi",
    "Schneider",
    "Tanaka",
    "Urbano",
    "Varga",
    "Weber",
    "Xavier",
    "Yilmaz",
    "Zeller",
    "Amato",
    "Brandt",
    "Carvalho",
    "Duval",
    "Engel",
    "Ferreira",
    "Gallo",
];
const PRODUCTS: &[&str] = &[
    "refrigerated pallets",
    "stainless steel valves",
    "organic oat flour",
    "merino wool yarn",
    "insulin pens",
    "servo motors",
    "shipping containers",
    "oak beams",
    "porcelain tiles",
    "camera lenses",
    "goat cheese",
    "polypropylene granules",
    "solar inverters",
    "label printers",
    "tempered glass panels",
    "sodium hydroxide",
    "office chairs",
    "hydraulic pumps",
    "carbon fibre sheets",
    "corrugated boxes",
    "sparkling wine",
    "accounting licences",
    "copper cables",
    "sourdough loaves",
    "titanium bolts",
];
const ROLES: &[&str] = &[
    "chief financial officer",
    "head of procurement",
    "plant manager",
    "data protection officer",
    "sales director",
    "quality lead",
    "company secretary",
    "head of logistics",
];
const INCIDENTS: &[&str] = &[
    "forklift collision",
    "chemical spill",
    "roof collapse",
    "electrical fire",
    "flood in the basement",
    "conveyor belt jam",
    "gas leak",
    "server room overheating",
];
const CAUSES: &[&str] = &[
    "a worn brake pad",
    "a cracked seal",
    "snow load above the design limit",
    "a faulty breaker",
    "a blocked drain",
    "a misaligned roller",
    "a corroded valve",
    "a failed air conditioner",
];
const INSURERS: &[&str] = &[
    "Helvetia Mutual",
    "Nordic Shield",
    "Atlantica Re",
    "Danube Assurance",
];
const BANKS: &[&str] = &[
    "Banque Lumiere",
    "Hanse Kreditbank",
    "Iberia Capital",
    "Baltic Savings",
];
const MACHINES: &[&str] = &[
    "CNC lathe",
    "injection moulding press",
    "packaging robot",
    "industrial boiler",
    "air compressor",
    "bottling line",
    "laser cutter",
    "cold storage unit",
];
const PARTS: &[&str] = &[
    "the spindle bearing",
    "the heating element",
    "the gripper servo",
    "the burner nozzle",
    "the pressure switch",
    "the capping head",
    "the focusing lens",
    "the evaporator fan",
];
const PROJECTS: &[&str] = &[
    "the new ERP rollout",
    "the Asian expansion",
    "the electric fleet",
    "the warehouse automation",
    "the joint battery research",
    "the packaging redesign",
    "the merger talks",
    "the recycling plant",
];
const COLLATERAL: &[&str] = &[
    "a mortgage on the head office",
    "a pledge of the trade receivables",
    "the delivery fleet",
    "a guarantee from the parent company",
];
const MONTHS: &[&str] = &[
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Shared boilerplate: every document carries some, so kinds are not told apart by it alone.
const BOILERPLATE: &[&str] = &[
    "This document is confidential and intended only for the parties named in it. Copies may be kept in the archive for the legal retention period.",
    "All amounts are stated in euros and exclude value added tax unless stated otherwise. Payment terms follow the general conditions of sale.",
    "Any dispute arising from this document shall first be settled amicably between the parties before recourse to the competent courts.",
    "The parties confirm that the information given here is accurate to the best of their knowledge at the date of signature.",
    "Personal data mentioned in this document is processed in accordance with the applicable data protection legislation.",
];

/// A fixed linear congruential generator.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.next() as usize % items.len()]
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Document `i`'s company: all 1,000 distinct.
fn company(i: usize) -> String {
    let k = (i * 37) % (PREFIXES.len() * SUFFIXES.len());
    format!(
        "{} {}",
        PREFIXES[k % PREFIXES.len()],
        SUFFIXES[k / PREFIXES.len()]
    )
}

/// Document `i`'s person: distinct across the documents of a kind.
fn person(i: usize) -> String {
    let k = (i * 7 + i / 10) % (FIRST.len() * LAST.len());
    format!("{} {}", FIRST[k % FIRST.len()], LAST[k / FIRST.len()])
}

fn amount(r: &mut Lcg, lo: u64, hi: u64) -> String {
    let v = r.range(lo, hi) * 10;
    let s = v.to_string();
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n > 0 && (s.len() - n).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn date(r: &mut Lcg) -> String {
    format!(
        "{} {} {}",
        r.range(1, 28),
        r.pick(MONTHS),
        r.range(2019, 2025)
    )
}

/// Document `i` and the question about it (each document has one; the tests ask 50).
pub fn document(i: usize) -> (Doc, Question) {
    let mut r = Lcg(0x5eed_0000 + i as u64 * 7919);
    let company = company(i);
    let other = self::company((i + 500) % DOCUMENTS);
    let city = r.pick(CITIES);
    let person = person(i);
    let boiler = |r: &mut Lcg| {
        let a = r.pick(BOILERPLATE);
        let mut b = r.pick(BOILERPLATE);
        if b == a {
            b = BOILERPLATE
                [(BOILERPLATE.iter().position(|x| *x == a).unwrap() + 1) % BOILERPLATE.len()];
        }
        format!("{a}\n\n{b}")
    };
    let kind = i % 10;
    let (stem, ext, text, question, answer) = match kind {
        0 => {
            let rent = amount(&mut r, 150, 990);
            let size = r.range(4, 60) * 100;
            let years = r.range(3, 12);
            let notice = r.range(3, 9);
            let text = format!(
                "COMMERCIAL LEASE\n\nLandlord: {company}. Tenant: {other}.\n\nPremises: a warehouse of {size} square metres in the port area of {city}, with loading docks and office space.\n\nThe monthly rent is {rent} EUR, indexed every year on the commercial rents index. The lease runs for {years} years from {}.\n\n{}\u{c}Either party may terminate the lease at the end of each period with {notice} months' notice sent by registered letter.\n\n{}",
                date(&mut r),
                boiler(&mut r),
                boiler(&mut r)
            );
            let q = format!(
                "How much rent per month is paid for the warehouse that {company} lets in {city}?"
            );
            ("lease", "txt", text, q, rent)
        }
        1 => {
            let penalty = amount(&mut r, 20, 150);
            let product = r.pick(PRODUCTS);
            let days = r.range(3, 30);
            let text = format!(
                "SUPPLY AGREEMENT\n\nSupplier: {company}. Buyer: {other}.\n\nThe supplier delivers {product} to the buyer's depot in {city} within {days} days of each purchase order.\n\nFor every day of delay beyond that period the supplier owes a penalty of {penalty} EUR, capped at ten percent of the order value.\n\n{}",
                boiler(&mut r)
            );
            let q = format!(
                "What does {company} owe for each day it delivers late under its supply contract?"
            );
            ("supply", "txt", text, q, penalty)
        }
        2 => {
            let total = amount(&mut r, 100, 9000);
            let product = r.pick(PRODUCTS);
            let qty = r.range(5, 500);
            let number = format!("INV-{}-{:05}", r.range(2021, 2025), r.range(1, 99999));
            let text = format!(
                "INVOICE {number}\n\nFrom: {company}, {city}. Billed to: {other}.\n\n{qty} units of {product}, delivered on {}.\n\nTotal amount due: {total} EUR, payable within 30 days by bank transfer.\n\n{}",
                date(&mut r),
                boiler(&mut r)
            );
            let q =
                format!("What is the total amount of the invoice {company} sent for {product}?");
            ("invoice", "txt", text, q, total)
        }
        3 => {
            let salary = amount(&mut r, 3000, 9000);
            let role = r.pick(ROLES);
            let text = format!(
                "OFFER OF EMPLOYMENT\n\nDear {person},\n\n{company} is pleased to offer you the position of {role} at our {city} office, starting on {}.\n\nYour annual gross salary will be {salary} EUR, paid in twelve monthly instalments, with a probation period of {} months.\n\n{}",
                date(&mut r),
                r.range(2, 6),
                boiler(&mut r)
            );
            let q = format!("What yearly pay was {person} offered to join {company}?");
            ("offer", "txt", text, q, salary)
        }
        4 => {
            let incident = r.pick(INCIDENTS);
            let cause = r.pick(CAUSES);
            let text = format!(
                "INCIDENT REPORT\n\nSite: the {city} plant of {company}. Date: {}.\n\nA {incident} occurred during the night shift. {} people were evacuated and nobody was injured. Damage is estimated at {} EUR.\n\nThe investigation found that the root cause was {cause}. Corrective actions have been scheduled.\n\n{}",
                date(&mut r),
                r.range(2, 40),
                amount(&mut r, 100, 5000),
                boiler(&mut r)
            );
            let q = format!("Why did the {incident} happen at the {company} plant?");
            ("incident", "txt", text, q, cause.to_string())
        }
        5 => {
            let role = r.pick(ROLES);
            let project = r.pick(PROJECTS);
            let text = format!(
                "# Minutes of the board meeting of {company}\n\nHeld in {city} on {}.\n\n## Budget\n\nThe board approved a budget of {} EUR for {project}.\n\n## Appointments\n\nThe board appointed {person} as {role}, effective immediately.\n\n## Other business\n\n{}",
                date(&mut r),
                amount(&mut r, 1000, 90000),
                boiler(&mut r)
            );
            let q = format!("Who did the board of {company} name as {role}?");
            ("minutes", "md", text, q, person.clone())
        }
        6 => {
            let insurer = r.pick(INSURERS);
            let claimed = amount(&mut r, 500, 50000);
            let incident = r.pick(INCIDENTS);
            let text = format!(
                "INSURANCE CLAIM\n\nPolicyholder: {company}. Insurer: {insurer}.\n\nOn {} a {incident} at the policyholder's {city} premises caused damage to stock and equipment.\n\nAmount claimed: {claimed} EUR under policy {}-{}.\n\n{}",
                date(&mut r),
                r.range(100, 999),
                r.range(10000, 99999),
                boiler(&mut r)
            );
            let q =
                format!("How much money did {company} ask {insurer} to pay after the {incident}?");
            ("claim", "txt", text, q, claimed)
        }
        7 => {
            let bank = r.pick(BANKS);
            let rate = format!("{}.{}", r.range(1, 7), r.range(0, 9));
            let text = format!(
                "LOAN AGREEMENT\n\nLender: {bank}. Borrower: {company}, registered in {city}.\n\nThe lender grants a loan of {} EUR for {} years at a fixed interest rate of {rate}% per year, repaid in monthly instalments.\n\nSecurity: {}.\n\n{}",
                amount(&mut r, 10000, 900000),
                r.range(3, 20),
                r.pick(COLLATERAL),
                boiler(&mut r)
            );
            let q = format!("At what interest rate did {bank} lend money to {company}?");
            ("loan", "txt", text, q, format!("{rate}%"))
        }
        8 => {
            let project = r.pick(PROJECTS);
            let years = r.range(2, 10);
            let text = format!(
                "NON-DISCLOSURE AGREEMENT\n\nBetween {company} and {other}, concerning {project}.\n\nEach party keeps the other's confidential information secret for {years} years after the end of the discussions and uses it only for {project}.\n\nThis agreement is governed by the law of the place where {company} is registered, {city}.\n\n{}",
                boiler(&mut r)
            );
            let q = format!(
                "For how long must {company} and {other} keep each other's information secret?"
            );
            ("nda", "txt", text, q, format!("{years} years"))
        }
        _ => {
            let machine = r.pick(MACHINES);
            let part = r.pick(PARTS);
            let text = format!(
                "# Maintenance report\n\n{machine} at the {city} plant of {company}, serviced on {}.\n\n## Work done\n\nTechnician {person} replaced {part} and tested the machine under load.\n\n## Next service\n\nIn {} months. Cost of this visit: {} EUR.\n\n{}",
                date(&mut r),
                r.range(3, 12),
                amount(&mut r, 20, 900),
                boiler(&mut r)
            );
            let q = format!("Which component was swapped on the {machine} of {company}?");
            (
                "maintenance",
                "md",
                text,
                q,
                part.trim_start_matches("the ").to_string(),
            )
        }
    };
    let name = format!("{stem}-{i:04}.{ext}");
    (
        Doc {
            name: name.clone(),
            text,
        },
        Question {
            question,
            document: name,
            answer,
        },
    )
}

/// The 50 documents asked about: spread over the archive and over the ten kinds.
pub fn asked() -> Vec<usize> {
    (0..50).map(|q| (q * 20 + q % 10 + 3) % DOCUMENTS).collect()
}

/// Write documents `ids` into `dir`; their paths.
pub fn write(dir: &Path, ids: impl IntoIterator<Item = usize>) -> Vec<PathBuf> {
    ids.into_iter()
        .map(|i| {
            let (doc, _) = document(i);
            let path = dir.join(&doc.name);
            std::fs::write(&path, doc.text).unwrap();
            path
        })
        .collect()
}

/// Questions that nothing in the archive answers.
pub const UNRELATED: &[&str] = &[
    "What is the boiling point of mercury?",
    "Who painted the ceiling of the Sistine Chapel?",
    "How many moons does Jupiter have?",
    "What is a good recipe for lemon tart?",
];
