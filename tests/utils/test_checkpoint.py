"""Checkpoint save/load: BN buffers kept, frozen parts excluded, formats, reports, safety."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hg_lmm.utils.checkpoint import (
    CheckpointError,
    load_state,
    read_state_dict,
    save_checkpoint,
    trainable_state_dict,
)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lmm = nn.Linear(4, 4).requires_grad_(False)  # frozen: never saved
        self.head = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))


def _trained_toy():
    m = Toy()
    m.train()
    m.head(torch.randn(2, 3, 8, 8))  # moves the BN running statistics away from their init
    return m


def test_trainable_state_keeps_bn_buffers_and_drops_frozen():
    sd = trainable_state_dict(_trained_toy())
    assert "head.1.running_mean" in sd and "head.1.num_batches_tracked" in sd
    assert not any(k.startswith("lmm.") for k in sd)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_restores_bn_statistics(tmp_path, suffix):
    m = _trained_toy()
    path = save_checkpoint(m, tmp_path / f"ckpt{suffix}", iter=3)
    fresh = Toy()
    report = load_state(fresh, path)
    assert not report.missing and not report.unexpected
    m.eval(), fresh.eval()
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(m.head(x), fresh.head(x))
    assert torch.equal(m.head[1].running_var, fresh.head[1].running_var)


def test_released_names_without_prefix_and_ignored_keys():
    m = _trained_toy()
    released = {k[len("head.") :]: v for k, v in trainable_state_dict(m).items()}
    released["cliplayer.0.weight"] = torch.zeros(2)
    report = load_state(Toy(), released, ignored_prefixes=("cliplayer.",))
    assert report.ignored == ["cliplayer.0.weight"] and not report.missing


def test_strict_report_names_missing_and_unexpected():
    sd = trainable_state_dict(_trained_toy())
    sd.pop("head.0.weight")
    sd["head.9.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing \(1\): head.0.weight.*unexpected"):
        load_state(Toy(), sd)
    report = load_state(Toy(), sd, strict=False)
    assert report.missing == ["head.0.weight"] and report.unexpected == ["head.9.weight"]


def test_shape_mismatch_is_named():
    sd = trainable_state_dict(_trained_toy())
    sd["head.0.weight"] = torch.zeros(1)
    sd.pop("head.1.weight", None)
    sd["head.9.weight"] = torch.zeros(1)
    before = {k: v.clone() for k, v in Toy().state_dict().items()}
    model = Toy()
    model.load_state_dict(before)
    for strict in (True, False):  # a mis-shaped key always stops the load
        with pytest.raises(CheckpointError) as error:
            load_state(model, sd, strict=strict)
        message = str(error.value)
        assert "loaded 0 tensors" in message and "Nothing was loaded" in message
        assert "  head.0.weight: file (1,), model (4, 3, 3, 3)" in message  # every key by name
        assert "unexpected in the file (1):\n  head.9.weight" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class Payload:  # a custom object: loading it would need arbitrary unpickling
    pass


def test_pickle_with_custom_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"head.0.bias": torch.zeros(4)}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="--unsafe-load"):
        read_state_dict(path)
    assert set(read_state_dict(path, unsafe=True)) == {"head.0.bias"}


def test_deepspeed_folder(tmp_path):
    sd = {"module." + k: v for k, v in trainable_state_dict(_trained_toy()).items()}
    (tmp_path / "global_step5").mkdir()
    torch.save({"module": sd}, tmp_path / "global_step5" / "mp_rank_00_model_states.pt")
    (tmp_path / "latest").write_text("global_step5")
    assert set(read_state_dict(tmp_path)) == {k[len("module.") :] for k in sd}


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="mp_rank"):
        read_state_dict(tmp_path)


class WithHelper(nn.Module):
    """A trainable part holding a parameter-free child with a buffer (like SAM's pe_layer)."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).requires_grad_(False)
        self.part = nn.Module()
        self.part.proj = nn.Linear(2, 2)
        self.part.pe = nn.Module()
        self.part.pe.register_buffer("gaussian", torch.randn(2, 2))
        self.part.pe.register_buffer("cache", torch.zeros(1), persistent=False)


def test_parameter_free_helper_buffers_follow_their_part():
    keys = set(trainable_state_dict(WithHelper()))
    assert keys == {"part.proj.weight", "part.proj.bias", "part.pe.gaussian"}


# --- damaged and foreign files: each named, with what is wrong ----------------------------------


def _damaged(tmp_path, kind: str):
    good_pth = save_checkpoint(_trained_toy(), tmp_path / "good.pth")
    good_st = save_checkpoint(_trained_toy(), tmp_path / "good.safetensors")
    path = tmp_path / ("bad.safetensors" if "safetensors" in kind else "bad.pth")
    if kind == "random bytes":
        data = bytes(range(7, 256)) * 8  # starts with neither "PK" nor a pickle opcode
    elif kind == "text":
        data = b"{'state_dict': 'not really'}\n"
    elif kind == "empty":
        data = b""
    elif kind == "lfs pointer":
        data = b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n"
    elif kind == "truncated pth":
        data = good_pth.read_bytes()[: good_pth.stat().st_size // 2]
    elif kind == "truncated safetensors":
        data = good_st.read_bytes()[:-10]
    elif kind == "safetensors header only":
        data = good_st.read_bytes()[:6]
    else:
        raise ValueError(kind)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("random bytes", "is not a checkpoint: neither a PyTorch file"),
        ("text", "is a text file, not a checkpoint"),
        ("empty", r"is empty \(0 bytes\)"),
        ("lfs pointer", "is a Git LFS pointer"),
        ("truncated pth", "is truncated or damaged"),
        ("truncated safetensors", "is truncated: its tensors need"),
        ("safetensors header only", "is truncated"),
    ],
)
def test_damaged_or_foreign_file_is_named(tmp_path, kind, message):
    path = _damaged(tmp_path, kind)
    with pytest.raises(CheckpointError, match=message) as error:
        read_state_dict(path)
    assert str(path) in str(error.value) and "--unsafe-load" not in str(error.value)


def test_crc_damage_is_found_by_the_deep_check(tmp_path):
    from hg_lmm.utils.checkpoint import check_checkpoint_file

    path = save_checkpoint(_trained_toy(), tmp_path / "c.pth")
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # a flipped byte inside a tensor record
    path.write_bytes(bytes(data))
    check_checkpoint_file(path)  # the zip index is intact ...
    with pytest.raises(CheckpointError, match="fails its CRC check"):
        check_checkpoint_file(path, deep=True)  # ... the data is not


def test_non_finite_checkpoint_is_refused(tmp_path):
    sd = trainable_state_dict(_trained_toy())
    sd["head.0.weight"] = torch.full_like(sd["head.0.weight"], float("nan"))
    path = tmp_path / "diverged.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=r"diverged.pth: 1 of 9 tensors hold NaN or Inf"):
        load_state(Toy(), path)
    sd["head.0.weight"].fill_(float("inf"))
    with pytest.raises(CheckpointError, match="head.0.weight"):
        load_state(Toy(), sd)


def test_checkpoint_hash_follows_content_not_path(tmp_path):
    from hg_lmm.utils.checkpoint import checkpoint_sha256

    a = save_checkpoint(_trained_toy(), tmp_path / "a.pth")
    b = tmp_path / "b.pth"
    b.write_bytes(a.read_bytes())
    assert checkpoint_sha256(a) == checkpoint_sha256(b)
    save_checkpoint(_trained_toy(), a)  # other weights at the same path
    assert checkpoint_sha256(a) != checkpoint_sha256(b)
