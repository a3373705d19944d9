#!/usr/bin/env python3
"""Independent held-out PII evaluation corpus generator (issue 18 item 14).

Python standard library only, seeded and deterministic.  Writes

  crates/pii/tests/data/independent/dev.txt         (seed 1801)
  crates/pii/tests/data/independent/test.txt        (seed 1802)
  crates/pii/tests/data/independent/dev-clean.txt   (seed 2801)
  crates/pii/tests/data/independent/test-clean.txt  (seed 2802)

in the marked format read by verre_pii::eval::load_marked_file.  The value
lists (values.py), value generators (pii_values.py) and sentence frames
(frames.py) were written for this corpus without looking at the
recognisers or their tuning data, and without Faker.

Run:  python3 crates/pii/eval/independent/gen.py  [--check]
"""

import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from values import ORGS, CITIES, STREETS, PRODUCTS  # noqa: E402
from pii_values import (P, E, T, I, D, person, title, name_variant, email_for,  # noqa: E402
                        role_address, phone, iban_for, iban, iban_valid, dob, dob_value,
                        birth_date, IBAN_LEN, LOCALE_IBAN)
from frames import PHRASES, BODIES, CLEAN  # noqa: E402

OUT = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "data", "independent"))
LOCALES = ["de", "fr", "it", "es", "nl", "en"]
LOCALE_W = [5, 4, 4, 4, 4, 3]

PRON = {
    "de": {"pron": ("er", "sie"), "pronC": ("Er", "Sie")},
    "fr": {"pron": ("l'intéressé", "l'intéressée"), "obj": ("le", "la")},
    "it": {"adj": ("lui", "lei"), "o": ("o", "a")},
    "es": {"obj": ("él", "ella"), "adj": ("el", "la")},
    "nl": {"obj": ("hem", "haar"), "pronC": ("Hij", "Zij")},
    "en": {},
}


def amount(rng, loc):
    v = rng.randrange(1200, 980000) / 100
    s = f"{v:,.2f}"
    if loc in ("de", "it", "es", "nl"):
        s = s.replace(",", "X").replace(".", ",").replace("X", ".")
        return rng.choice([f"{s} EUR", f"{s} €", f"€ {s}"])
    if loc == "fr":
        s = s.replace(",", " ").replace(".", ",")
        return f"{s} €"
    return rng.choice([f"€{s}", f"EUR {s}"])


def plain_date(rng, loc):
    y, mo, d = rng.randrange(2024, 2027), rng.randrange(1, 13), rng.randrange(1, 29)
    if loc == "de":
        return f"{d:02d}.{mo:02d}.{y}"
    if loc == "nl":
        return f"{d}-{mo}-{y}"
    if loc == "en":
        return f"{d} {['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'][mo-1]} {y}"
    return f"{d:02d}/{mo:02d}/{y}"


def ref(rng):
    return rng.choice(["RE-", "A-", "2025/", "SIN-", "N.", "Nr. ", "PO-", "", "Az. "]) + str(rng.randrange(10000, 9999999))


def title_name(rng, loc, p):
    """Title plus surname; only the surname is marked."""
    t = title(rng, loc, p)
    if rng.random() < 0.15 and loc != "es":
        return f"{t} {P(p.full)}"
    return f"{t} {P(p.surname)}"


def caps_name(rng, p):
    return rng.choice([P(f"{p.surname.upper()} {p.given}"), P(p.full), P(f"{p.given} {p.surname.upper()}")])


def cap_name(rng, loc, p):
    """A name at the start of a sentence: full name, or capitalised title + surname."""
    if rng.random() < 0.6:
        return P(p.full)
    t = title(rng, loc, p)
    return f"{t[0].upper()}{t[1:]} {P(p.surname)}"


def street(rng, loc):
    s = rng.choice(STREETS[loc])
    n = rng.randrange(1, 140)
    if loc in ("fr",):
        return f"{n} {s}"
    if loc == "es":
        return f"{s}, {n}"
    return f"{s} {n}"


