"""Token counting with a tiktoken encoding (OpenAI's models): the chunker's and the request limits' path.

OpenAI's vocabularies are downloaded on first use, which this machine cannot do; these tests build a real
``tiktoken.Encoding`` (tiktoken's own BPE core) from a small vocabulary: every byte, a few merges, and a
special token, so the code paths that take a tiktoken encoding run as they do with cl100k_base.
"""

from __future__ import annotations

import pytest
import tiktoken

SPECIAL = "<|endoftext|>"
TEXT = (
    "The chunker cuts long texts at paragraph and sentence boundaries where it can. "
    "Then the model embeds each chunk on its own, and the search ranks a row by its best chunk.\n\n"
    f"A text may hold {SPECIAL} as plain words: an OpenAI model reads it as text, not as the end marker. "
    "In the middle of the night the thinking thing went on thinking, and nothing else was there.\n\n"
) * 6


@pytest.fixture(scope="module")
def encoding():
    ranks = {bytes([i]): i for i in range(256)}
    for token in (b"th", b"he", b"the", b" the", b"in", b"ing", b" th", b"an", b" an", b"er", b"ch", b"unk"):
        ranks[token] = len(ranks)
    return tiktoken.Encoding(
        name="bytes-and-merges",
        pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={SPECIAL: len(ranks)},
    )


def test_the_splitter_counts_tiktoken_tokens_and_reads_special_tokens_as_text(encoding):
    from airflow_vectorize.chunking import TextSplitter, _longest_token

    with pytest.raises(ValueError):  # what counting with encode() would do on such a text
        encoding.encode(TEXT)
    chunks = TextSplitter(encoding, 64, 8).split(TEXT)

    assert len(chunks) > 5 and [c.number for c in chunks] == list(range(len(chunks)))
    assert all(len(encoding.encode_ordinary(c.text)) <= 64 for c in chunks)
    assert all(TEXT[c.start:c.end] == c.text for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(TEXT.rstrip())
    assert all(b.start < a.end for a, b in zip(chunks, chunks[1:]))  # neighbours overlap
    assert any(SPECIAL in c.text for c in chunks)
    assert _longest_token(encoding) == len(b" the")  # in bytes, from the vocabulary


def test_tiktoken_counts_are_exact_and_truncation_keeps_a_prefix(encoding):
    from airflow_vectorize.models.tokens import TiktokenCounter

    counter = TiktokenCounter(encoding)
    assert counter.exact and counter.count(TEXT) == len(encoding.encode_ordinary(TEXT)) > len(TEXT) // 2
    cut = counter.truncate(TEXT, 100)
    assert TEXT.startswith(cut) and counter.count(cut) == 100
    assert counter.truncate("the thing", 100) == "the thing"
