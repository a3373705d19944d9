#!/usr/bin/env python3
"""Generate the synthetic PII evaluation mails of crates/pii/tests/data/synthetic/.

Mails in five EU locales (de_DE, fr_FR, it_IT, es_ES, nl_NL) whose personal data is
marked inline as `[[kind:value]]` (the format `verre_pii::eval::LabelledText` parses),
one mail per `%%`-separated part, and PII-free mails of the same shape for counting
false alarms. Two splits from different seeds: `dev` (look at it, tune on it) and
`test` (measure on it, never tune on it). tests/synthetic_recall.rs reads the files.

Values come from Faker (names, e-mail addresses, IBANs with valid checksums) and from
this script (phone numbers in ranges the national plans allocate, written in the forms
people write them: trunk prefix, `+`, `00`, `(0)`, parentheses, dashes, dots, slashes,
no `+`). Faker's name lists are also where the recognisers' name lexicon comes from
(scripts/gen-names.py), so a share of surnames is drawn from locales the lexicon does
not include (Lithuanian, Latvian, Estonian) and the script prints how many names the
lexicon knows, to read the person recall with.

    pip install faker==40.54.0
    python3 crates/pii/scripts/gen-heldout.py
"""
import os
import pathlib
import random
import sys

# Some of Faker's lists are sets, whose order follows string hashing: fix the hash seed so
# that the same seed writes the same files.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

FAKER_VERSION = "40.54.0"
try:
    import faker
except ImportError:
    sys.exit(f"needs Faker: pip install faker=={FAKER_VERSION}")
if faker.VERSION != FAKER_VERSION:
    sys.exit(f"needs Faker {FAKER_VERSION} (found {faker.VERSION}): the output depends on it")

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE.parent / "tests" / "data" / "synthetic"
DATA = HERE.parent / "data"
SPLITS = {"dev": 20261206, "test": 7349}
MAILS_PER_LOCALE = 36
CLEAN_MAILS_PER_LOCALE = 16
# Surnames from locales whose names are not in the lexicon: residents with foreign names.
FOREIGN_SURNAME_LOCALES = ["lt_LT", "lv_LV", "et_EE"]
FOREIGN_SURNAME_SHARE = 0.15


def mark(kind, value):
    return f"[[{kind}:{value}]]"


# ---------------------------------------------------------------------------------------
# Phone numbers: (country code, national significant number split into groups, whether the
# trunk prefix 0 is dropped in international form, kind).

def digits(rng, n, first="123456789"):
    return rng.choice(first) + "".join(rng.choice("0123456789") for _ in range(n - 1))


def phone_de(rng):
    if rng.random() < 0.45:
        prefix = rng.choice(["151", "152", "157", "160", "162", "170", "171", "172", "173",
                             "174", "175", "176", "177", "178", "179"])
        n = 8 if prefix.startswith("15") else rng.choice([7, 8])
        return prefix, digits(rng, n, "123456789"), "mobile"
    area, lengths = rng.choice([("30", [7, 8]), ("89", [7, 8]), ("40", [7, 8]), ("69", [7, 8]),
                                ("221", [6, 7, 8]), ("711", [6, 7, 8]), ("211", [6, 7, 8]),
                                ("341", [6, 7, 8]), ("511", [6, 7, 8]), ("911", [6, 7, 8])])
    return area, digits(rng, rng.choice(lengths), "23456789"), "fixed"


def phone_fr(rng):
    r = rng.random()
    if r < 0.35:
        # 063 and 069 are partly overseas ranges (+590 690 …): metropolitan 06 only.
        return "6", rng.choice("0124578") + digits(rng, 7, "0123456789"), "mobile"
    if r < 0.45:
        return "7", rng.choice("3456789") + digits(rng, 7, "0123456789"), "mobile"
    return rng.choice("12345"), digits(rng, 8, "123456789"), "fixed"


def phone_it(rng):
    if rng.random() < 0.5:
        prefix = rng.choice(["320", "328", "329", "333", "335", "338", "339", "340", "345",
                             "347", "348", "349", "366", "380", "388", "392"])
        return prefix, digits(rng, 7, "123456789"), "mobile"
    area, n = rng.choice([("02", 8), ("06", 8), ("011", 7), ("055", 7), ("081", 7), ("051", 7),
                          ("010", 7), ("045", 7)])
    return area, digits(rng, n, "2345678"), "fixed"