def slots(rng, loc, S, R, X, X2, C, org, org2):
    pr = PRON[loc]
    g = lambda key, p: pr.get(key, ("", ""))[0 if p.gender == "m" else 1]
    d = {
        "S": P(S.full), "S_mail": E(email_for(rng, S, loc, org)), "S_ph": T(phone(rng, loc, True)),
        "R": P(R.full),
        "X": P(X.full), "X_t": title_name(rng, loc, X), "X_g": P(X.given), "X_cap": cap_name(rng, loc, X),
        "X_caps": caps_name(rng, X), "X_ph": T(phone(rng, loc)), "X_mail": E(email_for(rng, X, loc)),
        "X_dob": dob(rng, loc, X.gender), "X_dobv": D(dob_value(rng, loc, *birth_date(rng))),
        "X_pron": g("pron", X), "X_pronC": g("pronC", X), "X_obj": g("obj", X), "X_adj": g("adj", X),
        "X_o": g("o", X),
        "X2": P(X2.full), "X2_t": title_name(rng, loc, X2), "X2_g": P(X2.given),
        "X2_ph": T(phone(rng, loc, True)), "X2_mail": E(email_for(rng, X2, loc, org)),
        "C": P(C.full) if rng.random() < 0.6 else P(C.given), "C_dob": dob(rng, loc, C.gender, child=True),
        "iban": I(iban_for(rng, loc)), "ph1": T(phone(rng, loc, False)), "ph2": T(phone(rng, loc)),
        "date": plain_date(rng, loc), "ref": ref(rng), "amount": amount(rng, loc),
        "street": street(rng, loc), "city": rng.choice(CITIES[loc]), "org": org[0], "org2": org2[0],
        "prod": rng.choice(PRODUCTS),
    }
    return d


def salutation(rng, loc, R):
    ph = PHRASES[loc]
    if rng.random() < 0.55:
        key = "formal_m" if R.gender == "m" else "formal_f"
        t = title(rng, loc, R)
        if loc == "de":
            t = {"Herrn": "Herr", "Herrn Prof. Dr.": "Herr Prof. Dr.", "Hr.": "Herr", "Fr.": "Frau"}.get(t, t)
        sn = P(R.surname) if rng.random() < 0.85 else P(R.full)
        return ph[key].format(t=t, sn=sn)
    g = P(R.given) if rng.random() < 0.85 else P(R.full)
    s = rng.choice(ph["informal"]).format(g=g)
    if loc == "de" and "Liebe(r)" in s:
        s = s.replace("Liebe(r)", "Lieber" if R.gender == "m" else "Liebe")
    return s


def signature(rng, loc, S, org, slot):
    ph = PHRASES[loc]
    lines = [rng.choice(ph["close"]).format(city=rng.choice(CITIES[loc]))]
    style = rng.randrange(6)
    if style == 0:
        lines.append(P(S.given))
        return "\n".join(lines)
    if style == 1 and loc == "de":
        lines.append(f"i. A. {P(S.full)}")
    elif style == 2:
        lines.append(P(S.full.upper()) if rng.random() < 0.3 else P(S.full))
    else:
        lines.append(P(S.full))
    if rng.random() < 0.2:
        lines.append("")
        lines.append("--")
        lines.append(P(S.full))
    if rng.random() < 0.75:
        lines.append(rng.choice(ph["roles"]))
    lines.append(org[0])
    if rng.random() < 0.6:
        lines.append(f"{street(rng, loc)} · {rng.choice(CITIES[loc])}")
    tel = f"{rng.choice(ph['tel'])} {T(phone(rng, loc, False))}"
    mob = f"{rng.choice(ph['mob'])} {T(phone(rng, loc, True))}"
    fax = f"{rng.choice(ph['fax'])} {T(phone(rng, loc, False))}"
    parts = [tel]
    if rng.random() < 0.5:
        parts.append(fax)
    if rng.random() < 0.6:
        parts.append(mob)
    if loc == "de" and rng.random() < 0.15:
        parts = [f"Tel. {T(phone(rng, 'de', False))}, Durchwahl {rng.randrange(10, 400)}"] + parts[1:]
    if rng.random() < 0.5:
        lines.append(rng.choice([" | ", " · ", "  ", ", ", " / "]).join(parts))
    else:
        lines.extend(parts)
    if rng.random() < 0.7:
        lines.append(slot["S_mail"] if rng.random() < 0.5 else f"E-Mail: {slot['S_mail']}" if loc == "de" else f"Mail: {slot['S_mail']}")
    if rng.random() < 0.3:
        lines.append(f"www.{org[1]}")
    return "\n".join(lines)


def display(rng, p):
    st = rng.choice(["full"] * 5 + ["lower", "caps", "lastfirst", "caps_last"])
    if st == "full":
        return P(p.full)
    if st == "lower":
        return P(p.full.lower())
    if st == "caps":
        return P(p.full.upper())
    if st == "caps_last":
        return P(f"{p.surname.upper()} {p.given}")
    return f'"{P(p.surname)}, {P(p.given)}"'


