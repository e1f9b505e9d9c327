"""The training loop: data, optimiser, schedule, progress, checkpoints, resumable state and the loss curve.

Files written to ``config.out`` (atomically, except the appended ``train.log``):

- ``model.safetensors``: the weights (:func:`kmnrt.model.checkpoint.save_checkpoint`), every
  ``checkpoint_every`` iterations and at the end; load with ``load_model(get_config(name), path)``;
- ``model_averaged.safetensors``: with ``--average-from``, the mean of the weights over the stage's tail
  (:mod:`kmnrt.training.averaging`), written with each checkpoint once the averaging has begun;
- ``train_state.pt``: weights, optimiser state, iteration, seed and loss history, tensors and primitives only
  (``torch.load(..., weights_only=True)`` reads it); ``--resume`` continues from it;
- ``train_config.json`` (the run's configuration) at the start; ``train.log`` (a line every ``log_every``
  iterations), with ``--tensorboard`` the same values as TensorBoard events in ``tensorboard/``; ``losses.csv``
  and ``loss_curve.png`` at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from kmnrt.data.atomic import atomic_output
from kmnrt.errors import CheckpointError, UserInputError
from kmnrt.model.checkpoint import load_state_into, read_checkpoint, save_checkpoint
from kmnrt.model.config import get_config
from kmnrt.model.kmn import KMN, build_model
from kmnrt.training.averaging import AVERAGED_NAME, WeightAverage
from kmnrt.training.batchnorm import recalibrate_batchnorm, recalibration_clips
from kmnrt.training.config import TrainConfig
from kmnrt.training.datasets import StaticClips, VideoClips, find_image_pairs, find_video_sequences
from kmnrt.training.plots import plot_loss_curve
from kmnrt.training.resume import resolved, warn_of_changed_options
from kmnrt.training.run_lock import hold
from kmnrt.training.step import set_train_mode, train_step

STATE_FORMAT = "kmnrt-train-state-v1"
CHECKPOINT_NAME = "model.safetensors"
STATE_NAME = "train_state.pt"
LOG_NAME = "train.log"
TENSORBOARD_DIR = "tensorboard"
# everything a run writes to its --out: what --force clears before a new run starts there
RUN_FILES = (CHECKPOINT_NAME, AVERAGED_NAME, STATE_NAME, LOG_NAME, TENSORBOARD_DIR, "train_config.json",
             "losses.csv", "loss_curve.png")


@dataclass
class TrainResult:
    checkpoint: Path
    averaged: Path | None  # model_averaged.safetensors, with --average-from
    state: Path
    loss_curve: Path
    iterations: int      # the iteration count reached (the run's total)
    losses: list[float]  # one mean batch loss per iteration, from iteration 0 (resumed runs included)
    start: int           # the iteration this invocation started from (0, or where --resume continued)
    seconds: float       # wall time of this invocation


def summary_writer_class():
    """torch's SummaryWriter, which needs the tensorboard package: not a dependency of kmnrt, so asked for."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it naming a missing module, which says nothing of --tensorboard
        raise UserInputError("--tensorboard needs the tensorboard package: pip install tensorboard (or "
                             "kmn-rt[tensorboard]), or train without --tensorboard") from None
    return SummaryWriter


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda was asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise UserInputError(f"unknown device {name!r}: choose cpu or cuda")
    return torch.device(name)


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """Adam's learning rate at ``iteration``: constant, or poly decay to 0 at the end of the stage; ramped up
    linearly over the first ``warmup`` iterations when asked (Adam's first steps move every weight by about the
    full lr whatever its gradient, which from random weights can saturate the output for good)."""
    power = config.optim.poly_power
    lr = config.optim.lr if power is None else config.optim.lr * (1.0 - iteration / config.iterations) ** power
    warmup = config.optim.warmup
    return lr * (iteration + 1) / warmup if iteration < warmup else lr


