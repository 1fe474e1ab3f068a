"""Micro-batches cut to their own longest completion (etagent.rl.batch): which tensors are cut, and
in the trainer, that a cut micro-batch gives the same loss as the step-wide padded one."""

from __future__ import annotations

import torch

from etagent.rl import batch
from etagent.rl.batch import trim_completion_padding
from tests.rl.test_trl import TWO_QUESTIONS, _script, _scripted_trainer


def test_trim_cuts_completion_aligned_tensors_after_the_last_used_column():
    rows, width = 3, 6
    mask = torch.zeros(rows, width, dtype=torch.long)
    mask[0, :2] = 1
    mask[2, :4] = 1  # the longest row ends at column 3
    inputs = {
        "prompt_ids": torch.arange(rows * width).view(rows, width),  # as wide as the completions
        "prompt_mask": torch.ones(rows, width, dtype=torch.long),
        "completion_ids": torch.arange(rows * width).view(rows, width),
        "completion_mask": mask,
        "old_per_token_logps": torch.randn(rows, width),
        "expert_mask": torch.ones(rows, width),
        "advantages": torch.randn(rows),
        "num_items_in_batch": torch.tensor(6.0),
        "note": "kept",
    }
    out = trim_completion_padding(inputs)
    for key in ("completion_ids", "completion_mask", "old_per_token_logps", "expert_mask"):
        assert out[key].shape == (rows, 4)
        assert torch.equal(out[key], inputs[key][:, :4])
    for key in ("prompt_ids", "prompt_mask", "advantages", "num_items_in_batch", "note"):
        assert out[key] is inputs[key]

    mask[1, -1] = 1  # a row reaching the last column: nothing to cut
    assert trim_completion_padding(inputs) is inputs


def test_trainer_cuts_each_micro_batch_without_changing_its_loss(
    tiny_model_path, tmp_path, tokenizer, monkeypatch
):
    # three rows answer at once, one searches four times: the step's width is the long one's, and
    # the micro-batch without it is a fraction of that wide
    scripts = [
        _script("42", []),
        _script("7", []),
        _script("8", []),
        _script("7", ["alpha", "beta", "gamma", "delta"]),
    ]
    questions = TWO_QUESTIONS
    trainer = _scripted_trainer(
        tiny_model_path,
        tmp_path,
        tokenizer,
        questions,
        scripts,
        max_response_tokens=512,
        use_arpo=False,
        num_generations=2,
        micro_batch_size=2,
        max_steps=1,
    )
    cuts = []
    trim = batch.trim_completion_padding
    monkeypatch.setattr(
        batch, "trim_completion_padding", lambda inp: cuts.append((inp, trim(inp))) or cuts[-1][1]
    )
    trainer.train()

    assert len(cuts) == 2  # 4 rows in micro-batches of 2
    widths = [(full["completion_ids"].size(1), cut["completion_ids"].size(1)) for full, cut in cuts]
    assert len({w for w, _ in widths}) == 1  # TRL pads the whole step to one width
    assert any(cut < full / 2 for full, cut in widths), widths
    for full, cut in cuts:
        assert cut["completion_mask"][:, -1].any()  # cut right after the last completion token
        with torch.no_grad():
            torch.testing.assert_close(
                trainer._compute_loss(trainer.model, cut), trainer._compute_loss(trainer.model, full)
            )
