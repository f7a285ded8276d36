"""Follow-up questions and keyword queries -> what to search for, without a hosted model.

A follow-up leaves things out: "How big is its Shenzhen part?" (a pronoun), "And how many R&D
platforms?", "Why the delay?" (an elided subject). The conversation's earlier questions fill them
in: a pronoun is replaced by the last named entity the earlier questions mention, and the latest
earlier question joins retrieval as context, at a lower weight than the question itself. A question
that names its own subject and has no pronoun or leading "and" stands on its own and is searched
as if there were no history.

A keyword query ("area of Hetao") has no question word; it is searched as the question it stands
for ("What is the area of Hetao?"), so the answer step knows what kind of answer is wanted; a noun that
says what is asked takes its question word ("Shenzhen mayor" -> "Who is the Shenzhen mayor?", "number of
patents" -> "How many patents?").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

MAX_HISTORY = 8
# Words a question or request starts with; a query starting with none of them is taken as keywords.
_STARTERS = frozenset("""
what what's whats which who who's whom whose when where where's why how how's is are was were am do does did
can could will would shall should may might must has have had tell list name describe explain show give find
compare define summarise summarize according in on at for from during since after before by if please and
""".split())
# Pronouns that point back to something earlier ("there" only where it is not "there is/are").
_PRONOUN = re.compile(
    r"\b(?P<word>its|it|he|she|him|his|her|they|them|their|there)\b(?!\s+(?:is|are|was|were|will|have|has|had|"
    r"be|been|being|remain|seem|appear|exists?)\b)",
    re.IGNORECASE,
)
# Openings that mark a question as continuing the last one.
_CONTINUATION = re.compile(r"^(?:and|also|so|but|then|what about|how about|and what about)\b[\s,]*", re.IGNORECASE)
# A named entity: capitalised words (with "of", "and", "-" between them), then up to three lower-case
# words that finish the noun phrase ("the Hetao cooperation zone").
_NAME = re.compile(
    r"(?:\b[Tt]he\s+)?(?P<name>(?:[A-Z][\w&'’.-]*)(?:\s+(?:of\s+|and\s+|for\s+)?[A-Z][\w&'’.-]*)*)"
    r"(?P<tail>(?:\s+(?!(?:has|have|had|is|are|was|were|did|do|does|will|be|to|in|on|at|of|for|by|with|and|or|"
    r"from|that|which|who|its|their|the|a|an)\b)[a-z][\w-]*){0,3})"
)
_TAIL_NOUNS = frozenset("""
zone zones park parks area city cities institute university company companies platform platforms plan
government council office centre center hub branch project projects district port river region bank
cooperation innovation science technology development research part parts side sides section sections
""".split())
_NOT_NAMES = frozenset("""
January February March April May June July August September October November December
Monday Tuesday Wednesday Thursday Friday Saturday Sunday I
""".split())
_QUESTION_WORD_NAMES = frozenset({"What", "Which", "Who", "Whom", "Whose", "When", "Where", "Why", "How", "Is",
                                  "Are", "Was", "Were", "Do", "Does", "Did", "Can", "Could", "Will", "Would",
                                  "And", "Also", "So", "But", "Then", "In", "On", "At", "Tell", "List", "Name"})


@dataclass(frozen=True)
class Query:
    """A question as it is understood: `text` is shown to the reader, `answer_text` searched and answered;
    `context`, from the conversation, joins retrieval at a lower weight ("" when the question stands on its own)."""

    question: str  # as the user typed it
    text: str  # with keywords made a question and pronouns resolved
    context: str = ""
    # What is searched and answered: like `text`, but a possessive ("its Shenzhen part") is left out, since
    # the question asks about the thing it qualifies; its entity still joins retrieval through `context`,
    # and at full weight it would favour passages and sentences about the whole (tried on the training pairs).
    answer_text: str = ""

    @property
    def followup(self) -> bool:
        return bool(self.context)


# Keyword queries are short (the training ones run to 8 words); a longer text, or one ending in a full stop,
# is a statement (a claim to check, a pasted sentence) and is searched as it is.
MAX_KEYWORDS = 10


def is_keywords(question: str) -> bool:
    """A short query with no question word or request at its start: "area of Hetao", "Hetao zone size"."""
    words = re.findall(r"[\w'’]+", question.lower())
    stripped = question.rstrip()
    return (bool(words) and len(words) <= MAX_KEYWORDS and words[0] not in _STARTERS
            and not stripped.endswith(("?", ".", "!")))


def is_statement(question: str) -> bool:
    """A claim or a pasted sentence rather than a question or a keyword query: no question mark, no
    question word or request at its start, and longer than a keyword query or ending in a full stop."""
    words = re.findall(r"[\w'’]+", question.lower())
    stripped = question.rstrip()
    return (bool(words) and words[0] not in _STARTERS and not stripped.endswith("?")
            and (len(words) > MAX_KEYWORDS or stripped.endswith((".", "!"))))


# A keyword query that opens with a noun saying what kind of answer is wanted is asked with the question word
# that noun stands for: "number of patents" -> "How many patents?", "date X opened" -> "When X opened?".
_CUES = (
    (re.compile(r"^(?:number|count)\s+of\s+", re.IGNORECASE), "How many "),
    (re.compile(r"^amount\s+of\s+", re.IGNORECASE), "How much "),
    (re.compile(r"^date\s+(?:of\s+|when\s+)?", re.IGNORECASE), "When "),
    (re.compile(r"^(?:year|month|day)\s+(?:of\s+|when\s+|in\s+which\s+)?", re.IGNORECASE), None),
    (re.compile(r"^(?:location|place)\s+(?:of|where)\s+", re.IGNORECASE), "Where is "),
    (re.compile(r"^(?:location|place)\s+", re.IGNORECASE), "Where "),
    (re.compile(r"^(?:reasons?|why)\s+(?:for\s+|of\s+|behind\s+|that\s+|why\s+)?", re.IGNORECASE), "Why "),
)
# Nouns for a person: a keyword query whose head is one ("Shenzhen mayor", "author of the report") asks who.
_PERSON_NOUNS = frozenset("""
mayor president chairman chairwoman chairperson chair ceo director founder cofounder co-founder author writer leader
head governor minister secretary king queen emperor prince princess inventor creator designer architect composer
manager coach captain spokesman spokeswoman spokesperson owner reporter editor premier chancellor dean principal
professor scientist researcher winner successor predecessor father mother son daughter wife husband
""".split())


def as_question(question: str) -> str:
    """A keyword query as the question it stands for; any other text unchanged."""
    text = question.strip()
    if not is_keywords(text):
        return text
    body = re.sub(r"^(?:the|a|an)\s+", "", text.rstrip(" ?.!"), flags=re.IGNORECASE)
    for pattern, opening in _CUES:
        match = pattern.match(body)
        if match and match.end() < len(body):
            rest = body[match.end():]
            if opening is None:  # "year X was proposed" -> "What year X was proposed?"
                return f"What {body[:match.end()].split()[0].lower()} {rest}?"
            return f"{opening}{rest}?"
    words = body.split()
    head = words[0] if len(words) > 1 and words[1].lower() == "of" else words[-1]
    if head.lower() in _PERSON_NOUNS:
        return f"Who is the {body}?"
    return f"What is the {body}?"


def entities(text: str) -> list[str]:
    """Named entities in order of appearance, each with the nouns that finish its phrase."""
    found = []
    for match in _NAME.finditer(text):
        name = match.group("name")
        first, _, rest = name.partition(" ")
        if first in _QUESTION_WORD_NAMES:  # "What", "How": capitalised only because they open the question
            if not rest or not rest[:1].isupper():
                continue
            name = rest
        if name in _NOT_NAMES:
            continue
        tail = match.group("tail").split()
        # Keep the lower-case words only while they are nouns that name the thing ("cooperation zone").
        kept = []
        for word in tail:
            if word.lower() not in _TAIL_NOUNS:
                break
            kept.append(word)
        phrase = " ".join([name, *kept])
        found.append(("the " + phrase) if kept else phrase)
    return found


def _has_own_subject(text: str) -> bool:
    return bool(entities(text))


def resolve(question: str, history: Sequence[str] = ()) -> Query:
    """The question to search for, given the earlier questions of the conversation (oldest first)."""
    text = as_question(question)
    if not history:
        return Query(question, text, "", text)
    # Earlier questions may themselves be follow-ups: resolve them in order, each against those before it.
    earlier: list[str] = []
    for past in history:
        earlier.append(_resolve_one(past, earlier)[0])
    resolved, followup, answer_text = _resolve_one(question, earlier)
    if not followup:
        return Query(question, resolved, "", resolved)
    return Query(question, resolved, earlier[-1], answer_text)


def _resolve_one(question: str, earlier: Sequence[str]) -> tuple[str, bool, str]:
    """(the question with its pronouns resolved, whether it leans on the earlier questions, the answer step's text)."""
    text = as_question(question)
    if not earlier:
        return text, False, text
    pronouns = list(_PRONOUN.finditer(text))
    continuation = _CONTINUATION.match(text)
    if not pronouns and not continuation and _has_own_subject(text):
        return text, False, text
    if continuation:
        text = text[continuation.end():]
        text = text[:1].upper() + text[1:]
    name = next((found[-1] for past in reversed(earlier) if (found := entities(past))), None)
    if name is None or not pronouns:
        return text, True, text
    answer_text = _PRONOUN.sub(lambda m: "" if m.group("word").lower() in _POSSESSIVE else _replace(m.group("word"), name),
                               text)
    return _PRONOUN.sub(lambda m: _replace(m.group("word"), name), text), True, " ".join(answer_text.split())


_POSSESSIVE = frozenset({"its", "their", "his"})


def _replace(pronoun: str, name: str) -> str:
    lower = pronoun.lower()
    if lower in ("its", "their", "his"):
        return f"{name}'s"
    if lower == "her":  # possessive or object; "the X's" reads wrong as an object, the name alone is fine
        return name
    if lower == "there":
        return f"in {name}"
    return name