def hard_pixel_fraction(config: TrainConfig, iteration: int) -> float:
    """The fraction of pixels the loss averages at ``iteration``: ``--hard-pixels`` throughout, or with
    ``--hard-pixels-ramp A,B`` every pixel until A, then falling linearly to ``--hard-pixels`` at B (STCN anneals
    its bootstrapped cross-entropy from all pixels to the hardest 15 %: plain cross-entropy learns faster from
    scratch, the hard pixels end better)."""
    target, ramp = config.optim.hard_pixel_fraction, config.optim.hard_pixel_ramp
    if ramp is None:
        return target
    start, end = ramp
    progress = min(max((iteration - start) / (end - start), 0.0), 1.0)
    return 1.0 + (target - 1.0) * progress


def build_dataset(config: TrainConfig) -> StaticClips | VideoClips:
    if config.stage == "main":
        if config.data is None:
            raise UserInputError("--stage main trains on videos: give --data DIR, a DAVIS-style tree "
                                 "(JPEGImages/<seq>/*.jpg and Annotations/<seq>/*.png)")
        return VideoClips(config, find_video_sequences(config.data, config.clip_frames))
    return StaticClips(config, find_image_pairs(config.data) if config.data is not None else None)


def initialise(model: KMN, path: Path) -> None:
    """Load starting weights (STM's .pth or a kmnrt checkpoint, e.g. a pre-training stage) into ``model``."""
    state, stored_config = read_checkpoint(path)
    if stored_config is not None and stored_config != model.config:
        raise CheckpointError(f"--init {path} was saved for config '{stored_config.name}', not "
                              f"'{model.config.name}': pass --config {stored_config.name}")
    load_state_into(model, state, source=f"--init checkpoint {path}")


def shared_parameters(model: KMN) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    """(query-side, memory-side) parameter pairs of the same shape that :func:`tie_memory_to_query` copies and
    ``--tied-training`` keeps equal: the trunk (conv1, bn1, res2..res4) and the key head. The value heads and
    the memory encoder's mask convolutions stay separate."""
    memory = dict(model.memory_encoder.named_parameters())
    pairs = [(p, memory[name]) for name, p in model.query_encoder.named_parameters() if name in memory]
    pairs += [(model.query_kv.key.weight, model.memory_kv.key.weight),
              (model.query_kv.key.bias, model.memory_kv.key.bias)]
    return pairs


def tie_memory_to_query(model: KMN, mask_scale: float = 1.0) -> None:
    """Start the memory side as a copy of the query side: the memory encoder's trunk (conv1, bn1, res2..res4)
    gets the query encoder's weights and ``memory_kv`` gets ``query_kv``'s, so that, from random initialisation,
    memory and query keys of the same content start out alike and the attention can match from the first step.
    (STM starts both trunks from the same ImageNet weights, which gives it this for free.) The mask inputs
    (``conv1_m``, ``conv1_o``) are multiplied by ``mask_scale``. Only the starting point is shared."""
    # Parameters only: BatchNorm running statistics describe each encoder's own inputs (the memory encoder's
    # include the mask convolutions), and a checkpoint given with --init may have recalibrated both.
    memory = dict(model.memory_encoder.named_parameters())
    with torch.no_grad():
        for name, parameter in model.query_encoder.named_parameters():
            if name in memory:
                memory[name].copy_(parameter)
        for query_side, memory_side in zip(model.query_kv.parameters(), model.memory_kv.parameters(), strict=True):
            memory_side.copy_(query_side)
        model.memory_encoder.conv1_m.weight.mul_(mask_scale)
        model.memory_encoder.conv1_o.weight.mul_(mask_scale)


