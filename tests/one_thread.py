"""`one_torch_thread`: an autouse fixture for test modules that import it.

Modules that decode video, run worker processes or compare against recorded numbers keep
PyTorch to one intra-op thread: on a 2-core CI machine extra threads only oversubscribe, and
results do not depend on the thread count.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
