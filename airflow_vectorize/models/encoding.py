"""Query vs document encoding: what is put before a text, or told to the model, on each side.

Asymmetric retrieval models want documents and queries encoded differently: Cohere and Voyage by an
``input_type`` (``search_document`` / ``search_query``, ``document`` / ``query``), E5 / BGE / GTE /
nomic-style models by a prompt put before the text (``"passage: "`` / ``"query: "``). A project's
:class:`Encoding` is chosen when it is created (its model's defaults, or explicit arguments) and kept in its
catalog entry; :class:`SideModel` is its model seen from one side, which is what generation (documents) and
search (queries) call. A project created before this existed has the empty encoding: both sides alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from airflow_vectorize.exceptions import InvalidInputError
from airflow_vectorize.models.base import EmbeddingModel

if TYPE_CHECKING:
    import numpy as np

Side = Literal["document", "query"]
SIDES: tuple[Side, ...] = ("document", "query")


@dataclass(frozen=True)
class Encoding:
    """Prompt and input type per side; None: nothing (the text as it is, no input type)."""

    document_prompt: str | None = None
    query_prompt: str | None = None
    document_input_type: str | None = None
    query_input_type: str | None = None

    def prompt(self, side: Side) -> str | None:
        return self.document_prompt if side == "document" else self.query_prompt

    def input_type(self, side: Side) -> str | None:
        return self.document_input_type if side == "document" else self.query_input_type

    def params(self) -> dict[str, str]:
        """The catalog form: only what is set (an empty dict for the symmetric encoding)."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> Encoding:
        return cls(**{name: (params or {}).get(name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Choice:
    """What a caller of ``create_project`` asked for; None leaves the model's default (or, for an existing
    project, what it has).

    ``query_prompt`` / ``document_prompt``: a text put before every query / document ("" for none);
    ``input_types``: ``{"document": ..., "query": ...}`` for a model that takes an input type (Cohere, Voyage;
    ``{}`` for none).
    """

    query_prompt: str | None = None
    document_prompt: str | None = None
    input_types: Mapping[str, str | None] | None = None

    def __post_init__(self) -> None:
        for name in ("query_prompt", "document_prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidInputError(f"{name} must be a string ('' for none), got {value!r}")
        types = self.input_types
        if types is not None and (not isinstance(types, Mapping) or set(types) - set(SIDES)
                                  or not all(v is None or isinstance(v, str) for v in types.values())):
            raise InvalidInputError(f"input_types must be a mapping of 'document' and/or 'query' to a string,"
                                    f" got {types!r}")

    def over(self, base: Encoding) -> Encoding:
        """``base`` with what was asked for in its place."""
        chosen = asdict(base)
        for side in SIDES:
            prompt = getattr(self, f"{side}_prompt")
            if prompt is not None:
                chosen[f"{side}_prompt"] = prompt or None
            if self.input_types is not None:
                chosen[f"{side}_input_type"] = self.input_types.get(side)
        return Encoding(**chosen)

    def for_model(self, model: EmbeddingModel) -> Encoding:
        """A new project's encoding: the model's defaults (``EmbeddingModel.default_encoding``) with what was
        asked for over them; an input type the model does not take is refused."""
        if self.input_types:
            allowed = model.input_types
            for side, value in self.input_types.items():
                if value is not None and value not in allowed:
                    raise InvalidInputError(
                        f"input_types[{side!r}]={value!r}: {model.describe()} "
                        + (f"takes one of {', '.join(map(repr, allowed))}" if allowed else
                           "takes no input type; use query_prompt / document_prompt for a prefix"))
        return self.over(Encoding(**model.default_encoding()))


class SideModel(EmbeddingModel):
    """``model`` encoding one side of a project: its prompt before every text, its input type in every
    request. Everything else is the model's; its longest input leaves room for the prompt."""

    def __init__(self, model: EmbeddingModel, encoding: Encoding, side: Side) -> None:
        self.model = model
        self.side = side
        self.prompt = encoding.prompt(side)
        self.input_type = encoding.input_type(side)
        self.transformer = model.transformer
        self.concurrency = model.concurrency
        self.input_errors = model.input_errors
        self.input_types = model.input_types
        self.max_input_tokens = model.max_input_tokens
        if self.max_input_tokens is not None and self.prompt:
            self.max_input_tokens -= model.count_tokens(self.prompt)

    @property
    def dimensions(self) -> int:
        return self.model.dimensions

    def probe(self) -> int:
        return self.model.probe()

    def tokenizer(self) -> Any:
        return self.model.tokenizer()

    def count_tokens(self, text: str) -> int:
        return self.model.count_tokens(text)

    def describe(self) -> str:
        return self.model.describe()

    def embed(self, texts: Sequence[str], *, prompt: str | None = None, input_type: str | None = None) -> np.ndarray:
        return self.model.embed(texts, prompt=self.prompt, input_type=self.input_type)
