"""RAG and plain generation against a real chat server (transformers serve, a tiny locally built model),
reached through a recording server that shows the request it received and misbehaves on request."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import set_model_connection, snapshot

from airflow_vectorize.exceptions import (
    InvalidInputError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelNotFoundError,
    ModelRequestError,
    ModelResponseError,
)
from airflow_vectorize.operators import GenerateTextOperator, RAGOperator
from airflow_vectorize.rag import QUESTION_ANSWER
from scripts.server_process import free_port

JOB = "shop"
QUERY = "Which phone has a good camera?"


@pytest.fixture
def shop(products, hook):
    hook.create_project(JOB, "products", "product_id", ["name", "description"])
    hook.generate_embeddings(JOB)
    return products


def chat_requests(server) -> list[dict]:
    return [r.body for r in server.requests if r.path.endswith("/chat/completions")]


def test_rag_sends_the_search_context_best_first_and_returns_the_answer(shop, hook, chat):
    model, server = chat

    result = hook.rag(JOB, QUERY, model, chat_conn_id="chat", num_context=3, max_tokens=8)

    found = hook.search(JOB, QUERY, return_columns=["product_id", "name", "description"], num_results=3)
    assert [c["record_id"] for c in result["context"]] == [row["product_id"] for row in found]
    assert [c["content"] for c in result["context"]] == [f"{r['name']}, {r['description']}" for r in found]
    assert all(c["token_ct"] > 0 and c["similarity_score"] == pytest.approx(r["similarity_score"])
               for c, r in zip(result["context"], found))
    (sent,) = chat_requests(server)
    assert sent["max_tokens"] == 8 and sent["model"] == model.split("/", 1)[1]
    system, user = sent["messages"]
    assert system == {"role": "system", "content": QUESTION_ANSWER[2]}
    positions = [user["content"].index(c["content"]) for c in result["context"]]
    assert positions == sorted(positions) and user["content"].endswith(f"Query: {QUERY}\nAnswer: ")
    assert isinstance(result["chat_response"], str) and result["usage"]["completion_tokens"] <= 8
    assert result["usage"]["prompt_tokens"] > 0 and result["context_dropped"] == 0
    json.dumps(result)  # XCom-ready


def test_rag_retrieves_with_the_projects_filters_and_hybrid_search(shop, hook, chat):
    model, _ = chat

    filtered = hook.rag(JOB, "something for the kitchen", model, chat_conn_id="chat",
                        filters={"category": "kitchen"}, num_context=3, max_tokens=4)
    hybrid = hook.rag(JOB, QUERY, model, chat_conn_id="chat", hybrid=True, num_context=3, max_tokens=4)

    assert {c["record_id"] for c in filtered["context"]} == {10, 11, 12}
    expected = hook.hybrid_search(JOB, QUERY, return_columns=["product_id"], num_results=3)
    assert [c["record_id"] for c in hybrid["context"]] == [row["product_id"] for row in expected]


@pytest.mark.parametrize("call, error, message", [
    (dict(job_name="nope"), "ProjectNotFoundError", "project 'nope' not yet initialized"),
    (dict(task="summarise"), "InvalidInputError", "task 'summarise' has no prompt template"),
    (dict(filters={"colour": "red"}), "InvalidInputError", "colour"),
])
def test_the_callers_mistake_is_named_before_a_missing_chat_connection(shop, hook, call, error, message):
    """Before, the chat connection was looked up first: an unknown project, task or filter column was
    answered 'connection not found' (503 over HTTP) wherever the chat model was not set up."""
    with pytest.raises(Exception, match=message) as raised:
        hook.rag(**{"job_name": JOB, "query": QUERY, "chat_model": "openai/any", "chat_conn_id": "missing_chat",
                    **call})
    assert type(raised.value).__name__ == error
    with pytest.raises(ModelConnectionError, match="missing_chat"):
        hook.rag(JOB, QUERY, chat_model="openai/any", chat_conn_id="missing_chat")


def test_prompt_templates_live_in_vectorize_prompts(shop, hook, chat):
    model, server = chat
    with pytest.raises(InvalidInputError, match="task 'summarize' has no prompt template in vectorize.prompts;"
                                                " known tasks: question_answer"):
        hook.rag(JOB, QUERY, model, chat_conn_id="chat", task="summarize")
    assert chat_requests(server) == []

    shop.execute("INSERT INTO vectorize.prompts VALUES ('summarize', 'one line', 'Be terse.',"
                 " 'Summarise: {{ context_str }} (asked: {{ query_str }})')")
    hook.rag(JOB, "phones", model, chat_conn_id="chat", task="summarize", num_context=1, max_tokens=4)

    (sent,) = chat_requests(server)
    assert sent["messages"][0]["content"] == "Be terse."
    assert sent["messages"][1]["content"].startswith("Summarise: ") and "(asked: phones)" in sent["messages"][1]["content"]
    assert shop.scalar("SELECT count(*) FROM vectorize.prompts") == 2  # the seed row is kept, never rewritten


def test_placeholders_without_spaces_are_filled_as_pg_vectorize_renders_them(shop, hook, chat, caplog):
    """pg_vectorize renders its templates with Handlebars; its own tests write ``{{context_str}}``. Before, only
    ``{{ context_str }}`` (with spaces) was replaced: such a row sent the model the literal placeholders, no
    context and no question, while ``context`` listed the documents as if they had been sent."""
    model, server = chat
    hook.rag(JOB, QUERY, model, chat_conn_id="chat", num_context=1, max_tokens=2)  # seeds vectorize.prompts
    shop.execute("INSERT INTO vectorize.prompts VALUES ('handlebars', 'pg_vectorize style', 'Be terse.',"
                 " 'Here is context: {{context_str}} \nQuestion: {{query_str}} ({{ query_str}})')")
    server.reset()

    result = hook.rag(JOB, QUERY, model, chat_conn_id="chat", task="handlebars", num_context=2, max_tokens=2)

    (sent,) = chat_requests(server)
    documents = "\n\n".join(c["content"] for c in result["context"])
    assert len(result["context"]) == 2
    assert sent["messages"][1]["content"] == f"Here is context: {documents} \nQuestion: {QUERY} ({QUERY})"

    shop.execute("INSERT INTO vectorize.prompts VALUES ('no_context', '', 'Be terse.', 'Answer: {{ query_str }}')")
    with caplog.at_level(logging.WARNING, logger="airflow_vectorize.rag"):
        hook.rag(JOB, QUERY, model, chat_conn_id="chat", task="no_context", num_context=1, max_tokens=2)
    assert "the prompt template 'no_context' (vectorize.prompts) has no {{ context_str }} placeholder" in caplog.text


def test_documents_quoting_the_placeholders_are_sent_as_stored(shop, hook, chat):
    """Before, ``{{ query_str }}`` was replaced after the documents were put in: a document that quotes a
    template (documentation, a support ticket) got the user's query pasted into it, and the ``context``
    returned no longer matched what the model saw."""
    model, server = chat
    quote = " Write {{ query_str }} where the question goes and {{context_str}} for the context."
    shop.execute("UPDATE products SET description = description || %s", [quote])
    hook.generate_embeddings(JOB)

    result = hook.rag(JOB, QUERY, model, chat_conn_id="chat", num_context=2, max_tokens=2)

    (sent,) = chat_requests(server)
    user = sent["messages"][1]["content"]
    assert len(result["context"]) == 2 and all(c["content"].endswith(quote) for c in result["context"])
    documents = "\n\n".join(c["content"] for c in result["context"])
    assert user == QUESTION_ANSWER[3].replace("{{ context_str }}", documents, 1).replace(
        "Query: {{ query_str }}", f"Query: {QUERY}")
    assert user.count(QUERY) == 1 and user.count("{{ query_str }}") == 2


def test_an_over_long_prompt_is_refused_before_sending_or_trimmed(shop, hook, chat, embedding_server):
    model, server = chat
    set_model_connection("small_chat", server.url, server.api_key, context_window=300)
    before = snapshot(shop)

    with pytest.raises(InvalidInputError, match=r"the prompt takes \d+ tokens \(5 context document\(s\) of \d+"
                                                r" tokens\) \+ max_tokens 16 > the context window of .* 300 tokens"):
        hook.rag(JOB, QUERY, model, chat_conn_id="small_chat", num_context=5, max_tokens=16)
    assert chat_requests(server) == [] and snapshot(shop) == before

    result = hook.rag(JOB, QUERY, model, chat_conn_id="small_chat", num_context=5, max_tokens=16, force_trim=True)

    full = hook.search(JOB, QUERY, return_columns=["product_id"], num_results=5)
    kept = [c["record_id"] for c in result["context"]]
    assert 0 < len(kept) < 5 and kept == [row["product_id"] for row in full][: len(kept)]  # least relevant dropped
    assert result["context_dropped"] == 5 - len(kept)
    (sent,) = chat_requests(server)
    estimated = sum(-(-len(m["content"].encode()) // 3) + 4 for m in sent["messages"]) + 3
    assert estimated + 16 <= 300


def test_force_trim_without_max_tokens_leaves_room_for_the_answer(shop, hook, chat):
    """Before, ``force_trim`` without ``max_tokens`` filled the whole window with context: the model had no room
    left and its answer was cut to a few tokens, or nothing. Now min(1024, a quarter of the window) is kept."""
    model, server = chat
    hook.rag(JOB, QUERY, model, chat_conn_id="chat", num_context=5, max_tokens=1)  # a 2048-token window: all 5
    (sent,) = chat_requests(server)
    whole = sum(-(-len(m["content"].encode()) // 3) + 4 for m in sent["messages"]) + 3  # as the library counts
    window = whole + 10  # the untrimmed prompt fits, leaving 10 tokens: what was sent before
    set_model_connection("small_chat", server.url, server.api_key, context_window=window)
    server.reset()

    result = hook.rag(JOB, QUERY, model, chat_conn_id="small_chat", num_context=5, force_trim=True)

    (sent,) = chat_requests(server)
    assert "max_tokens" not in sent  # the server's own limit: the answer may use all the room left
    estimated = sum(-(-len(m["content"].encode()) // 3) + 4 for m in sent["messages"]) + 3
    assert estimated + min(1024, window // 4) <= window and result["context_dropped"] >= 1
    assert result["finish_reason"] in ("stop", "length")

    set_model_connection("tiny_chat", server.url, server.api_key, context_window=280)  # the prompt alone: ~220
    server.reset()
    with pytest.raises(InvalidInputError, match=r"even without context the prompt takes \d+ tokens \+ 70 tokens kept"
                                                r" for the answer \(max_tokens not given; pass a smaller one\) >"
                                                r" the context window of .*, 280 tokens; nothing was sent"):
        hook.rag(JOB, QUERY, model, chat_conn_id="tiny_chat", num_context=5, force_trim=True)
    assert chat_requests(server) == []
    assert hook.rag(JOB, QUERY, model, chat_conn_id="tiny_chat", num_context=5, force_trim=True,
                    max_tokens=16)["context_dropped"] >= 1  # a max_tokens given is what is kept


def test_why_the_model_stopped_is_returned_and_a_withheld_answer_is_an_error(shop, hook, chat):
    """Before, ``finish_reason`` was dropped: an answer cut at max_tokens, one the content filter withheld
    (empty) and one cut before its first word all came back as ordinary answers."""
    model, server = chat
    server.reset(faults=[("chat_answer", "The answer is cut", "length")])
    cut = hook.rag(JOB, QUERY, model, chat_conn_id="chat", num_context=1)
    assert (cut["chat_response"], cut["finish_reason"]) == ("The answer is cut", "length")
    server.reset(faults=[("chat_answer", "A whole answer.", "stop")])
    assert hook.generate("hi", model, chat_conn_id="chat")["finish_reason"] == "stop"
    server.reset(faults=[("chat_answer", "Whole, from a server that says nothing.", None)])
    assert hook.generate("hi", model, chat_conn_id="chat")["finish_reason"] is None

    for content, reason, message in [
        ("", "content_filter", ("the server's content filter stopped the answer (finish_reason 'content_filter',"
                                " 0 character(s) given); nothing of it is returned")),
        ("Partly wri", "content_filter", "(finish_reason 'content_filter', 10 character(s) given)"),
        ("", "length", ("the answer was cut before it began (finish_reason 'length', empty content; max_tokens not"
                        " set): the prompt left no room")),
        (" \n", "length", "cut before it began"),
    ]:
        server.reset(faults=[("chat_answer", content, reason)])
        with pytest.raises(ModelResponseError) as raised:
            hook.rag(JOB, QUERY, model, chat_conn_id="chat", num_context=1)
        assert message in str(raised.value) and "connection 'chat', model " in str(raised.value)
        assert len(chat_requests(server)) == 1  # an answer, not a failure to retry
    server.reset(faults=[("chat_answer", "", "length")])
    with pytest.raises(ModelResponseError, match="max_tokens 3\\)"):
        hook.generate("hi", model, chat_conn_id="chat", max_tokens=3)

    server.reset(faults=[("chat_answer", "cut", "length")])
    answer = RAGOperator(task_id="rag", postgres_conn_id=shop.conn_id, job_name=JOB, chat_model=model,
                         chat_conn_id="chat", query=QUERY, num_context=1).execute(context={})
    assert (answer["chat_response"], answer["finish_reason"]) == ("cut", "length")  # in the XCom


def test_generate_is_a_plain_completion(hook, chat):
    model, server = chat

    result = hook.generate("Say hello", model, chat_conn_id="chat", system_prompt="You are terse.", max_tokens=4,
                           temperature=0)

    assert set(result) == {"chat_response", "finish_reason", "model", "usage"}
    assert result["usage"]["completion_tokens"] <= 4 and result["finish_reason"] in ("stop", "length")
    (sent,) = chat_requests(server)
    assert sent["messages"] == [{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "Say hello"}]
    assert sent["temperature"] == 0
    with pytest.raises(InvalidInputError, match="the prompt takes .* > the context window"):
        hook.generate("word " * 3000, model, chat_conn_id="chat")
    assert len(chat_requests(server)) == 1


def test_chat_failures_are_retried_or_reported_like_embeddings(shop, hook, chat, caplog):
    model, server = chat
    server.reset(faults=[("status", 429, 0, "rate limited"), ("status", 502, None, "bad gateway")])
    with caplog.at_level(logging.DEBUG):
        assert hook.rag(JOB, QUERY, model, chat_conn_id="chat", max_tokens=4)["chat_response"] is not None
    assert len(chat_requests(server)) == 3 and server.api_key not in caplog.text

    server.reset(faults=[("status", 401, None, "invalid key")])
    with pytest.raises(ModelAuthenticationError, match="connection 'chat' .* HTTP 401"):
        hook.rag(JOB, QUERY, model, chat_conn_id="chat")
    server.reset(faults=[("status", 404, None, "The model 'gpt-9' does not exist")])
    with pytest.raises(ModelNotFoundError, match="model 'gpt-9': HTTP 404 .* does not exist. Check the model name"):
        hook.generate("hi", "openai/gpt-9", chat_conn_id="chat")
    with pytest.raises(ModelRequestError, match="HTTP 400, the server rejected the request: Server is pinned"):
        hook.generate("hi", "openai/another-model", chat_conn_id="chat")  # the real server's own refusal
    set_model_connection("gone", f"http://127.0.0.1:{free_port()}/v1", "k")  # not retried (default: 6 retries)
    with pytest.raises(ModelConnectionError, match="connection 'gone' .* the host cannot be reached .*ConnectError"):
        hook.generate("hi", model, chat_conn_id="gone")
    with pytest.raises(InvalidInputError, match="chat_model 'sentence-transformers/all-MiniLM-L6-v2' is not a"
                                                " remote chat model"):
        hook.generate("hi", "sentence-transformers/all-MiniLM-L6-v2")


def test_an_error_answered_with_http_200_names_the_servers_message(shop, hook, chat):
    """Gateways (LiteLLM, some proxies) answer errors with HTTP 200 and ``{"error": {"message"}}``. Before, the
    error said only "has no choices[0].message.content (KeyError: 'choices')": the cause was lost."""
    model, server = chat
    server.reset(faults=[("error_200", f"Quota exceeded for key {server.api_key}; see your plan")])
    with pytest.raises(ModelResponseError) as raised:
        hook.rag(JOB, QUERY, model, chat_conn_id="chat", num_context=1)
    assert str(raised.value) == (f"connection 'chat', model '{model.split('/', 1)[1]}': the answer is an error, not a"
                                 " chat completion: Quota exceeded for key ***; see your plan")
    assert server.api_key not in str(raised.value) and len(chat_requests(server)) == 1

    server.reset(faults=[("error_200", "model overloaded")])
    with pytest.raises(ModelResponseError, match="the answer is an error, not a chat completion: model overloaded$"):
        hook.generate("hi", model, chat_conn_id="chat")


def test_operators_answer_a_list_of_queries_and_return_json(shop, hook, chat):
    model, server = chat
    rag = RAGOperator(task_id="rag", postgres_conn_id=shop.conn_id, job_name=JOB, chat_model=model,
                      chat_conn_id="chat", query=["Which phone?", "Which laptop?"], num_context=1, max_tokens=4)
    generate = GenerateTextOperator(task_id="gen", postgres_conn_id=shop.conn_id, prompt="Hi", chat_model=model,
                                    chat_conn_id="chat", max_tokens=2)

    answers = rag.execute(context={})
    completion = generate.execute(context={})

    assert [a["query"] for a in answers] == ["Which phone?", "Which laptop?"]
    assert [len(a["context"]) for a in answers] == [1, 1]
    json.dumps(answers), json.dumps(completion)
    assert len(chat_requests(server)) == 3