def header(rng, loc, S, R, slot, org, subject):
    ph = PHRASES[loc]
    lines = [f"{ph['from']}: {display(rng, S)} <{slot['S_mail']}>"]
    r = rng.random()
    if r < 0.5:
        lines.append(f"{ph['to']}: {display(rng, R)} <{E(email_for(rng, R, loc))}>")
    elif r < 0.7:
        lines.append(f"{ph['to']}: {E(email_for(rng, R, loc))}")
    else:
        lines.append(f"{ph['to']}: {role_address(rng, org)}")
    if rng.random() < 0.2:
        lines.append(f"{ph['cc']}: {slot['X2_mail']}")
    if rng.random() < 0.4:
        lines.append(f"{ph['date']}: {slot['date']} {rng.randrange(7, 19)}:{rng.randrange(0, 60):02d}")
    lines.append(f"{ph['subject']}: {subject}")
    return "\n".join(lines)


SHORT_REPLY = {
    "de": ["danke, ist erledigt.", "passt so, ich melde mich morgen.", "Bitte noch einmal prüfen – die Nummer stimmt nicht ganz.", "Geht klar!"],
    "fr": ["merci, c'est noté.", "Parfait, je m'en occupe demain.", "Je transmets au service concerné."],
    "it": ["grazie, ricevuto.", "Perfetto, ci sentiamo domani.", "Inoltro all'ufficio competente."],
    "es": ["gracias, recibido.", "Perfecto, lo miro mañana.", "Lo paso al departamento correspondiente."],
    "nl": ["dank je, is geregeld.", "Prima, ik kijk er morgen naar.", "Ik stuur het door naar de afdeling."],
    "en": ["thanks, noted.", "Great, I'll look at it tomorrow.", "Passing this on to the team."],
}


def table(rng, loc, org):
    heads = {"de": "Name;E-Mail;Telefon;Geburtsdatum", "fr": "Nom;Prénom;Courriel;Téléphone;Date de naissance",
             "it": "Cognome,Nome,Email,Cellulare,Data di nascita", "es": "Nombre\tCorreo\tTeléfono\tFecha de nacimiento",
             "nl": "naam | e-mail | telefoon | geboortedatum", "en": "name,email,phone,dob"}
    intro = {"de": "anbei die Teilnehmerliste für den Erste-Hilfe-Kurs:", "fr": "voici la liste des inscrits à la sortie :",
             "it": "ecco l'elenco dei partecipanti al corso:", "es": "os paso la lista de inscritos:",
             "nl": "hierbij de deelnemerslijst:", "en": "here is the attendee list for the workshop:"}
    rows = [heads[loc]]
    for _ in range(rng.randrange(3, 7)):
        p = person(rng, loc)
        y, mo, d = birth_date(rng)
        dv = D(dob_value(rng, loc, y, mo, d))
        em, tp = E(email_for(rng, p, loc)), T(phone(rng, loc))
        if loc == "de":
            rows.append(f"{P(p.surname)}, {P(p.given)};{em};{tp};{dv}")
        elif loc == "fr":
            rows.append(f"{P(p.surname.upper())};{P(p.given)};{em};{tp};{dv}")
        elif loc == "it":
            rows.append(f"{P(p.surname)},{P(p.given)},{em},{tp},{dv}")
        elif loc == "es":
            rows.append(f"{P(p.full)}\t{em}\t{tp}\t{dv}")
        elif loc == "nl":
            rows.append(f"{P(p.full)} | {em} | {tp} | {dv}")
        else:
            rows.append(f"{P(p.full)},{em},{tp},{dv}")
    return intro[loc] + "\n\n" + "\n".join(rows)


def quote(text):
    return "\n".join(("> " + l) if l else ">" for l in text.split("\n"))


