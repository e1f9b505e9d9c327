"""The session API: ``Tracker.from_bundle`` -> ``start`` -> ``step`` per frame, ``add_objects``, ``remove_object``,
``reset``; ``step_batch`` for several sessions at once. It reproduces
:class:`kmnrt.model.reference.ReferenceTracker` frame by frame.

Per frame (the reference's order): the frame goes into the input buffer (resized and padded to the bundle size if
needed); ``query_encoder``; ``memory_read`` of the bank's valid prefix; ``decoder`` -> probabilities [N+1, H, W];
the index mask is computed on the device (cropped and resized back to the frame, argmax, original ids); then
``memory_encoder`` writes the frame's memory straight into the bank slot the slot rule picks; last, the index mask
is copied to the host (the step's only synchronisation on a GPU).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kmnrt.errors import UserInputError
from kmnrt.export.graphs import graph_specs
from kmnrt.framing import Framing, frame_to_tensor, one_hot_probs
from kmnrt.inputs import check_mask, choose_new_ids, frame_as_rgb, whole_number
from kmnrt.model.config import ModelConfig, ReadConfig
from kmnrt.model.kmn import KMN
from kmnrt.runtime.backends.base import BaseRunner, load_runner
from kmnrt.runtime.memory_bank import MemoryBank
from kmnrt.runtime.state import ObjectManager, SessionState, StepResult, Workspace
from kmnrt.runtime.timing import StepClock


@dataclass(frozen=True)
class TrackerSpec:
    """What a tracker was built for: the model, the network input size and the memory limits."""

    model: ModelConfig
    read: ReadConfig
    input_size: tuple[int, int]   # (H, W), multiples of 16
    max_objects: int
    max_memory: int               # memory slots including the previous-frame slot
    mem_every: int
    source: str                   # the bundle folder, or "model" for Tracker.from_model


class Tracker:
    """Runs a bundle (or a model) on videos; one tracker serves any number of sessions (:class:`SessionState`)."""

    def __init__(self, runner: BaseRunner, spec: TrackerSpec):
        whole_number(spec.mem_every, "mem_every (--mem-every)", 1)
        self.runner = runner
        self.spec = spec
        self.graphs = {g.name: g for g in graph_specs(spec.model, *spec.input_size)}
        self._batch: dict[str, Tensor] = {}     # query-encoder buffers [B_max, ...] of step_batch, grown on demand
        self._batch_lock = threading.Lock()

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, backend: str = "auto", device: str | torch.device | None = None,
                    mem_every: int | None = None, verify: bool = True) -> Tracker:
        """Load ``engines/NAME`` (its manifest and files are checked) on ``backend``: ``auto`` (TensorRT, then
        ONNX Runtime CUDA, then ONNX Runtime CPU; ``tracker.runner.selection`` says which and why),
        ``onnxruntime``, ``onnxruntime-cuda``, ``tensorrt`` or ``torch`` (the bundle's ``weights.safetensors``).
        ``mem_every`` overrides the bundle's."""
        from kmnrt.export.manifest import load_manifest

        if not isinstance(path, (str, os.PathLike)):
            raise UserInputError(f"a bundle is a folder: give its path (str or Path), got {path!r}")
        manifest = load_manifest(path, verify=verify)
        runner = load_runner(path, manifest, backend, device)
        spec = TrackerSpec(manifest.model_config, manifest.read_config, tuple(manifest.input_size),
                           manifest.max_objects, manifest.max_memory,
                           manifest.mem_every if mem_every is None else mem_every,
                           str(Path(path)))
        return cls(runner, spec)

    @classmethod
    def from_model(cls, model: KMN, input_size: tuple[int, int], max_objects: int = 4, max_memory: int = 16,
                   mem_every: int = 5, device: str | torch.device = "cpu") -> Tracker:
        """A tracker on the PyTorch backend for ``model``, without a bundle (tests, experiments)."""
        from kmnrt.runtime.backends.pytorch import TorchRunner

        if len(input_size) != 2 or min(input_size) < 16 or input_size[0] % 16 or input_size[1] % 16:
            raise UserInputError(f"input size {tuple(input_size)} must be (height, width), positive multiples of 16")
        runner = TorchRunner(model, input_size, device)
        runner.activate()
        spec = TrackerSpec(model.config, model.read_config, tuple(input_size), max_objects, max_memory, mem_every,
                           "model")
        return cls(runner, spec)

    def close(self) -> None:
        """Release the engines (and their device memory); the tracker and its sessions cannot be used after."""
        self.runner.deactivate()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def backend(self) -> str:
        """The runner's name: ``tensorrt``, ``onnxruntime``, ``onnxruntime-cuda`` or ``torch``."""
        return self.runner.name

    @property
    def device(self) -> torch.device:
        """Where the sessions' banks and buffers live and the engines run."""
        return self.runner.device

    # --- sessions ---------------------------------------------------------------------------------------------

    def new_state(self) -> SessionState:
        """An empty session: its bank and buffers are allocated now, once, on the runner's device. It belongs to
        this tracker (another tracker refuses it); dropping it frees its memory."""
        self._require_open()
        with self._on_device():
            state = self._allocate(self.device)
        state.owner = self
        return state

    def _allocate(self, device: torch.device | str) -> SessionState:
        c = self.spec.model
        h, w = self.spec.input_size[0] // 16, self.spec.input_size[1] // 16
        bank = MemoryBank(self.spec.max_memory, self.spec.max_objects, (c.key_dim, h, w), (c.value_dim, h, w),
                          device)
        return SessionState(ObjectManager(), bank, Workspace(self.graphs, self.spec.max_objects, device))

    def session_bytes(self) -> int:
        """Device bytes one session takes (bank + workspace, preallocated for the maximum objects and memory):
        what a service budgets per session. ``step_batch`` adds tracker-wide buffers: :meth:`batch_bytes`."""
        state = self._allocate("meta")  # shapes only: nothing is allocated
        return state.bank.nbytes + state.workspace.nbytes

    def batch_bytes(self, batch: int) -> int:
        """Device bytes of the tracker-wide query-encoder buffers (frames in, features out) that ``step_batch``
        grows to hold ``batch`` sessions' frames; 0 for one session, whose own workspace is used. Shared by all
        sessions, so a service budgets them once, for its largest batch (engines' internal workspace excluded)."""
        if batch <= 1:
            return 0
        return sum(t.numel() * t.element_size() for t in self._batch_buffers(batch, "meta").values())

    def _batch_buffers(self, batch: int, device: torch.device | str) -> dict[str, Tensor]:
        spec = self.graphs["query_encoder"]
        return {s.name: torch.zeros(s.concrete({"B": batch}), dtype=torch.float32, device=device)
                for s in spec.inputs + spec.outputs}

    def start(self, first_frame: np.ndarray | Tensor, mask: np.ndarray | Tensor,
              object_ids: list[int] | None = None) -> SessionState:
        """A new session whose first frame is ``first_frame`` (HWC uint8 RGB, or [H, W] gray, or RGBA; numpy or
        torch on any device) with the objects of ``mask`` ([H, W] integer ids 0..255 of the frame's size, 0 the
        background; ``object_ids``: track only these ids of it). The first frame's result is the mask itself;
        ``tracker.add_objects(tracker.new_state(), frame, mask)`` does the same and returns it as a StepResult."""
        state = self.new_state()
        self.add_objects(state, first_frame, mask, object_ids, keep_probs=False)
        return state

    def step(self, state: SessionState, frame: np.ndarray | Tensor, keep_probs: bool = True) -> StepResult:
        """Segment the next frame of the session (HWC uint8 RGB, numpy or torch on any device)."""
        return self.step_batch([state], [frame], keep_probs)[0]

    def step_batch(self, states: Sequence[SessionState], frames: Sequence[np.ndarray | Tensor],
                   keep_probs: bool = True) -> list[StepResult]:
        """The next frame of each of several sessions: one query-encoder call for all of them, then the memory
        read, decoder and memory encoder per session. The results equal ``step`` per session."""
        if len(states) != len(frames):
            raise UserInputError(f"step_batch got {len(states)} sessions but {len(frames)} frames")
        if len({id(s) for s in states}) != len(states):
            raise UserInputError("step_batch got the same session twice; a session takes one frame per call")
        jobs = []
        for position, (state, frame) in enumerate(zip(states, frames)):
            try:
                jobs.append(self._job(state, frame, None, None))
            except UserInputError as error:
                if len(states) == 1:
                    raise
                raise UserInputError(f"session {position + 1} of {len(states)}: {error}") from None
        if len(jobs) == 1:
            return self._run(jobs, keep_probs)
        with self._batch_lock:  # the batch buffers are the tracker's: one batched call at a time
            return self._run(jobs, keep_probs)

    def add_objects(self, state: SessionState, frame: np.ndarray | Tensor, mask: np.ndarray | Tensor,
                    object_ids: list[int] | None = None, keep_probs: bool = True) -> StepResult:
        """Segment the next frame and add the objects that first appear in it (``mask``: [H, W] index mask of the
        frame's size). The mask overrides the prediction where it marks a new object; ids that are already
        tracked are ignored (their prediction is kept). The frame becomes protected permanent memory, and the new
        objects read only memory from this frame on. On an empty session this is the first frame."""
        return self._run([self._job(state, frame, mask, object_ids)], keep_probs)[0]

    def fill_memory(self, state: SessionState, frames: Iterable[np.ndarray | Tensor]) -> None:
        """Process ``frames`` as the session's next frames, each memorised as permanent memory (as if it were a
        ``mem_every``-th frame): the benchmarks' way to bring a bank to T frames of real features.

        Recipe for timing steps at a fixed memory size T: ``Tracker.from_bundle(B, mem_every=10**9)``,
        ``start(frame0, mask)``, ``fill_memory(state, T - 2 frames)``; every later ``step`` then reads exactly T
        frames (T - 1 permanent + the previous frame). Filling beyond ``max_memory - 1`` permanent frames is an
        error (it would evict, not grow). Every frame is checked, and the room for them, before the first runs."""
        frames = list(frames)
        self._check_owner(state)
        room = self.spec.max_memory - 1 - state.bank.num_permanent
        if len(frames) > room:
            raise UserInputError(f"fill_memory got {len(frames)} frames, but the bank holds {state.bank.num_permanent} "
                                 f"permanent frames and this bundle's max_memory {self.spec.max_memory} allows "
                                 f"{self.spec.max_memory - 1}: room for {room} more")
        jobs = [self._job(state, frame, None, None, state.next_index + position)
                for position, frame in enumerate(frames)]
        for job in jobs:
            job.permanent = True
            self._run([job], keep_probs=False)

    def remove_object(self, state: SessionState, object_id: int) -> None:
        """Stop tracking ``object_id``; its memory is dropped from the bank (one re-pack, no per-frame cost)."""
        self._check_owner(state)
        channel = state.objects.channel(object_id) - 1
        if state.objects.count == 1:
            raise UserInputError(f"object {object_id} is the last tracked object; call tracker.reset(state) to "
                                 f"clear the session instead")
        keep = [i for i in range(state.objects.count) if i != channel]
        with self._on_device():
            state.bank.set_objects(keep)
        del state.objects.ids[channel]

    def reset(self, state: SessionState) -> None:
        """Forget every object and memory frame; the buffers stay allocated. Continue with ``add_objects`` (its
        frame becomes frame 0 of a new video, of any size)."""
        self._check_owner(state)
        with self._on_device():
            state.bank.clear()
        state.objects.ids.clear()
        state.framing = None
        state.next_index = 0

    # --- one frame per session --------------------------------------------------------------------------------

    def _job(self, state: SessionState, frame, mask, object_ids, index: int | None = None) -> _Job:
        """Check one frame (and mask) of a session before anything runs; ``index``: the frame's index in the
        session when it is not the next one (a frame checked ahead of others, by fill_memory)."""
        self._check_owner(state)
        index = state.next_index if index is None else index
        where = f"frame {index}"
        if mask is None and not state.started:
            raise UserInputError(f"{where}: this session tracks no object yet; start it with tracker.start(frame, "
                                 f"mask) or tracker.add_objects(state, frame, mask)")
        frame = frame_as_rgb(frame, where)
        frame_size = (int(frame.shape[0]), int(frame.shape[1]))
        framing = state.framing or Framing.fitted(frame_size, self.spec.input_size)
        if frame_size != framing.frame_size:
            raise UserInputError(f"{where} is {frame_size[1]}x{frame_size[0]}, but this session's frames are "
                                 f"{framing.frame_size[1]}x{framing.frame_size[0]} (width x height)")
        job = _Job(state, frame, framing, index)
        if mask is not None:
            job.mask = check_mask(mask, frame_size, f"mask of {where}")
            job.new_ids = choose_new_ids(job.mask, state.objects.ids, object_ids, f"mask of {where}")
            if not state.started and not job.new_ids:
                raise UserInputError(f"mask of {where} has no object: every pixel is 0 (background); mark at least "
                                     f"one object with a non-zero id")
            total = state.objects.count + len(job.new_ids)
            if total > self.spec.max_objects:
                raise UserInputError(f"{where}: {total} objects exceed the maximum of {self.spec.max_objects} "
                                     f"objects of this bundle; track fewer objects or export a bundle with a "
                                     f"larger --max-objects")  # no path: service clients see this message
        return job

    def _require_open(self) -> None:
        if not self.runner.is_active:  # the runner would say "not active", which reads as a runner bug
            raise UserInputError("this tracker is closed (close() or the end of its `with` block released its "
                                 "engines); open a new one, e.g. Tracker.from_bundle(...)")

    def _check_owner(self, state: SessionState) -> None:
        """A session's bank holds this tracker's features at this tracker's sizes: another tracker's engines would
        read it wrongly, silently (another model) or with an engine's shape error. A closed tracker refuses every
        session call first."""
        self._require_open()
        if not isinstance(state, SessionState):
            raise UserInputError(f"expected a session (a SessionState from tracker.start(...) or "
                                 f"tracker.new_state()), got {type(state).__name__}")
        if state.owner is not self:
            maker = (f"another tracker ({state.owner.spec.source}, {state.owner.backend})"
                     if isinstance(state.owner, Tracker) else "no tracker")
            raise UserInputError(f"this session was made by {maker}; a session stays with the tracker that made "
                                 f"it: step it with that one, or start the video again with this one "
                                 f"({self.spec.source})")

    def _run(self, jobs: list[_Job], keep_probs: bool) -> list[StepResult]:
        self._require_open()
        with self._on_device():
            shared = StepClock(self.runner.stream)
            for job in jobs:
                if job.state.framing is None:
                    job.state.framing = job.framing
                    job.state.workspace.frame.zero_()  # padding stays zero from here on
                self._load_frame(job.state, job.frame)
            shared.lap("pre")
            segmented = [job for job in jobs if job.state.started]
            queries = self._encode_queries([job.state for job in segmented])
            shared.lap("query_encode")
            clocks = []
            for job in jobs:
                clock = StepClock(self.runner.stream)
                if job.state.started:
                    self._segment(job.state, queries.pop(0), clock)
                labels, probs = self._labels(job, keep_probs)
                clock.lap("post")
                self._memorize(job)
                clock.lap("memorize")
                clocks.append((clock, labels, probs))
            results = []
            for job, (clock, labels, probs) in zip(jobs, clocks):
                mask = labels.cpu().numpy()  # waits for this session's work on a GPU
                times = {**shared.seconds(), **clock.seconds()}
                times["total"] = sum(v for k, v in times.items() if k != "total")
                results.append(StepResult(job.index, job.state.object_ids, mask, probs, times))
                job.state.next_index += 1
        return results

    def _load_frame(self, state: SessionState, frame: np.ndarray | Tensor) -> None:
        framing = state.framing
        rgb = frame_to_tensor(frame, self.device)
        if framing.needs_resize:
            rgb = F.interpolate(rgb[None], size=framing.resized_size, mode="bilinear", align_corners=False)[0]
        top, _, left, _ = framing.padding
        rh, rw = framing.resized_size
        state.workspace.frame[0, :, top:top + rh, left:left + rw].copy_(rgb)

    def _encode_queries(self, states: list[SessionState]) -> list[dict[str, Tensor]]:
        """One query-encoder call for all ``states``: into the session's own buffers for one state, else into the
        tracker's batch buffers, whose rows [b:b+1] (contiguous views) feed the per-session graphs."""
        if len(states) <= 1:
            for state in states:
                self.runner.infer("query_encoder", {"frame": state.workspace.frame}, state.workspace.query)
            return [state.workspace.query for state in states]
        batch = len(states)
        spec = self.graphs["query_encoder"]
        if not self._batch or self._batch["frame"].shape[0] < batch:
            self._batch = self._batch_buffers(batch, self.device)  # what batch_bytes(batch) counts
        view = {name: tensor[:batch] for name, tensor in self._batch.items()}
        for b, state in enumerate(states):
            view["frame"][b:b + 1].copy_(state.workspace.frame)
        self.runner.infer("query_encoder", {"frame": view["frame"]}, {s.name: view[s.name] for s in spec.outputs})
        return [{name: tensor[b:b + 1] for name, tensor in view.items() if name != "frame"} for b in range(batch)]

    def _segment(self, state: SessionState, query: dict[str, Tensor], clock: StepClock) -> None:
        ws, n = state.workspace, state.objects.count
        self.runner.infer("memory_read", {**state.bank.read_inputs(), "query_key": query["query_key"]},
                          {"read": ws.read(n)})
        clock.lap("read")
        self.runner.infer("decoder", {"read": ws.read(n), "query_value": query["query_value"],
                                      "r3": query["r3"], "r2": query["r2"]}, {"probs": ws.probs(n)})
        clock.lap("decode")

    def _labels(self, job: _Job, keep_probs: bool) -> tuple[Tensor, Tensor | None]:
        """The frame's probabilities at its size (new objects joined) and its index mask, on the device."""
        state, framing = job.state, job.state.framing
        if job.new_ids:
            probs = self._join(state, job.mask, job.new_ids)
        else:
            probs = framing.to_frame(state.workspace.probs(state.objects.count))
            if keep_probs and not framing.needs_resize:
                probs = probs.clone()  # a view of the workspace, which the next frame overwrites
        # max().indices: the argmax (first maximum on ties, as the reference), but 7x faster than argmax(dim=0)
        # on the CPU for channels-first planes
        labels = state.objects.id_table(self.device)[probs.max(dim=0).indices]
        return labels, probs if keep_probs else None

    def _join(self, state: SessionState, mask: np.ndarray, new_ids: list[int]) -> Tensor:
        """New objects: their mask overrides the prediction (at the frame's size, as the reference does)."""
        framing, old = state.framing, state.objects.count
        if state.started:
            predicted = framing.to_frame(state.workspace.probs(old))
        else:
            predicted = torch.ones((1, *framing.frame_size), device=self.device)
        new = one_hot_probs(mask, new_ids, self.device)[1:]
        covered = new.sum(dim=0, keepdim=True).clamp(max=1.0)
        joined = torch.cat([predicted * (1.0 - covered), new])
        state.bank.set_objects(list(range(old)), added=len(new_ids))
        state.objects.ids.extend(new_ids)
        state.workspace.probs(state.objects.count).copy_(framing.to_input(joined))
        return joined

    def _memorize(self, job: _Job) -> None:
        state = job.state
        ws, bank, n = state.workspace, state.bank, state.objects.count
        probs = ws.probs(n)
        state.framing.clear_padding(probs)  # the reference feeds zero probabilities outside the frame
        joined = bool(job.new_ids)
        permanent = joined or job.permanent or job.index % self.spec.mem_every == 0
        slot, permanent = bank.choose_slot(job.index, permanent, protected=joined)
        self.runner.infer("memory_encoder", {"frame": ws.frame, "probs": probs},
                          {"memory_key": bank.keys()[slot], "memory_value": bank.values()[slot]})
        bank.commit(slot, job.index, permanent, protected=joined)

    @contextmanager
    def _on_device(self):
        """No autograd; on CUDA, queue everything on the runner's stream, ordered after the caller's stream."""
        with torch.no_grad():
            stream = self.runner.stream
            if stream is None:
                yield
                return
            caller = torch.cuda.current_stream(self.device)
            stream.wait_stream(caller)
            with torch.cuda.stream(stream):
                yield
            caller.wait_stream(stream)


@dataclass
class _Job:
    """One frame of one session in a call, checked."""

    state: SessionState
    frame: np.ndarray | Tensor
    framing: Framing
    index: int
    mask: np.ndarray | None = None
    new_ids: list[int] = field(default_factory=list)
    permanent: bool = False        # memorise as permanent whatever the index (fill_memory)

