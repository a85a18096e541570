"""Long real texts nobody here wrote, and queries taken from them, for the chunking measurements (issue 12).

Three corpora, each of documents of MIN_BYTES-MAX_BYTES drawn with a fixed seed and de-duplicated by content:

- ``man``: this system's manual pages as ``man`` renders them (80 columns). The generated Google Cloud SDK
  pages (16,600 of the 17,800 in man1, alpha/beta/GA near-copies of each other) are left out: a query could
  not tell those copies apart. Sections 1, 5, 7 and 8.
- ``readme``: the package descriptions (the README that ``long_description`` carries, Markdown or
  reStructuredText as written) in the METADATA of every distribution installed in the bench's Python
  environment, and the README files shipped inside its site-packages; as written, markup and all. This
  project's environment holds ~190 of 1-50 kB: a larger count takes them all.
- ``pypi``: the long descriptions of the packages listed in ``pypi-packages.txt`` (4,191, reached from this
  project's environments through their dependencies), as PyPI's JSON API gives them, fetched once and cached;
  ~3,300 distinct ones of 1-50 kB once the generated ``mypy-boto3-*``/``types-*`` families are left out.

Queries: for each document one sentence of MIN_WORDS-MAX_WORDS words (a capital first, a full stop last),
whitespace-normalised, from a block (paragraph, list item) that lies wholly inside the document's last
third, or first third, by character offset. Words compared lower-cased, punctuation and markup dropped, a
sentence is no query when it occurs twice in its document (it could be found where it occurs first), when
it occurs in another drawn document (the answer would be ambiguous), or when half or more of its
SHINGLE-word runs occur in BOILERPLATE_TEXTS or more texts of the corpus' whole pool: boilerplate such as a
licence, a project template or a "see the Texinfo manual" line, which would be found for what it shares
rather than for what it says. The pool is every candidate for ``readme``; for ``man``, the roff sources of
every candidate page, markup stripped (rendering all ~2,000 pages would take minutes).
"""

from __future__ import annotations

import email.parser
import gzip
import hashlib
import importlib.metadata
import json
import os
import random
import re
import shutil
import site
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_BYTES, MAX_BYTES = 1_000, 50_000
SEED = 12
MIN_WORDS, MAX_WORDS = 12, 60
SHINGLE = 8  # words: a run this long shared by several documents is not chance
BOILERPLATE_TEXTS = 3  # a run in this many texts of the pool (its own included) is boilerplate


@dataclass(frozen=True)
class Document:
    key: int
    name: str  # the man page's file name ("tar.1.gz"), or the package and file ("requests: METADATA")
    text: str


Block = tuple[int, int, str]  # (start, end, text): a paragraph or list item, by character offsets


@dataclass
class Corpus:
    name: str  # "man" or "readme": the table and project names derive from it
    label: str  # "man pages", "package READMEs"
    documents: list[Document]
    info: dict[str, Any]
    blocks: Callable[[str], list[Block]]  # where queries may come from
    pool: Callable[[], Iterable[str]]  # every candidate text: what boilerplate is measured against
    prose_only: bool = False  # queries must read as prose (no URLs, markup-heavy lines)


def normalise(text: str) -> list[str]:
    """The text's words, lower-cased, punctuation and markup dropped."""
    return re.findall(r"[a-z0-9]+", text.lower())


def digest(text: str) -> str:
    return hashlib.md5(" ".join(normalise(text)).encode()).hexdigest()


# -- man pages ---------------------------------------------------------------------------------------------
MAN_DIR = Path("/usr/share/man")
MAN_SECTIONS = ("man1", "man5", "man7", "man8")
EXCLUDED = ("gcloud",)  # generated near-copies (alpha/beta/GA of each command)
# Rendered as a pipe sees it (no terminal: no bold/underline overstrikes), 80 columns, no hyphenation (a word
# broken across lines would be two words in the document but one in a query taken from it).
MAN_ENV = {"MANWIDTH": "80", "MANROFFOPT": "-rHY=0", "LC_ALL": "C.UTF-8", "MANPAGER": "cat", "PAGER": "cat"}


