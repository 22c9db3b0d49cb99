from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import yaml

from genserve.config import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[3]


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.pipeline.steps == 4 and settings.pipeline.shift == 3.0
    assert settings.pipeline.output_format == "jpg" and settings.models.dir == Path("models")


def test_yaml_then_env_override(tmp_path: Path) -> None:
    file = tmp_path / "genserve.yaml"
    file.write_text(
        yaml.safe_dump({"pipeline": {"steps": 8, "sampler_name": "heun"}, "engine": {"queue_size": 3}})
    )
    settings = load_settings(
        file, environ={"GENSERVE_PIPELINE__STEPS": "6", "GENSERVE_MODELS__MEMORY_BUDGET_MB": "{cpu: 512}"}
    )
    assert settings.pipeline.steps == 6  # env wins over the file
    assert settings.pipeline.sampler_name == "heun" and settings.engine.queue_size == 3
    assert settings.models.memory_budget_mb == {"cpu": 512}


def test_config_env_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "other.yaml"
    file.write_text("engine:\n  queue_size: 9\n")
    assert load_settings(environ={"GENSERVE_CONFIG": str(file)}).engine.queue_size == 9


@pytest.mark.parametrize(
    ("content", "env", "needle"),
    [
        ("pipeline:\n  stepz: 4\n", {}, "pipeline.stepz: unknown key"),
        ("pipline:\n  steps: 4\n", {}, "pipline: unknown key"),
        ("pipeline:\n  steps: many\n", {}, "pipeline.steps"),
        ("", {"GENSERVE_ENGINE__QUEUE_SIZE": "0"}, "engine.queue_size"),
        ("", {"GENSERVE_PIPELINE__NOPE": "1"}, "pipeline.nope: unknown key"),
        ("", {"GENSERVE_STEPS": "1"}, "GENSERVE_STEPS"),
        ("", {"GENSERVE_PIPELINE__UPSCALE_METHOD": "Lanczos"}, "pipeline.upscale_method"),
        ("", {"GENSERVE_PIPELINE__SAMPLER_NAME": "foo"}, "pipeline.sampler_name"),
        ("pipeline:\n  scheduler: linear\n", {}, "pipeline.scheduler"),
        ("- a list\n", {}, "top level must be a mapping"),
        ("pipeline: [\n", {}, "not valid YAML"),
    ],
)
def test_bad_keys_and_values_name_the_key(
    tmp_path: Path, content: str, env: dict[str, str], needle: str
) -> None:
    file = tmp_path / "genserve.yaml"
    file.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(file, environ=env)
    assert needle in str(info.value)


def test_the_configs_sampling_names_are_the_samplers_own() -> None:
    from genserve.config import SamplerName, SchedulerName, UpscaleMethod
    from genserve.services.pipeline import samplers
    from genserve.services.pipeline.imaging import RESAMPLE

    assert set(get_args(SamplerName)) == set(samplers.SAMPLERS)
    assert set(get_args(SchedulerName)) == set(samplers.SCHEDULERS)
    assert set(get_args(UpscaleMethod)) == set(RESAMPLE)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.yaml", environ={})


def test_example_file_documents_every_key_and_loads() -> None:
    example = REPO / "genserve.example.yaml"
    settings = load_settings(example, environ={})
    documented = yaml.safe_load(example.read_text())
    for section, model in Settings.model_fields.items():
        assert section in documented, section
        for key in model.annotation.model_fields:  # type: ignore[union-attr]
            assert key in documented[section], f"{section}.{key} missing from genserve.example.yaml"
    assert settings == Settings.model_validate(documented)
