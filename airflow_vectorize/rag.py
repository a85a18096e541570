"""Retrieval-augmented generation (pg_vectorize's ``vectorize.rag``): retrieve context with the project's own
search, render a prompt template from ``vectorize.prompts``, ask a chat model.

Prompt templates are rows of ``vectorize.prompts(prompt_type, description, sys_prompt, user_prompt)``, as
in pg_vectorize; ``{{ context_str }}`` and ``{{ query_str }}`` in ``user_prompt`` (spaces inside the braces
optional: ``{{context_str}}`` is pg_vectorize's Handlebars form) are replaced by the context documents (best
first, separated by blank lines) and the query, in one pass: the documents and the query are sent as they are,
never templated again. ``question_answer`` is seeded; add your own rows for other tasks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import Cursor

from airflow_vectorize.exceptions import InvalidInputError
from airflow_vectorize.models.base import ChatModel

log = logging.getLogger(__name__)

CONTEXT_SEPARATOR = "\n\n"
# The room ``force_trim`` leaves for the answer when no ``max_tokens`` is given: min(ANSWER_TOKENS, the context
# window / ANSWER_SHARE) — 1024 tokens of a window of 4096 or more, a quarter of a smaller one.
ANSWER_TOKENS = 1024
ANSWER_SHARE = 4
# ``{{ context_str }}`` / ``{{ query_str }}``, with or without spaces inside the braces (pg_vectorize renders
# its templates with Handlebars, whose own examples write ``{{context_str}}``).
PLACEHOLDER = re.compile(r"\{\{\s*(context_str|query_str)\s*\}\}")

QUESTION_ANSWER = (
    "question_answer",
    "Answer a question from the context retrieved for it",
    "You are an expert Q&A system.\n"
    "You must always answer the question using the provided context information. Never use any prior knowledge.\n"
    "Follow these three instructions:\n"
    "1. Never directly reference the given context in your answer.\n"
    "2. Never use responses like 'Based on the context, ...' or 'The context information ...' or any responses"
    " similar to that.\n"
    "3. Only provide responses that are based on the provided context.",
    "Context information is below.\n"
    "---------------------\n"
    "{{ context_str }}\n"
    "---------------------\n"
    "Given the context information and not prior knowledge, answer the query.\n"
    "Query: {{ query_str }}\n"
    "Answer: ",
)


@dataclass(frozen=True)
class Prompt:
    """A row of ``vectorize.prompts``."""

    prompt_type: str
    sys_prompt: str
    user_prompt: str

    def messages(self, query: str, documents: Sequence[str]) -> list[dict[str, str]]:
        """The system and user messages; the placeholders are filled in one pass, so a document or a query
        that itself contains ``{{ query_str }}`` or ``{{ context_str }}`` is sent exactly as it is."""
        values = {"context_str": CONTEXT_SEPARATOR.join(documents), "query_str": query}
        user = PLACEHOLDER.sub(lambda found: values[found[1]], self.user_prompt)
        return [{"role": "system", "content": self.sys_prompt}, {"role": "user", "content": user}]


def ensure_prompts(cur: Cursor) -> None:
    """``vectorize.prompts``, created and seeded with ``question_answer`` if missing (never overwritten)."""
    if cur.execute("SELECT to_regclass('vectorize.prompts') IS NOT NULL").fetchone()[0]:
        return
    cur.execute("SELECT pg_advisory_xact_lock(hashtextextended('vectorize:catalog', 0))")
    cur.execute(
        "CREATE SCHEMA IF NOT EXISTS vectorize;"
        " CREATE TABLE IF NOT EXISTS vectorize.prompts (prompt_type text PRIMARY KEY, description text,"
        " sys_prompt text NOT NULL, user_prompt text NOT NULL)"
    )
    cur.execute("INSERT INTO vectorize.prompts VALUES (%s, %s, %s, %s) ON CONFLICT (prompt_type) DO NOTHING",
                QUESTION_ANSWER)


def load_prompt(cur: Cursor, task: str) -> Prompt:
    """The template named ``task``; an unknown one lists the known ones."""
    cur.execute("SELECT sys_prompt, user_prompt FROM vectorize.prompts WHERE prompt_type = %s", [task])
    row = cur.fetchone()
    if row is None:
        known = [r[0] for r in cur.execute("SELECT prompt_type FROM vectorize.prompts ORDER BY 1")]
        raise InvalidInputError(
            f"task {task!r} has no prompt template in vectorize.prompts; known tasks: {', '.join(known)}."
            " Add a row (prompt_type, description, sys_prompt, user_prompt) for a new one"
        )
    if not any(found[1] == "context_str" for found in PLACEHOLDER.finditer(row[1])):
        log.warning("the prompt template %r (vectorize.prompts) has no {{ context_str }} placeholder in its"
                    " user_prompt: the retrieved context is not sent to the chat model", task)
    return Prompt(task, row[0], row[1])


@dataclass(frozen=True)
class ContextDocument:
    """One retrieved row: its key, the text the project embeds, its tokens and its search score."""

    record_id: Any
    content: str
    token_ct: int
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {"record_id": self.record_id, "content": self.content, "token_ct": self.token_ct,
                "similarity_score": self.score}


def answer_room(context_window: int, max_tokens: int | None) -> int:
    """The tokens ``force_trim`` keeps free for the answer: ``max_tokens``, else min(ANSWER_TOKENS,
    context_window // ANSWER_SHARE)."""
    return max_tokens if max_tokens is not None else min(ANSWER_TOKENS, context_window // ANSWER_SHARE)


def fit_context(model: ChatModel, prompt: Prompt, query: str, documents: list[ContextDocument],
                max_tokens: int | None, force_trim: bool) -> tuple[list[dict[str, str]], list[ContextDocument]]:
    """The messages to send and the documents they carry, within the model's context window.

    With ``force_trim`` the least relevant documents are dropped first, and the last one kept is cut by
    tokens, until prompt + the answer's room fits: ``max_tokens``, or without it :func:`answer_room`'s default
    (min(1024, a quarter of the window); the answer may still use whatever the window has left). Without
    ``force_trim`` a prompt that does not fit with ``max_tokens`` (if given) is an error naming the sizes.
    """
    # The answer's room: what the caller asked for, or (when trimming, which can make room) the default one.
    answer_tokens = answer_room(model.context_window, max_tokens) if force_trim else (max_tokens or 0)
    budget = model.context_window - answer_tokens

    def size(docs: list[ContextDocument]) -> int:
        return model.prompt_tokens(prompt.messages(query, [d.content for d in docs]))

    needed = size(documents)
    if needed <= budget:
        return prompt.messages(query, [d.content for d in documents]), documents
    if not force_trim:
        raise InvalidInputError(
            f"the prompt takes {needed} tokens ({len(documents)} context document(s) of"
            f" {sum(d.token_ct for d in documents)} tokens) + max_tokens {max_tokens or 0} > the context window"
            f" of {model.describe()}, {model.context_window} tokens. Pass force_trim=True to drop the least"
            " relevant context, or lower num_context or max_tokens; nothing was sent"
        )
    kept = list(documents)
    while kept and size(kept) > budget:
        last = kept[-1]
        without = size(kept[:-1])
        room = budget - without - model.tokens.count(CONTEXT_SEPARATOR if len(kept) > 1 else "") - 1
        if room > 0:  # the least relevant document, cut to what is left
            cut = model.tokens.truncate(last.content, room)
            kept[-1] = ContextDocument(last.record_id, cut, model.tokens.count(cut), last.score)
            if size(kept) <= budget:
                break
        kept.pop()
    if size(kept) > budget:
        answer = (f"max_tokens {max_tokens}" if max_tokens is not None else
                  f"{answer_tokens} tokens kept for the answer (max_tokens not given; pass a smaller one)")
        raise InvalidInputError(
            f"even without context the prompt takes {size([])} tokens + {answer} > the"
            f" context window of {model.describe()}, {model.context_window} tokens; nothing was sent"
        )
    return prompt.messages(query, [d.content for d in kept]), kept