def document(rng):
    loc = rng.choices(LOCALES, LOCALE_W)[0]
    org, org2 = rng.sample(ORGS[loc], 2)
    S, R, X, X2 = (person(rng, loc) for _ in range(4))
    C = person(rng, loc, {"de": "m", "fr": "f", "it": "f", "es": "m", "nl": "m"}.get(loc))
    slot = slots(rng, loc, S, R, X, X2, C, org, org2)
    ph = PHRASES[loc]
    subject = rng.choice(ph["subjects"]).format(date=slot["date"], ref=slot["ref"])
    if rng.random() < 0.1:
        body = table(rng, loc, org)
    else:
        body = rng.choice(BODIES[loc]).format(**slot)
    if body.startswith(("z. Hd.", "à l'attention", "Att.", "alla c.a.", "A la atención", "t.a.v.", "Attn", "c/o")):
        text = body
    else:
        text = salutation(rng, loc, R) + "\n\n" + body
    text += "\n\n" + signature(rng, loc, S, org, slot)
    if rng.random() < 0.65:
        text = header(rng, loc, S, R, slot, org, subject) + "\n\n" + text
    w = rng.random()
    if w < 0.25:
        # reply chain: R answers S, quoting the original
        qs = {"QS": display(rng, S) if rng.random() < 0.4 else P(S.full), "QS_mail": slot["S_mail"],
              "qdate": slot["date"], "qtime": f"{rng.randrange(7, 20)}:{rng.randrange(0, 60):02d}"}
        hdr = rng.choice(ph["reply_hdr"]).format(**qs)
        close = rng.choice(ph["close"]).format(city=rng.choice(CITIES[loc]))
        text = (f"{salutation(rng, loc, S)}\n\n{rng.choice(SHORT_REPLY[loc])}\n\n{close}\n"
                f"{P(R.given) if rng.random() < 0.5 else P(R.full)}\n\n{hdr}\n{quote(text)}")
    elif w < 0.37:
        # forwarded message
        F = person(rng, loc)
        note = rng.choice(SHORT_REPLY[loc])
        fwd_hdr = (f"{ph['fwd']}\n{ph['from']}: {display(rng, S)} <{slot['S_mail']}>\n"
                   f"{ph['date']}: {slot['date']}\n{ph['subject']}: {subject}\n"
                   f"{ph['to']}: {E(email_for(rng, F, loc, org))}")
        body_only = text.split("\n\n", 1)[1] if text.startswith(ph["from"] + ":") else text
        text = f"{note}\n\n{P(F.given)}\n\n{fwd_hdr}\n\n{body_only}"
    return text


def clean_document(rng):
    loc = rng.choices(LOCALES, LOCALE_W)[0]
    org = rng.choice(ORGS[loc])
    slot = {"ref": ref(rng), "prod": rng.choice(PRODUCTS), "amount": amount(rng, loc),
            "date": plain_date(rng, loc), "street": street(rng, loc), "city": rng.choice(CITIES[loc]),
            "org": org[0]}
    text = rng.choice(CLEAN[loc]).format(**slot)
    if rng.random() < 0.5:
        text = f"{PHRASES[loc]['subject']}: {rng.choice(PHRASES[loc]['subjects']).format(**slot)}\n\n" + text
    return text


MARK = re.compile(r"\[\[(person|email|phone|iban|date_of_birth):([^\]]*)\]\]")


def write(path, docs, seed, what):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(f"# Independent held-out PII evaluation corpus ({what}), seed {seed}.\n")
        f.write("# Generated by crates/pii/eval/independent/gen.py; do not edit by hand.\n")
        f.write("# Values and frames written independently of the recognisers' tuning data.\n")
        f.write("\n%%\n".join(docs))
        f.write("\n")


def self_test(rng):
    for c in IBAN_LEN:
        for style in ("grouped", "compact"):
            for _ in range(200):
                v = iban(rng, c, style)
                assert iban_valid(v), v
                assert len(v.replace(" ", "")) == IBAN_LEN[c]
    # the reference IBAN from ISO 13616 examples
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert not iban_valid("DE89 3704 0044 0532 0130 01")


def check_file(path):
    counts = {}
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for kind, v in MARK.findall(text):
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "iban":
            assert iban_valid(v), (path, v)
        assert v.strip() == v and v, (path, kind, v)
    # no unbalanced markers left
    stripped = MARK.sub("", text)
    assert "[[" not in stripped and "]]" not in stripped, path
    ndocs = text.count("\n%%\n") + 1
    return ndocs, counts


def main():
    self_test(random.Random(99))
    os.makedirs(OUT, exist_ok=True)
    for name, seed, n in (("dev", 1801, 150), ("test", 1802, 150)):
        rng = random.Random(seed)
        write(os.path.join(OUT, f"{name}.txt"), [document(rng) for _ in range(n)], seed, name)
    for name, seed, n in (("dev-clean", 2801, 60), ("test-clean", 2802, 60)):
        rng = random.Random(seed)
        write(os.path.join(OUT, f"{name}.txt"), [clean_document(rng) for _ in range(n)], seed, name + ", no personal data")
    for name in ("dev", "test", "dev-clean", "test-clean"):
        nd, c = check_file(os.path.join(OUT, f"{name}.txt"))
        print(f"{name}.txt: {nd} documents, " + ", ".join(f"{k}={v}" for k, v in sorted(c.items())))
    hw = os.path.join(HERE, "handwritten.txt")
    if os.path.exists(hw):
        nd, c = check_file(hw)
        print(f"handwritten.txt: {nd} documents, " + ", ".join(f"{k}={v}" for k, v in sorted(c.items())))


if __name__ == "__main__":
    main()
