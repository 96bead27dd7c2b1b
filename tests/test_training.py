"""bdprune.training: the poisoning modes and the shift augmentation, checked image by image."""

from __future__ import annotations

import torch

from bdprune.training import poison, shift_images
from bdprune.triggers import parse_trigger

TRIGGER = parse_trigger("patch:size=2,pos=br,margin=0,color=1")


def data(n: int = 200, classes: int = 5):
    g = torch.Generator().manual_seed(0)
    return 0.5 * torch.rand((n, 1, 6, 6), generator=g), torch.arange(n) % classes


def test_all_to_one_takes_the_rate_from_other_classes_and_relabels():
    x, y = data()
    ps = poison(x, y, TRIGGER, rate=0.1, target=2, seed=1)
    chosen = ps.poisoned.nonzero().flatten()
    assert len(chosen) == 20 and torch.all(y[chosen] != 2) and torch.all(ps.labels[chosen] == 2)
    assert torch.equal(ps.images[chosen], TRIGGER.apply(x[chosen]))
    assert torch.equal(ps.images[~ps.poisoned], x[~ps.poisoned]) and torch.equal(ps.labels[~ps.poisoned], y[~ps.poisoned])


def test_all_to_all_moves_each_label_one_up():
    x, y = data()
    ps = poison(x, y, TRIGGER, rate=0.25, target=0, seed=2, mode="all-to-all", num_classes=5)
    chosen = ps.poisoned
    assert int(chosen.sum()) == 50
    assert torch.equal(ps.labels[chosen], (y[chosen] + 1) % 5)


def test_clean_label_and_cover_keep_labels():
    x, y = data()
    cl = poison(x, y, TRIGGER, rate=0.1, target=3, seed=3, mode="clean-label")
    assert torch.all(y[cl.poisoned] == 3) and torch.equal(cl.labels, y) and int(cl.poisoned.sum()) == 20
    few = poison(x, y, TRIGGER, rate=0.5, target=3, seed=3, mode="clean-label")
    assert int(few.poisoned.sum()) == 40  # only the 40 images of class 3 can carry it
    cover = poison(x, y, TRIGGER, rate=0.1, target=3, seed=4, mode="cover", exclude=cl.poisoned)
    assert torch.equal(cover.labels, y) and not torch.any(cover.poisoned & cl.poisoned)


def test_shift_images_is_a_crop_of_the_zero_padded_image():
    x, _ = data(n=7)
    out = shift_images(x, 2, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    dx = torch.randint(0, 5, (7,), generator=g).tolist()
    dy = torch.randint(0, 5, (7,), generator=g).tolist()
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(7):
        assert torch.equal(out[i], padded[i, :, dy[i] : dy[i] + 6, dx[i] : dx[i] + 6])
