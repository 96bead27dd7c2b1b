"""bdprune.registry: entries by name, listed by pattern, unknown names answered with the close matches."""

from __future__ import annotations

import pytest

from bdprune.errors import BdpruneError
from bdprune.registry import Registry


def test_register_get_names_and_close_matches():
    reg: Registry[int] = Registry("widget", list_command="bdprune widgets")
    reg.register("resnet18")(18)
    reg.register("resnet34")(34)
    reg.register("vgg16")(16)
    assert reg.get("resnet34") == 34 and "vgg16" in reg and list(reg) == ["resnet18", "resnet34", "vgg16"]
    assert reg.names("res*") == ["resnet18", "resnet34"] and reg.names("x*") == []
    with pytest.raises(BdpruneError) as info:
        reg.get("resnet19")
    message = str(info.value)
    assert "unknown widget 'resnet19'" in message and "did you mean resnet18, resnet34?" in message
    assert "`bdprune widgets` lists them" in message
    with pytest.raises(BdpruneError, match="unknown widget 'zzz' \\(`bdprune widgets` lists them\\)"):
        reg.get("zzz")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("vgg16")(0)
