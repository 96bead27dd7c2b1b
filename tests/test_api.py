"""The Python API (bdprune.scan_model / prune_model): the same answers as the CLI on the same model
and data, every data form, the caller's model left alone, and the pruned file's metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset, TensorDataset
from typer.testing import CliRunner

import bdprune
from bdprune.checkpoint import file_sha256
from bdprune.cli import app
from bdprune.errors import BdpruneError
from _pipeline import read_pruned_channels

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


_SHARED: dict = {}


@pytest.fixture
def model_and_scan(make_bn_model):
    """A model, its 64 images and one bnp scan at u=1, made once for the module (the verdict's
    class probe is not free, so tests that only need some scan share it; they must not change the
    model). ``conftest`` is ambiguous under tests/, hence the factory fixture, not an import."""
    if not _SHARED:
        from _images import make_images

        model, images = make_bn_model(), make_images(64)
        _SHARED["value"] = model, images, bdprune.scan_model(model, images, u=1.0)
    return _SHARED["value"]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # no project configuration changes the CLI's defaults


def _without_timings(obj):
    """The document without wall-clock fields (``*seconds``), which differ between two runs."""
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if not k.endswith("seconds")}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def test_exported_at_the_top_level():
    for name in ("scan_model", "prune_model", "write_report", "plot_scan", "plot_curve", "state_sha256", "ScanResult", "Pruned"):
        assert callable(getattr(bdprune, name)), name
    from bdprune import prune_model, scan_model  # noqa: F401  (``from`` imports work too)

    with pytest.raises(AttributeError):
        bdprune.no_such_thing  # noqa: B018


def test_to_dict_is_the_cli_json_report(bn_checkpoint, images_npz):
    args = [str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz), "--u", "1.5", "-f", "json", "--exit-zero"]
    cli = runner.invoke(app, ["scan", *args])
    assert cli.exit_code == 0, cli.output
    result = bdprune.scan_model(bn_checkpoint.model, images_npz, u=1.5, name=str(bn_checkpoint.path))
    ours, theirs = _without_timings(result.to_dict()), _without_timings(json.loads(cli.stdout))
    assert ours.pop("arch") == "bdprune.archs.smallcnn.SmallCNN" and theirs.pop("arch") == "smallcnn"
    assert ours["flagged"], "u=1.5 must flag channels for the comparison to mean something"
    assert ours == theirs
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()


def test_a_tensor_a_dataset_and_a_file_give_the_same_samples(bn_model, clean_images, tmp_path):
    labels = torch.arange(len(clean_images)) % 10
    path = tmp_path / "same.npz"
    np.savez(path, images=clean_images.numpy(), labels=labels.numpy())
    kw = dict(method="ep", u=1.0, samples=40, seed=3)  # ep: bnp's verdict runs a class probe, slow for this
    ref = bdprune.scan_model(bn_model, clean_images, labels=labels, **kw)
    assert ref.samples == 40 and ref.data == "<tensor>"
    for data in (path, str(path), (clean_images, labels), TensorDataset(clean_images, labels), clean_images.numpy()):
        other = bdprune.scan_model(bn_model, data, **kw)
        assert [layer.scores for layer in other.layers] == [layer.scores for layer in ref.layers], type(data)
    uint8 = bdprune.scan_model(bn_model, (clean_images * 255).round().to(torch.uint8), **kw)
    assert uint8.samples == 40 and uint8.flagged_channels() != {} and uint8.layers[0].scores != ref.layers[0].scores


def test_a_dataloader_is_read_in_its_own_order_up_to_samples(bn_model, clean_images):
    loader = DataLoader(TensorDataset(clean_images, torch.zeros(len(clean_images), dtype=torch.long)), batch_size=7)
    via_loader = bdprune.scan_model(bn_model, loader, samples=20, method="ep")
    first_20 = bdprune.scan_model(bn_model, clean_images[:20], samples=None, method="ep")
    assert via_loader.samples == 20 and via_loader.data == "<DataLoader>"
    assert [layer.scores for layer in via_loader.layers] == [layer.scores for layer in first_20.layers]


class _PilLike(Dataset):
    """Items as (H x W x C uint8 array, int): what a Dataset without a ToTensor transform yields."""

    def __init__(self, images):
        self.images = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 10


def test_dataset_items_as_channel_last_arrays(bn_model, clean_images):
    result = bdprune.scan_model(bn_model, _PilLike(clean_images), samples=16, method="ep")
    assert result.samples == 16 and result.data == "<_PilLike>"


def test_the_callers_model_is_left_unchanged(bn_model, clean_images):
    bn_model.train()
    before = {k: v.clone() for k, v in bn_model.state_dict().items()}
    labels = torch.arange(len(clean_images)) % 10
    for method in ("clp", "anp"):
        extra = {"method_args": {"iterations": 5}} if method == "anp" else {}
        bdprune.scan_model(bn_model, None if method == "clp" else clean_images, labels=None if method == "clp" else labels,
                           method=method, **extra)
    bnp = bdprune.scan_model(bn_model, clean_images, u=1.0)  # its verdict probes the model too
    pruned = bdprune.prune_model(bn_model, bnp, max_acc_drop=50, val=(clean_images, labels))
    assert pruned.model is not bn_model and pruned.curve
    assert all(torch.equal(before[k], v) for k, v in bn_model.state_dict().items())
    assert all(m.training for m in bn_model.modules()), "train mode must survive a scan and a budget"
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in bn_model.modules()), "no hook left behind"
    assert next(bn_model.parameters()).device.type == "cpu"


def test_prune_in_memory_zeroes_exactly_the_flagged_channels(model_and_scan):
    bn_model, _, result = model_and_scan
    pruned = bdprune.prune_model(bn_model, result)
    flagged = result.flagged_channels()
    assert flagged and pruned.channels == flagged and pruned.output is None and pruned.u == 1.0
    bns = dict(pruned.model.named_modules())
    originals = dict(bn_model.named_modules())
    for layer, chans in flagged.items():
        assert torch.all(bns[layer].weight[chans] == 0)
        keep = [c for c in range(bns[layer].num_features) if c not in chans]
        assert torch.equal(bns[layer].weight[keep], originals[layer].weight[keep])
        assert torch.equal(bns[layer].bias, originals[layer].bias)  # bnp zeroes gamma only
    assert pruned.to_dict()["channels_pruned"] == result.flagged_total


def test_prune_in_place_changes_the_given_model(model_and_scan, bn_model):
    result = model_and_scan[2]  # bn_model is a fresh copy of the model that was scanned
    pruned = bdprune.prune_model(bn_model, result, k=3, in_place=True)
    assert pruned.model is bn_model and pruned.k == 3
    zeroed = sum(int((m.weight == 0).sum()) for m in bn_model.modules() if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d))
    assert zeroed == 3 and pruned.channels == result.top(3)


def test_prune_to_file_matches_the_cli_byte_for_byte(bn_checkpoint, images_npz, tmp_path):
    cli_out, api_out = tmp_path / "cli.safetensors", tmp_path / "api.safetensors"
    args = [str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz), "--method", "ep", "--u", "1", "-o", str(cli_out)]
    assert runner.invoke(app, ["prune", *args]).exit_code == 0
    result = bdprune.scan_model(bn_checkpoint.model, images_npz, method="ep", u=1.0)
    assert result.flagged_channels()
    pruned = bdprune.prune_model(bn_checkpoint.model, result, output=api_out, source=bn_checkpoint.path)
    assert pruned.output == api_out and api_out.read_bytes() == cli_out.read_bytes()
    channels, meta = read_pruned_channels(api_out)
    assert channels == result.flagged_channels() and meta["source_sha256"] == file_sha256(bn_checkpoint.path)


def test_without_a_source_file_the_state_dict_hash_is_recorded(model_and_scan, bn_model, tmp_path):
    out = tmp_path / "p.safetensors"
    result = model_and_scan[2]
    bdprune.prune_model(bn_model, result, output=out)
    channels, meta = read_pruned_channels(out)
    assert meta["source_sha256"] == bdprune.state_sha256(bn_model) and meta["method"] == "bnp" and float(meta["u"]) == 1.0
    assert channels == result.flagged_channels() and meta["samples"] == "64"
    tensors = load_file(str(out))
    assert set(tensors) == set(bn_model.state_dict())
    with pytest.raises(BdpruneError, match="already exists.*--force"):
        bdprune.prune_model(bn_model, result, output=out)
    bdprune.prune_model(bn_model, result, output=out, force=True, in_place=True)
    assert meta["source_sha256"] == read_pruned_channels(out)[1]["source_sha256"], "the hash is of the model before pruning"


def test_budget_chooses_u_and_bnp_plus_needs_clean_labelled_data(model_and_scan, bn_model, clean_images):
    labels = torch.arange(len(clean_images)) % 10
    pruned = bdprune.prune_model(bn_model, model_and_scan[2], max_acc_drop=100.0, val=(clean_images, labels))
    assert pruned.u == 1.0 and len(pruned.curve) == 11 and pruned.base_acc is not None
    plus = bdprune.scan_model(bn_model, clean_images, method="bnp+")
    with pytest.raises(BdpruneError, match="bnp\\+ chooses how many channels"):
        bdprune.prune_model(bn_model, plus)
    chosen = bdprune.prune_model(bn_model, plus, val=(clean_images, labels))
    assert chosen.k is not None and chosen.max_acc_drop == 1.0 and chosen.filled and chosen.u is None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, r, x: bdprune.scan_model("model.pt", x), "must be a torch.nn.Module"),
        (lambda m, r, x: bdprune.scan_model(m, {"images": x}), "cannot read images from a dict"),
        (lambda m, r, x: bdprune.scan_model(m, x, labels=torch.zeros(3)), "labels for 64 images"),
        (lambda m, r, x: bdprune.scan_model(m, x[None]), "images have shape"),
        (lambda m, r, x: bdprune.scan_model(m, x.expand(-1, 3, -1, -1)), "3 channel\\(s\\) but the model takes 1"),
        (lambda m, r, x: bdprune.scan_model(m, x * float("nan")), "NaN"),
        (lambda m, r, x: bdprune.scan_model(m, x, samples=0), "samples must be at least 1"),
        (lambda m, r, x: bdprune.scan_model(m, x, method="nope"), "nope"),
        (lambda m, r, x: bdprune.prune_model(m, r, u=1.0, k=2), "not u and k"),
        (lambda m, r, x: bdprune.prune_model(m, r, k=-1), "k must be a count"),
        (lambda m, r, x: bdprune.prune_model(m, r, channels={"nope": [0]}), "'nope' is not a BatchNorm layer"),
        (lambda m, r, x: bdprune.prune_model(m, r, max_acc_drop=1.0), "max_acc_drop and val go together"),
        (lambda m, r, x: bdprune.prune_model(m, r, max_acc_drop=1.0, val=x), "has no labels"),
        (lambda m, r, x: bdprune.prune_model(m, r.to_dict()), "must be the ScanResult"),
    ],
)
def test_bad_input_is_one_clear_error(bn_model, clean_images, call, message):
    result = bdprune.scan_model(bn_model, clean_images, method="clp")
    with pytest.raises(BdpruneError, match=message) as info:
        call(bn_model, result, clean_images)
    assert "\n" not in str(info.value)


def test_write_report_formats(model_and_scan, tmp_path):
    result = model_and_scan[2]
    path = bdprune.write_report(result, tmp_path / "r.json", format="json")
    assert _without_timings(json.loads(path.read_text())) == _without_timings(result.to_dict())
    with pytest.raises(BdpruneError, match="output format"):
        bdprune.write_report(result, tmp_path / "r.txt", format="pdf")
    assert not (tmp_path / "r.txt").exists()


def test_prune_with_repair_is_the_masked_model_repaired_as_the_cli_does(model_and_scan):
    """prune_model(repair=...) prunes, then repairs on repair_data exactly as bdprune.repair does
    (same weights), records the repair and leaves the caller's model alone."""
    from bdprune.prune import mask_model
    from bdprune.repair import RepairSettings, repair_model

    import copy

    from bdprune.data import ImageSet

    bn_model, images, result = model_and_scan
    labels = torch.arange(len(images)) % 10
    before = {k: v.clone() for k, v in bn_model.state_dict().items()}
    pruned = bdprune.prune_model(bn_model, result, k=3, repair="finetune", repair_data=(images, labels))
    expected = copy.deepcopy(bn_model).eval()
    mask_model(expected, pruned.channels, result.pruned_params, result.fill)
    want = repair_model(expected, pruned.channels, result.pruned_params, result.fill, ImageSet(images, labels, "x"),
                        RepairSettings("finetune"), device=torch.device("cpu"))
    for key, value in want.state_dict().items():
        assert torch.equal(pruned.model.state_dict()[key], value), key
    assert pruned.repair == "finetune" and len(pruned.repair_acc) == 3
    assert all(torch.equal(before[k], v) for k, v in bn_model.state_dict().items())
    with pytest.raises(BdpruneError, match="repair and repair_data go together"):
        bdprune.prune_model(bn_model, result, k=3, repair="unlearn")


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(samples=0), "samples must be at least 1"),
    (dict(method="anp", method_args={"iteration": 3}), "method_args 'iteration' is not a setting of anp"),
    (dict(u=-1.0), "u must be a finite number"),
    (dict(normalize="cifar"), "bad normalize 'cifar'"),
    (dict(batch_size=0), "batch_size must be at least 1"),
])
def test_api_errors_name_the_parameters_not_the_flags(bn_model, clean_images, kwargs, message):
    with pytest.raises(BdpruneError, match=message) as info:
        bdprune.scan_model(bn_model, clean_images, **kwargs)
    assert "--" not in str(info.value)
