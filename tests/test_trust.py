"""Nothing untrusted executes: speechbrain YAML code, Hugging Face remote code and pickled checkpoints."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from audit.errors import ModelLoadError
from audit.extractor import build_extractor, speechbrain_source
from audit.judges import SpeakerJudge
from audit.vocoder import build_vocoder

ROOT = Path(__file__).resolve().parents[1]


def _evil_speechbrain_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A speechbrain folder whose hyperparams.yaml touches a marker file when it is loaded."""
    marker = tmp_path / "ran.txt"
    folder = tmp_path / "sb"
    folder.mkdir()
    (folder / "hyperparams.yaml").write_text(f"ran: !apply:pathlib.Path.touch [!new:pathlib.Path [{str(marker)!r}]]\n")
    return folder, marker


def test_speechbrain_folder_or_foreign_hub_id_needs_trust(tmp_path):
    folder, marker = _evil_speechbrain_folder(tmp_path)
    for load in (lambda: build_vocoder(str(folder)), lambda: SpeakerJudge(model=str(folder)).load()):
        with pytest.raises(ModelLoadError, match="trust_remote_code = true") as err:
            load()
        assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="not a model of the speechbrain/ organisation"):
        speechbrain_source("someone/spkrec-ecapa", label="speaker judge")
    assert not marker.exists()  # nothing of the YAML ran


def test_trusted_speechbrain_folder_runs_its_yaml(tmp_path):
    folder, marker = _evil_speechbrain_folder(tmp_path)
    assert speechbrain_source(str(folder), label="vocoder", trust_remote_code=True) == str(folder)
    with pytest.raises(ModelLoadError):  # it is no HiFi-GAN, but its YAML was allowed to run
        build_vocoder(str(folder), trust_remote_code=True)
    assert marker.exists()


def test_official_speechbrain_ids_load_without_trust(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:  # offline here: the refusal is about reachability, not trust
        speechbrain_source("speechbrain/spkrec-ecapa-voxceleb", label="speaker judge")
    assert "trust_remote_code" not in str(err.value)


def test_hugging_face_remote_code_is_never_run_unless_asked(tmp_path):
    marker = tmp_path / "ran.txt"
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import PretrainedConfig\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "evil",
                                                    "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    with pytest.raises(ModelLoadError) as err:
        build_extractor(str(folder))
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_every_torch_load_in_the_project_is_weights_only():
    calls = []
    for path in [*ROOT.glob("audit/**/*.py"), *ROOT.glob("attacks/*.py"), *ROOT.glob("defenses/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(node.func, "value", None) is not None and getattr(node.func.value, "id", "") == "torch":
                calls.append((path.name, node.lineno, {k.arg: getattr(k.value, "value", None) for k in node.keywords}))
    assert calls, "expected at least the GE2E checkpoint load"
    assert all(kw.get("weights_only") is True for _, _, kw in calls), calls


def test_a_pickled_payload_is_refused_by_weights_only_loading(tmp_path):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "ran.txt",))

    torch.save({"model_state": Payload()}, tmp_path / "evil.pt")
    from audit.ge2e import _load_net

    with pytest.raises(ModelLoadError, match="cannot read GE2E checkpoint"):
        _load_net(tmp_path / "evil.pt")
    assert not (tmp_path / "ran.txt").exists()
