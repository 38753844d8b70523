"""Unit: settings are validated at start-up and errors name the environment variable."""

from __future__ import annotations

import pytest

from raylens.cluster.settings import Settings, load_settings
from raylens.errors import SettingsError


def test_settings_read_documented_variable_names_when_set(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RAYLENS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RAYLENS_CLIP_MODEL", "ViT-L-14")
    monkeypatch.setenv("RAYLENS_CLIP_PRETRAINED", "none")
    monkeypatch.setenv("RAYLENS_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("RAYLENS_QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("RAYLENS_WORKER_NUM_GPUS", "0.5")

    s = load_settings()

    assert s.data_dir == tmp_path and s.clip_model == "ViT-L-14" and s.random_weights
    assert s.redis_url == "redis://127.0.0.1:6379/0" and s.uses_redis_payloads
    assert s.qdrant_url == "http://qdrant:6333" and s.worker_num_gpus == 0.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RAYLENS_MAX_BATCH_SIZE", "0"),
        ("RAYLENS_LEASE_TIMEOUT_S", "-1"),
        ("RAYLENS_REDIS_URL", "localhost:6379"),
        ("RAYLENS_CLIP_DEVICE", "tpu"),
        ("RAYLENS_MAX_ATTEMPTS", "many"),
    ],
)
def test_settings_error_names_the_variable_when_a_value_is_invalid(monkeypatch, name, value):
    monkeypatch.setenv(name, value)

    with pytest.raises(SettingsError) as info:
        load_settings()

    assert name in info.value.message


def test_settings_refuse_redis_payloads_when_no_redis_url_is_set(monkeypatch) -> None:
    monkeypatch.setenv("RAYLENS_PAYLOAD_STORE", "redis")
    with pytest.raises(SettingsError, match="RAYLENS_REDIS_URL"):
        load_settings()


def test_settings_survive_pickling_when_sent_to_actors(tmp_path) -> None:
    import pickle

    s = Settings(data_dir=tmp_path, max_batch_size=7)
    assert pickle.loads(pickle.dumps(s)) == s


def test_settings_describe_every_field_when_listed() -> None:
    """Every RAYLENS_* variable says what it does: settings.py is the reference the README cites."""
    undescribed = [
        f"RAYLENS_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not undescribed, f"settings without a description: {undescribed}"


@pytest.mark.parametrize("value", [" ,", ",", " ", " , ,"])
def test_api_keys_of_only_blanks_and_commas_are_refused_at_start_up(monkeypatch, value) -> None:
    monkeypatch.setenv("RAYLENS_API_KEYS", value)

    with pytest.raises(SettingsError, match="RAYLENS_API_KEYS"):
        load_settings()


def test_http_allowed_hosts_and_origins_are_parsed_and_validated(monkeypatch) -> None:
    monkeypatch.setenv("RAYLENS_HTTP_ALLOWED_HOSTS", " search.example.com, 10.0.0.5:8000 ,")
    monkeypatch.setenv("RAYLENS_HTTP_ALLOWED_ORIGINS", "https://app.example,http://localhost:3000")

    s = load_settings()

    assert s.http_allowed_host_list == ["search.example.com", "10.0.0.5:8000"]
    assert s.http_allowed_origin_list == ["https://app.example", "http://localhost:3000"]
    monkeypatch.setenv("RAYLENS_HTTP_ALLOWED_ORIGINS", "app.example/path")
    with pytest.raises(SettingsError, match="RAYLENS_HTTP_ALLOWED_ORIGINS"):
        load_settings()
    monkeypatch.setenv("RAYLENS_HTTP_ALLOWED_ORIGINS", "")
    for bad in ("http://x.example/", "x.example:http", "[::1"):
        monkeypatch.setenv("RAYLENS_HTTP_ALLOWED_HOSTS", bad)
        with pytest.raises(SettingsError, match="RAYLENS_HTTP_ALLOWED_HOSTS"):
            load_settings()
