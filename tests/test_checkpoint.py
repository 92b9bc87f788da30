"""Checkpoint round trips, the DDP prefix, and clear refusals of foreign or broken files."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from net_fixtures import random_batch, small_network

from checkpoint import load_network, save_checkpoint
from lamb import Lamb
from utils import InputError


def _outputs(network, batch):
    with torch.no_grad():
        return network.eval()(**batch)


@pytest.mark.parametrize("name", ["SemAbs3D", "SemAbsVOOL"])
def test_save_then_load_gives_bit_identical_outputs(tmp_path, name):
    trained = small_network(name, seed=0)
    optimizer = Lamb(trained.parameters())
    batch = random_batch(name)
    trained(**batch).mean().backward()
    optimizer.step()
    trained.steps += 1
    save_checkpoint(tmp_path / "ckpt.pth", trained, optimizer, epochs=3)

    fresh = small_network(name, seed=1)
    assert not torch.equal(_outputs(fresh, batch), _outputs(trained, batch))
    checkpoint = load_network(fresh, tmp_path / "ckpt.pth")
    assert torch.equal(_outputs(fresh, batch), _outputs(trained, batch))
    assert checkpoint["epochs"] == 3 and fresh.steps.item() == 1
    resumed = Lamb(fresh.parameters(), lr=0.5)  # other hyperparameters, overwritten by the file
    resumed.load_state_dict(checkpoint["optimizer"])
    saved, loaded = optimizer.state_dict(), resumed.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]
    assert loaded["state"].keys() == saved["state"].keys() and saved["state"]
    for key, state in saved["state"].items():  # LAMB's moments and step, bit for bit
        assert {"step", "exp_avg", "exp_avg_sq"} <= set(state) == set(loaded["state"][key])
        assert loaded["state"][key]["step"] == state["step"] == 1
        for entry, value in state.items():  # the moments, and LAMB's norms and trust ratio
            assert torch.equal(torch.as_tensor(loaded["state"][key][entry]), torch.as_tensor(value))
        assert state["exp_avg_sq"].abs().sum() > 0
    # the next step from the loaded state is the next step of the original, bit for bit
    for network, opt in ((trained, optimizer), (fresh, resumed)):
        network.train()
        opt.zero_grad()
        network(**batch).mean().backward()
        opt.step()
    for (name_a, a), (_, b) in zip(trained.named_parameters(), fresh.named_parameters()):
        assert torch.equal(a, b), name_a


def test_ddp_prefixed_checkpoint_loads_and_only_the_leading_prefix_is_stripped(tmp_path):
    source = small_network("SemAbs3D", seed=0)
    # The released files were saved from DDP: every key starts with "module.".
    state = {f"module.{key}": value for key, value in source.state_dict().items()}
    assert any("basic_module." in key for key in state)  # the original loader mangled these (B8)
    torch.save({"net": state, "optimizer": {}, "epochs": 200}, tmp_path / "ddp.pth")
    target = small_network("SemAbs3D", seed=1)
    load_network(target, tmp_path / "ddp.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_loads_into_a_ddp_wrapped_network(tmp_path, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29517")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        source = small_network("SemAbs3D", seed=0)
        save_checkpoint(tmp_path / "c.pth", source, None, epochs=1)
        wrapped = torch.nn.parallel.DistributedDataParallel(small_network("SemAbs3D", seed=1))
        load_network(wrapped, tmp_path / "c.pth")
        assert torch.equal(
            wrapped.module.vol_feature_extractor.final_conv.weight,
            source.vol_feature_extractor.final_conv.weight,
        )
        save_checkpoint(tmp_path / "d.pth", wrapped, None, epochs=1)
        assert not any(key.startswith("module.") for key in torch.load(tmp_path / "d.pth")["net"])
    finally:
        dist.destroy_process_group()


def test_checkpoint_of_another_network_is_refused_untouched(tmp_path):
    save_checkpoint(tmp_path / "vool.pth", small_network("SemAbsVOOL"), None, epochs=1)
    target = small_network("SemAbs3D", seed=5)
    before = {key: value.clone() for key, value in target.state_dict().items()}
    with pytest.raises(InputError) as error:
        load_network(target, tmp_path / "vool.pth")
    message = str(error.value)
    assert "\n" not in message
    assert "SemAbsVOOL state dict that does not fit SemAbs3D" in message
    assert "missing keys" in message and "unexpected keys" in message
    assert all(torch.equal(before[key], value) for key, value in target.state_dict().items())


def test_wrong_shapes_are_named(tmp_path):
    save_checkpoint(tmp_path / "wide.pth", small_network("SemAbs3D", unet_f_maps=4), None, epochs=1)
    with pytest.raises(
        InputError, match=r"wrong shapes \(pts_feat_extractor|wrong shapes \(vol_feature_extractor"
    ):
        load_network(small_network("SemAbs3D"), tmp_path / "wide.pth")


def test_corrupted_missing_and_foreign_files_give_one_line(tmp_path):
    good = tmp_path / "good.pth"
    save_checkpoint(good, small_network("SemAbs3D"), None, epochs=1)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:1000])
    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.ones(3), not_a_dict)
    no_net = tmp_path / "no_net.pth"
    torch.save({"model": {}}, no_net)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 4)
    numpy_inside = tmp_path / "numpy.pth"
    torch.save({"net": {}, "extra": np.zeros(2)}, numpy_inside)
    cases = [
        (tmp_path / "absent.pth", "does not exist"),
        (
            truncated,
            "truncated.pth is not a readable checkpoint (RuntimeError: PytorchStreamReader failed "
            "reading zip archive: failed finding central directory)",
        ),
        (
            garbage,
            "garbage.pth is not a readable checkpoint (torch's weights-only loader refused it: "
            "Unsupported operand 0)",
        ),
        (
            numpy_inside,
            "numpy.pth is not a readable checkpoint (torch's weights-only loader refused it: "
            "Unsupported global: GLOBAL numpy",
        ),
        (not_a_dict, "is not a semabs checkpoint"),
        (
            no_net,
            "is not a semabs checkpoint: expected a dict with net, optimizer, epochs; found ['model']",
        ),
    ]
    for path, expected in cases:
        with pytest.raises(InputError) as error:
            load_network(small_network("SemAbs3D"), path)
        message = str(error.value)
        assert expected in message and "\n" not in message
        assert "weights_only" not in message  # never the advice to unpickle an untrusted file


def test_non_finite_weights_are_never_saved(tmp_path):
    path = tmp_path / "latest.pth"
    network = small_network("SemAbs3D")
    save_checkpoint(path, network, None, epochs=1)
    before = path.read_bytes()
    with torch.no_grad():
        network.vol_feature_extractor.final_conv.weight[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError) as error:
        save_checkpoint(path, network, None, epochs=2)
    assert str(error.value) == (
        f"{path} not written: net.vol_feature_extractor.final_conv.weight holds nan or inf"
    )
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"
    network = small_network("SemAbs3D")
    save_checkpoint(path, network, None, epochs=1)
    original = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, network, None, epochs=2)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]  # no temp file left behind


def test_atomically_written_files_get_ordinary_permissions(tmp_path):
    import os

    from utils import atomic_path

    with atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_plain_pickle_as_checkpoint_is_one_line_without_torchs_warning(tmp_path):
    path = tmp_path / "args.pkl"
    path.write_bytes(pickle.dumps({"lr": 1e-3}, protocol=4))
    code = f"import checkpoint; checkpoint.read_checkpoint({str(path)!r})"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert "not a readable checkpoint" in result.stderr
    assert "Detected pickle protocol" not in result.stderr
