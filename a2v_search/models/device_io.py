"""Moving batches between host and device: pinned memory, non-blocking copies on a side stream, results collected
later, so that transfers overlap the image tower on CUDA. On the CPU every step is a plain synchronous no-op.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class Uploader:
    """Uploads uint8 batches to ``device``.

    CUDA: a numpy batch is pinned (PyTorch's caching host allocator reuses the pinned blocks) and copied with
    ``non_blocking=True`` on a dedicated copy stream; the compute stream waits for that copy only, so the upload of
    batch i + 1 overlaps the tower on batch i. A tensor already on the device is returned as it is.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def upload(self, batch: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
        """(B, ...) numpy or tensor, or a list of B numpy arrays of one shape -> tensor on the device (queued, not
        finished, on CUDA). A list (uint8 crops) is stacked straight into pinned memory on CUDA: one copy, not two."""
        if isinstance(batch, (list, tuple)):
            if self.stream is None:
                batch = np.stack(batch)
            else:
                host = torch.empty((len(batch), *batch[0].shape), dtype=torch.uint8, pin_memory=True)
                np.stack(batch, out=host.numpy())
                batch = host
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(np.ascontiguousarray(batch))
        if batch.device.type != "cpu" or self.stream is None:  # already on a device, or no copy stream: plain .to
            return batch.to(self.device)  # a no-op when it is there ("cuda" and "cuda:0" alike)
        host = batch if batch.is_pinned() else batch.pin_memory()
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):  # does not wait for the compute stream: runs beside the last batch
            out = host.to(self.device, non_blocking=True)
        compute.wait_stream(self.stream)
        out.record_stream(compute)  # freed only once the compute stream is done with it
        return out


class PendingBatch:
    """Outputs of one submitted batch: device tensors being copied back into pinned host memory.

    ``result()`` waits for that copy (CUDA) and returns float32 numpy arrays; on the CPU they are ready at once.
    """

    def __init__(self, outputs: dict[str, torch.Tensor], device: torch.device):
        self._event = None
        if device.type == "cuda":
            self._host = {}
            for k, v in outputs.items():
                host = torch.empty(v.shape, dtype=torch.float32, pin_memory=True)
                host.copy_(v.float(), non_blocking=True)
                self._host[k] = host
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(device))
        else:
            self._host = {k: v.float() for k, v in outputs.items()}

    @property
    def ready(self) -> bool:
        """Whether ``result()`` would return without waiting."""
        return self._event is None or self._event.query()

    def result(self) -> dict[str, np.ndarray]:
        """{name: (B, ...) float32 numpy}, waiting for the device when needed."""
        if self._event is not None:
            self._event.synchronize()
        return {k: v.numpy().copy() if self._event is not None else v.numpy() for k, v in self._host.items()}