def phone_es(rng):
    r = rng.random()
    if r < 0.5:
        return rng.choice("6") + digits(rng, 2, "0123456789"), digits(rng, 6, "0123456789"), "mobile"
    area = rng.choice(["91", "93", "96", "95", "94", "98"])
    return area, digits(rng, 7, "2345678"), "fixed"


def phone_nl(rng):
    if rng.random() < 0.5:
        return "6", digits(rng, 8, "12345"), "mobile"
    area = rng.choice(["20", "10", "70", "30", "40", "50", "13", "24"])
    return area, digits(rng, 7, "2345678"), "fixed"


PHONES = {
    "de": ("49", phone_de, True),
    "fr": ("33", phone_fr, True),
    "it": ("39", phone_it, False),
    "es": ("34", phone_es, False),
    "nl": ("31", phone_nl, True),
}


def group(s, sizes):
    out, i = [], 0
    for size in sizes:
        if i >= len(s):
            break
        out.append(s[i:i + size])
        i += size
    if i < len(s):
        out.append(s[i:])
    return out


def subscriber_groups(rng, loc, sub):
    if loc == "fr":
        return group(sub, [2] * 4)
    style = rng.random()
    if style < 0.4:
        return [sub]
    if loc in ("es",):
        return group(sub, [3, 3]) if len(sub) == 6 else group(sub, [3, 2, 2])
    if style < 0.7:
        return group(sub, [3, 4]) if len(sub) == 7 else group(sub, [4, 4]) if len(sub) == 8 else group(sub, [3, 3])
    return group(sub, [2] * 4) if len(sub) % 2 == 0 else group(sub, [3, 2, 2, 2])


# Marks the international form without `+` or `00`, which only a label says is a number.
BARE = "\0"
PHONE_LABELS = ("tel", "fax", "mobil", "portable", "port.", "cell", "móvil", "mobiel", "mob.", "tlf")


def render_phone(rng, loc):
    """A valid number of `loc`, written one of the ways people write it."""
    cc, make, trunk = PHONES[loc]
    area, sub, _ = make(rng)
    if loc == "fr":
        # French numbers are one group of 9 digits after the 0: write them as pairs.
        nsn = area + sub
        pairs = [nsn[0]] + group(nsn[1:], [2] * 4)
        national_pairs = ["0" + nsn[0]] + pairs[1:]
        style = rng.randrange(8)
        if style == 0:
            return " ".join(national_pairs)
        if style == 1:
            return ".".join(national_pairs)
        if style == 2:
            return "-".join(national_pairs)
        if style == 3:
            return "+33 " + " ".join(pairs)
        if style == 4:
            return "+33 (0)" + " ".join(pairs)
        if style == 5:
            return "0033 " + " ".join(pairs)
        if style == 6:
            return "+33 (0) " + " ".join(pairs)
        return "+33" + nsn[0] + " " + " ".join(pairs[1:])
    subs = subscriber_groups(rng, loc, sub)
    national_area = ("0" + area) if trunk else area
    style = rng.randrange(14)
    sep = rng.choice([" ", " ", "-", "/"]) if loc == "de" else rng.choice([" ", " ", "-"])
    if style <= 3:  # national
        if style == 1 and loc != "es":
            return f"({national_area}) " + " ".join(subs)
        return national_area + sep + " ".join(subs)
    if style == 4:
        return f"+{cc} {area} " + " ".join(subs)
    if style == 5:
        return f"00{cc} {area} " + " ".join(subs)
    if style == 6:
        return (f"+{cc} (0){area} " if trunk else f"+{cc} ({area}) ") + " ".join(subs)
    if style == 7:
        return (f"+{cc} (0) {area} " if trunk else f"+{cc} {area} ") + " ".join(subs)
    if style == 8:
        return f"+{cc}-{area}-" + "".join(subs)
    if style == 9:
        return f"+{cc} ({area}) " + " ".join(subs)
    if style == 10:
        return f"(+{cc}) {area} " + " ".join(subs)
    if style == 11:
        return (f"0049 (0){area} " if loc == "de" else f"00{cc} {area}-") + "".join(subs)
    if style == 12:
        return f"+{cc}{area} " + " ".join(subs)
    return BARE + f"{cc} {area} " + " ".join(subs)  # no `+`: only after a phone label


