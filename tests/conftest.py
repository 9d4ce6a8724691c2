"""Fixtures shared across the test suite."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run the test on one torch thread, then restore the count.

    Tests of many small ops run fastest on one thread and cannot stall waiting for a
    second on a busy machine; the DDP test needs it for the ranks' arithmetic to match a
    single process to the last bit.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
