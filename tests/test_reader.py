"""The reader: training on a tiny fixture (steps, determinism, resume, export) and its use in the answer step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from qa import answer as answering
from qa.errors import ConfigError
from qa.filters import Filters
from qa.reader import Reading, resolve_folder
from qa.training.card import auc, span_em, span_f1
from qa.training.data import Builder, answer_sentence, load

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "squad-tiny"


# --- data -----------------------------------------------------------------------------------------


def test_pairs_hold_a_positive_with_its_span_and_negatives_without_the_answer() -> None:
    paragraphs, questions = load(FIXTURE)
    builder = Builder(paragraphs, seed=1)
    for question in questions:
        pairs = builder.pairs(question, synthetic=1.0)
        positive = pairs[0]
        assert positive.label == 1 and positive.kind == "positive"
        start, end = positive.span
        assert positive.sentence[start:end] == question.answer
        for pair in pairs[1:]:
            assert pair.label == 0 and pair.span is None
            if pair.kind in ("paragraph", "article", "lexical"):
                assert question.answer not in pair.sentence
            else:  # synthetic: the question changed, the gold sentence kept
                assert pair.question != question.text and pair.sentence == positive.sentence


def test_synthetic_unanswerable_swaps_a_name_for_one_of_the_same_article_not_in_the_sentence() -> None:
    paragraphs, _ = load(FIXTURE)
    builder = Builder(paragraphs, seed=0)
    gold = "It was designed by the engineer Mara Lind."
    made = builder.unanswerable("Who designed the seawall that Mara Lind built?", gold, "002")
    assert made is not None
    changed, kind = made
    assert changed != "Who designed the seawall that Mara Lind built?"
    if kind == "entity":
        assert "Mara Lind" not in changed


def test_style_two_adds_an_impossible_condition_and_one_question_per_kind() -> None:
    paragraphs, questions = load(FIXTURE)
    gold = "The bridge opened in 1932 after eight years of work."
    plain = Builder(paragraphs, seed=0).unanswerable_options("When did the Harbour Bridge open?", gold, "000")
    richer = Builder(paragraphs, seed=0, style=2).unanswerable_options("When did the Harbour Bridge open?", gold, "000")
    assert all(kind != "condition" for _, kind in plain)
    conditions = [q for q, kind in richer if kind == "condition"]
    assert conditions, richer
    for changed in conditions:
        year = changed.rsplit(" in ", 1)[1].rstrip("?")
        assert changed.startswith("When did the Harbour Bridge open in ") and year.isdigit() and year not in gold
    builder = Builder(paragraphs, seed=3, style=2)
    for question in questions:
        made = [p for p in builder.pairs(question, synthetic=1.0) if p.kind not in ("positive", "paragraph", "article")]
        kinds = [p.kind for p in made]
        assert len(kinds) == len(set(kinds)) <= 2
        assert all(p.label == 0 and p.question != question.text for p in made)


def test_dense_and_lexical_negatives_are_other_paragraphs_sentences_without_the_answer() -> None:
    paragraphs, questions = load(FIXTURE)
    builder = Builder(paragraphs, seed=0, style=2)
    question = questions[0]  # answer: 1932
    own = paragraphs[question.paragraph]
    other = next(p for p in paragraphs.values() if p.article != own.article)
    lexical = [(own.id, own.text), (other.id, "Trains crossed the harbour by ferry.")]
    dense = [(other.id, "Trains crossed the harbour by ferry."),  # lexical has it: not repeated
             (other.id, "The bridge was finished in 1932."),  # holds the answer: not a negative
             (other.id, "Ferries still run across the harbour.")]
    made = builder.pairs(question, lexical, synthetic=0.0, dense=dense)
    chosen = {p.kind: p.sentence for p in made if p.kind in ("lexical", "dense")}
    assert chosen == {"lexical": "Trains crossed the harbour by ferry.",
                      "dense": "Ferries still run across the harbour."}


def test_answer_sentence_finds_the_span_and_refuses_answers_across_sentences() -> None:
    paragraphs, _ = load(FIXTURE)
    paragraph = paragraphs["000_000"]
    number, (start, end) = answer_sentence(paragraph, "503 metres")
    s, _ = paragraph.sentences[number]
    assert paragraph.text[s + start:s + end] == "503 metres"
    assert answer_sentence(paragraph, "work. It carries") is None


def test_span_metrics_follow_squad_normalisation() -> None:
    assert span_em("The Harbour Bridge.", "harbour bridge") == 1.0
    assert span_f1("in 1932", "1932") == pytest.approx(2 / 3)
    assert auc([3.0, 2.0], [1.0, 0.0]) == 1.0 and auc([1.0], [1.0]) == 0.5


# --- settings -------------------------------------------------------------------------------------


def test_reader_setting_off_default_and_a_missing_folder(tmp_path: Path) -> None:
    assert resolve_folder("off") is None and resolve_folder("OFF") is None
    with pytest.raises(ConfigError, match="no reader model"):
        resolve_folder(str(tmp_path))


# --- the answer step with a reader whose scores are computable by hand ----------------------------


@dataclass
class CountingReader:
    """Logit = how many times the sentence holds `word`; the span is the word's first occurrence."""

    word: str

    def read(self, question: str, sentences: Sequence[str]) -> list[Reading]:
        out = []
        for text in sentences:
            at = text.find(self.word)
            out.append(Reading(float(text.count(self.word)), max(at, 0), max(at, 0) + len(self.word) if at >= 0 else 0))
        return out