# ---------------------------------------------------------------------------------------
# Names.

PARTICLES = {
    "de": [("von", 5), ("von der", 2), ("zu", 1), ("van", 1), ("de", 1)],
    "fr": [("de", 5), ("du", 2), ("de la", 2), ("d'", 1), ("le", 1)],
    "it": [("Di", 4), ("De", 3), ("Del", 2), ("Della", 1), ("Lo", 1), ("di", 1)],
    "es": [("de", 3), ("del", 2), ("de la", 2), ("de los", 1)],
    "nl": [("van", 5), ("van der", 3), ("van den", 2), ("de", 3), ("van de", 2), ("ter", 1), ("den", 1)],
}
LOCALE = {"de": "de_DE", "fr": "fr_FR", "it": "it_IT", "es": "es_ES", "nl": "nl_NL"}


def weighted(rng, pairs):
    total = sum(w for _, w in pairs)
    r = rng.uniform(0, total)
    for item, w in pairs:
        r -= w
        if r <= 0:
            return item
    return pairs[-1][0]


class Person:
    def __init__(self, given, surname, female):
        self.given, self.surname, self.female = given, surname, female

    @property
    def full(self):
        return f"{self.given} {self.surname}"


def make_person(rng, fakers, foreign, loc):
    f = fakers[loc]
    female = rng.random() < 0.5
    given = f.first_name_female() if female else f.first_name_male()
    given = given.split()[0] if loc != "de" or "-" not in given else given
    if rng.random() < FOREIGN_SURNAME_SHARE:
        surname = rng.choice(foreign).last_name()
    else:
        surname = f.last_name()
        while "," in surname:  # Faker's Dutch index forms ("Erve, van 't")
            surname = f.last_name()
        if loc == "nl" and " " in surname:
            pass  # Faker's Dutch surnames carry their particles already
        elif rng.random() < 0.25:
            particle = weighted(rng, PARTICLES[loc])
            base = f.last_name().split()[-1]
            if particle.endswith("'") and base[0] not in "AEIOUÉ":
                particle = "de"  # d' before a vowel only
            surname = f"{particle}{base}" if particle.endswith("'") else f"{particle} {base}"
        elif loc == "es" and rng.random() < 0.5:
            surname = f"{surname} {f.last_name()}"  # two surnames
    return Person(given, surname, female)


# ---------------------------------------------------------------------------------------
# Mail text per locale. `{p}` a person's name, `{s}` a surname with its title, `{g}` a
# given name, `{e}` an e-mail address, `{t}` a phone number, `{i}` an IBAN, `{b}` a date of
# birth; `{n}` a reference number, `{d}` a date, `{a}` an amount (never PII).

