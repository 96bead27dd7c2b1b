"""The published purifications through `bdprune prune --repair`: each writes its settings and
report into the file's metadata, holds the pruned channels, and takes its paper's defaults unless
--repair-epochs / --repair-lr say otherwise."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from bdprune.cli import app
from bdprune.purify import PURIFIERS
from bdprune.repair import REPAIRS, RepairSettings, defaults


@pytest.mark.parametrize("mode, key", [("fst", "fst_alpha"), ("sau", "sau_bound"), ("nc", "nc_mask_l1")])
def test_prune_with_a_purification_records_it(tmp_path, bn_checkpoint, images_npz, one_torch_thread, mode, key):
    out = tmp_path / "pruned.safetensors"
    result = CliRunner().invoke(app, ["prune", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz),
                                      "--u", "1", "--repair", mode, "--repair-epochs", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"--repair {mode}" in result.output
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        assert meta["repair"] == mode and meta["repair_epochs"] == "1" and meta["repair_lr"] == f"{defaults(mode)[1]:g}"
        assert key in meta
        pruned = json.loads(meta["pruned_channels"])
        assert pruned
        for layer, chans in pruned.items():
            assert torch.all(f.get_tensor(f"{layer}.weight")[chans] == 0)


def test_every_purification_is_a_repair_choice_with_its_papers_defaults():
    assert set(PURIFIERS) == {"fst", "sau", "nc"} and set(PURIFIERS) <= set(REPAIRS)
    assert defaults("sau") == (100, 1e-4, 256) and defaults("nc") == (100, 0.01, 256) and defaults("unlearn") == (10, 0.01, 128)
    assert RepairSettings("sau", lr=0.5).check().lr == 0.5
    with pytest.raises(Exception, match="repair-epochs"):
        RepairSettings("fst", epochs=0).check()