def test_reading_reorders_passages_and_gives_the_span_in_article_offsets(settings) -> None:
    from qa.assistant import Assistant
    from qa.retrieval import tidy

    assistant = Assistant(settings)
    assistant.build()
    snapshot = assistant.snapshot()
    question = "What is the total area of the Hetao cooperation zone?"
    _, query, terms, ranked = assistant._search(snapshot, question, "hybrid", (), Filters())
    hits = tidy(ranked, 5, 3)
    # The word the reader looks for: one that occurs in a shortlisted sentence of a passage other than the first.
    shortlist = answering.score_sentences(query, terms, hits, snapshot.data, snapshot.retriever, passages=5,
                                          question=question)[:answering.READ_SENTENCES]
    later = next(s for s in shortlist if s.passage > 0)
    doc_id, start, end = snapshot.data.sentences[later.row]
    text = snapshot.data.documents[doc_id].text[start:end]
    word = max(text.split(), key=len)
    # The logit alone decides here (no shortlist or rank terms), so the expected order is computable by hand.
    readings = answering.read(query, terms, hits, snapshot.data, snapshot.retriever, CountingReader(word), question,
                              prior=0.0, passage_weight=0.0)
    assert readings[0].logit >= 1
    reordered, moved = answering.reorder(hits, readings)
    assert reordered[0] is hits[readings[0].passage]
    found = answering.choose_read(readings, snapshot.data, moved, threshold=0.5)
    assert found is not None and found.passage == 0
    article = snapshot.data.documents[snapshot.data.sentences[readings[0].row][0]].text
    assert article[found.span[0]:found.span[1]] == word
    assert found.start <= found.span[0] < found.span[1] <= found.end
    # A threshold above every logit: the articles are taken not to answer.
    assert answering.choose_read(readings, snapshot.data, moved, threshold=100.0) is None


# --- training on the tiny fixture (real packaged MiniLM) -----------------------------------------


def _settings(out: Path, **changes):
    from qa.training.loop import TrainSettings

    base = dict(data=str(FIXTURE), out=str(out), questions=10, held_out_articles=1, max_length=48, batch_size=4,
                checkpoint_every=2, synthetic=1.0)
    return TrainSettings(**{**base, **changes})


def _weights(folder: Path) -> dict:
    import torch

    return torch.load(folder / "reader.pt", weights_only=True)