T = {
    "de": {
        "from": ["Von: {p} <{e}>", "Von: \"{p}\" <{e}>", "Absender: {p} <{e}>"],
        "greet": ["Sehr geehrte{r} {s},", "Guten Tag {s},", "Hallo {g},", "Liebe{r} {g},",
                  "Sehr geehrte Damen und Herren,", "Moin {g},"],
        "body": [
            "vielen Dank für Ihre Nachricht vom {d}. Die Rechnung Nr. {n} über {a} EUR ist noch offen.",
            "bitte überweisen Sie den Betrag von {a} EUR auf das Konto IBAN {i}.",
            "meine neue Bankverbindung lautet: {i} (Kontoinhaber: {p}).",
            "Sie erreichen mich tagsüber unter {t}, abends unter {t2}.",
            "Rufen Sie mich gerne an: {t}.",
            "mein Kollege {p} ({e}) übernimmt die Bestellung {n} ab dem {d}.",
            "Frau {sf} aus der Buchhaltung meldet sich bei Ihnen wegen Auftrag {n}.",
            "Herr {sm} hat heute angerufen und bittet um Rückruf unter {t}.",
            "für die Vertragsänderung benötigen wir noch Ihr Geburtsdatum; ich bin am {b} geboren, Versicherungsnummer {n}.",
            "Ansprechpartner: {p}, Telefon {t}, E-Mail {e}",
            "die Lieferung {n} kam am {d} beschädigt an. Bitte schreiben Sie an {e}.",
            "leider konnte ich {p} nicht erreichen; die Nummer {t} ist besetzt.",
        ],
        "close": ["Mit freundlichen Grüßen", "Viele Grüße", "Beste Grüße", "Freundliche Grüße", "Gruß"],
        "sig": ["Tel.: {t}", "Mobil: {t}", "Telefon {t}", "Fax: {t}", "Tel. {t} | Mobil {t2}", "T: {t}"],
        "titles": ("Frau", "Herr"), "greet_r": ("", "r"),
        "clean_body": [
            "vielen Dank für Ihre Bestellung {n} vom {d}. Die Ware wird in KW 23 versendet.",
            "anbei erhalten Sie die Rechnung Nr. {n} über {a} EUR, zahlbar bis {d}.",
            "Die Sitzung des Einkaufsausschusses findet am {d} um 14:30 Uhr im Raum B 2.14 statt.",
            "Bitte beachten Sie die geänderten Öffnungszeiten unserer Filiale in der Hauptstraße 12.",
            "Das Angebot {n} gilt bis {d}; Lieferzeit ca. 3 Wochen, Versandkosten {a} EUR.",
            "Die Wartung der Heizungsanlage ist für Donnerstag geplant. Zugang über den Hof.",
            "Ihr Kundenkonto {n} wurde aktualisiert. Neue Tarifoption: Strom Flex 24.",
            "Die Steuererklärung für 2025 liegt dem Finanzamt Mitte seit dem {d} vor.",
        ],
        "clean_greet": ["Sehr geehrte Damen und Herren,", "Guten Tag,", "Hallo zusammen,", "Liebes Team,"],
        "clean_sig": ["Ihr Kundenservice", "Ihre Buchhaltung", "Das Team der Stadtwerke Mitte", "Musterfirma GmbH, Industriestraße 7, 70565 Stuttgart"],
        "dob": "%d.%m.%Y",
    },
    "fr": {
        "from": ["De : {p} <{e}>", "De: \"{p}\" <{e}>", "Expéditeur : {p} <{e}>"],
        "greet": ["Bonjour {s},", "{S},", "Bonjour {g},", "Cher {g}," , "Madame, Monsieur,", "Chère Madame {sf},"],
        "body": [
            "suite à votre message du {d}, la facture n° {n} de {a} € reste impayée.",
            "merci d'effectuer le virement sur le compte IBAN {i}.",
            "voici mes nouvelles coordonnées bancaires : {i}, titulaire : {p}.",
            "vous pouvez me joindre au {t} ou sur mon portable {t2}.",
            "n'hésitez pas à m'appeler au {t}.",
            "mon collègue {p} ({e}) reprend la commande {n} à partir du {d}.",
            "Mme {sf} du service comptabilité vous recontactera au sujet du dossier {n}.",
            "M. {sm} a appelé ce matin, merci de le rappeler au {t}.",
            "pour l'avenant au contrat il nous faut la date de naissance : né le {b}, contrat {n}.",
            "Contact : {p}, tél. {t}, courriel {e}",
            "la livraison {n} est arrivée abîmée le {d}. Écrivez à {e}.",
            "je n'ai pas réussi à joindre {p} ; le {t} sonne occupé.",
        ],
        "close": ["Cordialement,", "Bien cordialement,", "Bien à vous,", "Salutations distinguées,", "Merci d'avance,"],
        "sig": ["Tél. : {t}", "Portable : {t}", "Tél : {t} – Port. : {t2}", "Fax : {t}", "Mobile {t}", "T. {t}"],
        "titles": ("Madame", "Monsieur"),
        "clean_body": [
            "nous vous remercions pour votre commande n° {n} du {d}. Expédition sous 48 heures.",
            "veuillez trouver ci-joint la facture n° {n} d'un montant de {a} €, payable avant le {d}.",
            "La réunion du comité d'entreprise aura lieu le {d} à 14h30, salle Voltaire.",
            "Nos bureaux de la Rue de la République seront fermés pendant le pont de l'Ascension.",
            "Le devis {n} est valable jusqu'au {d} ; frais de port {a} €.",
            "L'entretien de la chaudière est prévu jeudi matin. Merci de laisser l'accès libre.",
            "Votre espace client {n} a été mis à jour. Nouvelle offre : Électricité Verte Plus.",
            "La déclaration de TVA du premier trimestre a été déposée le {d}.",
        ],
        "clean_greet": ["Madame, Monsieur,", "Bonjour,", "Bonjour à tous,", "Chère cliente, cher client,"],
        "clean_sig": ["Le service client", "Service comptabilité", "L'équipe de Transports Martin SAS", "Boulangerie du Centre, 12 avenue Jean Jaurès, 69007 Lyon"],
        "dob": "%d/%m/%Y",
    },
    "it": {
        "from": ["Da: {p} <{e}>", "Da: \"{p}\" <{e}>", "Mittente: {p} <{e}>"],
        "greet": ["Gentile {s},", "Buongiorno {s},", "Ciao {g},", "Caro {g},", "Spettabile ditta,", "Gentile Sig.ra {sf},"],
        "body": [
            "in riferimento alla sua email del {d}, la fattura n. {n} di {a} € risulta ancora da saldare.",
            "la prego di effettuare il bonifico sul conto IBAN {i}.",
            "le mie nuove coordinate bancarie sono: {i}, intestatario: {p}.",
            "può contattarmi al numero {t} oppure al cellulare {t2}.",
            "mi chiami pure al {t}.",
            "il mio collega {p} ({e}) segue l'ordine {n} dal {d}.",
            "la Sig.ra {sf} dell'amministrazione la ricontatterà per la pratica {n}.",
            "il Sig. {sm} ha chiamato stamattina, la prego di richiamarlo al {t}.",
            "per la modifica del contratto serve la data di nascita: nato il {b}, polizza {n}.",
            "Referente: {p}, tel. {t}, email {e}",
            "la spedizione {n} è arrivata danneggiata il {d}. Scriva a {e}.",
            "non sono riuscito a raggiungere {p}; il numero {t} risulta occupato.",
        ],
        "close": ["Cordiali saluti,", "Distinti saluti,", "Saluti,", "Grazie,", "Un saluto,"],
        "sig": ["Tel. {t}", "Cell. {t}", "Tel: {t} - Cell: {t2}", "Fax {t}", "Cellulare: {t}", "Telefono: {t}"],
        "titles": ("Sig.ra", "Sig."),
        "clean_body": [
            "la ringraziamo per l'ordine n. {n} del {d}. La merce sarà spedita entro 48 ore.",
            "in allegato la fattura n. {n} di {a} €, con scadenza il {d}.",
            "La riunione del consiglio di amministrazione si terrà il {d} alle 14:30 in Sala Verdi.",
            "Gli uffici di Via Roma resteranno chiusi per il ponte del 2 giugno.",
            "Il preventivo {n} è valido fino al {d}; spese di spedizione {a} €.",
            "La manutenzione della caldaia è prevista giovedì mattina. Lasciare libero l'accesso.",
            "Il suo profilo cliente {n} è stato aggiornato. Nuova offerta: Luce Verde Casa.",
            "La dichiarazione IVA del primo trimestre è stata inviata il {d}.",
        ],
        "clean_greet": ["Spettabile ditta,", "Buongiorno,", "Gentile cliente,", "Ciao a tutti,"],
        "clean_sig": ["Il servizio clienti", "Ufficio amministrazione", "Lo staff di Trasporti Rossi S.r.l.", "Panificio Centrale, Via Garibaldi 21, 20121 Milano"],
        "dob": "%d/%m/%Y",
    },
    "es": {
        "from": ["De: {p} <{e}>", "De: \"{p}\" <{e}>", "Remitente: {p} <{e}>"],
        "greet": ["Estimado/a {s}:", "Hola {g},", "Buenos días {s},", "Querida {g},", "Estimados señores:", "Estimada Sra. {sf}:"],
        "body": [
            "en relación con su correo del {d}, la factura n.º {n} de {a} € sigue pendiente de pago.",
            "le ruego que haga la transferencia a la cuenta IBAN {i}.",
            "mis nuevos datos bancarios son: {i}, titular: {p}.",
            "puede llamarme al {t} o al móvil {t2}.",
            "llámeme cuando quiera al {t}.",
            "mi compañero {p} ({e}) se encarga del pedido {n} desde el {d}.",
            "la Sra. {sf} de contabilidad se pondrá en contacto con usted por el expediente {n}.",
            "el Sr. {sm} llamó esta mañana y pide que le devuelva la llamada al {t}.",
            "para modificar el contrato necesitamos la fecha de nacimiento: nacido el {b}, póliza {n}.",
            "Contacto: {p}, tel. {t}, correo {e}",
            "el envío {n} llegó dañado el {d}. Escriba a {e}.",
            "no he podido localizar a {p}; el {t} comunica.",
        ],
        "close": ["Atentamente,", "Un saludo,", "Saludos cordiales,", "Gracias,", "Un cordial saludo,"],
        "sig": ["Tel.: {t}", "Móvil: {t}", "Tel. {t} | Móvil {t2}", "Fax: {t}", "Teléfono: {t}", "Tlf: {t}"],
        "titles": ("Sra.", "Sr."),
        "clean_body": [
            "le agradecemos su pedido n.º {n} del {d}. El envío saldrá en 48 horas.",
            "adjuntamos la factura n.º {n} por importe de {a} €, con vencimiento el {d}.",
            "La reunión del comité de dirección será el {d} a las 14:30 en la Sala Goya.",
            "Nuestras oficinas de la Calle Mayor permanecerán cerradas el Día de la Hispanidad.",
            "El presupuesto {n} es válido hasta el {d}; gastos de envío {a} €.",
            "El mantenimiento de la caldera está previsto para el jueves por la mañana.",
            "Su área de cliente {n} se ha actualizado. Nueva tarifa: Luz Verde Hogar.",
            "La declaración del IVA del primer trimestre se presentó el {d}.",
        ],
        "clean_greet": ["Estimados señores:", "Buenos días:", "Estimado cliente:", "Hola a todos:"],
        "clean_sig": ["Atención al cliente", "Departamento de contabilidad", "El equipo de Transportes García S.L.", "Panadería Central, Calle de Alcalá 45, 28014 Madrid"],
        "dob": "%d/%m/%Y",
    },
    "nl": {
        "from": ["Van: {p} <{e}>", "Van: \"{p}\" <{e}>", "Afzender: {p} <{e}>"],
        "greet": ["Geachte {s},", "Beste {g},", "Hoi {g},", "Goedemorgen {s},", "Geachte heer/mevrouw,", "Geachte mevrouw {sf},"],
        "body": [
            "naar aanleiding van uw bericht van {d}: factuur nr. {n} van € {a} staat nog open.",
            "wilt u het bedrag overmaken naar rekening IBAN {i}?",
            "mijn nieuwe bankgegevens zijn: {i} t.n.v. {p}.",
            "u kunt mij bereiken op {t} of mobiel op {t2}.",
            "bel me gerust op {t}.",
            "mijn collega {p} ({e}) neemt bestelling {n} over vanaf {d}.",
            "mevrouw {sf} van de administratie neemt contact met u op over dossier {n}.",
            "de heer {sm} belde vanochtend en vraagt of u hem terugbelt op {t}.",
            "voor de wijziging van het contract hebben we uw geboortedatum nodig: geboren op {b}, polis {n}.",
            "Contactpersoon: {p}, tel. {t}, e-mail {e}",
            "zending {n} kwam op {d} beschadigd aan. Mail naar {e}.",
            "ik kon {p} niet bereiken; {t} is in gesprek.",
        ],
        "close": ["Met vriendelijke groet,", "Vriendelijke groeten,", "Groeten,", "Hartelijke groet,", "Met vriendelijke groeten,"],
        "sig": ["Tel.: {t}", "Mobiel: {t}", "T {t} | M {t2}", "Fax: {t}", "Telefoon: {t}", "Mob. {t}"],
        "titles": ("mevrouw", "de heer"),
        "clean_body": [
            "bedankt voor uw bestelling nr. {n} van {d}. De levering volgt binnen twee werkdagen.",
            "bijgaand de factuur nr. {n} van € {a}, te betalen vóór {d}.",
            "De vergadering van de ondernemingsraad is op {d} om 14.30 uur in zaal Rembrandt.",
            "Ons kantoor aan de Stationsstraat is gesloten op Koningsdag.",
            "Offerte {n} is geldig tot {d}; verzendkosten € {a}.",
            "Het onderhoud van de cv-ketel staat gepland voor donderdagochtend.",
            "Uw klantaccount {n} is bijgewerkt. Nieuw tarief: Groene Stroom Vast.",
            "De btw-aangifte over het eerste kwartaal is op {d} ingediend.",
        ],
        "clean_greet": ["Geachte heer/mevrouw,", "Goedemiddag,", "Beste klant,", "Hallo allemaal,"],
        "clean_sig": ["Klantenservice", "Afdeling administratie", "Het team van Transport de Vries B.V.", "Bakkerij Centrum, Kerkstraat 8, 3511 LX Utrecht"],
        "dob": "%d-%m-%Y",
    },
}
# The `{s}` title when writing to someone: German "Sehr geehrte Frau …"/"Sehr geehrter Herr …".
GREETING_TITLES = {
    "de": ("Frau", "Herr"), "fr": ("Madame", "Monsieur"), "it": ("Sig.ra", "Sig."),
    "es": ("Sra.", "Sr."), "nl": ("mevrouw", "meneer"),
}


