"""SQuAD v1.1 train -> (question, sentence) pairs: positives with answer spans, hard and synthetic negatives.

Every pair is a question against one sentence, as the reader sees them when serving. A positive holds
the gold answer (its character span inside the sentence is the span target). Negatives teach two
things: *which* sentence answers (other sentences of the paragraph, of the article, and the sentences
our lexical ranker puts first from anywhere) and *whether* any does (synthetic unanswerable questions:
the answerable question with an entity, number, attribute or polarity changed, against its gold
sentence, so it still looks answerable).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..chunking import sentence_units

# Synthetic-unanswerable kinds, in the order tried when several apply.
ENTITY, NUMBER, ATTRIBUTE, POLARITY, CONDITION = "entity", "number", "attribute", "polarity", "condition"

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|\d[\d,.]*")
_NUMBER = re.compile(r"\b\d[\d,.]*\b")
_NAME = re.compile(r"\b[A-Z][a-z]+(?: (?:of |de |the )?[A-Z][a-z]+)*\b")
_STOP = frozenset(
    """a an the of in on at to for from by with and or but is are was were be been being do does did has have had
    what which who whom whose when where why how that this these those it its their his her they he she as into
    than then there not no can could would will shall should may might must about after before during under over
    between through also other such one many much most more some any each all both same so if only very""".split()
)
# Word pairs whose swap flips what a question asks, the "antonym" kind of unanswerable question.
_ANTONYMS = dict(
    pair
    for a, b in [("first", "last"), ("largest", "smallest"), ("highest", "lowest"), ("most", "least"),
                 ("before", "after"), ("earliest", "latest"), ("increase", "decrease"), ("increased", "decreased"),
                 ("oldest", "newest"), ("longest", "shortest"), ("best", "worst"), ("north", "south"),
                 ("east", "west"), ("older", "younger"), ("more", "fewer"), ("won", "lost"), ("start", "end"),
                 ("started", "ended"), ("began", "ended"), ("larger", "smaller"), ("higher", "lower"),
                 ("early", "late"), ("major", "minor"), ("maximum", "minimum"), ("top", "bottom")]
    for pair in ((a, b), (b, a))
)
# Style 2 adds these pairs (style 1, the first run's data, keeps the list above as it was).
_MORE_ANTONYMS = dict(
    pair
    for a, b in [("cheapest", "dearest"), ("closest", "farthest"),
                 ("fastest", "slowest"), ("strongest", "weakest"), ("richest", "poorest"), ("deepest", "shallowest"),
                 ("heaviest", "lightest"), ("hottest", "coldest"), ("wettest", "driest"), ("youngest", "eldest"),
                 ("rise", "fall"), ("rose", "fell"), ("accepted", "rejected"),
                 ("allowed", "banned"), ("supported", "opposed"), ("opened", "closed"), ("entered", "left"),
                 ("bought", "sold"), ("import", "export"), ("imports", "exports"), ("inside", "outside"),
                 ("above", "below"), ("northern", "southern"), ("eastern", "western"),
                 ("internal", "external"), ("male", "female"), ("men", "women"), ("private", "public"),
                 ("ancient", "modern"), ("positive", "negative"), ("success", "failure"), ("legal", "illegal"),
                 ("primary", "secondary"), ("previous", "next"), ("born", "died"), ("birth", "death"),
                 ("created", "destroyed"), ("built", "demolished"), ("win", "lose"), ("wins", "losses")]
    for pair in ((a, b), (b, a))
)
_YEAR = re.compile(r"\b1[5-9]\d\d\b|\b20[0-2]\d\b")
_AUXILIARY = re.compile(r"^((?:what|which|who|whom|where|when|why|how)(?: \w+)?? (?:is|was|are|were|did|does|do|can|could|will|would|has|have|had))\b",
                        re.IGNORECASE)


@dataclass(frozen=True)
class Pair:
    """One training example: the question against one sentence; span in sentence characters, or None."""

    question: str
    sentence: str
    label: int  # 1: the sentence answers the question
    span: tuple[int, int] | None
    kind: str  # positive, paragraph, article, lexical, or a synthetic kind


@dataclass
class Paragraph:
    id: str
    article: str
    text: str
    sentences: list[tuple[int, int]]


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    answer: str
    paragraph: str


def load(root: Path) -> tuple[dict[str, Paragraph], list[Question]]:
    """Paragraphs (split into sentences as the index splits them) and questions of a SQuAD-shaped folder."""
    paragraphs: dict[str, Paragraph] = {}
    with open(root / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            spans = [(s, e) for s, e, _ in sentence_units(row["text"])]
            paragraphs[row["id"]] = Paragraph(row["id"], row["id"].split("_")[0], row["text"], spans)
    questions: list[Question] = []
    with open(root / "queries.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("answers"):
                questions.append(Question(row["id"], row["text"], row["answers"][0], row["doc"]))
    return paragraphs, questions


def words(text: str) -> set[str]:
    """Lower-case content words of a text."""
    return {w.lower() for w in _WORD.findall(text) if w.lower() not in _STOP}


def answer_sentence(paragraph: Paragraph, answer: str) -> tuple[int, tuple[int, int]] | None:
    """Index of the sentence holding the answer's first occurrence, and the answer's span inside it."""
    at = paragraph.text.find(answer)
    if at < 0:
        return None
    for number, (start, end) in enumerate(paragraph.sentences):
        if start <= at and at + len(answer) <= end:
            return number, (at - start, at + len(answer) - start)
    return None  # the answer crosses a sentence boundary


class Builder:
    """Makes the pairs of questions, deterministically for a seed."""

    def __init__(self, paragraphs: dict[str, Paragraph], seed: int = 0, style: int = 1) -> None:
        """style 1 makes the first run's data; style 2 adds antonyms, the "condition" kind, and makes a
        synthetic question of every kind that applies (rather than one) when it is asked for."""
        self.paragraphs = paragraphs
        self.rng = random.Random(seed)
        self.style = style
        self.antonyms = {**_ANTONYMS, **_MORE_ANTONYMS} if style >= 2 else _ANTONYMS
        self.by_article: dict[str, list[Paragraph]] = {}
        for paragraph in paragraphs.values():
            self.by_article.setdefault(paragraph.article, []).append(paragraph)
        self._article_sentences: dict[str, list[tuple[str, str, set[str]]]] = {}
        self._article_entities: dict[str, tuple[list[str], list[str], list[str]]] = {}
        self._lexical = None

    def sentences_of(self, article: str) -> list[tuple[str, str, set[str]]]:
        """(paragraph id, sentence text, content words) of every sentence of an article."""
        if article not in self._article_sentences:
            self._article_sentences[article] = [
                (p.id, p.text[s:e], words(p.text[s:e])) for p in self.by_article[article] for s, e in p.sentences
            ]
        return self._article_sentences[article]

    def entities_of(self, article: str) -> tuple[list[str], list[str], list[str]]:
        """Names, numbers and content words that occur in an article, for swaps."""
        if article not in self._article_entities:
            text = "\n".join(p.text for p in self.by_article[article])
            names = sorted({m.group(0) for m in _NAME.finditer(text) if m.start() > 0 and m.group(0).lower() not in _STOP})
            if self.style >= 2:  # not a sentence's first word that is an ordinary word ("However", "People")
                lower = set(re.findall(r"\b[a-z][a-z'-]*\b", text))
                names = [n for n in names if n.split()[0].lower() not in lower]
            numbers = sorted(set(_NUMBER.findall(text)))
            vocab = sorted({w for w in words(text) if w.isalpha() and len(w) >= 4})
            self._article_entities[article] = (names, numbers, vocab)
        return self._article_entities[article]

    def index_lexical(self, questions: list[Question]) -> dict[str, list[tuple[str, str]]]:
        """BM25 over every sentence of the corpus: the top sentences for each question, (paragraph id, text)."""
        import bm25s
        import Stemmer

        rows = [(p.id, p.text[s:e]) for p in self.paragraphs.values() for s, e in p.sentences]
        stemmer = Stemmer.Stemmer("english")
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize([t for _, t in rows], stopwords="en", stemmer=stemmer, show_progress=False),
                        show_progress=False)
        tokens = bm25s.tokenize([q.text for q in questions], stopwords="en", stemmer=stemmer, show_progress=False)
        found, _ = retriever.retrieve(tokens, k=8, show_progress=False, n_threads=1)
        return {q.id: [rows[int(i)] for i in found[n]] for n, q in enumerate(questions)}

    def pairs(self, question: Question, lexical: list[tuple[str, str]] | None = None,
              synthetic: float = 0.5, dense: list[tuple[str, str]] | None = None) -> list[Pair]:
        """The pairs made from one question: a positive, up to four negatives and maybe synthetic ones."""
        paragraph = self.paragraphs[question.paragraph]
        located = answer_sentence(paragraph, question.answer)
        if located is None:
            return []
        number, span = located
        start, end = paragraph.sentences[number]
        gold = paragraph.text[start:end]
        made = [Pair(question.text, gold, 1, span, "positive")]
        answer = question.answer.lower()

        def usable(text: str) -> bool:
            return answer not in text.lower()

        others = [paragraph.text[s:e] for i, (s, e) in enumerate(paragraph.sentences) if i != number]
        others = [t for t in others if usable(t)]
        if others:
            made.append(Pair(question.text, self.rng.choice(others), 0, None, "paragraph"))
        asked = words(question.text)
        best, best_overlap = None, 0
        for pid, text, present in self.sentences_of(paragraph.article):
            if pid == paragraph.id:
                continue
            overlap = len(asked & present)
            if overlap > best_overlap and usable(text):
                best, best_overlap = text, overlap
        if best is not None:
            made.append(Pair(question.text, best, 0, None, "article"))
        taken = {best}
        for kind, found in (("lexical", lexical), ("dense", dense)):
            for pid, text in found or []:
                if pid != paragraph.id and usable(text) and text not in taken:
                    made.append(Pair(question.text, text, 0, None, kind))
                    taken.add(text)
                    break
        if self.rng.random() < synthetic:
            if self.style >= 2:
                # One per kind that applies (at most two), each against the gold sentence.
                by_kind: dict[str, tuple[str, str]] = {}
                for option in _natural(self.unanswerable_options(question.text, gold, paragraph.article)):
                    by_kind.setdefault(option[1], option)
                kinds = sorted(by_kind)
                self.rng.shuffle(kinds)
                for kind in kinds[:2]:
                    made.append(Pair(by_kind[kind][0], gold, 0, None, kind))
            else:
                changed = self.unanswerable(question.text, gold, paragraph.article)
                if changed is not None:
                    made.append(Pair(changed[0], gold, 0, None, changed[1]))
        return made

    def _pick(self, pool: list[str], fits: Any, tries: int = 24) -> str | None:
        """A random member of pool that fits, from a bounded number of draws (pools run to thousands)."""
        for _ in range(tries if pool else 0):
            candidate = self.rng.choice(pool)
            if fits(candidate):
                return candidate
        return None

    def unanswerable(self, question: str, gold: str, article: str) -> tuple[str, str] | None:
        """The question changed so its gold sentence no longer answers it, and how; None if no change applies."""
        options = _natural(self.unanswerable_options(question, gold, article))
        return self.rng.choice(options) if options else None

    def unanswerable_options(self, question: str, gold: str, article: str) -> list[tuple[str, str]]:
        """Every change of the question that its gold sentence no longer answers: (question, kind)."""
        names, numbers, vocab = self.entities_of(article)
        lowered = gold.lower()
        options: list[tuple[str, str]] = []
        for match in _NAME.finditer(question):
            if match.start() == 0 or match.group(0).lower() not in lowered:
                continue
            swap = self._pick(names, lambda n: n.lower() not in lowered and n != match.group(0))
            if swap:
                options.append((question[:match.start()] + swap + question[match.end():], ENTITY))
        for match in _NUMBER.finditer(question):
            width = len(match.group(0))
            swap = self._pick(numbers, lambda n: n not in gold and len(n) == width) or \
                self._pick(numbers, lambda n: n not in gold)
            if swap:
                options.append((question[:match.start()] + swap + question[match.end():], NUMBER))
        content = [m for m in _WORD.finditer(question) if m.group(0).islower() and m.group(0) not in _STOP
                   and len(m.group(0)) >= 4 and m.group(0) in lowered]
        if content:
            match = self.rng.choice(content)
            asked = question.lower()
            swap = self._pick(vocab, lambda w: w not in lowered and w not in asked)
            if swap:
                options.append((question[:match.start()] + swap + question[match.end():], ATTRIBUTE))
        for match in _WORD.finditer(question):
            flipped = self.antonyms.get(match.group(0).lower())
            if flipped and flipped not in lowered:
                options.append((question[:match.start()] + flipped + question[match.end():], POLARITY))
                break
        else:
            negated = _AUXILIARY.match(question)
            if negated and " not " not in question:
                options.append((negated.group(1) + " not" + question[negated.end():], POLARITY))
        if self.style >= 2 and question.endswith("?") and not _YEAR.search(question):
            # An impossible condition: a year of the article the gold sentence does not mention.
            years = [y for y in numbers if _YEAR.fullmatch(y)]
            year = self._pick(years, lambda y: y not in gold)
            if year:
                options.append((question[:-1].rstrip() + f" in {year}?", CONDITION))
        return options


def _natural(options: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The changes other than a swapped attribute word, if any: a swapped name, number or polarity reads like a
    real question, a swapped attribute word often does not, so it is the fallback."""
    return [o for o in options if o[1] != ATTRIBUTE] or options


