from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings


def test_defaults_are_valid():
    settings = load_settings()
    assert settings.top_k >= 1
    assert settings.search_mode == "hybrid"
    assert settings.embedding_dim == 384


def test_wrong_integer_names_the_setting(monkeypatch):
    monkeypatch.setenv("RAGTUNE_TOP_K", "abc")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert "RAGTUNE_TOP_K='abc'" in str(error.value)
    assert "integer" in str(error.value)


def test_every_wrong_setting_is_reported(monkeypatch):
    monkeypatch.setenv("RAGTUNE_CHUNK_SIZE", "100")
    monkeypatch.setenv("RAGTUNE_CHUNK_OVERLAP", "500")
    monkeypatch.setenv("RAGTUNE_SEARCH_MODE", "fuzzy")
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert "RAGTUNE_CHUNK_OVERLAP='500': must be smaller than chunk_size (100)" in message
    assert "RAGTUNE_SEARCH_MODE='fuzzy'" in message


def test_toml_file_and_env_precedence(tmp_path: Path, monkeypatch):
    config = tmp_path / "ragtune.toml"
    config.write_text('top_k = 7\nsearch_mode = "dense"\n')
    monkeypatch.setenv("RAGTUNE_CONFIG", str(config))
    monkeypatch.setenv("RAGTUNE_TOP_K", "9")
    settings = load_settings()
    assert settings.top_k == 9  # the environment wins
    assert settings.search_mode == "dense"


def test_unknown_key_in_toml_is_an_error(tmp_path: Path, monkeypatch):
    config = tmp_path / "ragtune.toml"
    config.write_text("topk = 7\n")
    monkeypatch.setenv("RAGTUNE_CONFIG", str(config))
    with pytest.raises(ConfigError, match="topk: unknown setting"):
        load_settings()


def test_missing_config_file_is_an_error(monkeypatch):
    monkeypatch.setenv("RAGTUNE_CONFIG", "/nonexistent/ragtune.toml")
    with pytest.raises(ConfigError, match="no such file"):
        load_settings()


def test_database_url_without_prefix(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.example/ragtune")
    assert load_settings().database_url == "postgresql://db.example/ragtune"


def test_api_keys_are_comma_separated(monkeypatch):
    monkeypatch.setenv("RAGTUNE_API_KEYS", "alpha, beta,")
    assert load_settings().api_keys == ["alpha", "beta"]


def test_documentation_lists_every_setting():
    from bot.config import Settings, env_name
    from tests.conftest import REPO_ROOT

    documented = (REPO_ROOT / "docs" / "configuration.md").read_text()
    missing = [env_name(name) for name in Settings.model_fields if f"`{env_name(name)}`" not in documented]
    assert not missing, f"docs/configuration.md lacks {missing}: regenerate it with `ragtune config docs`"


def test_non_ascii_collection_names_are_rejected_like_the_store_does(monkeypatch):
    monkeypatch.setenv("RAGTUNE_DEFAULT_COLLECTION", "café")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert "RAGTUNE_DEFAULT_COLLECTION='café'" in str(error.value)
    assert "ASCII" in str(error.value)
    monkeypatch.delenv("RAGTUNE_DEFAULT_COLLECTION")
    monkeypatch.setenv("RAGTUNE_RESTRICTED_COLLECTIONS", '{"café": ["alice"]}')
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert "RAGTUNE_RESTRICTED_COLLECTIONS" in str(error.value) and "'café'" in str(error.value)


def test_config_and_store_share_the_collection_name_rule():
    from knowledge.names import check_collection_name

    for name in ("default", "legal_2024", "a-b"):
        assert load_settings(default_collection=name).default_collection == check_collection_name(name)
    for name in ("café", "a b", "x" * 101):
        with pytest.raises(ValueError):
            check_collection_name(name)
        with pytest.raises(ConfigError, match="RAGTUNE_DEFAULT_COLLECTION"):
            load_settings(default_collection=name)
