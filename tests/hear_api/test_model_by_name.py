"""``hear_api.load_model(NAME)``: a HEAR model path may be a registered release (a local ``file://`` entry stands
in for the download); its source is the name and the entry's feature preset feeds a file that records none."""
import pytest
import torch

import hear_api
from aum.checkpoint import hub
from aum.checkpoint.pretrained import PRETRAINED, Pretrained
from aum.models import create_model


def test_load_model_by_registry_name(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "cache_root", lambda: tmp_path / "cache")       # (AUM_CACHE would move the kernels too)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("AUM_HEAR_OPTIONS", raising=False)
    torch.manual_seed(0)
    sd = create_model("tiny", depth=2, num_classes=4, mixer="v2").state_dict()
    torch.save(sd, tmp_path / "release.pth")
    entry = Pretrained("test_hear", "aum", "tiny", 4, "a test release", url=(tmp_path / "release.pth").as_uri(),
                       filename="release.pth", features="vggsound", labels="audioset")
    monkeypatch.setitem(PRETRAINED, entry.name, entry)
    with pytest.warns(UserWarning, match="class token"):
        model = hear_api.load_model(entry.name)
    assert (model.source, model.trained, model.preset) == ("test_hear", True, "vggsound")
    assert all(torch.equal(model.encoder.state_dict()[k], v) for k, v in sd.items())
    emb = hear_api.get_scene_embeddings(torch.randn(2, 8000) * 0.1, model)
    assert emb.shape == (2, model.scene_embedding_size) and bool(torch.isfinite(emb).all())
