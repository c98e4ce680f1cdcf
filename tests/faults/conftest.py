import pytest


@pytest.fixture(autouse=True)
def _token_cache(tmp_path, monkeypatch):
    """Every fault test tokenises into its own cache (nothing written outside tmp_path)."""
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
