import pytest

import make_demo_data


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small RTime-format demo set: 8 train (one not reversible), 4 valid, 4 test videos, tiny CLIP."""
    out = tmp_path_factory.mktemp("demo")
    make_demo_data.main(["--out", str(out), "--train", "8", "--valid", "4", "--test", "4"])
    return out
