"""Fixtures of the evaluation tests: a tiny Mamba language model in float64 on one thread."""

import pytest
import torch

from longssm.models import ModelConfig, SSMLanguageModel

VOCAB = 11


def make_model(d_conv: int = 4, seed: int = 0, vocab: int = VOCAB) -> SSMLanguageModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(mixer="mamba", d_model=16, n_layers=2, d_state=4, d_conv=d_conv,
                      vocab_size=vocab)
    model = SSMLanguageModel(cfg).double()
    # larger dynamics than the init so that the carried state visibly changes the losses
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(autouse=True)
def _one_thread():
    # two shared cores: more threads than cores makes small ops slower by orders of magnitude
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=[0, 4], ids=["d_conv0", "d_conv4"])
def model(request):
    return make_model(d_conv=request.param)


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (6000,), generator=g)


@pytest.fixture
def conv_model():
    """The d_conv = 4 model alone, for tests where the convolution changes nothing."""
    return make_model(d_conv=4)
