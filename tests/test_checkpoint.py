"""Checkpoint helpers that read only a file's header."""

import pytest
import torch

from helpers import small_mixer_fields
from longssm.checkpoint import CheckpointError, parameter_count, save_checkpoint
from longssm.models import ModelConfig, SSMLanguageModel


@pytest.mark.parametrize(
    "name, tied, mlp", [("s5", True, 0), ("mamba", False, 2), ("bst", True, 0), ("lstm", True, 0)]
)
def test_parameter_count_from_the_header_equals_the_model(tmp_path, name, tied, mlp):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_layers=2, vocab_size=40, tie_embeddings=tied, mlp_ratio=mlp,
                      **small_mixer_fields(name))
    model = SSMLanguageModel(cfg)
    ckpt = save_checkpoint(tmp_path / "ckpt-00000001", model, {"config": {"model": cfg.to_dict()},
                                                                "step": 1})
    assert parameter_count(ckpt) == model.num_parameters()


def test_parameter_count_of_a_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        parameter_count(tmp_path)