@pytest.mark.model
def test_training_runs_is_deterministic_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    import torch

    from qa.training.loop import train

    quiet = lambda message: None  # noqa: E731
    straight = train(_settings(tmp_path / "a"), progress=False, log=quiet, max_steps=4)
    again = train(_settings(tmp_path / "b"), progress=False, log=quiet, max_steps=4)
    interrupted = _settings(tmp_path / "c")
    train(interrupted, progress=False, log=quiet, max_steps=4, stop_after=2)
    assert not (tmp_path / "c" / "reader.pt").exists() and (tmp_path / "c" / "checkpoint.pt").exists()
    resumed = train(interrupted, progress=False, log=quiet, max_steps=4)
    a, b, c = _weights(straight), _weights(again), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], c[k]) for k in a)
    base = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert base["step"] == 4
    losses = [line for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines() if line]
    assert len(losses) == 2 and all(np.isfinite(__import__("json").loads(x)["loss"]) for x in losses)
    with pytest.raises(SystemExit, match="other settings"):
        train(_settings(tmp_path / "a", learning_rate=1e-3), progress=False, log=quiet, max_steps=4)


@pytest.mark.model
def test_a_second_stage_starts_from_the_first_stages_weights(tmp_path: Path) -> None:
    import json

    import torch

    from qa.training.loop import train

    quiet = lambda message: None  # noqa: E731
    first = train(_settings(tmp_path / "one"), progress=False, log=quiet, max_steps=2)
    # Learning rate 0: the second stage's weights are exactly where it started.
    kept = train(_settings(tmp_path / "two", init=str(first), learning_rate=0.0, style=2, skip_questions=2,
                           questions=4), progress=False, log=quiet, max_steps=2)
    moved = train(_settings(tmp_path / "three", init=str(first), style=2, skip_questions=2, questions=4),
                  progress=False, log=quiet, max_steps=2)
    a, b, c = _weights(first), _weights(kept), _weights(moved)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    recorded = json.loads((tmp_path / "two" / "train_settings.json").read_text())
    assert recorded["init_settings"]["questions"] == 10 and recorded["skip_questions"] == 2

    # The card tells both stages and how to reproduce each, and names no folder of this machine.
    from qa.training.card import write_card
    from qa.training.export import export

    card = write_card(moved, export(moved, tmp_path / "export")).read_text()
    assert "Stage 1: questions 1 to 10 of that order" in card
    assert "Stage 2 (from stage 1's weights): questions 3 to 6 of that order" in card
    assert "--run runs/stage2 --questions 4" in card and "--skip-questions 2 --style 2 --init runs/stage1" in card
    assert str(tmp_path) not in card and "SHA-256" in card


@pytest.mark.model
def test_export_gives_the_torch_models_scores(tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from qa.reader import Reader
    from qa.training.export import export
    from qa.training.loop import train
    from qa.training.model import ReaderNet
    from qa.training.loop import encoder_path

    run = train(_settings(tmp_path / "run"), progress=False, log=lambda m: None, max_steps=2)
    folder = export(run, tmp_path / "fp32", quantize=False)
    question = "Who designed the seawall?"
    sentences = ["It was designed by the engineer Mara Lind.", "The wall is 82 kilometres long."]
    model = ReaderNet.from_encoder(encoder_path(_settings(run)))
    model.load_state_dict(_weights(run))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(run / "tokenizer"))
    batch = tokenizer([question] * 2, sentences, padding=True, return_tensors="pt", return_token_type_ids=True)
    with torch.no_grad():
        want = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])[0].numpy()
    got = Reader(folder).raw(question, sentences)[0]
    assert np.allclose(got, want, atol=1e-3)
    int8 = export(run, tmp_path / "int8")
    assert (int8 / "model.onnx").stat().st_size < 30e6
    assert np.allclose(Reader(int8).raw(question, sentences)[0], want, atol=0.25)


# --- the shipped model ----------------------------------------------------------------------------