def calibrate_init(model: KMN, size: int = 128, seed: int = 0) -> None:
    """Tame a random initialisation (no ImageNet weights, BatchNorm frozen at identity, so nothing normalises the
    activations): scale both key heads so that the attention logits k_q . k_p / sqrt(d) have a standard deviation
    of 1 on a procedural probe frame (wider configs start with logits of std ~7, a near one-hot attention whose
    softmax passes almost no gradient), and shrink the decoder's last convolution tenfold so that the first
    predictions are not confidently wrong (logits of std ~10 at init for wider configs)."""
    import math

    import numpy as np

    from kmnrt.training.config import SyntheticConfig
    from kmnrt.training.synthetic import random_scene, render

    image, _ = render(random_scene(np.random.default_rng([seed, 12345]), (size, size), SyntheticConfig()),
                      (size, size))
    frame = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)[None]
    with torch.no_grad():
        key = model.encode_query(frame).key.flatten(1)  # [Ck, P]
        logits = key.transpose(0, 1) @ key / math.sqrt(key.shape[0])
        scale = float(logits.std()) ** -0.5  # logits are quadratic in the key weights
        for head in (model.query_kv.key, model.memory_kv.key):
            head.weight.mul_(scale)
            head.bias.mul_(scale)
        model.decoder.pred2.weight.mul_(0.1)
        model.decoder.pred2.bias.mul_(0.1)


