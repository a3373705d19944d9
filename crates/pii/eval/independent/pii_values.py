"""Generators for personal values: people, e-mail addresses, phone numbers,
IBANs and dates of birth.  Every function takes a random.Random so the
output is deterministic for a seed.  Marked output uses [[kind:value]]."""

import unicodedata

from values import GIVEN, SURNAMES, ORIGINS, FREEMAIL, ORGS


def m(kind, value):
    assert "]]" not in value and "\n" not in value
    return f"[[{kind}:{value}]]"


def P(v):
    return m("person", v)


def E(v):
    return m("email", v)


def T(v):
    return m("phone", v)


def I(v):
    return m("iban", v)


def D(v):
    return m("date_of_birth", v)


# ---------------------------------------------------------------- people

class Person:
    def __init__(self, given, surname, gender, origin, second=None):
        self.given = given
        self.surname = surname if second is None else f"{surname} {second}"
        self.first_surname = surname
        self.gender = gender
        self.origin = origin

    @property
    def full(self):
        return f"{self.given} {self.surname}"


def weighted(rng, pairs):
    total = sum(w for _, w in pairs)
    x = rng.uniform(0, total)
    for v, w in pairs:
        x -= w
        if x <= 0:
            return v
    return pairs[-1][0]


def person(rng, locale, gender=None):
    origin = weighted(rng, ORIGINS[locale])
    gender = gender or rng.choice("mf")
    given = rng.choice(GIVEN[origin][gender])
    surname = rng.choice(SURNAMES[origin])
    second = None
    if origin == "es" or (locale == "es" and origin != "ar" and rng.random() < 0.5):
        second = rng.choice(SURNAMES["es"])
        if second == surname:
            second = None
    elif origin == "pt" and rng.random() < 0.5:
        second = rng.choice(SURNAMES["pt"])
        if second == surname:
            second = None
    return Person(given, surname, gender, origin, second)


TITLES = {
    "de": {"m": ["Herr", "Herrn", "Herr Dr.", "Herrn Prof. Dr.", "Hr."],
           "f": ["Frau", "Frau Dr.", "Fr.", "Frau Prof."]},
    "fr": {"m": ["M.", "Monsieur", "Me", "Dr"], "f": ["Mme", "Madame", "Mlle", "Dr"]},
    "it": {"m": ["Sig.", "Dott.", "Avv.", "Ing.", "signor"],
           "f": ["Sig.ra", "Dott.ssa", "signora", "Avv."]},
    "es": {"m": ["Sr.", "D.", "don", "señor"], "f": ["Sra.", "Dña.", "doña", "señora"]},
    "nl": {"m": ["de heer", "dhr.", "meneer"], "f": ["mevrouw", "mevr.", "mw."]},
    "en": {"m": ["Mr", "Mr.", "Dr"], "f": ["Ms", "Mrs", "Ms.", "Dr"]},
}


def title(rng, locale, p):
    return rng.choice(TITLES[locale][p.gender])


def surname_for_title(p):
    # Spanish usage: title + both surnames or first surname only
    return p.surname


def upper_first(s):
    return s[:1].upper() + s[1:]


def name_variant(rng, p, style=None):
    """Return a marked rendering of a person's name (may be two markers)."""
    style = style or rng.choice(["full"] * 6 + ["initial", "caps_last", "lower", "last_first",
                                                "caps"])
    if style == "full":
        return P(p.full)
    if style == "initial":
        return P(f"{p.given[0]}. {p.surname}")
    if style == "caps_last":
        return P(f"{p.surname.upper()} {p.given}")
    if style == "lower":
        return P(p.full.lower())
    if style == "last_first":
        return f"{P(p.surname)}, {P(p.given)}"
    if style == "caps":
        return P(p.full.upper())
    if style == "given":
        return P(p.given)
    if style == "surname":
        return P(p.surname)
    raise ValueError(style)


# ---------------------------------------------------------------- e-mail

TRANS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "ı": "i", "ł": "l",
                       "đ": "d", "æ": "ae", "ø": "o", "'": "", " ": "", "-": "-"})


def ascii_local(s, german=True):
    s = s.lower()
    if german:
        s = s.translate(TRANS)
    else:
        s = s.replace("'", "").replace(" ", "").replace("ß", "ss").replace("ı", "i").replace("ł", "l").replace("đ", "d")
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if c.isascii() and (c.isalnum() or c in "-."))


