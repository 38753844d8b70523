"""Unit: cluster.yaml passes Ray's own config validation, names only real RAYLENS_* settings,
comments every key, and wires ports and resources consistently. No cloud, no Ray cluster."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from raylens.cluster.settings import ENV_PREFIX, Settings, load_settings

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"
# Values the head computes at setup time, stood in for when the exported settings are checked.
SHELL_STAND_INS = {"${HEAD_IP}": "10.0.0.10", "${REDIS_PASSWORD}": "0123abcd"}


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def config(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)


def _exports(text: str) -> dict[str, str]:
    """RAYLENS_* variables the head setup writes to ~/raylens.env, with stand-ins for $VARS."""
    out = {}
    for name, value in re.findall(r"export (RAYLENS_[A-Z0-9_]+)=([^\"'\s]+)", text):
        for var, stand_in in SHELL_STAND_INS.items():
            value = value.replace(var, stand_in)
        out[name] = value
    return out


def _commands(config: dict[str, Any], key: str) -> str:
    return "\n".join(config.get(key) or [])


def test_cluster_yaml_passes_ray_schema_validation_when_loaded_as_written(config) -> None:
    from ray.autoscaler._private.util import validate_config

    validate_config(copy.deepcopy(config))


def test_cluster_yaml_passes_ray_validation_when_filled_out_with_provider_defaults(config) -> None:
    # prepare_config merges Ray's aws defaults.yaml and node-type min/max: no cloud call.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)

    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["max_workers"] == 0
    # setup_commands run before the node-specific ones (Ray merges them in this order).
    assert (
        prepared["head_setup_commands"][: len(config["setup_commands"])]
        == (config["setup_commands"])
    )


def test_ray_validation_rejects_the_config_when_a_key_is_misspelt(config) -> None:
    """The schema forbids unknown keys, so the passing tests above mean something."""
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    broken = copy.deepcopy(config)
    broken["head_start_ray_command"] = broken.pop("head_start_ray_commands")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_cluster_yaml_names_only_real_settings_when_it_mentions_raylens_variables(text) -> None:
    names = set(re.findall(r"\bRAYLENS_[A-Z0-9_]+", text))
    assert names, "cluster.yaml sets no RAYLENS_* variable"
    unknown = sorted(n for n in names if n[len(ENV_PREFIX) :].lower() not in Settings.model_fields)
    assert not unknown, f"not raylens settings: {unknown}"


def test_cluster_yaml_exports_settings_that_validate_when_loaded(text, monkeypatch) -> None:
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    exports = _exports(text)
    for name, value in exports.items():
        monkeypatch.setenv(name, value)

    s = load_settings()

    # Multi-node needs shared stores: Redis jobs and payloads, a Qdrant server, no local files.
    assert s.redis_url and s.uses_redis_payloads and s.qdrant_url
    assert s.worker_num_gpus == 1 and s.http_host == "0.0.0.0"
    assert s.ray_address == "auto"  # `raylens status|ingest|down` on the head join this cluster


def test_cluster_yaml_comments_every_key_when_read_line_by_line(text) -> None:
    lines = text.splitlines()
    key_lines = set()
    tokens = list(yaml.scan(text))
    for token, following in zip(tokens, tokens[1:]):
        if isinstance(token, yaml.KeyToken):
            key_lines.add(following.start_mark.line)
    assert key_lines
    bare = [
        f"{n + 1}: {lines[n].strip()}"
        for n in sorted(key_lines)
        if not re.search(r"\s#", lines[n]) and not (n and lines[n - 1].lstrip().startswith("#"))
    ]
    assert not bare, "keys without a comment on or above their line:\n" + "\n".join(bare)


def test_cluster_yaml_gives_gpu_nodes_one_gpu_and_the_head_none_when_node_types_are_read(
    config, text
) -> None:
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert head["resources"].get("GPU", 0) == 0
    assert len(gpu_types) == 1
    (gpu,) = gpu_types.values()
    assert gpu["resources"]["GPU"] == 1

    exports = _exports(text)
    workers = int(exports["RAYLENS_NUM_WORKERS"])
    # Each raylens worker must fit one GPU node, and all of them within the node type's ceiling.
    assert float(exports["RAYLENS_WORKER_NUM_GPUS"]) <= gpu["resources"]["GPU"]
    assert float(exports["RAYLENS_WORKER_NUM_CPUS"]) <= gpu["resources"]["CPU"]
    assert gpu.get("min_workers", 0) <= workers <= gpu["max_workers"] <= config["max_workers"]


def test_cluster_yaml_keeps_raylens_redis_off_the_gcs_port_when_both_run_on_the_head(
    config, text
) -> None:
    head = re.search(
        r"ray start --head[^\n]*--port=(\d+)", _commands(config, "head_start_ray_commands")
    )
    url = re.search(r":(\d+)/\d+$", _exports(text)["RAYLENS_REDIS_URL"])
    server = re.search(
        r"redis-server (--port (\d+)[^\n]*)", _commands(config, "head_setup_commands")
    )
    assert head and url and server, "no GCS port, raylens Redis URL port or redis-server found"
    gcs_port = int(head.group(1))

    assert int(url.group(1)) == int(server.group(2)) != gcs_port
    assert f"$RAY_HEAD_IP:{gcs_port}" in _commands(config, "worker_start_ray_commands")
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert flag in server.group(1)


def test_cluster_yaml_starts_raylens_with_token_auth_when_the_head_starts(config) -> None:
    start = _commands(config, "head_start_ray_commands")
    assert "raylens up --address auto" in start
    assert start.index("ray start --head") < start.index("raylens up")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token ray start" in _commands(config, key)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_cluster_yaml_commands_parse_as_bash_when_checked_with_bash_n(config) -> None:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    for key in keys:
        for cmd in config.get(key) or []:
            proc = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            assert proc.returncode == 0, f"{key}: {cmd!r}: {proc.stderr}"