def man_pages() -> list[str]:
    """Every candidate page (symbolic links resolved once), in a stable order."""
    found = set()
    for section in MAN_SECTIONS:
        directory = MAN_DIR / section
        if directory.is_dir():
            found.update(os.path.realpath(p) for p in directory.iterdir()
                         if not p.name.startswith(EXCLUDED) and p.is_file())
    return sorted(found)


def render(path: str) -> str:
    result = subprocess.run(["man", "-P", "cat", "-l", path], env={**os.environ, **MAN_ENV}, check=False,
                            capture_output=True, text=True, errors="replace", timeout=60)
    text = re.sub(r".\x08", "", result.stdout)  # overstrikes, should a man-db version keep them in a pipe
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def body_digest(text: str) -> str:
    """The page without its header and footer lines (they name the page): the same text reached through
    another name (a ``.so`` include, a copy) has the same digest."""
    return digest("\n".join(text.splitlines()[1:-1]))


def man_corpus(count: int, seed: int = SEED) -> Corpus:
    """``count`` distinct man pages of MIN_BYTES-MAX_BYTES, drawn with ``seed``."""
    pages = man_pages()
    if shutil.which("man") is None or not pages:
        raise RuntimeError(f"the chunking corpus needs man-db's 'man' and manual pages under {MAN_DIR}")
    random.Random(seed).shuffle(pages)
    documents: list[Document] = []
    digests: set[str] = set()
    rendered = skipped_size = skipped_duplicate = 0
    with ThreadPoolExecutor(2) as pool:  # man + groff take ~0.1 s a page
        position = 0
        while len(documents) < count and position < len(pages):
            wave = pages[position:position + 2 * (count - len(documents)) + 8]
            position += len(wave)
            for path, text in zip(wave, pool.map(render, wave)):  # in the shuffled order: deterministic
                rendered += 1
                if len(documents) == count:
                    break
                if not MIN_BYTES <= len(text.encode()) <= MAX_BYTES:
                    skipped_size += 1
                    continue
                body = body_digest(text)
                if body in digests:
                    skipped_duplicate += 1
                    continue
                digests.add(body)
                documents.append(Document(len(documents) + 1, os.path.basename(path), text))
    if len(documents) < count:
        raise RuntimeError(f"only {len(documents)} man pages of {MIN_BYTES}-{MAX_BYTES} bytes under {MAN_DIR}")
    info = {
        "source": f"man -P cat -l <page> ({', '.join(f'{MAN_DIR}/{s}' for s in MAN_SECTIONS)};"
                  f" {', '.join(EXCLUDED)}* left out), MANWIDTH=80, no hyphenation",
        "candidates": len(pages), "rendered": rendered, "seed": seed,
        "skipped_size": skipped_size, "skipped_duplicate": skipped_duplicate,
        "boilerplate_pool": f"roff sources of the {len(pages)} candidate pages, markup stripped",
    }
    return Corpus("man", "man pages", documents, {**info, **sizes(documents)}, man_blocks,
                  lambda: (roff_text(path) for path in pages))


ROFF_TEXT_MACROS = re.compile(r"[.']\s*(?:B|I|BR|RB|IR|RI|BI|IB|SM|SB|SH|SS|TP|IP|Nm|Nd|Ar|Fl|Pa|Xr|Dv|Sy|Em|Ql"
                              r"|Li|Cm|Ev|Va|Fn|Ic)\b(.*)")
ROFF_ESCAPE = re.compile(r"\\(?:f(?:\[[^\]]*\]|\(..|.)|s[-+]?\d|[*n](?:\[[^\]]*\]|\(..|.)|\(..|\[[^\]]*\]|.)")


