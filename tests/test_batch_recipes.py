"""The recipes in examples/ run as written: the Makefile under make -j2 (then again, rebuilding
nothing), and the quantize step of the CI workflow (then again, skipping on the manifest)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STORIES = ROOT / "tests" / "data" / "stories260K.gguf"
CALIBRATION = ROOT / "tests" / "data" / "calibration-en.txt"
SCRIPT = Path(sys.executable).parent / "pyquantize"
PYQUANTIZE = str(SCRIPT) if SCRIPT.exists() else f"{sys.executable} -m quantize_cli.cli"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(STORIES, tmp_path / "stories260K.gguf")
    (tmp_path / "calib.txt").write_text(CALIBRATION.read_text()[:12000])
    return tmp_path


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_makefile_parallel_then_nothing_to_do(workdir):
    make = ["make", "-f", str(ROOT / "examples" / "Makefile"), "-j2", "MODEL=stories260K", "CALIB=calib.txt",
            f"PYQUANTIZE={PYQUANTIZE}", "THREADS=1", "TYPES=Q8_0 Q4_K_M", "ITYPES=IQ4_XS",
            "IMATRIX_FLAGS=-c 128 --chunks 2", "quants"]
    first = subprocess.run(make, cwd=workdir, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    outputs = {t: workdir / f"stories260K-{t}.gguf" for t in ("Q8_0", "Q4_K_M", "IQ4_XS")}
    for t, path in outputs.items():
        doc = json.loads((workdir / f"{path.name}.manifest.json").read_text())
        assert doc["file_type"] == t and doc["outputs"][0]["sha256"] == sha(path)
    # the pattern rule's output is the plain single-type conversion
    single = workdir / "single.gguf"
    subprocess.run([*PYQUANTIZE.split(), "convert", str(workdir / "stories260K.gguf"), str(single), "Q4_K_M", "-q"],
                   check=True)
    assert sha(single) == sha(outputs["Q4_K_M"])
    imatrix = json.loads((workdir / "stories260K-IQ4_XS.gguf.manifest.json").read_text())["options"]["imatrix"]
    assert imatrix["sha256"] == sha(workdir / "stories260K.imatrix.gguf")

    stamps = {p: p.stat().st_mtime_ns for p in workdir.iterdir()}
    second = subprocess.run(make, cwd=workdir, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Nothing to be done for 'quants'" in second.stdout, second.stdout
    assert {p: p.stat().st_mtime_ns for p in workdir.iterdir()} == stamps
    assert subprocess.run(make[:-1] + ["-q", "quants"], cwd=workdir).returncode == 0  # up to date

    # one read for every type: outputs whose manifests match are skipped, file times aside
    os.utime(workdir / "stories260K.gguf")
    once = subprocess.run(make[:-1] + ["quants-once"], cwd=workdir, capture_output=True, text=True)
    assert once.returncode == 0, once.stdout + once.stderr
    assert outputs["Q8_0"].stat().st_mtime_ns == stamps[outputs["Q8_0"]]


def test_ci_workflow_quantize_step(workdir):
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((ROOT / "examples" / "ci.yml").read_text())
    job = workflow["jobs"]["quantize"]
    step = next(s for s in job["steps"] if s.get("id") == "quantize")
    (workdir / "models").mkdir()
    shutil.move(workdir / "stories260K.gguf", workdir / "models" / "stories260K.gguf")
    env = dict(os.environ, MODEL=job["strategy"]["matrix"]["model"][0], PYQUANTIZE=PYQUANTIZE.split()[0])
    if not SCRIPT.exists():
        pytest.skip("the pyquantize script is not installed in this environment")
    for ftype in job["strategy"]["matrix"]["type"][-2:]:  # Q6_K, Q8_0: twice each
        env["TYPE"] = ftype
        runs = [subprocess.run(["bash", "-e", "-c", step["run"]], cwd=workdir, env=env, capture_output=True, text=True)
                for _ in range(2)]
        for r in runs:
            assert r.returncode == 0, r.stdout + r.stderr
        out = workdir / "out" / f"stories260K-{ftype}.gguf"
        assert runs[0].stdout.split() == [str(Path("out") / out.name), "written", sha(out)]
        assert "skipped (manifest matches)" in runs[1].stdout
