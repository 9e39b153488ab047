"""The release artifact's build (roles/app/files/build_artifact.py): the same input is the
same release id, a code change is a new one, and the wheels are downloaded once per
requirements file and target Pythons (a code-only release reuses them)."""

import importlib.util
import json
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("build_artifact", ROOT / "roles" / "app" / "files" / "build_artifact.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)


def project(tmp_path, version="1.0.0", code="X = 1\n", requirements="six==1.17.0\n"):
    src = tmp_path / f"src-{version}"
    src.mkdir(parents=True)
    (src / "VERSION").write_text(version + "\n")
    (src / "app.py").write_text(code)
    (src / "requirements.txt").write_text(requirements)
    return src


def run_build(monkeypatch, capsys, src, out):
    downloads = []

    def fake_run(cmd, **kwargs):
        downloads.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "six-1.17.0-py2.py3-none-any.whl").write_bytes(b"wheel")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(build.subprocess, "run", fake_run)
    monkeypatch.setattr("sys.argv", ["build_artifact.py", "--source", str(src), "--out", str(out),
                                     "--python", "3.11.2", "--python", "3.13.5", "--platform", "manylinux2014_x86_64"])
    assert build.main() == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1]), downloads


def test_wheels_are_downloaded_once_per_requirements(tmp_path, monkeypatch, capsys):
    out = tmp_path / "artifacts"
    first, downloads = run_build(monkeypatch, capsys, project(tmp_path), out)
    assert first["changed"] and len(downloads) == 2  # one pip download per target Python
    again, downloads = run_build(monkeypatch, capsys, project(tmp_path / "same"), out)
    assert again["release_id"] == first["release_id"] and not again["changed"] and downloads == []
    code, downloads = run_build(monkeypatch, capsys, project(tmp_path, "1.0.1", code="X = 2\n"), out)
    assert code["release_id"] != first["release_id"] and code["changed"] and downloads == []
    with tarfile.open(code["path"]) as tar:
        assert "wheelhouse/six-1.17.0-py2.py3-none-any.whl" in tar.getnames()
    deps, downloads = run_build(monkeypatch, capsys, project(tmp_path, "1.0.2", requirements="six==1.16.0\n"), out)
    assert deps["changed"] and len(downloads) == 2