class Mail:
    def __init__(self, rng, fakers, foreign, loc):
        self.rng, self.fakers, self.foreign, self.loc = rng, fakers, foreign, loc
        self.f = fakers[loc]
        self.values = []  # (kind, value)

    def person(self):
        return make_person(self.rng, self.fakers, self.foreign, self.loc)

    def v(self, kind, value):
        self.values.append((kind, value))
        return mark(kind, value)

    def email_for(self, person):
        rng = self.rng
        if rng.random() < 0.4:
            return self.f.free_email() if rng.random() < 0.5 else self.f.email()
        given = ascii_fold(person.given).lower()
        surname = ascii_fold(person.surname).lower().replace(" ", "").replace("'", "")
        local = rng.choice([f"{given}.{surname}", f"{given[0]}.{surname}", f"{surname}{rng.randrange(10, 99)}", f"{given}_{surname}"])
        return f"{local}@{self.f.domain_name()}"

    def phone(self, labelled):
        loc = self.loc if self.rng.random() < 0.85 else self.rng.choice(list(PHONES))
        while True:
            value = render_phone(self.rng, loc)
            if not value.startswith(BARE):
                return self.v("phone", value)
            if labelled:
                return self.v("phone", value[len(BARE):])

    def iban(self):
        value = self.fakers[self.loc if self.rng.random() < 0.8 else self.rng.choice(list(LOCALE))].iban()
        if self.rng.random() < 0.7:
            value = " ".join(value[i:i + 4] for i in range(0, len(value), 4))
        return self.v("iban", value)

    def dob(self):
        d = self.f.date_of_birth(minimum_age=18, maximum_age=90)
        return self.v("date_of_birth", d.strftime(T[self.loc]["dob"]))

    def fill(self, template, sender, phone_labelled):
        rng = self.rng
        other = self.person()
        titles = GREETING_TITLES[self.loc]
        out = template
        while "{" in out:
            start = out.index("{")
            end = out.index("}", start)
            key = out[start + 1:end]
            if key == "p":
                who = other if rng.random() < 0.5 else self.person()
                rep = self.v("person", who.full)
            elif key == "g":
                rep = self.v("person", sender.given)
            elif key in ("s", "S"):
                title = titles[0] if sender.female else titles[1]
                full = rng.random() < 0.3
                rep = f"{title} " + self.v("person", sender.full if full else sender.surname)
            elif key == "r":
                rep = "" if sender.female else "r"
            elif key in ("sf", "sm"):
                p = self.person()
                rep = self.v("person", p.surname if rng.random() < 0.7 else p.full)
            elif key == "e":
                rep = self.v("email", self.email_for(other))
            elif key in ("t", "t2"):
                rep = self.phone(phone_labelled)
            elif key == "i":
                rep = self.iban()
            elif key == "b":
                rep = self.dob()
            elif key == "n":
                rep = str(rng.randrange(10_000, 99_999_999))
            elif key == "d":
                rep = self.f.date_between(start_date="-2y", end_date="+30d").strftime(T[self.loc]["dob"])
            elif key == "a":
                rep = f"{rng.randrange(12, 9_999)},{rng.randrange(0, 99):02d}"
            else:
                raise ValueError(f"unknown slot {key}")
            out = out[:start] + rep + out[end + 1:]
        return out


