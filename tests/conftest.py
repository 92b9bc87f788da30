from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Register the small random-weight open_clip ViTs of tests/relevancy_models.py."""
    from relevancy_models import register_tiny

    register_tiny(tmp_path_factory.mktemp("open_clip_configs"))
