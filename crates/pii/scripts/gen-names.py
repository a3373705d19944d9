#!/usr/bin/env python3
"""Regenerate crates/pii/data/{given_names,surnames}.txt from the Faker package (MIT).

Faker's per-locale person providers list common given names and surnames. This script
downloads one pinned Faker wheel from PyPI with pip, reads the provider sources with
`ast` (nothing is imported or executed), keeps Latin-script single words, and writes one
name a line, sorted. The licence travels next to the lists as data/LICENSE.faker.

    python3 crates/pii/scripts/gen-names.py            # pip download faker==VERSION
    python3 crates/pii/scripts/gen-names.py WHEEL.whl  # use a wheel already here
"""
import ast
import pathlib
import subprocess
import sys
import tempfile
import unicodedata
import zipfile

FAKER_VERSION = "40.63.0"
# Locales of the mail and invoices verre reads: Western and Central Europe, plus English.
LOCALES = [
    "en_US", "en_GB", "en_IE", "en_NZ", "en_IN", "en_PK", "en_NG",
    "fr_FR", "fr_BE", "fr_CH", "fr_CA", "fr_QC",
    "de_DE", "de_AT", "de_CH", "de_LI", "de_LU",
    "nl_NL", "nl_BE", "it_IT", "es_ES", "pt_PT", "pt_BR", "pl_PL", "cs_CZ", "sk_SK",
    "da_DK", "sv_SE", "no_NO", "fi_FI", "ro_RO", "hu_HU", "hr_HR", "sl_SI", "tr_TR",
]
DATA = pathlib.Path(__file__).resolve().parent.parent / "data"


def is_name(word: str) -> bool:
    if len(word) < 2 or not word[0].isupper():
        return False
    for ch in word:
        if ch in "-'’":
            continue
        if not ch.isalpha() or "LATIN" not in unicodedata.name(ch, ""):
            return False
    return True


def strings_assigned(tree: ast.AST, prefix: str) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if any(n.startswith(prefix) for n in names) and node.value is not None:
            found += [c.value for c in ast.walk(node.value)
                      if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    return found


def main() -> None:
    if len(sys.argv) > 1:
        wheel = pathlib.Path(sys.argv[1])
    else:
        tmp = pathlib.Path(tempfile.mkdtemp())
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp),
                        f"faker=={FAKER_VERSION}"], check=True)
        wheel = next(tmp.glob("faker-*.whl"))
    given, surnames = set(), set()
    with zipfile.ZipFile(wheel) as zf:
        for loc in LOCALES:
            tree = ast.parse(zf.read(f"faker/providers/person/{loc}/__init__.py").decode())
            given |= {w for w in strings_assigned(tree, "first_names") if is_name(w)}
            surnames |= {w for w in strings_assigned(tree, "last_names") if is_name(w)}
        licence = next(n for n in zf.namelist() if n.endswith(".dist-info/licenses/LICENSE.txt")
                       or n.endswith(".dist-info/LICENSE.txt"))
        header = f"Name lists in this folder are derived from Faker {FAKER_VERSION} (PyPI package `faker`),\n" \
                 "faker/providers/person/<locale>/__init__.py, by crates/pii/scripts/gen-names.py.\n\n"
        (DATA / "LICENSE.faker").write_text(header + zf.read(licence).decode())
    (DATA / "given_names.txt").write_text("".join(f"{w}\n" for w in sorted(given)))
    (DATA / "surnames.txt").write_text("".join(f"{w}\n" for w in sorted(surnames)))
    print(f"{len(given)} given names, {len(surnames)} surnames from {len(LOCALES)} locales")


if __name__ == "__main__":
    main()