def save_state(path: Path, model: KMN, optimizer: torch.optim.Optimizer, config: TrainConfig, iteration: int,
               losses: list[float], scaler: torch.amp.GradScaler | None = None,
               average: WeightAverage | None = None) -> None:
    state = {
        "format": STATE_FORMAT, "model_config": config.model, "stage": config.stage, "seed": config.seed,
        "iteration": iteration, "iterations": config.iterations,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(), "losses": torch.tensor(losses, dtype=torch.float64),
    }
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    if average is not None and average.count:
        state["average"] = average.state_dict()
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, config: TrainConfig) -> dict:
    """Read a training-state file and check that it belongs to this kind of run."""
    if not path.is_file():
        raise UserInputError(f"--resume {path} does not exist; give the {STATE_NAME} of an earlier run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch raises several types for foreign or damaged files; their messages
        # speak of torch.load's options (one advises weights_only=False, unsafe for a file of unknown origin)
        what = "is empty" if path.stat().st_size == 0 else "is damaged or not a kmnrt training state"
        raise UserInputError(f"--resume {path} {what}; give the {STATE_NAME} of an earlier run (or start a new "
                             f"one with --force)") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserInputError(f"--resume {path} is not a kmnrt training state ({STATE_FORMAT})")
    if state["model_config"] != config.model or state["stage"] != config.stage:
        hint = (f"; to start main training from its weights, pass --init {path.parent / CHECKPOINT_NAME} instead"
                if state["stage"] == "pretrain" and config.stage == "main" else "")
        raise UserInputError(f"--resume {path} is a '{state['model_config']}' {state['stage']} run; pass "
                             f"--config {state['model_config']} --stage {state['stage']}{hint}")
    if state["iteration"] >= config.iterations:
        raise UserInputError(f"--resume {path} already reached iteration {state['iteration']}; ask for more "
                             f"with --iterations (now {config.iterations})")
    return state


def train(config: TrainConfig, progress: bool = True, bar_position: int | None = None,
          start_over: bool = False) -> TrainResult:
    """Run one training stage as configured; see the module docstring for what lands in ``config.out``.
    ``bar_position``: the progress bar's line, for runs side by side in one terminal; ``start_over``: first remove
    an earlier run's files from ``config.out`` (``--force``), once everything this run needs has loaded."""
    from tqdm import tqdm

    started = time.perf_counter()
    device = resolve_device(config.device)
    writer_class = summary_writer_class() if config.tensorboard else None  # before anything is written
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    model = build_model(get_config(config.model), seed=config.seed)
    resumed = load_state(config.resume, config) if config.resume is not None else None
    if resumed is not None:
        config = dataclasses.replace(config, seed=int(resumed["seed"]))  # the same samples as the original run
        warn_of_changed_options(config, Path(config.resume).parent / "train_config.json")
        load_state_into(model, resumed["model"], source=f"--resume {config.resume}")
    elif config.init is not None:
        initialise(model, config.init)
    if resumed is None and (config.tied_training or (config.tied_init and config.init is None)):
        tie_memory_to_query(model)
    if resumed is None and config.init is None and config.calibrated_init:
        calibrate_init(model, config.size, config.seed)
    tied = shared_parameters(model) if config.tied_training else None
    model.to(device)
    if config.channels_last:  # before the optimizer: Adam's moments take the parameters' memory format
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if config.amp and device.type == "cuda" else None
    start, losses = 0, []
    average = WeightAverage(config.average)
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        start, losses = int(resumed["iteration"]), [float(x) for x in resumed["losses"]]
        if scaler is not None and "scaler" in resumed:
            scaler.load_state_dict(resumed["scaler"])
        if "average" in resumed:
            average.load_state_dict(resumed["average"], source=f"--resume {config.resume}")
        elif config.average.start is not None and start >= config.average.start:
            raise UserInputError(f"--resume {config.resume} is at iteration {start}, past --average-from "
                                 f"{config.average.start}, and did not average: resume without --average-from, "
                                 f"or start the averaging later")

    dataset = build_dataset(config)  # its errors come before anything is written to --out
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with hold(out):  # one run per folder: another one writing here would interleave our files
        if start_over:
            remove_run_files(out)
        with atomic_output(out / "train_config.json") as tmp:  # the data's full path: a resume from elsewhere
            recorded = dataclasses.replace(config, data=resolved(config.data))  # compares the same folder
            tmp.write_text(json.dumps(recorded.to_dict(), indent=2) + "\n")
        loader = DataLoader(dataset, batch_size=config.batch, sampler=range(start * config.batch, len(dataset)),
                            collate_fn=list, num_workers=config.workers)
        checkpoint, state_path, averaged = out / CHECKPOINT_NAME, out / STATE_NAME, out / AVERAGED_NAME
        # a resumed run's events after its checkpoint replace those of the run it continues (purge_step)
        writer = writer_class(str(out / TENSORBOARD_DIR), purge_step=start + 1 if resumed is not None else None) \
            if writer_class else None
        data = dataset.describe() + (f" in {config.data}" if config.data is not None else "")
        if progress and bar_position is None:  # runs side by side (the recipe) say it in their train.log only
            print(f"training on {data}", file=sys.stderr)
        log = TrainLog(out / LOG_NAME, config, start, data, writer, continued=resumed is not None)
        until = config.batchnorm_until
        set_train_mode(model, config.freeze_batchnorm and (until is None or start >= until))
        bar = tqdm(total=config.iterations, initial=start, unit="it", file=sys.stderr, dynamic_ncols=True,
                   desc=f"train {config.model} {config.stage} seed {config.seed}", disable=not progress,
                   position=bar_position)
        saved = start if resumed is not None else None  # the iteration train_state.pt holds
        try:
            for iteration, clips in enumerate(loader, start):
                if iteration == until:  # after the checkpoint of iteration `until`, so a resume from it gets here too
                    used = recalibrate_batchnorm(model, recalibration_clips(dataset, iteration, config.batch), device,
                                                 config.optim)
                    set_train_mode(model, freeze_batchnorm=True)
                    log.note(f"it {iteration}: BatchNorm statistics recalibrated on {used} clips, frozen")
                lr = learning_rate(config, iteration)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optim = config.optim
                if optim.hard_pixel_ramp is not None:
                    optim = dataclasses.replace(optim, hard_pixel_fraction=hard_pixel_fraction(config, iteration))
                losses.append(train_step(model, optimizer, clips, device, optim, scaler, tied))
                done = iteration + 1
                if not math.isfinite(losses[-1]):  # diverged: stop before a checkpoint overwrites the last good one
                    raise UserInputError(f"the loss became {losses[-1]} at iteration {done}: training diverged "
                                         f"({_last_saved(saved, state_path)}); lower --lr, or clip the gradients "
                                         f"(--grad-clip 1)")
                recent = losses[-50:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{lr:.2e}", refresh=False)
                bar.update(1)
                if done % config.log_every == 0 or done == config.iterations:
                    log.write(done, losses, lr)
                if average.wants(done):
                    average.add(model)
                if done % config.checkpoint_every == 0 or done == config.iterations:
                    save_checkpoint(model, checkpoint)
                    if average.count:
                        save_checkpoint(model, averaged, state=average.mean(model))
                    save_state(state_path, model, optimizer, config, done, losses, scaler, average)
                    saved = done
        except KeyboardInterrupt:
            bar.close()
            print(_last_saved(saved, state_path), file=sys.stderr)
            raise
        finally:
            bar.close()  # before any message, so that it does not land on the bar's line
            log.close()
        model.eval()
        with atomic_output(out / "losses.csv") as tmp:
            tmp.write_text("iteration,loss\n" + "".join(f"{i},{v:.6f}\n" for i, v in enumerate(losses)))
        curve = plot_loss_curve(losses, out / "loss_curve.png", title=f"{config.model} {config.stage}")
        return TrainResult(checkpoint, averaged if average.count else None, state_path, curve, config.iterations,
                           losses, start, time.perf_counter() - started)


def remove_run_files(out: Path) -> None:
    """An earlier run's files (:data:`RUN_FILES`); anything else in the folder stays."""
    for path in (out / name for name in RUN_FILES):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _last_saved(iteration: int | None, state_path: Path) -> str:
    if iteration is None:
        return "no checkpoint was written yet"
    return f"the last checkpoint, iteration {iteration}, is kept: continue with --resume {state_path}"


LOGGED_ITERATION = re.compile(r"^\S+ it (\d+) ")  # "12:00:05 it 25 loss ..."


class TrainLog:
    """``train.log``: one line per ``log_every`` iterations (mean loss since the last line, lr, seconds per
    iteration), appended (a resumed run continues its run's log) and flushed, so a background run can be watched
    with ``tail -f``; the same values as TensorBoard scalars to ``events``, a SummaryWriter, when given (a resumed
    run adds an event file)."""

    def __init__(self, path: Path, config: TrainConfig, start: int, data: str, events=None,
                 continued: bool = False):
        self.path, self.last, self.clock, self.events = path, start, time.perf_counter(), events
        if not continued:  # a new run: a log left by one that failed before its first checkpoint is not its own
            path.unlink(missing_ok=True)
        elif path.is_file():  # the lines past the checkpoint it resumes from are done again below
            kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                    if not (match := LOGGED_ITERATION.match(line)) or int(match.group(1)) <= start]
            with atomic_output(path) as tmp:
                tmp.write_text("".join(kept), encoding="utf-8")
        self._append(f"# {config.model} {config.stage}: iterations {start} -> {config.iterations}, "
                     f"batch {config.batch}, size {config.size}, seed {config.seed}, device {config.device}; "
                     f"data: {data}\n")

    def write(self, done: int, losses: list[float], lr: float) -> None:
        now = time.perf_counter()
        window = losses[self.last:done]
        loss, seconds = sum(window) / max(len(window), 1), (now - self.clock) / max(done - self.last, 1)
        self._append(f"{time.strftime('%H:%M:%S')} it {done} loss {loss:.4f} lr {lr:.2e} {seconds:.2f} s/it\n")
        if self.events is not None:
            for tag, value in (("train/loss", loss), ("train/lr", lr), ("train/seconds_per_iteration", seconds)):
                self.events.add_scalar(tag, value, done)
            self.events.flush()  # as train.log: visible while the run goes on
        self.last, self.clock = done, now

    def close(self) -> None:
        if self.events is not None:
            self.events.close()

    def note(self, text: str) -> None:
        self._append(f"{time.strftime('%H:%M:%S')} {text}\n")
        self.clock = time.perf_counter()

    def _append(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)

