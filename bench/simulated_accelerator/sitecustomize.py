"""Loaded by Python at start-up when this folder is on PYTHONPATH (bench/http_overhead.py puts it
there for the service it launches). With SCSTRATA_SIMULATED_TOKENS_PER_S set, every packed
backend's forward passes become a sleep of tokens / rate seconds returning zero vectors: an
accelerator that costs no CPU, so the HTTP path's own host work (requests, tokenization,
replies, batching) can be measured on a machine without a GPU. Never used by the service."""

import os

if os.environ.get("SCSTRATA_SIMULATED_TOKENS_PER_S"):
    import time

    import numpy as np

    from scstrata_service.runtime import backend, device

    _RATE = float(os.environ["SCSTRATA_SIMULATED_TOKENS_PER_S"])

    def _simulated_read(self, cells, readout):
        with device.device_lock(self.device):
            time.sleep(int(cells.offsets[-1]) / _RATE)  # releases the GIL, as a GPU wait does
        return {
            p: {
                k: np.zeros((cells.n_cells, self.card.poolings[p]), np.float32)
                for k in readout.layers
            }
            for p in readout.poolings
        }

    backend.PackedBackend.read = _simulated_read
