"""YAML configuration: defaults, per-section overrides, errors naming file and key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from mri_safety.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    load_config,
    load_sequence_rules,
    load_visit_windows,
)


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def test_defaults_load_from_repo_configs() -> None:
    assert (CONFIG_DIR / "sequences.yaml").is_file() and (CONFIG_DIR / "visits.yaml").is_file()
    cfg = load_config(None)
    assert cfg.sequences == load_sequence_rules()
    assert cfg.visits == load_visit_windows()
    assert [w.label for w in cfg.visits.windows] == ["24h", "M2", "M4", "M6", "M12"]
    assert cfg.visits.alias_map()["MONTH2"] == "M2"
    names = [r.name for r in cfg.sequences.contrast_rules]
    assert len(names) == len(set(names)) > 10


def test_user_file_overrides_only_the_keys_it_gives(tmp_path: Path) -> None:
    user = write(tmp_path / "site.yaml", {"visits": {"baseline_max_days_before": 30}})
    cfg = load_config(user)
    default = load_config(None)
    assert cfg.visits.baseline_max_days_before == 30
    assert cfg.visits.windows == default.visits.windows
    assert cfg.sequences == default.sequences


def test_every_section_has_a_default_file() -> None:
    for name in Config.model_fields:
        assert (CONFIG_DIR / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("data,expect", [
    ({"visit": {}}, "unknown section 'visit'"),
    ({"visits": {"baseline_days": 3}}, "visits.baseline_days: Extra inputs are not permitted"),
    ({"visits": {"windows": [{"label": "M-2", "min_days": 1, "max_days": 5}]}},
     "visits.windows.0.label"),
    ({"visits": {"windows": [{"label": "A", "min_days": 1, "max_days": 50},
                             {"label": "B", "min_days": 40, "max_days": 90}]}},
     "A [1, 50] overlaps B [40, 90]"),
    ({"visits": {"windows": [{"label": "A", "min_days": 9, "max_days": 5}]}},
     "min_days 9 > max_days 5"),
    ({"visits": {"time_point_aliases": {"M3": ["MONTH3"]}}}, "'M3' is not a visit label"),
    ({"sequences": {"contrast_rules": [{"name": "x", "contrast": "T1w",
                                        "when": {"tr_ms": [800, 100]}}]}},
     "sequences.contrast_rules.0.when.tr_ms"),
    ({"sequences": {"contrast_rules": [{"name": "x", "contrast": "T1w",
                                        "when": {"tr": [1, 2]}}]}},
     "sequences.contrast_rules.0.when.tr: Extra inputs are not permitted"),
    ({"sequences": {"contrast_rules": [{"name": "x", "contrast": "T3w", "when": {}}]}},
     "sequences.contrast_rules.0.contrast"),
    ({"sequences": {"description_patterns": {"T1w": ["t1("]}}}, "bad regular expression"),
    ({"sequences": {"description_patterns": {"T9": ["x"]}}}, "'T9' is not one of"),
])
def test_bad_user_config_names_file_and_key(tmp_path: Path, data: dict, expect: str) -> None:
    user = write(tmp_path / "site.yaml", data)
    with pytest.raises(ConfigError) as err:
        load_config(user)
    msg = str(err.value)
    assert str(user) in msg and expect in msg, msg


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "visits: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")
    top_list = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(top_list)


def test_error_in_default_file_names_that_file(tmp_path: Path) -> None:
    defaults = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, defaults)
    data = yaml.safe_load((defaults / "visits.yaml").read_text())
    data["windows"][1]["max_days"] = "sixty"
    write(defaults / "visits.yaml", data)
    with pytest.raises(ConfigError) as err:
        load_config(None, defaults_dir=defaults)
    assert f"{defaults / 'visits.yaml'}: windows.1.max_days" in str(err.value)
    with pytest.raises(ConfigError, match=r"visits\.yaml: windows\.1\.max_days"):
        load_visit_windows(defaults / "visits.yaml")


def test_yaml_boolean_trap_is_caught(tmp_path: Path) -> None:
    """Unquoted NO in YAML 1.1 is False; the validator names the key instead of
    silently comparing with a boolean."""
    path = write(tmp_path / "sequences.yaml",
                 (CONFIG_DIR / "sequences.yaml").read_text().replace("'NO', 'N/A'", "NO, 'N/A'"))
    with pytest.raises(ConfigError, match=r"post_contrast_negative_values\.2"):
        load_sequence_rules(path)