def roff_text(path: str) -> str:
    """A page's roff source, requests and escapes dropped, the text arguments of font macros kept: close
    enough to the rendered words to find the runs it shares with other pages."""
    try:
        with (gzip.open(path, "rt", errors="replace") if path.endswith(".gz")
              else open(path, errors="replace")) as source:
            raw = source.read()
    except OSError:
        return ""
    lines = []
    for line in raw.split("\n"):
        if line.startswith((".", "'")):
            macro = ROFF_TEXT_MACROS.match(line)
            if macro is None:
                continue
            line = macro.group(1).replace('"', " ")
        lines.append(line.split('\\"', 1)[0])
    return ROFF_ESCAPE.sub(_roff_escape, "\n".join(lines))


def _roff_escape(match: re.Match) -> str:
    escape = match.group()
    if escape[1] in "fs&:%|^)":  # a font or size change, a zero-width mark: inside words
        return ""
    return "-" if escape == "\\-" else " "  # a special character, a string, a number register


def man_blocks(text: str) -> list[Block]:
    """The page's blocks: runs of lines between blank lines, and each line that starts in column 0 (a
    section heading, the page's header and footer) on its own."""
    blocks: list[Block] = []
    start = position = 0
    lines: list[str] = []

    def close(end: int) -> None:
        if lines:
            blocks.append((start, end, "\n".join(lines)))
            lines.clear()

    for line in text.split("\n"):
        if not line.strip() or not line[0].isspace():
            close(position)
            if line.strip():
                blocks.append((position, position + len(line), line))
        else:
            if not lines:
                start = position
            lines.append(line)
        position += len(line) + 1
    close(position)
    return blocks


# -- package READMEs -----------------------------------------------------------------------------------------
README_NAMES = re.compile(r"readme(\.(md|rst|txt|markdown))?", re.IGNORECASE)


def description(metadata: str) -> str:
    """The long description of a METADATA file: its body, or (older metadata) the Description field."""
    message = email.parser.Parser().parsestr(metadata)
    body = message.get_payload()
    if isinstance(body, str) and body.strip():
        return body
    field_value = message.get("Description") or ""
    # Metadata 1.x/2.0 folds it: continuation lines start with 8 spaces or "       |".
    return re.sub(r"\n(?:       \||        )", "\n", str(field_value))


def site_directories() -> list[Path]:
    """This interpreter's site-packages (the bench's virtual environment)."""
    directories = [*site.getsitepackages(), site.getusersitepackages()]
    return sorted({Path(d).resolve() for d in directories if os.path.isdir(d)})


def readme_candidates() -> tuple[list[tuple[str, str]], dict[str, int]]:
    """``(name, text)`` of every package description and shipped README file, de-duplicated by content,
    in a stable order; and how many of each kind were found."""
    found: dict[str, tuple[str, str]] = {}  # digest -> (name, text)
    counts = {"distributions": 0, "readme_files": 0}
    seen_distributions: set[str] = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if not name or name in seen_distributions:
            continue  # the same distribution on two paths
        seen_distributions.add(name)
        counts["distributions"] += 1
        text = description(dist.read_text("METADATA") or "")
        found.setdefault(digest(text), (f"{name}: METADATA", clean(text)))
    for directory in site_directories():
        for root, dirs, files in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if not d.endswith((".dist-info", ".egg-info", "__pycache__")))
            for file in sorted(files):
                if README_NAMES.fullmatch(file):
                    path = Path(root, file)
                    try:
                        text = path.read_text(encoding="utf-8")
                    except (UnicodeDecodeError, OSError):
                        continue
                    counts["readme_files"] += 1
                    found.setdefault(digest(text), (str(path.relative_to(directory)), clean(text)))
    return sorted(found.values()), counts


