"""Loading STM's released layout, the project's own format, and mismatches."""

from __future__ import annotations

import argparse
import pickle

import pytest
import torch

from kmnrt.errors import CheckpointError, UserInputError
from kmnrt.model.checkpoint import (choose_read, choose_short_side, from_stm, load_model, read_checkpoint,
                                   recommended_read, recommended_short_side, save_checkpoint, to_stm)
from kmnrt.model.config import ReadConfig, get_config
from kmnrt.model.kmn import build_model


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def paper_model():
    return build_model(get_config("paper"), seed=123)


def stm_layout(model) -> dict[str, torch.Tensor]:
    """A state dict laid out like STM_weights.pth: saved from nn.DataParallel(STM()), so every key has 'module.'."""
    return to_stm(model.state_dict())


def test_stm_layout_has_558_keys_with_the_released_names(paper_model):
    state = stm_layout(paper_model)
    assert len(state) == 558
    assert all(key.startswith("module.") for key in state)
    prefixes = {}
    for key in state:
        head = key.split(".")[1]
        prefixes[head] = prefixes.get(head, 0) + 1
    assert prefixes == {"Encoder_M": 262, "Encoder_Q": 260, "KV_M_r4": 4, "KV_Q_r4": 4, "Decoder": 28}
    assert state["module.KV_M_r4.Key.weight"].shape == (128, 1024, 3, 3)
    assert state["module.Encoder_M.res4.0.conv2.weight"].shape == (256, 256, 3, 3)
    assert state["module.Decoder.pred2.weight"].shape == (2, 256, 3, 3)
    assert state["module.Encoder_Q.mean"].shape == (1, 3, 1, 1)


@pytest.mark.parametrize("with_bn_counters", [True, False])
def test_stm_checkpoint_loads_into_paper_with_nothing_left_over(tmp_path, paper_model, with_bn_counters):
    state = stm_layout(paper_model)
    if not with_bn_counters:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        assert len(state) == 558 - 86
    path = tmp_path / "STM_weights.pth"
    torch.save(state, path)
    loaded = load_model(get_config("paper"), path, ReadConfig("kmn", 7.0))
    assert_same_weights(loaded, paper_model)
    assert not loaded.training


def test_own_format_round_trip_keeps_weights_and_config(tmp_path):
    model = build_model(get_config("tiny"), seed=5)
    path = save_checkpoint(model, tmp_path / "sub" / "tiny.safetensors")
    state, config = read_checkpoint(path)
    assert config == get_config("tiny")
    assert_same_weights(load_model(get_config("tiny"), path), model)
    assert not list(tmp_path.glob("sub/.*.tmp")), "the temporary file must be renamed away"
    with pytest.raises(CheckpointError, match=r"checkpoint .*sub is a folder; give the checkpoint file"):
        read_checkpoint(tmp_path / "sub")


def test_recommended_read_round_trips_and_fills_only_what_the_user_left_unset(tmp_path):
    model = build_model(get_config("tiny"), seed=5)
    plain = save_checkpoint(model, tmp_path / "plain.safetensors")
    tuned = save_checkpoint(model, tmp_path / "tuned.safetensors", recommended=ReadConfig("kmn", 1.5))
    assert recommended_read(plain) is None and recommended_read(tmp_path / "x.pth") is None
    assert recommended_read(tuned) == ReadConfig("kmn", 1.5)
    assert_same_weights(load_model(get_config("tiny"), tuned), model)  # the metadata changes no weight
    # load_model reads as kmnrt track does: the checkpoint's recommendation unless told otherwise
    assert load_model(get_config("tiny"), tuned).read_config == ReadConfig("kmn", 1.5)
    assert load_model(get_config("tiny"), tuned, ReadConfig("stm", 7.0)).read_config == ReadConfig("stm", 7.0)
    assert load_model(get_config("tiny"), plain).read_config == ReadConfig("kmn", 7.0)
    assert choose_read(None, None, tuned) == ReadConfig("kmn", 1.5)
    assert choose_read(None, 3.0, tuned) == ReadConfig("kmn", 3.0)
    assert choose_read("stm", None, tuned) == ReadConfig("stm", 1.5)
    assert choose_read(None, None, plain) == choose_read(None, None, None) == ReadConfig("kmn", 7.0)