def email_for(rng, p, locale, org=None):
    german = p.origin in ("de", "at") or rng.random() < 0.3
    g = ascii_local(p.given, german).replace(".", "")
    s = ascii_local(p.surname, german).replace(".", "")
    shape = rng.randrange(16)
    if shape == 0:
        local = f"{g}.{s}"
    elif shape == 1:
        local = f"{g[0]}.{s}"
    elif shape == 2:
        local = f"{g}{s}"
    elif shape == 3:
        local = f"{s}.{g}"
    elif shape == 4:
        local = f"{g}_{s}"
    elif shape == 5:
        local = f"{g[0]}{s[0]}" + (s[1] if rng.random() < 0.5 else "")
    elif shape == 6:
        local = f"{g}.{s}+{rng.choice(['newsletter', 'amazon', 'verein', 'work', 'shop', 'bank'])}"
    elif shape == 7:
        local = f"{g}.{s}{rng.randrange(60, 100) if rng.random() < .5 else rng.randrange(1950, 2006)}"
    elif shape == 8:
        local = f"{s}-{g}"
    elif shape == 9:
        local = f"{g}-{s}"
    elif shape == 10:
        local = f"{s}{rng.randrange(1, 99)}"
    elif shape == 11:
        local = f"{g[0]}{s}"
    elif shape == 12:
        local = f"{g}.{s[0]}"
    elif shape == 13:
        local = f"{g}{rng.choice(['.', '_', ''])}{s[:4]}{rng.randrange(10, 999)}"
    elif shape == 14:
        local = s
    else:
        local = f"{g}"
    local = local.strip(".-_") or "info"
    if org is not None:
        domain = org[1]
        if rng.random() < 0.2:
            domain = rng.choice(["mail.", "post.", "staff.", "intern.", "de.", "eu."]) + domain
    else:
        domain = rng.choice(FREEMAIL[locale if locale in FREEMAIL else "en"])
    addr = f"{local}@{domain}"
    if rng.random() < 0.08:
        addr = addr.upper()
    elif rng.random() < 0.08:
        addr = local.title().replace("-", "-") + "@" + domain
    return addr


def role_address(rng, org):
    return f"{rng.choice(['info', 'buchhaltung', 'contact', 'service', 'segreteria', 'administracion', 'klantenservice', 'hr', 'office', 'noreply'])}@{org[1]}"


# ---------------------------------------------------------------- phones

def digits(rng, n, first="23456789"):
    return rng.choice(first) + "".join(rng.choice("0123456789") for _ in range(n - 1))


def chunk(s, sizes):
    out, i = [], 0
    for k in sizes:
        if i >= len(s):
            break
        out.append(s[i:i + k])
        i += k
    if i < len(s):
        out.append(s[i:])
    return out


def pairs(s):
    return [s[i:i + 2] for i in range(0, len(s), 2)]


def phone_de(rng, mobile=None, country="DE"):
    if country == "AT":
        if mobile if mobile is not None else rng.random() < 0.4:
            area, sub = rng.choice([("664", 7), ("676", 7), ("699", 8), ("650", 7), ("660", 7)])
            is_mob = True
        else:
            area, sub = rng.choice([("1", 7), ("316", 6), ("662", 6), ("512", 6), ("732", 6), ("463", 6)])
            is_mob = False
        cc = "43"
    else:
        if mobile if mobile is not None else rng.random() < 0.4:
            area, sub = rng.choice([("151", 8), ("152", 8), ("157", 8), ("160", 7), ("162", 7),
                                    ("170", 7), ("171", 7), ("172", 7), ("175", 7), ("176", 8),
                                    ("177", 8), ("179", 7)])
            is_mob = True
        else:
            area, sub = rng.choice([("30", 8), ("30", 7), ("40", 7), ("40", 8), ("89", 7), ("89", 8),
                                    ("221", 7), ("69", 8), ("711", 7), ("351", 7), ("511", 7),
                                    ("6221", 6), ("7531", 5), ("4621", 6), ("341", 7), ("911", 7)])
            is_mob = False
        cc = "49"
    s = digits(rng, sub)
    ext = None
    if not is_mob and rng.random() < 0.25:
        s = s[:-2] if len(s) > 5 else s
        ext = rng.choice(["0", "12", "214", "33", "150"])
    style = rng.randrange(14)
    sep_sub = s if rng.random() < 0.6 else " ".join(chunk(s, [2] * 6)) if len(s) % 2 == 0 else " ".join(chunk(s, [3, 2, 2, 2]))
    x = f"-{ext}" if ext is not None else ""
    if style == 0:
        v = f"0{area} {s}{x}"
    elif style == 1:
        v = f"0{area}/{s}{x}"
    elif style == 2:
        v = f"0{area}-{s}{x}"
    elif style == 3:
        v = f"(0{area}) {s}{x}"
    elif style == 4:
        v = f"+{cc} {area} {s}{x}"
    elif style == 5:
        v = f"+{cc} (0){area} {s}{x}"
    elif style == 6:
        v = f"00{cc} {area} {s}{x}"
    elif style == 7:
        v = f"0{area} {sep_sub}"
    elif style == 8:
        v = f"+{cc} {area} {sep_sub}"
    elif style == 9:
        v = f"0{area}{s}"
    elif style == 10:
        v = f"+{cc}{area}{s}"
    elif style == 11:
        v = f"+{cc}-{area}-{s}{x}"
    elif style == 12:
        v = f"0{area} / {s}{x}"
    else:
        v = f"+{cc} (0) {area} / {s}{x}"
    return v