def ascii_fold(s):
    import unicodedata
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c) and (c.isalnum() or c in "-"))


def pii_mail(rng, fakers, foreign, loc):
    t = T[loc]
    m = Mail(rng, fakers, foreign, loc)
    sender = m.person()
    recipient = m.person()
    lines = []
    frm = rng.choice(t["from"])
    lines.append(frm.replace("{p}", m.v("person", sender.full)).replace("{e}", m.v("email", m.email_for(sender))))
    lines.append("")
    lines.append(m.fill(rng.choice(t["greet"]), recipient, True))
    lines.append("")
    for body in rng.sample(t["body"], 3):
        lines.append(m.fill(body, recipient, any(w in body.lower() for w in PHONE_LABELS)))
    lines.append("")
    lines.append(rng.choice(t["close"]))
    lines.append(m.v("person", sender.full))
    for sig in rng.sample(t["sig"], rng.choice([1, 2])):
        lines.append(m.fill(sig, sender, any(w in sig.lower() for w in PHONE_LABELS)))
    if rng.random() < 0.5:
        lines.append(m.v("email", m.email_for(sender)))
    return "\n".join(lines), m.values


def clean_mail(rng, fakers, foreign, loc):
    t = T[loc]
    f = fakers[loc]
    m = Mail(rng, fakers, foreign, loc)
    lines = [rng.choice(t["clean_greet"]), ""]
    for body in rng.sample(t["clean_body"], 3):
        lines.append(m.fill(body, None, False))
    lines += ["", rng.choice(t["close"]), rng.choice(t["clean_sig"])]
    # Faker's companies and streets are often named after people: only numbers and towns.
    lines.append(f"{rng.choice(t['clean_sig'])}, Postfach {rng.randrange(100, 9999)}, {f.postcode()} {f.city()}")
    return "\n".join(lines)


