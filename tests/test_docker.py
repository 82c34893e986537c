"""docker/: the compose file parses and runs the same `raxnet predict` the tests exercise."""

import json
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_instruction(name: str) -> list[str]:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    match = re.search(rf"^{name}\s+(\[.*\])\s*$", text, re.MULTILINE)
    assert match, f"no exec-form {name} in the Dockerfile"
    return json.loads(match.group(1))


def test_compose_predict_service(monkeypatch):
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    service = compose["services"]["predict"]
    assert "ports" not in service
    volumes = service["volumes"]
    assert any(v.endswith(":/input:ro") for v in volumes), volumes
    assert any(v.endswith(":/output") for v in volumes), volumes
    assert (ROOT / "docker" / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert service["command"] == ["--input", "/input", "--output", "/output"]
    # outputs belong to the caller: the user is set from the environment, defaulting to the image's uid 1000
    assert service["user"] == "${RAXNET_UID:-1000}:${RAXNET_GID:-1000}"
    # BIAS_CORRECT unset must not override the weight set's N4 step: compose passes "", which predict reads
    # as "not given" (BIAS_CORRECT=0 would switch it off, 1 on)
    assert service["environment"]["RAXNET_BIAS_CORRECT"] == "${BIAS_CORRECT:-}"
    from raxnet.predict import _env_flag

    for value, flag in (("", None), ("0", False), ("1", True)):
        monkeypatch.setenv("RAXNET_BIAS_CORRECT", value)
        assert _env_flag("RAXNET_BIAS_CORRECT") is flag


def test_dockerfile_runs_raxnet_predict_as_non_root():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert dockerfile_instruction("ENTRYPOINT") == ["raxnet", "predict"]
    assert re.search(r"^USER\s+(?!root)\w+", text, re.MULTILINE)
    assert "tensorflow-cpu" in (ROOT / "requirements.txt").read_text()
    # the console script the image calls is the one the tests exercise
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'raxnet = "raxnet.cli:main"' in pyproject
    from raxnet.cli import COMMANDS

    assert COMMANDS["predict"][0] == "raxnet.predict"
    # the weights the image ships are the ones the manifest points at
    assert re.search(r"RAXNET_WEIGHTS=/opt/raxnet/weights/demo", text)
    assert (ROOT / "weights" / "demo" / "weights.json").is_file()


def test_image_ships_a_complete_weight_set_where_the_env_points():
    """WORKDIR + COPY weights put weights/ at /opt/raxnet/weights, which RAXNET_WEIGHTS names; the manifest there
    lists three plane models that are real .keras archives; the compose command is the image's CMD."""
    import zipfile

    text = (ROOT / "docker" / "Dockerfile").read_text()
    workdir = re.search(r"^WORKDIR\s+(\S+)\s*$", text, re.MULTILINE).group(1)
    assert re.search(r"^COPY\s+weights\s+\./weights\s*$", text, re.MULTILINE)
    env = re.search(r"RAXNET_WEIGHTS=(\S+)", text).group(1)
    assert env.startswith(workdir.rstrip("/") + "/weights/")
    shipped = ROOT / env[len(workdir.rstrip("/")) + 1 :]
    manifest = json.loads((shipped / "weights.json").read_text())
    assert set(manifest["planes"]) == {"axial", "sagittal", "coronal"}
    for plane, entry in manifest["planes"].items():
        assert zipfile.is_zipfile(shipped / entry["file"]), plane
    assert dockerfile_instruction("CMD") == ["--input", "/input", "--output", "/output"]
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    assert compose["services"]["predict"]["command"] == dockerfile_instruction("CMD")
    # the image installs the pinned requirements the tests run with
    assert re.search(r"^RUN pip install -r requirements.txt", text, re.MULTILINE)
    assert re.search(r"^tensorflow-cpu==\d", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