def clean(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n")).strip("\n")


def readme_corpus(count: int, seed: int = SEED) -> Corpus:
    """``count`` distinct package READMEs of MIN_BYTES-MAX_BYTES, drawn with ``seed`` (all, when fewer)."""
    candidates, counts = readme_candidates()
    fitting = [(name, text) for name, text in candidates if MIN_BYTES <= len(text.encode()) <= MAX_BYTES]
    if len(fitting) < 2:
        raise RuntimeError(f"only {len(fitting)} package READMEs of {MIN_BYTES}-{MAX_BYTES} bytes in {sys.prefix}")
    drawn = random.Random(seed).sample(fitting, min(count, len(fitting)))  # all there are, when fewer
    documents = [Document(i + 1, name, text) for i, (name, text) in enumerate(drawn)]
    info = {
        "source": f"long descriptions in the METADATA of the distributions installed in {sys.prefix}, and"
                  " README files shipped in its site-packages, as written (Markdown, reStructuredText)",
        **counts, "candidates": len(candidates), "candidates_in_size_range": len(fitting), "seed": seed,
        "documents_asked": count,
        "boilerplate_pool": f"all {len(candidates)} candidates",
        "kinds": {"METADATA": sum(d.name.endswith(": METADATA") for d in documents),
                  "README file": sum(not d.name.endswith(": METADATA") for d in documents)},
    }
    return Corpus("readme", "package READMEs", documents, {**info, **sizes(documents)}, markup_blocks,
                  lambda: (text for _, text in candidates), prose_only=True)


# -- PyPI package descriptions ------------------------------------------------------------------------------
PYPI_PACKAGES = Path(__file__).with_name("pypi-packages.txt")
PYPI_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "airflow-vectorize-bench", "pypi")
# Generated near-copies: mypy-boto3-* (one README per AWS service, from one template) and types-* (typeshed's
# stub packages, one template) would be told apart only by a name; as gcloud's pages for man.
PYPI_EXCLUDED = ("mypy-boto3-", "types-")


def pypi_description(release: str) -> tuple[str, str]:
    """The version and long description of the newest release of ``release``'s package (``name==version``:
    the version it had when listed) from PyPI's JSON API, cached on disk. The registry here serves only
    a package's newest release, so a package released since the listing brings its newer description."""
    name = release.split("==")[0]
    cached = PYPI_CACHE / f"{name}.json"
    if cached.exists():
        found = json.loads(cached.read_text(encoding="utf-8"))
        return found["version"], found["description"]
    for attempt in range(4):
        try:
            with urllib.request.urlopen(f"https://pypi.org/pypi/{urllib.parse.quote(name)}/json",
                                        timeout=30) as response:
                info = json.load(response)["info"]
            break
        except (OSError, ValueError):
            if attempt == 3:
                raise
            time.sleep(2 ** attempt)
    found = {"version": info["version"], "description": info.get("description") or ""}
    PYPI_CACHE.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.part")
    partial.write_text(json.dumps(found), encoding="utf-8")
    partial.replace(cached)
    return found["version"], found["description"]


