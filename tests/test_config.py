"""Issue 26: typed profiles (frozen dataclasses with sections) and dotted overrides."""

from __future__ import annotations

import dataclasses

import pytest

import bloodlib.experiments  # noqa: F401  (registers every experiment's profiles)
from bloodlib import config
from bloodlib.errors import SettingError
from bloodlib.experiments.configs import McnetConfig, McnetYolo
from bloodlib.registry import TRAINERS


import bloodlib.inference.benchmark  # noqa: E402,F401  (registers "latency")
import bloodlib.inference.scale_benchmark  # noqa: E402,F401  (registers "predict_scale")
import bloodlib.widgets  # noqa: E402,F401  (registers "demo")
import bloodlib.board  # noqa: E402,F401  (registers "results_board")


@pytest.mark.parametrize("experiment", config.experiments())
@pytest.mark.parametrize("profile", config.PROFILE_NAMES)
def test_every_profile_is_an_instance_of_its_schema(experiment, profile):
    typed = config.get_config(experiment, profile)
    assert dataclasses.is_dataclass(typed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(typed, next(iter(dataclasses.asdict(typed))), 0)
    flat = {k: v for k, v in config.get_profile(experiment, profile).items() if k != "profile"}
    assert config.to_flat(typed) == flat


def test_sections_and_dotted_overrides():
    typed = config.get_config("mcnet", "quick", **{"yolo.epochs": 5, "pbc.enabled": False})
    assert isinstance(typed, McnetConfig) and isinstance(typed.yolo, McnetYolo)
    assert typed.yolo.epochs == 5 and typed.pbc.enabled is False
    assert config.get_profile("mcnet", "quick", **{"yolo.epochs": 7})["yolo_epochs"] == 7
    assert config.get_profile("mcnet", "quick", yolo_epochs=7)["yolo_epochs"] == 7  # flat too
    assert config.setting_types("mcnet")["yolo.epochs"] is int
    parsed = config.parse_overrides(["yolo.epochs=3", "lr=0.01"])
    assert config.get_config("mcnet", "quick", **parsed).yolo.epochs == 3


@pytest.mark.parametrize("bad, message", [
    ({"yolo.epoch": 5}, "Unknown setting 'yolo.epoch'"),
    ({"yolo.epochs": "five"}, "must be int"),
    ({"yolo_epochs": 2.5}, "must be int"),
    ({"lr": True}, "must be float"),
    ({"pbc.enabled": "no"}, "must be bool"),
])
def test_wrong_names_and_types_fail_loudly(bad, message):
    with pytest.raises(SettingError, match=message):
        config.get_profile("mcnet", "quick", **bad)


def test_a_profile_that_does_not_fit_its_schema_is_refused_at_registration():
    @dataclasses.dataclass(frozen=True)
    class Tiny:
        epochs: int

    with pytest.raises(SettingError, match="missing settings"):
        config.register("tiny_test", {p: {} for p in config.PROFILE_NAMES}, schema=Tiny)
    with pytest.raises(SettingError, match="must be int"):
        config.register("tiny_test", {p: {"epochs": "3"} for p in config.PROFILE_NAMES}, schema=Tiny)
    assert "tiny_test" not in config.experiments()


def test_every_documented_benchmark_command_passes_the_settings_check():
    """The commands in benchmarks/README.md name real settings with values of their type."""
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "README.md").read_text()
    commands = [line.strip() for line in text.replace("\\\n", " ").splitlines()
                if line.strip().startswith(("bloodlib bench ", "bloodlib train "))]
    checked = 0
    for command in commands:
        parts = shlex.split(command.split("#")[0])
        if parts[2] not in TRAINERS:  # bench latency / predict / notebooks: no settings
            continue
        profile = parts[parts.index("--profile") + 1] if "--profile" in parts else \
            ("bench_cpu" if parts[1] == "bench" else "full")
        overrides = [p for p in parts[3:] if "=" in p and not p.startswith("-")]
        config.get_config(parts[2], profile, **config.parse_overrides(overrides))
        checked += 1
    assert checked >= 10


def test_importing_any_experiment_registers_every_experiment():
    """No notebook depends on which experiment it imports first (a fresh interpreter)."""
    import subprocess
    import sys
    code = ("import bloodlib.experiments.unet_family\n"
            "from bloodlib import config\nfrom bloodlib.registry import TRAINERS\n"
            "print(sorted(config.experiments()), sorted(TRAINERS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    for name in ("mcnet", "maskrcnn_backbones", "blood_cancer", "wbc_classification",
                 "unet_family", "wcsegnet"):
        assert out.count(f"'{name}'") == 2, out


def test_a_run_reads_its_settings_typed(tmp_path):
    from bloodlib.session import start
    run = start("mcnet", "quick", output_dir=tmp_path, verbose=False, **{"yolo.epochs": 5})
    assert isinstance(run.settings, McnetConfig)
    assert run.settings.yolo.epochs == run.knobs["yolo_epochs"] == 5


def test_none_is_a_value_where_the_schema_allows_it():
    """``time_budget_s=None`` (no budget) takes effect; it is not silently dropped."""
    assert config.get_profile("mcnet", "bench_cpu", time_budget_s=None)["time_budget_s"] is None
    with pytest.raises(SettingError, match="iterations"):
        config.get_profile("mcnet", "quick", iterations=None)


def test_experiment_functions_take_typed_settings_not_flat_knobs():
    """Issue 26: no function of an experiment takes the flat ``knobs`` mapping; they take the
    experiment's typed settings (``settings.yolo.epochs``)."""
    import ast
    from pathlib import Path

    import bloodlib.experiments
    root = Path(bloodlib.experiments.__file__).parent
    flat = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                flat += [f"{path.relative_to(root)}:{node.name}" for a in args
                         if a.arg == "knobs" or (a.annotation is not None and
                                                 "Mapping[str, Any]" in ast.unparse(a.annotation)
                                                 and a.arg == "settings")]
    assert flat == []