def phone_fr(rng, mobile=None, country="FR"):
    if country == "BE":
        if mobile if mobile is not None else rng.random() < 0.5:
            nat = rng.choice(["470", "471", "472", "473", "474", "475", "476", "477", "478", "479",
                              "483", "484", "485", "486", "487", "488", "489", "491", "492", "493",
                              "494", "495", "496", "497", "498", "499"]) + digits(rng, 6, "0123456789")
            style = rng.randrange(6)
            a, rest = nat[:3], nat[3:]
            return [f"0{a} {' '.join(pairs(rest))}", f"0{a}/{rest[:2]}.{rest[2:4]}.{rest[4:]}",
                    f"+32 {a} {' '.join(pairs(rest))}", f"0032 {a} {rest}", f"0{nat}",
                    f"+32 (0){a} {rest[:2]} {rest[2:4]} {rest[4:]}"][style]
        area = rng.choice(["2", "3", "9", "4", "16", "10", "50"])
        nat = area + digits(rng, 8 - len(area))
        a, rest = area, nat[len(area):]
        g = " ".join(chunk(rest, [3, 2, 2]) if len(rest) == 7 else chunk(rest, [2, 2, 2]))
        style = rng.randrange(5)
        return [f"0{a} {g}", f"0{a}/{rest}", f"+32 {a} {g}", f"0{a}.{'.'.join(chunk(rest, [3,2,2]) if len(rest)==7 else pairs(rest))}", f"+32 (0){a} {g}"][style]
    if mobile if mobile is not None else rng.random() < 0.5:
        first = rng.choice(["6", "6", "7"])
        nat = first + (rng.choice("3456789") if first == "7" else rng.choice("0123456789")) + digits(rng, 7, "0123456789")
    else:
        first = rng.choice("12345")
        nat = first + digits(rng, 8)
    p = pairs("0" + nat)
    style = rng.randrange(11)
    if style == 0:
        return " ".join(p)
    if style == 1:
        return ".".join(p)
    if style == 2:
        return "0" + nat
    if style == 3:
        return "-".join(p)
    if style == 4:
        return f"+33 {nat[0]} {' '.join(pairs(nat[1:]))}"
    if style == 5:
        return f"+33 (0){nat[0]} {' '.join(pairs(nat[1:]))}"
    if style == 6:
        return f"0033 {nat[0]} {' '.join(pairs(nat[1:]))}"
    if style == 7:
        return f"+33{nat}"
    if style == 8:
        return f"+33 {nat[0]}{'.'.join([''] + pairs(nat[1:]))}"
    if style == 9:
        return f"+33 (0) {nat[0]} {' '.join(pairs(nat[1:]))}"
    return f"0{nat[0]} {nat[1:3]} {nat[3:5]} {nat[5:7]} {nat[7:]}"