FIXED_QUESTION = "What is the total area of the Hetao cooperation zone?"
FIXED_SENTENCES = [
    "The Hetao Shenzhen-Hong Kong Science and Technology Innovation Cooperation Zone covers a total area of 3.89 square kilometres.",
    "The zone was first proposed in 2017 by the two governments.",
    "Its Shenzhen park covers 3.02 square kilometres.",
]
# Recorded from qa/models/reader when it was exported (int8 kernels may round a little differently on other CPUs).
FIXED_LOGITS = [2.932, -6.415, -3.993]
FIXED_SPANS = ["3.89 square kilometres", "The zone was first proposed in 2017",
               "3.02 square kilometres"]


def test_shipped_reader_loads_offline_and_scores_a_fixed_batch_as_recorded() -> None:
    from qa.reader import SHIPPED, Reader

    folder = resolve_folder("default")
    assert folder == SHIPPED and (folder / "README.md").is_file()
    assert (folder / "model.onnx").stat().st_size <= 30_000_000
    readings = Reader(folder).read(FIXED_QUESTION, FIXED_SENTENCES)
    assert [r.logit for r in readings] == pytest.approx(FIXED_LOGITS, abs=0.05)
    assert [s[r.start:r.end] for s, r in zip(FIXED_SENTENCES, readings)] == FIXED_SPANS


def test_a_question_read_alone_or_beside_another_gets_the_same_scores() -> None:
    """The reader's two sessions (every core for a lone question, one thread beside another) agree."""
    from qa.reader import Reader

    reader = Reader(resolve_folder("default"), threads=2)
    alone = reader.raw(FIXED_QUESTION, FIXED_SENTENCES, alone=True)
    beside = reader.raw(FIXED_QUESTION, FIXED_SENTENCES, alone=False)
    wide, narrow = reader._sessions or (None, None)
    assert wide is not narrow  # two sessions were really used
    for a, b in zip(alone[:3], beside[:3]):
        assert np.array_equal(a, b)  # int8 kernels split the work, not the sums, over threads


@pytest.fixture(scope="module")
def reading(tmp_path_factory: pytest.TempPathFactory):
    """The real assistant with the packaged embedder and the shipped reader, on the pinned seeds."""
    from qa.assistant import Assistant
    from qa.config import resolve

    from .conftest import SEEDS

    root = tmp_path_factory.mktemp("reading")
    assistant = Assistant(resolve({"docs_dir": SEEDS, "index_dir": root / "index"}, env={}))
    assistant.build()
    return assistant


@pytest.mark.model
@pytest.mark.parametrize("question, words", [
    ("What is the total area of the Hetao cooperation zone?", "3.89 square kilometers"),
    ("How big is the Shenzhen park of the zone?", "3.02 square"),
])
def test_reader_answers_with_the_exact_words(reading, question: str, words: str) -> None:
    result = reading.ask(question)
    found = result.answer
    assert found is not None and found.span is not None
    article = reading.document(result.passages[found.passage].doc_id)[0].text
    assert words in article[found.span[0]:found.span[1]]
    assert article[found.start:found.end] == found.text and found.start <= found.span[0] < found.span[1] <= found.end


@pytest.mark.model
def test_reader_abstains_when_the_articles_do_not_say(reading) -> None:
    assert reading.ask("Who is the president of France?").answer is None


@pytest.mark.model
def test_a_claim_keeps_retrievals_passage_order(reading) -> None:
    from dataclasses import replace

    from qa.assistant import Assistant

    # A seed sentence as a claim: reordered by the reader's scores, its passages would come in another order.
    claim = ("CU Datahub has leveraged the zone's innovative cross-boundary data flow policies to drive "
             "collaboration between Hong Kong's insurance sector and the mainland's healthcare institutions")
    unread = Assistant(replace(reading.settings, reader="off"))
    unread.load()
    read = reading.ask(claim, top_k=5)
    assert [(p.doc_id, p.start) for p in read.passages] == [(p.doc_id, p.start) for p in unread.ask(claim, top_k=5).passages]
