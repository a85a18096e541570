"""Ask chat models from a DAG: answers grounded in a project (RAG) and plain completions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_vectorize.operators._base import VectorizeBaseOperator
from airflow_vectorize.operators.search import to_json


class RAGOperator(VectorizeBaseOperator):
    """Answer one query, or each of a list, from a project's rows (pg_vectorize's ``vectorize.rag``).

    Returns the hook's result (``chat_response``, ``finish_reason``, ``context``, ``model``, ``usage``, ...)
    for one query, a list of them for a list. A ``finish_reason`` of ``length`` is an answer cut at
    ``max_tokens`` or the context window; a filtered or empty cut answer fails the task (ModelResponseError).

    :param job_name: the project whose search retrieves the context.
    :param query: a question, or a list of questions (templated).
    :param chat_model: ``openai/<model>``, ``ollama/<model>`` or ``portkey/<provider>/<model>``.
    :param chat_conn_id: its Airflow connection (default ``openai_default`` / ``ollama_default``).
    :param task: the prompt template, a ``prompt_type`` of ``vectorize.prompts``.
    :param num_context: rows retrieved as context.
    :param force_trim: drop the least relevant context until the prompt fits the model's window with room for
        the answer (``max_tokens``, else min(1024, a quarter of the window)).
    :param filters: search filters, as for ``VectorSearchOperator``.
    :param hybrid: retrieve with hybrid (vector + full-text) search.
    :param max_tokens: the longest answer; :param temperature: sampling temperature.
    """

    template_fields: Sequence[str] = ("job_name", "query", "filters", "chat_model", "chat_conn_id", "task")

    def __init__(
        self,
        *,
        job_name: str,
        query: str | Sequence[str],
        chat_model: str,
        chat_conn_id: str | None = None,
        task: str = "question_answer",
        num_context: int = 2,
        force_trim: bool = False,
        filters: dict[str, Any] | None = None,
        hybrid: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_name = job_name
        self.query = query
        self.chat_model = chat_model
        self.chat_conn_id = chat_conn_id
        self.task = task
        self.num_context = num_context
        self.force_trim = force_trim
        self.filters = filters
        self.hybrid = hybrid
        self.max_tokens = max_tokens
        self.temperature = temperature

    def execute(self, context: Any) -> dict[str, Any] | list[dict[str, Any]]:
        queries = [self.query] if isinstance(self.query, str) else list(self.query)
        results = [to_json(self.hook.rag(
            self.job_name, query, self.chat_model, chat_conn_id=self.chat_conn_id, task=self.task,
            num_context=self.num_context, force_trim=self.force_trim, filters=self.filters, hybrid=self.hybrid,
            max_tokens=self.max_tokens, temperature=self.temperature,
        )) for query in queries]
        self.log.info("Answered %d query(ies) from project %r with %s", len(results), self.job_name, self.chat_model)
        return results[0] if isinstance(self.query, str) else results


class GenerateTextOperator(VectorizeBaseOperator):
    """A plain completion (pg_vectorize's ``vectorize.generate``): ``chat_response``, ``finish_reason``,
    ``model``, ``usage``.

    :param prompt: the user message (templated); :param system_prompt: an optional system message.
    :param chat_model: ``openai/<model>``, ``ollama/<model>`` or ``portkey/<provider>/<model>``; :param chat_conn_id:
        its connection.
    :param max_tokens: the longest answer; :param temperature: sampling temperature.
    """

    template_fields: Sequence[str] = ("prompt", "system_prompt", "chat_model", "chat_conn_id")

    def __init__(
        self,
        *,
        prompt: str,
        chat_model: str,
        chat_conn_id: str | None = None,
        system_prompt: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompt = prompt
        self.chat_model = chat_model
        self.chat_conn_id = chat_conn_id
        self.system_prompt = system_prompt
        self.max_tokens = max_tokens
        self.temperature = temperature

    def execute(self, context: Any) -> dict[str, Any]:
        return to_json(self.hook.generate(
            self.prompt, self.chat_model, chat_conn_id=self.chat_conn_id, system_prompt=self.system_prompt,
            max_tokens=self.max_tokens, temperature=self.temperature,
        ))
