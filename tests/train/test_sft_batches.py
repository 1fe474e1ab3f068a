"""What TRL's collator really feeds the model: -100 exactly on masked tokens, sequences kept apart."""

from __future__ import annotations

import itertools

import pytest
import torch

from etagent.train.sft import SFTConfig, build_trainer
from etagent.train.sft_data import load_sft_examples, tokenize_example


def _sequences(batch: dict) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of each real sequence in a collated batch, padding removed."""
    ids, labels = batch["input_ids"], batch["labels"]
    if "attention_mask" in batch:  # padded: one row per sequence
        assert "position_ids" not in batch
        return [
            (
                ids[r][batch["attention_mask"][r] == 1].tolist(),
                labels[r][batch["attention_mask"][r] == 1].tolist(),
            )
            for r in range(ids.shape[0])
        ]
    # padding-free: one flattened row, each sequence starting at position 0
    assert ids.shape[0] == 1
    starts = [*(batch["position_ids"][0] == 0).nonzero().flatten().tolist(), ids.shape[1]]
    return [(ids[0, a:b].tolist(), labels[0, a:b].tolist()) for a, b in itertools.pairwise(starts)]


@pytest.mark.parametrize(
    ("batching", "mask_tool_results"),
    [
        ({"packing": True, "max_length": 512, "batch_size": 1}, True),  # bins, padding-free
        ({"packing": True, "max_length": 512, "batch_size": 2}, False),
        ({"packing": False, "padding_free": True, "batch_size": 3}, True),  # padding-free without packing
        ({"packing": False, "batch_size": 3}, True),  # TRL's default: padded batches
    ],
    ids=["packing", "packing-tool_results_trained", "padding_free", "padded"],
)
def test_collated_labels_follow_the_loss_mask(
    tokenizer, tiny_model_path, sft_file, tmp_path, batching, mask_tool_results
):
    cfg = SFTConfig(
        model=str(tiny_model_path),
        data=str(sft_file),
        mask_tool_results=mask_tool_results,
        threads=1,
        **batching,
    )
    trainer, stats = build_trainer(cfg, tmp_path)
    expected = {}
    for ex in load_sft_examples(sft_file):
        tok = tokenize_example(ex, tokenizer, mask_tool_results=mask_tool_results, max_length=cfg.max_length)
        expected[tuple(tok.input_ids)] = [
            t if m else -100 for t, m in zip(tok.input_ids, tok.loss_mask, strict=True)
        ]

    seen = []
    for batch in trainer.get_train_dataloader():
        for ids, labels in _sequences(batch):
            assert tuple(ids) in expected, "a sequence was cut or merged with another"
            assert labels == expected[tuple(ids)]
            seen.append(tuple(ids))
    assert sorted(seen) == sorted(expected)  # each example exactly once per epoch
    # tool results are in the loss only when asked for
    tool_in_loss = any(
        "<result>" in tokenizer.decode([t for t in lab if t != -100]) for lab in expected.values()
    )
    assert tool_in_loss is (not mask_tool_results)
    assert stats["trained_tokens"] == sum(sum(t != -100 for t in lab) for lab in expected.values())


def test_padding_free_and_padded_batches_give_the_same_loss(tiny_model_path, sft_file, tmp_path):
    """The flattened row's position ids become a block-diagonal mask (sequences never see each
    other): TRL's loss on a padding-free batch equals the loss on the same sequences padded."""
    losses = []
    for batching in ({"padding_free": True}, {"padding_free": False}):
        cfg = SFTConfig(
            model=str(tiny_model_path), data=str(sft_file), packing=False, batch_size=4, threads=1, **batching
        )
        trainer, _ = build_trainer(cfg, tmp_path)
        rows = [
            {"input_ids": r["input_ids"], "labels": r["labels"]}
            for r in trainer.train_dataset.select(range(4))
        ]
        batch = trainer.data_collator(rows)
        assert ("position_ids" in batch) is batching["padding_free"]
        trainer.model.train()
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, batch).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