def phone_it(rng, mobile=None):
    if mobile if mobile is not None else rng.random() < 0.5:
        pre = rng.choice(["320", "328", "329", "331", "333", "335", "338", "339", "340", "342",
                          "345", "347", "348", "349", "351", "366", "380", "388", "389", "392"])
        sub = digits(rng, 7, "0123456789")
        style = rng.randrange(8)
        return [f"{pre} {sub}", f"{pre} {sub[:3]} {sub[3:]}", f"{pre}-{sub}", f"{pre}{sub}",
                f"+39 {pre} {sub}", f"+39 {pre} {sub[:3]} {sub[3:]}", f"0039 {pre} {sub}",
                f"{pre}/{sub}"][style]
    area, n = rng.choice([("02", 8), ("06", 8), ("011", 7), ("081", 7), ("055", 7), ("051", 7),
                          ("091", 7), ("010", 7), ("0471", 6), ("0586", 6)])
    sub = digits(rng, n)
    style = rng.randrange(9)
    return [f"{area} {sub}", f"{area}/{sub}", f"{area}-{sub}", f"{area}{sub}",
            f"+39 {area} {sub}", f"+39 {area} {sub[:4]} {sub[4:]}", f"0039 {area} {sub}",
            f"({area}) {sub}", f"+39 {area}.{sub}"][style]


def phone_es(rng, mobile=None):
    if mobile if mobile is not None else rng.random() < 0.5:
        nat = rng.choice("67") + (rng.choice("0123456789") if True else "") + digits(rng, 7, "0123456789")
        if nat[0] == "7":
            nat = "7" + rng.choice("1234") + nat[2:]
        grp = [f"{nat[:3]} {nat[3:6]} {nat[6:]}", f"{nat[:3]} {nat[3:5]} {nat[5:7]} {nat[7:]}", nat]
    else:
        area = rng.choice(["91", "93", "96", "954", "944", "985", "971", "928"])
        nat = area + digits(rng, 9 - len(area))
        grp = [f"{nat[:2]} {nat[2:5]} {nat[5:7]} {nat[7:]}" if len(area) == 2 else f"{nat[:3]} {nat[3:5]} {nat[5:7]} {nat[7:]}",
               f"{nat[:3]} {nat[3:6]} {nat[6:]}", nat]
    g = rng.choice(grp)
    style = rng.randrange(7)
    return [g, f"+34 {g}", f"(+34) {g}", f"0034 {g}", f"+34{nat}", g.replace(" ", "-"),
            g.replace(" ", ".")][style]


def phone_nl(rng, mobile=None):
    if mobile if mobile is not None else rng.random() < 0.5:
        sub = rng.choice("12345") + digits(rng, 7, "0123456789")
        style = rng.randrange(9)
        return [f"06-{sub}", f"06 {sub}", f"06{sub}", f"+31 6 {sub}", f"+31 (0)6 {sub}",
                f"0031 6 {sub}", f"06 {sub[:2]} {sub[2:4]} {sub[4:6]} {sub[6:]}",
                f"+316{sub}", f"06 - {sub}"][style]
    area = rng.choice(["20", "10", "70", "30", "50", "40", "570", "513", "58", "24"])
    sub = digits(rng, 9 - len(area))
    g = f"{sub[:3]} {sub[3:]}" if len(sub) == 7 else f"{sub[:2]} {sub[2:4]} {sub[4:]}"
    style = rng.randrange(9)
    return [f"0{area}-{sub}", f"0{area} {g}", f"(0{area}) {g}", f"+31 {area} {g}",
            f"+31 (0){area} {sub}", f"0031 {area} {sub}", f"0{area}{sub}", f"+31{area}{sub}",
            f"0{area} - {sub}"][style]


def phone_ie(rng, mobile=None):
    if mobile if mobile is not None else rng.random() < 0.5:
        pre = rng.choice(["83", "85", "86", "87", "89"])
        sub = digits(rng, 7, "0123456789")
        return rng.choice([f"0{pre} {sub[:3]} {sub[3:]}", f"+353 {pre} {sub[:3]} {sub[3:]}",
                           f"0{pre}-{sub}", f"+353 (0){pre} {sub}"])
    area = rng.choice(["1", "21", "91", "61"])
    sub = digits(rng, 7)
    return rng.choice([f"(0{area}) {sub[:3]} {sub[3:]}", f"+353 {area} {sub[:3]} {sub[3:]}",
                       f"0{area} {sub}", f"+353-{area}-{sub}"])


def phone_lu(rng, mobile=None):
    if mobile if mobile is not None else rng.random() < 0.5:
        sub = rng.choice(["621", "661", "691"]) + digits(rng, 6, "0123456789")
        return rng.choice([f"+352 {sub[:3]} {sub[3:6]} {sub[6:]}", f"+352 {sub}"])
    sub = digits(rng, 6)
    return rng.choice([f"+352 {sub[:2]} {sub[2:4]} {sub[4:]}", f"+352 {sub}"])


