import os

import pytest
import torch

# two threads; one per process when pytest-xdist runs the files in two processes (the CPU is shared)
torch.set_num_threads(1 if os.environ.get('PYTEST_XDIST_WORKER') else max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
