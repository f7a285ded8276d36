"""The project's exceptions.

    QAError                      base of everything the core raises on purpose
    ├── ConfigError              a setting is invalid (bad number, missing model)
    ├── DocumentError            an article cannot be accepted
    │   └── DocumentNotFound     no article with that id
    ├── QuestionError            a question is empty, blank or too long
    └── IndexError_              the index cannot be used
        ├── IndexMissing         nothing has been built yet
        ├── IndexIncompatible    built by another model or format version
        ├── IndexCorrupt         a file is missing, truncated or fails its checksum
        ├── IndexBusy            another process is building, and did not finish in time
        ├── BuildCancelled       an update was stopped (the server is shutting down); nothing changed
        └── TooManyUpdates       the queue of waiting updates is full; try again shortly

Messages say what to do next; adapters decide how to show them (exit codes, HTTP status).
"""

from __future__ import annotations


class QAError(Exception):
    """Base class for errors the assistant reports to its users."""


class ConfigError(QAError):
    """Raised when a setting (flag or QA_* variable) has an invalid value."""


class DocumentError(QAError):
    """Raised when an article is rejected: wrong type, empty, not UTF-8, too large, a duplicate."""


class DocumentNotFound(DocumentError):
    """Raised when no indexed article has the requested id."""


class QuestionError(QAError):
    """Raised when a question is empty, blank or longer than the limit."""


class IndexError_(QAError):
    """Raised when the index cannot be used; subclasses say why."""


class IndexMissing(IndexError_):
    """Raised when no index has been built in the index directory."""


class IndexIncompatible(IndexError_):
    """Raised when the index was built with another model, dimension or format version."""


class IndexCorrupt(IndexError_):
    """Raised when an index file is missing, truncated or does not match its checksum."""


class IndexBusy(IndexError_):
    """Raised when another process holds the index directory's build lock."""


class BuildCancelled(IndexError_):
    """Raised when an index update is cancelled before its commit; the folder and index are as they were."""


class TooManyUpdates(IndexError_):
    """Raised when too many index updates, or too many bytes of articles, are already waiting."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds: a fair guess at when the queue will have room
