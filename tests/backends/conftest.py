"""Fixtures of the backend tests: the tiny model as an HFGenerator, on one torch thread."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_gen(tiny_model_path):
    from etagent.backends.config import BackendConfig
    from etagent.backends.hf import HFConfig, HFGenerator

    gen = HFGenerator.from_config(
        BackendConfig(model=str(tiny_model_path), hf=HFConfig(threads=1, device="cpu"))
    )
    assert torch.get_num_threads() == 1
    return gen


@pytest.fixture(scope="session")
def scripted_gen(tiny_gen):
    """An HFGenerator whose greedy continuations of the SCRIPTS prompts are fixed."""
    from etagent.backends.hf import HFGenerator
    from tests.backends.scripted import SCRIPTS, MarkovLM, chain

    tok = tiny_gen.tokenizer
    table: dict[int, int] = {}
    for prompt, continuation in SCRIPTS.values():
        ids = tok.encode(prompt, add_special_tokens=False)[-1:] + tok.encode(
            continuation, add_special_tokens=False
        )
        links = chain(*ids)
        assert not set(links) & set(table), "scripts must not share tokens"
        table.update(links)
    return HFGenerator(MarkovLM(tiny_gen.model, table), tok, batch_size=16)


@pytest.fixture(scope="session")
def server_url(scripted_gen):
    """serve-model over the scripted tiny model, in a background thread on a free loopback port."""
    from etagent.backends.server import create_app, serve_in_thread

    app = create_app(scripted_gen, "tiny")
    with serve_in_thread(app) as url:
        yield url