def phone(rng, locale, mobile=None):
    if locale == "de":
        return phone_de(rng, mobile, "AT" if rng.random() < 0.2 else "DE")
    if locale == "fr":
        return phone_fr(rng, mobile, "BE" if rng.random() < 0.2 else "FR")
    if locale == "it":
        return phone_it(rng, mobile)
    if locale == "es":
        return phone_es(rng, mobile)
    if locale == "nl":
        if rng.random() < 0.2:
            return phone_fr(rng, mobile, "BE")
        return phone_nl(rng, mobile)
    f = rng.choice([phone_ie, phone_ie, phone_lu, lambda r, mob: phone_de(r, mob),
                    lambda r, mob: phone_fr(r, mob), phone_nl, phone_it, phone_es])
    return f(rng, mobile)


# ---------------------------------------------------------------- IBAN

def _num(s):
    return "".join(str(int(c, 36)) for c in s)


def iban_check(country, bban):
    return f"{98 - int(_num(bban + country + '00')) % 97:02d}"


def iban_valid(iban):
    s = iban.replace(" ", "").upper()
    return len(s) > 4 and int(_num(s[4:] + s[:4])) % 97 == 1


IBAN_LEN = {"DE": 22, "FR": 27, "IT": 27, "ES": 24, "NL": 18, "BE": 16, "AT": 20}

_IT_ODD = [1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22,
           25, 24, 23]


def _it_cin(s):
    total = 0
    for i, c in enumerate(s):
        v = int(c) if c.isdigit() else ord(c) - 65
        total += _IT_ODD[v] if i % 2 == 0 else v
    return chr(65 + total % 26)


def _es_dc(s10):
    w = [1, 2, 4, 8, 5, 10, 9, 7, 3, 6]
    d = 11 - sum(int(c) * x for c, x in zip(s10, w)) % 11
    return {10: 1, 11: 0}.get(d, d)


def bban(rng, country):
    dd = lambda n: "".join(rng.choice("0123456789") for _ in range(n))
    if country == "DE":
        return rng.choice(["10050000", "20040000", "37040044", "50010517", "70150000",
                           "43060967", "12030000", "66050101", "86055592", "30020900"]) + dd(10)
    if country == "AT":
        return rng.choice(["12000", "20111", "32000", "14000", "60000", "38000"]) + dd(11)
    if country == "FR":
        bank, branch, acct = rng.choice(["30004", "30003", "20041", "10278", "17515", "30066"]), dd(5), dd(11)
        key = 97 - (89 * int(bank) + 15 * int(branch) + 3 * int(acct)) % 97
        return f"{bank}{branch}{acct}{key:02d}"
    if country == "IT":
        abi, cab, acct = rng.choice(["03069", "02008", "05034", "01030", "03062"]), dd(5), dd(12)
        return _it_cin(abi + cab + acct) + abi + cab + acct
    if country == "ES":
        bank, branch, acct = rng.choice(["2100", "0049", "0182", "2038", "0081", "1465"]), dd(4), dd(10)
        dc = f"{_es_dc('00' + bank + branch)}{_es_dc(acct)}"
        return bank + branch + dc + acct
    if country == "NL":
        while True:
            acct = rng.choice("123456789") + dd(9)
            if sum(int(c) * (10 - i) for i, c in enumerate(acct)) % 11 == 0:
                break
        return rng.choice(["ABNA", "INGB", "RABO", "SNSB", "TRIO", "KNAB", "ASNB", "BUNQ"]) + acct
    if country == "BE":
        first = dd(10)
        chk = int(first) % 97 or 97
        return f"{first}{chk:02d}"
    raise ValueError(country)


def iban(rng, country, style=None):
    b = bban(rng, country)
    s = country + iban_check(country, b) + b
    assert len(s) == IBAN_LEN[country], (country, s)
    assert iban_valid(s)
    style = style if style is not None else rng.choice(["grouped", "grouped", "grouped", "compact", "compact"])
    if style == "grouped":
        return " ".join(s[i:i + 4] for i in range(0, len(s), 4))
    return s


LOCALE_IBAN = {"de": ["DE", "DE", "DE", "AT"], "fr": ["FR", "FR", "BE"], "it": ["IT"],
               "es": ["ES"], "nl": ["NL", "NL", "BE"], "en": ["DE", "FR", "IT", "ES", "NL", "BE", "AT"]}