def pypi_corpus(count: int, seed: int = SEED) -> Corpus:
    """``count`` distinct PyPI package descriptions of MIN_BYTES-MAX_BYTES, drawn with ``seed`` from the
    packages listed in PYPI_PACKAGES (fetched once, then read from PYPI_CACHE)."""
    releases = [line.strip() for line in PYPI_PACKAGES.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    with ThreadPoolExecutor(16) as pool:
        fetched = list(pool.map(pypi_description, releases))
    found: dict[str, tuple[str, str]] = {}
    for release, (version, text) in zip(releases, fetched):
        found.setdefault(digest(clean(text)), (f"{release.split('==')[0]}=={version}", clean(text)))
    candidates = sorted(found.values())
    fitting = [(name, text) for name, text in candidates if MIN_BYTES <= len(text.encode()) <= MAX_BYTES
               and not name.startswith(PYPI_EXCLUDED)]
    if len(fitting) < count:
        raise RuntimeError(f"only {len(fitting)} PyPI descriptions of {MIN_BYTES}-{MAX_BYTES} bytes in {PYPI_PACKAGES}")
    drawn = random.Random(seed).sample(fitting, count)
    documents = [Document(i + 1, name, text) for i, (name, text) in enumerate(drawn)]
    info = {
        "source": f"long descriptions (READMEs, Markdown or reStructuredText as written) of the packages"
                  f" listed in bench/{PYPI_PACKAGES.name}, from pypi.org/pypi/<name>/json;"
                  f" {', '.join(p + '*' for p in PYPI_EXCLUDED)} left out",
        "releases": len(releases), "released_since_listing": sum(
            version != release.split("==")[1] for release, (version, _) in zip(releases, fetched)),
        "releases_digest": digest("\n".join(name for name, _ in candidates)), "candidates": len(candidates), "candidates_in_size_range": len(fitting),
        "seed": seed, "boilerplate_pool": f"all {len(candidates)} distinct descriptions",
    }
    return Corpus("pypi", "PyPI package READMEs", documents, {**info, **sizes(documents)}, markup_blocks,
                  lambda: (text for _, text in candidates), prose_only=True)


FENCE = re.compile(r"\s*(```|~~~)")
LIST_ITEM = re.compile(r"\s{0,3}([-*+•]|\d{1,3}[.)]|#\.)\s+")
NOT_PROSE_LINE = re.compile(r"\s*(#|\||<|\.\. |>>>|\$ |[=\-~^*+#`:_.'\"]{3,}\s*$|!\[|\[!\[)")


def markup_blocks(text: str) -> list[Block]:
    """Prose blocks of a Markdown or reStructuredText document: runs of lines between blank lines, a list
    item starting a block of its own (its marker left out). Fenced code, indented code (4+ spaces opening
    a block), headings, tables, HTML, directives, doctest and shell lines are no blocks."""
    blocks: list[Block] = []
    start = position = 0
    lines: list[str] = []
    fenced = False

    def close() -> None:
        if lines:
            blocks.append((start, start + len("\n".join(lines)), "\n".join(lines)))
            lines.clear()

    for line in text.split("\n"):
        at = position
        position += len(line) + 1
        if FENCE.match(line):
            close()
            fenced = not fenced
            continue
        if fenced or not line.strip() or NOT_PROSE_LINE.match(line):
            close()
            continue
        if not lines and line.startswith(("    ", "\t")):
            continue  # indented code (or a quoted block): not a query
        item = LIST_ITEM.match(line)
        if item:
            close()
            at += item.end()
            line = line[item.end():]
        if not lines:
            start = at
        lines.append(line)
    close()
    return blocks


def sizes(documents: list[Document]) -> dict[str, int]:
    ordered = sorted(len(d.text.encode()) for d in documents)
    return {"bytes_min": ordered[0], "bytes_median": ordered[len(ordered) // 2], "bytes_max": ordered[-1],
            "bytes_total": sum(ordered)}


# -- queries ---------------------------------------------------------------------------------------------
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
ABBREVIATIONS = ("e.g.", "i.e.", "cf.", "vs.", "etc.")  # a "sentence" ending in these may be cut short
WORD = re.compile(r"[(\"'*_`]*[A-Za-z][A-Za-z'’-]*[)\"'*_`]*[,.;:!?]?[)\"']*")
MARKUP = re.compile(r"://|\]\(|\]\[|<[a-z/]|\|")


def sentences(block: str, prose_only: bool = False) -> list[str]:
    """The block's sentences of MIN_WORDS-MAX_WORDS words (a capital first, a full stop last),
    whitespace-normalised. ``prose_only``: also no URL, link or HTML, and 80 % or more plain words."""
    found = []
    for s in SENTENCE_END.split(" ".join(block.split())):
        words = s.split()
        if not (MIN_WORDS <= len(words) <= MAX_WORDS and s[0].isupper() and s.endswith(".")
                and not s.endswith(ABBREVIATIONS)):
            continue
        if prose_only and (MARKUP.search(s) or sum(bool(WORD.fullmatch(w)) for w in words) < 0.8 * len(words)):
            continue
        found.append(s)
    return found


def shingles(words: list[str]) -> list[str]:
    return [" ".join(words[j:j + SHINGLE]) for j in range(len(words) - SHINGLE + 1)]


def shared_runs(pool: Iterable[str], wanted: set[str]) -> dict[str, int]:
    """For each SHINGLE-word run in ``wanted``: in how many texts of ``pool`` it occurs."""
    counts: dict[str, int] = {}
    for text in pool:
        for run in set(shingles(normalise(text))) & wanted:
            counts[run] = counts.get(run, 0) + 1
    return counts


@dataclass
class Queries:
    """One query sentence per document key from one third of the documents, and how they were chosen."""

    third: str
    sentences: dict[int, str]
    # Share of the document's characters before the query's block (last third: its minimum) and up to its
    # end (first third: its maximum): the queries really come from that third.
    position: dict[int, tuple[float, float]]
    rejected: dict[str, int]  # candidate sentences refused, by reason


def pick_queries(corpus: Corpus, thirds: tuple[str, ...] = ("last", "first"),
                 seed: int = SEED) -> dict[str, Queries]:
    """For each of ``thirds`` ("first", "last"): one sentence per document from that third of it, see the
    module's doc. Documents without such a sentence get no query."""
    texts = {d.key: f" {' '.join(normalise(d.text))} " for d in corpus.documents}  # padded: whole words
    candidates: dict[tuple[str, int], list[tuple[str, Block]]] = {}
    for d in corpus.documents:
        n = len(d.text)
        for third in thirds:
            low, high = (0, n // 3) if third == "first" else (2 * n // 3, n)
            found = [(s, (start, end, block)) for start, end, block in corpus.blocks(d.text)
                     if low <= start and end <= high for s in sentences(block, corpus.prose_only)]
            random.Random(f"{seed}:{d.key}:{third}").shuffle(found)
            candidates[third, d.key] = found
    words = {s: normalise(s) for found in candidates.values() for s, _ in found}
    counts = shared_runs(corpus.pool(), {run for w in words.values() for run in shingles(w)})
    # A sentence occurs in a document only if its first SHINGLE words do: the documents holding each
    # candidate's first run are the only ones searched for it (all of them for a sentence of fewer words).
    first_runs = {run[0] for run in map(shingles, words.values()) if run}
    holders: dict[str, list[int]] = {}
    for d in corpus.documents:
        for run in set(shingles(normalise(d.text))) & first_runs:
            holders.setdefault(run, []).append(d.key)
    picked = {}
    for third in thirds:
        chosen: dict[int, str] = {}
        position: dict[int, tuple[float, float]] = {}
        rejected: dict[str, int] = {}
        for d in corpus.documents:
            for sentence, (start, end, _) in candidates[third, d.key]:
                flat = f" {' '.join(words[sentence])} "
                runs = shingles(words[sentence])
                if texts[d.key].count(flat) > 1:
                    reason = "repeated_in_its_document"  # it may be found where it occurs first
                elif any(flat in texts[key] for key in (holders.get(runs[0], ()) if runs else texts)
                         if key != d.key):
                    reason = "in_another_document"  # the answer would be ambiguous
                elif 2 * sum(counts.get(run, 0) >= BOILERPLATE_TEXTS for run in runs) >= len(runs):
                    reason = "boilerplate"
                else:
                    chosen[d.key] = sentence
                    position[d.key] = (start / len(d.text), end / len(d.text))
                    break
                rejected[reason] = rejected.get(reason, 0) + 1
        picked[third] = Queries(third, chosen, position, rejected)
    return picked


def in_first_tokens(tokenizer: Any, document: Document, sentence: str, limit: int) -> bool:
    """Whether ``sentence`` ends within the document's first ``limit`` tokens (what one vector a row reads)."""
    flat = " ".join(document.text.split())
    end = flat.index(sentence) + len(sentence)
    ids = tokenizer(flat[:end], add_special_tokens=False, truncation=True, max_length=limit + 1)["input_ids"]
    return len(ids) <= limit


CORPORA: dict[str, Callable[[int], Corpus]] = {"man": man_corpus, "readme": readme_corpus, "pypi": pypi_corpus}