def test_invalid_recommended_read_is_a_checkpoint_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"read": '{"kind": "kmn", "sigma": -1}'})
    with pytest.raises(CheckpointError, match="bad.safetensors records an invalid read"):
        recommended_read(path)


def test_recommended_short_side_round_trips_and_yields_to_the_user(tmp_path):
    model = build_model(get_config("tiny"), seed=5)
    plain = save_checkpoint(model, tmp_path / "plain.safetensors")
    scaled = save_checkpoint(model, tmp_path / "scaled.safetensors", short_side=288)
    assert recommended_short_side(plain) is None and recommended_short_side(tmp_path / "x.pth") is None
    assert recommended_short_side(scaled) == 288
    assert choose_short_side(None, scaled) == 288 and choose_short_side(None, None) is None
    assert choose_short_side(480, scaled) == 480 and choose_short_side(0, scaled) is None  # 0: the frames' size
    for typo in (8, 100_000):  # the second would ask for 213 GB
        with pytest.raises(UserInputError, match="--short-side must be 0 .* or between 16 and 8192 pixels"):
            choose_short_side(typo, scaled)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"), metadata={"short_side": "big"})
    with pytest.raises(CheckpointError, match="bad.safetensors records an invalid short side"):
        recommended_short_side(tmp_path / "bad.safetensors")


def test_own_format_for_another_config_names_the_right_one(tmp_path):
    path = save_checkpoint(build_model(get_config("tiny")), tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match="--config tiny"):
        load_model(get_config("lite"), path)


def test_checkpoint_of_another_architecture_lists_keys_and_shapes(tmp_path):
    path = tmp_path / "lite.pth"
    torch.save(build_model(get_config("lite")).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_model(get_config("paper"), path)
    message = str(info.value)
    assert "missing keys" in message and "shape conflicts" in message
    assert "memory_encoder.res2.0.conv3.weight" in message  # a bottleneck key absent from ResNet-18
    assert "it fits --config lite" in message
    # a damaged checkpoint of the right config fits no config: the hint must not name the one just refused
    state = build_model(get_config("tiny")).state_dict()
    state["memory_encoder.bn1.num_batches_tracked"] = torch.zeros(3, 3, dtype=torch.int64)
    torch.save(state, tmp_path / "damaged.pth")
    with pytest.raises(CheckpointError, match="it fits none of the built-in configs") as info:
        load_model(get_config("tiny"), tmp_path / "damaged.pth")
    assert "it fits --config tiny" not in str(info.value)


def test_foreign_state_dict_is_rejected_with_one_message(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}, path)
    with pytest.raises(CheckpointError, match=r"(?s)unexpected keys \(2\): fc.weight, fc.bias.*none of the built-in"):
        load_model(get_config("tiny"), path)


class _Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": _Payload()}, handle, protocol=2)
    with pytest.raises(CheckpointError, match=r"holds a Python object \(exec\) besides tensors"):
        read_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_a_training_checkpoint_with_objects_says_how_to_save_the_state_dict(tmp_path):
    path = tmp_path / "run.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1e-5)}, path)
    with pytest.raises(CheckpointError, match=r"\(argparse.Namespace\).*torch.save\(model.state_dict\(\)"):
        read_checkpoint(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_checkpoint(tmp_path / "bad.safetensors")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="neither a PyTorch checkpoint .* nor a .safetensors file"):
        read_checkpoint(tmp_path / "notes.pth")
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 the rest lost")
    with pytest.raises(CheckpointError, match="could not be read \\(a damaged or truncated file\\?\\)"):
        read_checkpoint(tmp_path / "cut.pth")


def test_stm_names_round_trip():
    state = build_model(get_config("tiny")).state_dict()
    assert from_stm(to_stm(state)).keys() == state.keys()


def test_a_checkpoint_is_readable_like_any_file_the_user_writes(tmp_path):
    """safetensors' save_file made every checkpoint (and a bundle's weights) mode 0600, unlike its neighbours."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    path = save_checkpoint(build_model(get_config("tiny"), seed=0), tmp_path / "w.safetensors")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