def iban_for(rng, locale):
    return iban(rng, rng.choice(LOCALE_IBAN[locale]))


# ---------------------------------------------------------------- dates of birth

MONTHS = {
    "de": ["Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September",
           "Oktober", "November", "Dezember"],
    "fr": ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
           "octobre", "novembre", "décembre"],
    "it": ["gennaio", "febbraio", "marzo", "aprile", "maggio", "giugno", "luglio", "agosto",
           "settembre", "ottobre", "novembre", "dicembre"],
    "es": ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto",
           "septiembre", "octubre", "noviembre", "diciembre"],
    "nl": ["januari", "februari", "maart", "april", "mei", "juni", "juli", "augustus",
           "september", "oktober", "november", "december"],
    "en": ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"],
}


def birth_date(rng, child=False):
    y = rng.randrange(2009, 2020) if child else rng.randrange(1938, 2005)
    mo = rng.randrange(1, 13)
    d = rng.randrange(1, 29 if mo == 2 else 31)
    return y, mo, d


def dob_value(rng, locale, y, mo, d):
    """Returns (lead-in phrase, value) for a date of birth in local usage."""
    M = MONTHS[locale]
    if locale == "de":
        forms = [f"{d:02d}.{mo:02d}.{y}", f"{d}.{mo}.{y}", f"{d}. {M[mo-1]} {y}", f"{d:02d}.{mo:02d}.{y % 100:02d}"]
    elif locale == "fr":
        dd = "1er" if d == 1 else str(d)
        forms = [f"{d:02d}/{mo:02d}/{y}", f"{dd} {M[mo-1]} {y}", f"{d:02d}.{mo:02d}.{y}"]
    elif locale == "it":
        forms = [f"{d:02d}/{mo:02d}/{y}", f"{d} {M[mo-1]} {y}", f"{d:02d}-{mo:02d}-{y}", f"{d}/{mo}/{y}"]
    elif locale == "es":
        forms = [f"{d:02d}/{mo:02d}/{y}", f"{d} de {M[mo-1]} de {y}", f"{d:02d}-{mo:02d}-{y}"]
    elif locale == "nl":
        forms = [f"{d:02d}-{mo:02d}-{y}", f"{d} {M[mo-1]} {y}", f"{d}-{mo}-{y}", f"{d:02d}/{mo:02d}/{y}"]
    else:
        forms = [f"{d} {M[mo-1]} {y}", f"{y}-{mo:02d}-{d:02d}", f"{d:02d}/{mo:02d}/{y}", f"{M[mo-1]} {d}, {y}"]
    return rng.choice(forms)


DOB_LEAD = {
    "de": {"m": ["geb. ", "geboren am ", "Geburtsdatum: ", "geb. am ", "* ", "Geb.-Datum: "],
           "f": ["geb. ", "geboren am ", "Geburtsdatum: ", "geb. am ", "* ", "Geb.-Datum: "]},
    "fr": {"m": ["né le ", "Date de naissance : ", "date de naissance: ", "né le "],
           "f": ["née le ", "Date de naissance : ", "date de naissance: ", "née le "]},
    "it": {"m": ["nato il ", "data di nascita: ", "Data di nascita ", "nato a {city} il "],
           "f": ["nata il ", "data di nascita: ", "Data di nascita ", "nata a {city} il "]},
    "es": {"m": ["fecha de nacimiento: ", "nacido el ", "F. nacimiento: ", "Fecha nac.: "],
           "f": ["fecha de nacimiento: ", "nacida el ", "F. nacimiento: ", "Fecha nac.: "]},
    "nl": {"m": ["geboren op ", "geboortedatum: ", "geb. ", "Geboortedatum "],
           "f": ["geboren op ", "geboortedatum: ", "geb. ", "Geboortedatum "]},
    "en": {"m": ["date of birth: ", "DOB: ", "born on ", "Date of birth "],
           "f": ["date of birth: ", "DOB: ", "born on ", "Date of birth "]},
}

BIRTH_CITIES = {"it": ["Bari", "Catania", "Cagliari", "Lecce", "Bergamo", "Trento"]}


def dob(rng, locale, gender="m", child=False):
    y, mo, d = birth_date(rng, child)
    lead = rng.choice(DOB_LEAD[locale][gender])
    lead = lead.replace("{city}", rng.choice(BIRTH_CITIES.get("it", [""])))
    return lead + D(dob_value(rng, locale, y, mo, d))
