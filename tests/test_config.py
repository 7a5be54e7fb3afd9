"""The config file: the documented shape loads, a bad key is named, the environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierwise.router.config import ConfigError, load_config

ISSUE_EXAMPLE = """
server: {port: 50051, metrics_port: 9464}
auth:
  api_keys:
    - {key_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", tenant: acme}
tiers:                      # cheapest first
  - name: small
    provider: openai
    base_url: http://127.0.0.1:8001/v1
    model: mistral-7b-chat
    api_key_env: SMALL_API_KEY
    price: {input_per_mtok: 0.20, output_per_mtok: 0.20, cached_input_per_mtok: 0.10}
    max_output_tokens: 1024
  - name: large
    provider: anthropic
    base_url: http://127.0.0.1:8002
    model: claude-x
    price: {input_per_mtok: 3.0, output_per_mtok: 15.0}
routing: {policy: cheapest}
store: {kind: embedded, path: ./var}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_the_documented_shape_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ISSUE_EXAMPLE))
    assert config.tier_names == ("small", "large")
    small = config.tier("small")
    assert str(small.price.cached_input) == "0.1"
    assert config.tier("large").price.cached_input == config.tier("large").price.input_per_mtok
    assert config.auth.mode == "api_key" and config.auth.api_keys[0].tenant == "acme"
    assert config.routing.policy == "cheapest"


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("routing: {policy: cheapest}", "routing: {policy: cheapest, polcy: x}", "routing.polcy"),
        ("routing: {policy: cheapest}", "routing: {policy: smartest}", "routing.policy"),
        ("provider: anthropic", "provider: bedrock", "tiers.1.provider"),
        ("max_output_tokens: 1024", "max_output_tokens: 0", "tiers.0.max_output_tokens"),
        ("input_per_mtok: 3.0", "input_per_mtok: -3.0", "tiers.1.price.input_per_mtok"),
        ('key_sha256: "9f86d0', 'key_sha256: "zz86d0', "auth.api_keys.0.key_sha256"),
        ("name: large", "name: small", "duplicate tier names"),
        ("base_url: http://127.0.0.1:8002", "base_url: ftp://x", "tiers.1.base_url"),
    ],
)
def test_a_bad_key_is_named(tmp_path: Path, old: str, new: str, named: str) -> None:
    assert old in ISSUE_EXAMPLE
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, ISSUE_EXAMPLE.replace(old, new)))
    assert named in str(caught.value)


def test_auth_none_is_explicit_and_needs_a_tenant(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth\.tenant"):
        load_config(write(tmp_path, ISSUE_EXAMPLE.replace("auth:\n", "auth:\n  mode: none\n")))
    config = load_config(
        write(tmp_path, ISSUE_EXAMPLE.replace("auth:\n", "auth:\n  mode: none\n  tenant: local\n"))
    )
    assert config.auth.mode == "none" and config.auth.tenant == "local"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERWISE_SERVER__PORT", "6123")
    monkeypatch.setenv("TIERWISE_ROUTING__POLICY", "strongest")
    config = load_config(write(tmp_path, ISSUE_EXAMPLE))
    assert config.server.port == 6123 and config.server.metrics_port == 9464
    assert config.routing.policy == "strongest"


def test_missing_and_malformed_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "tiers: [unclosed"))
    with pytest.raises(ConfigError, match="tiers"):
        load_config(write(tmp_path, "server: {port: 1}\n"))


def test_cache_threshold_defaults_follow_the_verifier() -> None:
    from tierwise.cache.verifier_model import read_manifest
    from tierwise.router.config import COSINE_ONLY_THRESHOLD, CacheConfig

    # The guarded default is the shipped verifier's evaluated cosine floor, so the cache shows it every
    # candidate the evaluation did; cosine alone gets its own stricter default; explicit values stay.
    shipped = read_manifest(Path(__file__).resolve().parents[1] / "cache" / "models" / "verifier")
    assert CacheConfig().similarity_threshold == pytest.approx(shipped.min_cosine)
    assert CacheConfig(verifier="cosine").similarity_threshold == COSINE_ONLY_THRESHOLD
    assert CacheConfig(verifier="cosine", similarity_threshold=0.5).similarity_threshold == 0.5
    assert CacheConfig(similarity_threshold=0.8).similarity_threshold == 0.8
