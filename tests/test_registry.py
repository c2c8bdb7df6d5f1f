"""Registry: build, duplicates, unknown names, bad arguments and entry-point plugins."""

import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import detlosses
from detlosses import registry as registry_module
from detlosses.registry import Registry


def make_registry():
    reg = Registry("widgets")

    @reg.register()
    class Widget(nn.Module):
        def __init__(self, size: int = 1, scale: float = 1.0):
            super().__init__()
            self.size, self.scale = size, scale

    return reg, Widget


def test_build_from_dict_name_and_instance():
    reg, widget_cls = make_registry()
    built = reg.build({"type": "Widget", "size": 3})
    assert isinstance(built, widget_cls) and built.size == 3 and built.scale == 1.0
    assert reg.build("Widget").size == 1
    instance = widget_cls(size=7)
    assert reg.build(instance) is instance
    # defaults offered by a composite are overridden by the config and ignored when not accepted
    assert reg.build({"type": "Widget", "size": 2}, size=5, num_classes=80).size == 2


def test_register_forms_and_lookup():
    reg, widget_cls = make_registry()

    @reg.register
    class Bare:
        pass

    @reg.register("Named")
    class Other:
        pass

    def factory():
        return "made"

    reg.register("Factory", factory)
    assert reg.names() == ["Bare", "Factory", "Named", "Widget"]
    assert "Named" in reg and "Other" not in reg and len(reg) == 4
    assert reg.get("Widget") is widget_cls and reg.get("Named") is Other
    assert reg.build("Factory") == "made"


def test_duplicate_name_raises():
    reg, widget_cls = make_registry()
    with pytest.raises(KeyError, match="already registered"):
        reg.register("Widget", widget_cls)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match="did you mean 'GIoULoss'"):
        detlosses.LOSSES.build("GIouLoss")
    reg, _ = make_registry()
    with pytest.raises(KeyError, match="'type'"):
        reg.build({"size": 3})


def test_bad_keyword_names_component_and_argument():
    reg, _ = make_registry()
    with pytest.raises(TypeError, match=r"Widget got an unexpected argument 'sise'.*did you mean 'size'"):
        reg.build({"type": "Widget", "sise": 3})


def test_public_registries_hold_the_contract_names():
    for name in (
        "FocalLoss",
        "QualityFocalLoss",
        "VarifocalLoss",
        "DistributionFocalLoss",
        "IoULoss",
        "GIoULoss",
        "DIoULoss",
        "CIoULoss",
    ):
        assert isinstance(detlosses.LOSSES.build(name), nn.Module), name
    assert {"TaskAlignedAssigner", "ATSSAssigner"} <= set(detlosses.ASSIGNERS.names())
    assert "MultiClassNMS" in detlosses.NMS


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A real installed distribution on sys.path advertising two detlosses plugins."""
    (tmp_path / "good_detlosses_plugin.py").write_text(
        textwrap.dedent("""
        import torch
        from detlosses import LOSSES

        @LOSSES.register()
        class PluginL1Loss(torch.nn.Module):
            def forward(self, pred, target):
                return (pred - target).abs().mean()
    """)
    )
    (tmp_path / "broken_detlosses_plugin.py").write_text("raise ImportError('missing dependency xyz')\n")
    dist_info = tmp_path / "fake_plugins-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugins\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        "[detlosses.plugins]\ngood = good_detlosses_plugin\nbroken = broken_detlosses_plugin\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_module, "_plugins_loaded", False)
    yield
    detlosses.LOSSES._entries.pop("PluginL1Loss", None)
    for name in ("good_detlosses_plugin", "broken_detlosses_plugin"):
        sys.modules.pop(name, None)


def test_entry_point_plugin_loads_lazily_and_broken_one_warns(plugin_dir):
    assert "good_detlosses_plugin" not in sys.modules  # nothing imported before the first lookup
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = detlosses.LOSSES.build("PluginL1Loss")
    assert float(loss(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0]))) == pytest.approx(1.5)
    messages = [str(w.message) for w in caught]
    assert any("'broken'" in m and "missing dependency xyz" in m for m in messages), messages
    assert "PluginL1Loss" in detlosses.LOSSES.names()
