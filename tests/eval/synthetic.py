"""Synthetic results documents for the results, plot and CLI tests (no model needed)."""

import math

from longssm.eval.results import make_results

LENGTHS = [16, 32, 64, 128, 256]


def fake_results(run: str, train_length: int, slope: float = -0.05, positions: bool = True) -> dict:
    records = []
    for protocol, offset in (("reset", 0.0), ("stream", -0.1), ("shuffled", -0.05)):
        for i, L in enumerate(LENGTHS):
            loss = 2.0 + offset + slope * i
            records.append({"protocol": protocol, "length": L, "loss": loss,
                            "perplexity": math.exp(loss), "bits_per_byte": loss / math.log(2),
                            "n_tokens": 1024, "n_windows": 1024 // L, "rows": 4,
                            "windows_per_row": max(1, 256 // L), "start": 256})
    curve = {
        "length": 256, "protocol": "reset", "n_windows": 4,
        "bin_edges": [1, 2, 4, 8, 16, 32, 64, 128, 256, 257],
        "positions": [1, 2.8, 5.6, 11.2, 22.5, 45, 90.5, 181, 256],
        "loss": [3.0, 2.8, 2.6, 2.4, 2.3, 2.2, 2.3, 2.5, 2.6],
        "count": [4, 8, 16, 32, 64, 128, 256, 512, 4],
        "state_positions": [1, 2, 4, 8, 16, 32, 64, 128, 256],
        "state_norms": [[0.1 * (i + 1), 0.2 * (i + 1)] for i in range(9)],
    }
    return make_results(
        records, run=run, checkpoint=f"{run}/checkpoints/ckpt-00000010",
        model_config={"mixer": "mamba", "d_model": 16}, train_length=train_length,
        policy="previous", settings={"split": "test"}, positions=[curve] if positions else [],
    )
