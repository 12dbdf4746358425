"""timm backbones: pooled features of any family, weights from a local file, clear errors."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from elta_lightning.config import ConfigError
from elta_lightning.models.backbone import Backbone, WeightsUnavailableError
from elta_lightning.models.heads import DistributionHead, ScoreHead


@pytest.mark.parametrize(
    ("name", "dim"),
    [("test_convnext", 64), ("test_vit", 64), ("test_mambaout", 256), ("test_resnet", 96)],
)
def test_pooled_features_of_cnns_vits_and_nhwc_models(name: str, dim: int) -> None:
    backbone = Backbone(name)
    features = backbone(
        torch.randn(2, 3, 64, 64) if "vit" not in name else torch.randn(2, 3, 160, 160)
    )
    assert backbone.feature_dim == dim  # MambaOut: head_hidden_size 256, not num_features 64
    assert features.shape == (2, dim)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_from_a_local_file_are_loaded_and_the_classifier_dropped(tmp_path, suffix) -> None:
    source = timm.create_model("test_resnet", pretrained=False, num_classes=1000)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.uniform_(-1, 1)  # far from any fresh initialisation
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)

    backbone = Backbone("test_resnet", pretrained=str(path))
    loaded = backbone.model.state_dict()
    assert not any(k.startswith("fc.") for k in loaded)  # classifier removed (num_classes=0)
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_missing_weights_file_says_how_to_provide_one(tmp_path) -> None:
    with pytest.raises(WeightsUnavailableError, match=r"not found.*\.safetensors"):
        Backbone("test_resnet", pretrained=str(tmp_path / "nope.safetensors"))


def test_hub_weights_offline_fail_fast_with_advice(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="model.pretrained=/path/to/weights"):
        Backbone("test_resnet.r160_in1k", pretrained="hub")


def test_unknown_backbone_name_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="resnet10t"):
        Backbone("resnet10")


def test_heads_output_logits_and_a_unit_score() -> None:
    features = torch.randn(5, 16) * 100
    assert DistributionHead(16, num_levels=9, hidden_dim=8)(features).shape == (5, 9)
    score = ScoreHead(16, dropout=0.5).eval()(features)
    assert score.shape == (5,) and bool(((score >= 0) & (score <= 1)).all())
