"""Tail weight averaging (SWA, Izmailov et al., UAI 2018) over a stage's own trajectory.

From iteration ``start`` on, the weights after every ``every``-th iteration are summed; their mean is written
beside the last weights as ``model_averaged.safetensors``. Batches of 4 clips make each step's weights carry the
noise of the last few batches; the mean over the tail of a run sits nearer the middle of the region the run ended
in. The trajectory itself is untouched: the last weights are those of the same run without averaging, bit for bit.

Sums are kept in float64 and added in iteration order, so the mean is the same number whether it is taken here or
afterwards from saved checkpoints. BatchNorm is frozen by default (its buffers never change, and their mean is
themselves exactly); with ``--train-batchnorm`` the running statistics are averaged like the weights, which SWA
would instead recompute with a pass over the data.
"""

from __future__ import annotations

import torch

from kmnrt.errors import UserInputError
from kmnrt.training.config import WeightAverageConfig

AVERAGED_NAME = "model_averaged.safetensors"


class WeightAverage:
    """The running sum of the averaged iterations' weights; :meth:`state_dict` goes into ``train_state.pt`` so a
    resumed run averages the same iterations as an uninterrupted one."""

    def __init__(self, config: WeightAverageConfig):
        self.config = config
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def wants(self, done: int) -> bool:
        """Whether the weights after ``done`` iterations are among the averaged ones."""
        start = self.config.start
        return start is not None and done >= start and (done - start) % self.config.every == 0

    def add(self, model: torch.nn.Module) -> None:
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value = value.detach().to("cpu", torch.float64)
                if name in self.sums:
                    self.sums[name] += value
                else:
                    self.sums[name] = value.clone()
        self.count += 1

    def mean(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The averaged weights in the model's own dtypes; integer buffers (BatchNorm's batch counters) are the
        model's current ones."""
        if self.count == 0:
            raise ValueError("no weights were averaged yet")
        return {name: (self.sums[name] / self.count).to(value.dtype) if name in self.sums else value.detach().cpu()
                for name, value in model.state_dict().items()}

    def state_dict(self) -> dict:
        return {"start": self.config.start, "every": self.config.every, "count": self.count, "sums": self.sums}

    def load_state_dict(self, state: dict, source: str) -> None:
        if (state["start"], state["every"]) != (self.config.start, self.config.every):
            raise UserInputError(f"{source} averaged the weights from iteration {state['start']} every "
                                 f"{state['every']}; resume with --average-from {state['start']} "
                                 f"--average-every {state['every']}")
        self.count, self.sums = int(state["count"]), dict(state["sums"])
