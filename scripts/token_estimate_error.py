#!/usr/bin/env python3
"""Measures the error of src/tokens.rs's estimate against real tokenizers.

The rule (keep in step with `tokens::twelfths`): per character, by the
length of its UTF-8 encoding, 1 byte 1/3 token, 2 bytes 1/2, 3 bytes 5/4,
4 bytes 3; the sum rounded up. Texts are cut into chunks of about 1,500
characters (whole paragraphs); for each kind of text and tokenizer this
prints estimate / real count: mean, worst (min) and max.

Needs `pip install bpe-openai` (it ships cl100k_base and o200k_base; plain
tiktoken downloads them at run time) and, for the non-English texts, the
vim tutor files, systemd's catalogs and gettext catalogs of a Debian
system. Run from the repository: python3 scripts/token_estimate_error.py
"""
import gettext
import glob
import os
import statistics

import bpe_openai

TWELFTHS = {1: 4, 2: 6, 3: 15, 4: 36}


def estimate(text):
    s = sum(TWELFTHS[len(ch.encode())] for ch in text)
    return -(-s // 12)


def chunks_of(text, size=1500):
    out, cur = [], ""
    for para in text.split("\n\n"):
        if len(cur) + len(para) > size and cur:
            out.append(cur)
            cur = ""
        cur += para + "\n\n"
    if cur.strip():
        out.append(cur)
    return [c for c in out if len(c) > 200]


def read(*paths):
    return "\n\n".join(open(p, encoding="utf-8").read() for p in paths if os.path.exists(p))


def catalog(lang):
    parts = []
    for name in ["coreutils", "apt", "dpkg", "grep", "findutils", "diffutils", "bash", "git", "gnupg2"]:
        p = f"/usr/share/locale/{lang}/LC_MESSAGES/{name}.mo"
        if os.path.exists(p):
            with open(p, "rb") as f:
                t = gettext.GNUTranslations(f)
            parts += [v for v in t._catalog.values() if isinstance(v, str) and len(v) > 40]
    return "\n\n".join(parts)


TUTOR = sorted(glob.glob("/usr/share/vim/vim*/tutor/"))
T = (TUTOR[-1] if TUTOR else "/nonexistent/") + "tutor."
C = "/usr/lib/systemd/catalog/systemd."
KINDS = {
    "english": read("README.md", "ARCHITECTURE.md", "FINDINGS.md", T + "utf-8", C + "catalog"),
    "code": read(*sorted(glob.glob("src/**/*.rs", recursive=True))[:40], "src/ui/app.js",
                 *sorted(glob.glob("/usr/lib/python3*/json/*.py"))),
    "german": read(T + "de.utf-8", C + "de.catalog"),
    "french": read(T + "fr.utf-8", C + "fr.catalog"),
    "russian": read(T + "ru.utf-8", C + "ru.catalog"),
    "chinese": read(T + "zh_cn.utf-8", C + "zh_CN.catalog"),
    "japanese": read(T + "ja.utf-8"),
    "korean": read(T + "ko.utf-8", C + "ko.catalog"),
    "ui-de": catalog("de"),
    "ui-ru": catalog("ru"),
    "ui-zh": catalog("zh_CN"),
}

if __name__ == "__main__":
    encodings = {n: bpe_openai.get_encoding(n) for n in ["cl100k_base", "o200k_base"]}
    for kind, text in KINDS.items():
        chunks = chunks_of(text)
        if not chunks:
            print(f"{kind:9} (no text found)")
            continue
        for name, enc in encodings.items():
            r = [estimate(c) / len(enc.encode(c)) for c in chunks]
            print(f"{kind:9} {name:11} chunks={len(r):4} mean={statistics.mean(r):.3f} "
                  f"worst={min(r):.3f} max={max(r):.3f}")