def lexicon():
    given = set((DATA / "given_names.txt").read_text(encoding="utf-8").split())
    surnames = set((DATA / "surnames.txt").read_text(encoding="utf-8").split())
    return given, surnames


def main():
    from faker import Faker

    OUT.mkdir(parents=True, exist_ok=True)
    given_lex, surname_lex = lexicon()
    for split, seed in SPLITS.items():
        rng = random.Random(seed)
        fakers = {}
        for i, (short, name) in enumerate(LOCALE.items()):
            fakers[short] = Faker(name)
            fakers[short].seed_instance(seed * 31 + i)
        foreign = []
        for i, name in enumerate(FOREIGN_SURNAME_LOCALES):
            f = Faker(name)
            f.seed_instance(seed * 37 + i)
            foreign.append(f)
        mails, values = [], []
        for loc in LOCALE:
            for _ in range(MAILS_PER_LOCALE):
                text, vals = pii_mail(rng, fakers, foreign, loc)
                mails.append(text)
                values += vals
        clean = [clean_mail(rng, fakers, foreign, loc) for loc in LOCALE for _ in range(CLEAN_MAILS_PER_LOCALE)]
        header = (f"# Generated by crates/pii/scripts/gen-heldout.py (seed {seed}, Faker {FAKER_VERSION}); "
                  f"do not edit, do not tune on the test split.\n")
        (OUT / f"{split}.txt").write_text(header + "\n%%\n".join(mails) + "\n", encoding="utf-8")
        (OUT / f"{split}-clean.txt").write_text(header + "\n%%\n".join(clean) + "\n", encoding="utf-8")
        kinds = {}
        for kind, _ in values:
            kinds[kind] = kinds.get(kind, 0) + 1
        words = [w for kind, v in values if kind == "person" for w in v.split() if w[:1].isupper()]
        known = sum(1 for w in words if w in given_lex or w in surname_lex)
        print(f"{split}: {len(mails)} mails, {len(clean)} PII-free mails, values {kinds}; "
              f"name words the lexicon knows: {known}/{len(words)}")


if __name__ == "__main__":
    main()
