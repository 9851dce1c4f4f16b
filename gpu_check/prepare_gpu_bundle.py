"""Prepare what the GPU check needs on a machine that cannot download anything: wheels for Python 3.12 on x86-64.

    python gpu_check/prepare_gpu_bundle.py             # writes .gpu_bundle/ (ignored by git), under 60 MiB
    bash gpu_check/run_gpu_check.sh OUT_DIR            # on the GPU machine: installs it offline, runs the check

The GPU image (docs: the device tool's KINDS.md) has Python 3.12 with torch, transformers, accelerate, peft, pyarrow,
pandas, numpy, safetensors, tokenizers, huggingface-hub, psutil, pyyaml, fsspec, xxhash and the rest of `IMAGE`, but
neither TRL nor `datasets`. The bundle holds the pinned TRL, `datasets` (the version tested here), what they need
that the image lacks, and this project's own wheel, each without its dependencies; the preparation fails when a
wheel's requirement is neither bundled nor in the image. flash-attn and vLLM do not travel (too large, or built
there).
"""

import glob
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What travels: TRL and datasets at the versions installed here (TRL is pinned by setup.cfg), and what they need that
# the image does not have
BUNDLED = ["trl", "datasets", "dill", "multiprocess"]
# DeepSpeed, for the sequence-parallel step, is published as source only: its wheel is built here, without its ops
# (compiled on first use, none of which the check runs), and what it needs travels beside it
BUILT = ["deepspeed"]
BUNDLED += ["hjson", "msgpack", "ninja", "py-cpuinfo", "pydantic", "pydantic-core", "annotated-types"]
BUNDLED += ["typing-inspection"]
# Python packages of the GPU image ('cuda'), as the device tool's KINDS.md lists them (2026-11-17)
IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
charset-normalizer click cloudpickle contourpy cycler einops filelock fonttools frozenlist fsspec h11 h5py hf-xet
httpcore httpx huggingface-hub idna jinja2 joblib kiwisolver markdown-it-py markupsafe matplotlib mdurl mpmath
multidict networkx numpy packaging pandas peft pillow pip propcache protobuf psutil pyarrow pygments pyparsing
python-dateutil pyyaml regex requests rich safetensors scipy sentencepiece setuptools shellingham six sympy tiktoken
tokenizers torch tqdm transformers triton typer typing-extensions urllib3 wheel xxhash yarl zipp""".split()
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
LIMIT_MIB = 60


def download(requirement: str, folder: str) -> None:
    platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", *platforms, "-d", folder, requirement]
    subprocess.run(command, check=True)


def requirements_of(wheel: str) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    requirements = [Requirement(line.split(":", 1)[1]) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"python_version": "3.12", "extra": ""})]


def main(folder: str = os.path.join(ROOT, ".gpu_bundle")) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for name in BUNDLED:
        download(f"{name}=={importlib.metadata.version(name)}", folder)
    for name in BUILT:
        requirement = f"{name}=={importlib.metadata.version(name)}"
        environment = {**os.environ, "DS_BUILD_OPS": "0"}
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", folder]
        subprocess.run([*command, requirement], check=True, env=environment)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", folder, ROOT],
        check=True,
    )
    wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
    names = {canonicalize_name(re.split(r"-\d", os.path.basename(w), maxsplit=1)[0]) for w in wheels}
    present = names | {canonicalize_name(name) for name in IMAGE}
    missing = {
        f"{os.path.basename(wheel)} needs {requirement}"
        for wheel in wheels
        for requirement in requirements_of(wheel)
        if canonicalize_name(requirement.name) not in present
    }
    # The project's own optional run-time dependencies (wandb, math-verify, ...) are not imported by the check
    missing = {line for line in missing if not line.startswith("depo_trl-")}
    if missing:
        raise SystemExit("Missing from the bundle and the image:\n" + "\n".join(sorted(missing)))
    size = sum(os.path.getsize(wheel) for wheel in wheels) / 2**20
    if size > LIMIT_MIB:
        raise SystemExit(f"{folder}: {size:.1f} MiB, over the {LIMIT_MIB} MiB a device call carries")
    print(f"{folder}: {len(wheels)} wheels, {size:.1f} MiB: {', '.join(sorted(os.path.basename(w) for w in wheels))}")


if __name__ == "__main__":
    main(*sys.argv[1:])
