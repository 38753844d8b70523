"""The active-model record (pure): naming, routing of queries by model id, switch history."""

from __future__ import annotations

from pathlib import Path

from raylens.cluster import active_model as am
from raylens.cluster.settings import Settings


def settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(data_dir=tmp_path, **kw)  # type: ignore[arg-type]


def test_a_store_never_switched_has_the_settings_model_and_collection(tmp_path: Path) -> None:
    s = settings(tmp_path, clip_model="ViT-B-32", clip_pretrained="LAION2B-S34B-B79K")
    rec = am.from_settings(s)
    assert rec.model_id == "ViT-B-32:laion2b_s34b_b79k"
    assert rec.collection == "raylens_images" and rec.switched_at is None
    assert am.differs_from_settings(s, rec) is None
    assert am.ActiveModel.from_json(rec.to_json()) == rec


def test_a_new_models_collection_is_named_after_its_id_and_fits_the_name_limit(
    tmp_path: Path,
) -> None:
    s = settings(tmp_path)
    assert am.collection_for(s, "ViT-B-16:openai") == "raylens_images--ViT-B-16_openai"
    long = am.collection_for(s, "x" * 300)
    assert len(long) <= am.MAX_COLLECTION_NAME
    assert long != am.collection_for(s, "x" * 299)  # shortened, still one name per id


def test_a_switch_keeps_earlier_models_routable_newest_first_and_bounded(tmp_path: Path) -> None:
    s = settings(tmp_path)
    rec = am.from_settings(s)
    for k in range(am.KEEP_PREVIOUS + 2):
        rec = rec.switched_to(am.target(s, "ViT-B-16", f"tag{k}"), at=100.0 + k)
    assert rec.model_id == f"ViT-B-16:tag{am.KEEP_PREVIOUS + 1}"
    assert len(rec.previous) == am.KEEP_PREVIOUS
    assert rec.previous[0]["model_id"] == f"ViT-B-16:tag{am.KEEP_PREVIOUS}"
    routes = rec.routes()
    assert next(iter(routes)) == rec.model_id and routes[rec.model_id] == rec.collection
    assert rec.collections()[0] == rec.collection and len(rec.collections()) == len(routes)
    # Back to an earlier model: it leaves the history rather than appearing twice.
    back = rec.switched_to(am.target(s, "ViT-B-16", f"tag{am.KEEP_PREVIOUS}"), at=200.0)
    assert back.model_id not in [p["model_id"] for p in back.previous]
    assert am.ActiveModel.from_json(back.to_json()) == back


def test_applied_settings_load_the_active_model_and_write_its_collection(tmp_path: Path) -> None:
    s = settings(tmp_path)
    rec = am.from_settings(s).switched_to(am.target(s, "ViT-B-16", "openai", "/cfg.json"), 5.0)
    applied = am.apply(s, rec)
    assert (applied.clip_model, applied.clip_pretrained) == ("ViT-B-16", "openai")
    assert applied.clip_model_config == Path("/cfg.json")
    assert applied.qdrant_collection == "raylens_images--ViT-B-16_openai"
    assert "ViT-B-16:openai" in (am.differs_from_settings(s, rec) or "")