def split_articles(paragraphs: dict[str, Paragraph], held_out: int) -> tuple[set[str], set[str]]:
    """Articles to train on and the last `held_out` articles, kept for fitting thresholds and reporting."""
    articles = sorted({p.article for p in paragraphs.values()})
    return set(articles[:-held_out] if held_out else articles), set(articles[-held_out:] if held_out else [])


def dense_neighbours(paragraphs: dict[str, Paragraph], articles: set[str], questions: list[Question],
                     k: int = 8, progress: bool = True) -> dict[str, list[tuple[str, str]]]:
    """The sentences of the training articles nearest each question by the packaged embedder (our dense
    ranker), (paragraph id, text), best first: the hard negatives lexical overlap misses."""
    import faiss

    from ..embedding import OnnxEmbedder

    rows = [(p.id, p.text[s:e]) for p in paragraphs.values() if p.article in articles for s, e in p.sentences]
    embedder = OnnxEmbedder()
    sentence_vectors = embedder.embed([t for _, t in rows], progress=progress)
    question_vectors = embedder.embed([q.text for q in questions], progress=progress)
    index = faiss.IndexFlatIP(sentence_vectors.shape[1])
    index.add(sentence_vectors)
    _, found = index.search(question_vectors, k)
    return {q.id: [rows[int(i)] for i in found[n] if i >= 0] for n, q in enumerate(questions)}


def assemble(root: Path, questions_wanted: int, seed: int = 0, held_out: int = 20,
             synthetic: float = 0.5, skip: int = 0, style: int = 1, dense: bool = False) -> Iterator[Pair]:
    """Pairs from `questions_wanted` training questions sampled with the seed (held-out articles excluded).

    `skip` passes over the first questions of the seeded order: a second stage trains on questions the
    first did not see. `dense` adds a hard negative from the dense ranker to each question."""
    paragraphs, questions = load(root)
    train_articles, _ = split_articles(paragraphs, held_out)
    pool = [q for q in questions if paragraphs[q.paragraph].article in train_articles]
    rng = random.Random(seed)
    rng.shuffle(pool)
    chosen = pool[skip:skip + questions_wanted]
    builder = Builder(paragraphs, seed, style)
    lexical = builder.index_lexical(chosen)
    nearest = dense_neighbours(paragraphs, train_articles, chosen) if dense else {}
    for question in chosen:
        yield from builder.pairs(question, lexical[question.id], synthetic, nearest.get(question.id))
