"""Every GPU check of the project in one run, written up as one markdown report.

Run it through ``benchmarks/gpu_check.sh`` from the repository root, in the environment the
project is installed in (``pip install -e ".[dev]"``; torch with CUDA and Triton; TensorRT used
when importable). Steps, in order, each with a time cap, the caps adding up to at most the budget
(default 540 s; 1500 s with ``--slow``):

1. environment: GPU, driver, compute capability, Python, torch (CUDA), Triton, TensorRT, and what
   Triton's JIT launcher compiles with (a C compiler, Python's headers);
2. kernel numerics: ``tests/plugins/test_mdcn_cuda.py``, every tile at every dtype against
   torchvision (the measured errors go into the report's table);
3. ``compute-sanitizer --tool memcheck`` on a small case of every dtype and tile (when the tool
   is installed);
4. the other ``gpu`` and ``tensorrt`` tests (``pytest -m "(gpu or tensorrt) and not slow"``; the
   engine build matrix is ``slow``, run with ``--slow``);
5. ``benchmarks/dcn_gpu.py --skip-model``: each deformable conv of a DyConv block, ours vs
   torchvision;
6. ``benchmarks/dcn_gpu.py --skip-convs``: ATSS R-50 at 800x1333, float32 and float16 autocast,
   each with torchvision's kernel and ours;
7. the default model's fp32 and fp16 TensorRT engines (our plugin's AOT kernels; the quick run's
   one fp16 engine build): AP and AP50 on its validation split (``dyhead-serve eval --model DIR
   --backend tensorrt``) and latency at 800x1344.

Every step runs in a process group of its own and is killed whole (its children too) at its cap.
A step that cannot run here (no GPU, no tool) is reported as skipped with the reason, so the
script runs end to end on a CPU-only machine too. Exit status: 1 when a step failed or timed out,
else 0. The report's format is described in docs/gpu-check.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 540  # one run fits a 10-minute slot with room for the report
SLOW_BUDGET_S = 1500
ENVIRONMENT_CAP_S = 45  # the probe (30 s) and two git commands (5 s each) before the plan's steps
KILL_GRACE_S = 5  # between SIGTERM and SIGKILL to a step's process group
OUTPUT_TAIL = 6000  # characters of a step's output kept in the report
NO_GPU = "no CUDA GPU visible"
ENGINES = "default model: fp32 and fp16 engines (AP, latency)"


def plan(slow: bool = False) -> list[tuple[str, float]]:
    """The steps after the environment, with their caps in seconds (they add up, with
    :data:`ENVIRONMENT_CAP_S`, to at most the budget of the run)."""
    return [
        ("kernel numerics (every tile and dtype)", 75),
        ("compute-sanitizer memcheck (small case)", 45),
        ("gpu and tensorrt tests", 900 if slow else 130),
        ("benchmarks/dcn_gpu.py: deformable convs", 35),
        ("whole model: ATSS R-50 800x1333", 45),
        (ENGINES, 165),
    ]


_PROBE = """
import importlib.util, json, torch
info = {"python": __import__("platform").python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "gpu": None, "triton": None, "tensorrt": None}
if torch.cuda.is_available():
    major, minor = torch.cuda.get_device_capability()
    props = torch.cuda.get_device_properties(0)
    info.update(gpu=torch.cuda.get_device_name(0), capability=f"sm_{major}{minor}",
                memory_gib=round(props.total_memory / 2**30, 1), gpus=torch.cuda.device_count())
for name in ("triton", "tensorrt"):
    if importlib.util.find_spec(name) is not None:
        try:
            info[name] = __import__(name).__version__
        except Exception as exc:
            info[name] = f"present, not importable ({type(exc).__name__}: {exc})"
# What Triton's JIT launcher builds its C extension with (triton/runtime/build.py): $CC, clang or
# gcc, and the interpreter's Python.h.
import os, shutil, sysconfig
compiler = os.environ.get("CC") or shutil.which("clang") or shutil.which("gcc")
include = sysconfig.get_paths(scheme=sysconfig.get_default_scheme())["include"]
headers = os.path.isfile(os.path.join(include, "Python.h"))
info.update(c_compiler=compiler, python_headers=include if headers else None, python_include=include)
print(json.dumps(info))
"""

# Latency of a TensorRT engine folder: the network and decoding on one preprocessed 800x1333
# photo-like image (padded to the model's divisibility), median and p90 of 30 runs after 5.
_LATENCY = """
import json, statistics, sys, time
import numpy as np, torch
from dyhead_serve.data.sample_image import synthetic_photo
from dyhead_serve.pipeline.preprocess import preprocess
from dyhead_serve.runtime.loader import load_backend
from dyhead_serve.runtime.options import ModelOptions

backend = load_backend(ModelOptions(sys.argv[1], backend="tensorrt", device="cuda"))
batch = preprocess([synthetic_photo(800, 1333, seed=0)], backend.input_spec)
sizes = batch.image_sizes_tensor()
runs = []
for i in range(35):
    torch.cuda.synchronize(); started = time.perf_counter()
    outputs = backend.infer(batch.images, sizes)
    backend.decoder(outputs, batch.padded_hw, batch.image_sizes, original_sizes=batch.original_sizes)
    torch.cuda.synchronize()
    if i >= 5:
        runs.append(time.perf_counter() - started)
print(json.dumps({"p50_ms": statistics.median(runs) * 1e3, "p90_ms": float(np.percentile(runs, 90)) * 1e3,
                  "shape": list(batch.images.shape)}))
"""

# A small case of every dtype and tile, for compute-sanitizer: odd sizes, stride 2, a larger map.
_MEMCHECK_CASE = """
import torch
from torchvision.ops import deform_conv2d
from dyhead_serve.ops import read_leading_offset_map
from dyhead_serve.plugins import modulated_deform_conv
from dyhead_serve.plugins.mdcn_kernel import TILES

dtypes = [torch.float32, torch.float16]
if torch.cuda.get_device_capability() >= (8, 0):
    dtypes.append(torch.bfloat16)
gen = torch.Generator(device="cuda").manual_seed(0)
for dtype in dtypes:
    for tile in TILES:
        for stride, map_hw in ((1, (14, 22)), (2, None)):
            x = torch.randn(2, 20, 13, 21, generator=gen, device="cuda")
            ho, wo = (13 - 1) // stride + 1, (21 - 1) // stride + 1
            mh, mw = map_hw or (ho, wo)
            offset = torch.randn(2, 18, mh, mw, generator=gen, device="cuda") * 3
            mask = torch.rand(2, 9, mh, mw, generator=gen, device="cuda")
            weight = torch.randn(24, 20, 3, 3, generator=gen, device="cuda") / 13
            bias = torch.randn(24, generator=gen, device="cuda")
            args = [t.to(dtype) for t in (x, offset, mask, weight, bias)]
            got = modulated_deform_conv(*args, stride=stride, padding=1, offset_mode="leading", tile=tile)
            f = [t.float() for t in args]
            ref = deform_conv2d(f[0], read_leading_offset_map(f[1], ho, wo), f[3], f[4], stride=stride,
                                padding=1, mask=read_leading_offset_map(f[2], ho, wo))
            err = float((got.float() - ref).abs().max() / ref.abs().max())
            assert err < 2e-2, (dtype, tile.name, stride, err)
torch.cuda.synchronize()
print(f"{len(dtypes) * len(TILES) * 2} launches checked")
"""


@dataclass
class Step:
    """One step's outcome: passed, failed, skipped, timed out or not run."""

    name: str
    result: str = "not run"
    seconds: float = 0.0
    note: str = ""
    command: str = ""
    output: str = ""
    extra: list[str] = field(default_factory=list)  # markdown lines after the output


def _run(
    command: list[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[int | None, str, float]:
    """(exit status or None on timeout, output, seconds).

    The command runs in a new session, so in a process group of its own: at the timeout the
    whole group (pytest's workers, compute-sanitizer's target, a TensorRT build's children) gets
    SIGTERM, then SIGKILL after :data:`KILL_GRACE_S`, and nothing of it outlives the step.
    """
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=max(timeout, 1))
        return process.returncode, output, time.monotonic() - started
    except subprocess.TimeoutExpired:
        _kill_group(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        _kill_group(process.pid, signal.SIGKILL)  # children that ignored SIGTERM
        return None, output or "", time.monotonic() - started


def _kill_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


def _junit_counts(path: Path) -> dict[str, int]:
    """passed / failed / skipped test counts of a pytest JUnit XML file."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if not path.is_file():
        return counts
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def _skip_reasons(path: Path) -> list[str]:
    reasons = set()
    if path.is_file():
        for case in ET.parse(path).getroot().iter("testcase"):
            skipped = case.find("skipped")
            if skipped is not None:
                reasons.add(str(skipped.get("message", "")).removeprefix("Skipped: "))
    return sorted(reasons)


def _numerics_table(path: Path) -> list[str]:
    """Markdown rows of the kernel-numerics cases that ran: dtype, tile, case, error, tolerance."""
    rows = []
    if path.is_file():
        for case in ET.parse(path).getroot().iter("testcase"):
            props = {p.get("name"): p.get("value") for p in case.iter("property")}
            match = re.search(r"\[(\w+)-(\w+)-(\w+)\]$", str(case.get("name")))
            if match and "relative_error" in props:
                failed = case.find("failure") is not None or case.find("error") is not None
                dtype, tile, name = match.groups()
                rows.append(
                    f"| {dtype} | {tile} | {name} | {props['relative_error']} | {props.get('tolerance')} | "
                    f"{'FAIL' if failed else 'ok'} |"
                )
    if not rows:
        return []
    return [
        "",
        "| dtype | tile | case | relative error | tolerance | result |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def _pytest_step(step: Step, args: list[str], junit: Path, timeout: float) -> None:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfEs",
        f"--junitxml={junit}",
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    step.command = _shown(command)
    status, step.output, step.seconds = _run(command, timeout, env)
    counts = _junit_counts(junit)
    step.note = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    if status is None:
        step.result = "timed out"
    elif status not in (0, 5):
        step.result = "failed"
    elif counts["passed"] == 0:
        step.result = "skipped"
        reasons = _skip_reasons(junit)
        step.note += f": {'; '.join(reasons)}" if reasons else ": no test ran"
    else:
        step.result = "passed"


def _shown(command: list[str]) -> str:
    """A command as a person would type it (``python`` for this interpreter)."""
    return shlex.join(["python" if part == sys.executable else part for part in command])


def _script_step(step: Step, command: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
    step.command = _shown(command)
    status, step.output, step.seconds = _run(command, timeout, env)
    step.result = "timed out" if status is None else "passed" if status == 0 else "failed"
    if status is not None and status != 0:
        step.note = f"exit status {status}"


def _compute_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for candidate in sorted(Path("/usr/local").glob("cuda*/bin/compute-sanitizer"), reverse=True):
        return str(candidate)
    return None


def _environment() -> tuple[Step, dict]:
    step = Step("environment")
    status, output, step.seconds = _run([sys.executable, "-c", _PROBE], 30)
    info: dict = {}
    if status == 0:
        info = json.loads(output.strip().splitlines()[-1])
        step.result = "passed"
    else:
        step.result, step.output = "failed", output
    smi = shutil.which("nvidia-smi")
    if smi:
        query = [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        code, text, _ = _run(query, 5)
        info["nvidia_smi"] = text.strip() if code == 0 else f"nvidia-smi failed: {text.strip()[:200]}"
    commit = _run(["git", "rev-parse", "--short", "HEAD"], 5)
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], 5)
    info["commit"] = (
        (commit[1].strip() + (" (with local changes)" if dirty[1].strip() else "")) if commit[0] == 0 else "?"
    )
    step.note = info.get("gpu") or NO_GPU
    return step, info


def _console(name: str) -> str:
    """A console script of this environment (beside the interpreter), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


def engine_commands(work: Path, precision: str) -> list[tuple[str, list[str]]]:
    """The default model's ``precision`` engine: export (the float16 ONNX for fp16: strongly typed
    TensorRT takes the precision from the graph), build with our plugin's AOT kernels, evaluate."""
    folder = work / f"default-{precision}"
    fp16 = precision == "fp16"
    export, serve = _console("dyhead-export"), _console("dyhead-serve")
    return [
        ("export", [export, "onnx", "--model", "default", "--out", str(folder), "--dcn", "plugin",
                    *(["--precision", "fp16"] if fp16 else [])]),
        ("build", [export, "tensorrt", "--onnx", str(folder), "--out", str(folder), "--profile", "coco",
                   "--plugin-impl", "aot", "--no-verify", *(["--fp16"] if fp16 else [])]),
        ("eval", [serve, "eval", "--model", str(folder), "--backend", "tensorrt", "--no-progress",
                  "OUTPUT_DIR", str(work / f"eval-{precision}")]),
        ("latency", [sys.executable, "-c", _LATENCY, str(folder)]),
    ]  # fmt: skip


def _engines_step(step: Step, work: Path, timeout: float) -> None:
    """fp32 and fp16 engines of the default model: AP, AP50 and latency of each, side by side."""
    deadline = time.monotonic() + timeout
    rows, outputs, failed = [], [], None
    for precision in ("fp32", "fp16"):
        row: dict = {"precision": precision}
        for what, command in engine_commands(work, precision):
            left = deadline - time.monotonic()
            if left < 5:
                step.result, failed = "timed out", f"{precision} {what}: the step's time was spent"
                break
            status, output, seconds = _run(command, left)
            step.seconds += seconds
            outputs.append(f"$ {_shown(command)}\n{output.strip()[-1500:]}")
            row[f"{what}_s"] = seconds
            if status != 0:
                step.result = "timed out" if status is None else "failed"
                failed = f"{precision} {what}: " + (
                    "timed out" if status is None else f"exit status {status}"
                )
                break
            if what == "eval":
                metrics = json.loads((work / f"eval-{precision}" / "coco_eval.json").read_text())
                row.update(ap=metrics.get("AP"), ap50=metrics.get("AP50"))
            elif what == "latency":
                row.update(json.loads(output.strip().splitlines()[-1]))
        rows.append(row)
        if failed:
            break
    step.command = "dyhead-export onnx / tensorrt, dyhead-serve eval --backend tensorrt, per precision"
    step.output = "\n\n".join(outputs)
    if not failed:
        step.result = "passed"
    step.extra = _engines_table(rows)
    done = [r for r in rows if "ap50" in r]
    if len(done) == 2:
        step.note = f"AP50 fp16 - fp32: {done[1]['ap50'] - done[0]['ap50']:+.2f}"
    if failed:
        step.note = "; ".join(filter(None, [step.note, failed]))


def _engines_table(rows: list[dict]) -> list[str]:
    """Markdown rows: precision, AP, AP50, latency p50/p90, build seconds."""

    def cell(row: dict, key: str, spec: str) -> str:
        value = row.get(key)
        return format(value, spec) if isinstance(value, int | float) else "-"

    lines = [
        "",
        "| engine | AP | AP50 | p50 ms | p90 ms | build s |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['precision']} | {cell(row, 'ap', '.2f')} | {cell(row, 'ap50', '.2f')} | "
            f"{cell(row, 'p50_ms', '.1f')} | {cell(row, 'p90_ms', '.1f')} | {cell(row, 'build_s', '.0f')} |"
        )
    return lines if rows else []


def run_checks(work: Path, budget_s: float, slow: bool = False) -> tuple[list[Step], dict]:
    """Run every step within ``budget_s`` seconds; (steps, environment).

    ``slow`` adds the ``slow``-marked GPU tests (the engine build matrix) to the tests step.
    """
    started = time.monotonic()

    def left(cap: float) -> float:
        return min(cap, budget_s - (time.monotonic() - started))

    env_step, info = _environment()
    steps = [env_step]
    has_gpu = bool(info.get("gpu"))
    has_tensorrt = bool(info.get("tensorrt")) and not str(info.get("tensorrt")).startswith("present")

    for name, cap in plan(slow):
        step = Step(name)
        steps.append(step)
        timeout = left(cap)
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        if timeout < 5:
            step.note = "the time budget was spent"
            continue
        if name.startswith("kernel numerics"):
            junit = work / "numerics.xml"
            _pytest_step(step, ["tests/plugins/test_mdcn_cuda.py"], junit, timeout)
            step.extra = _numerics_table(junit)
        elif name.startswith("compute-sanitizer"):
            sanitizer = _compute_sanitizer()
            if not has_gpu or sanitizer is None:
                step.result = "skipped"
                step.note = NO_GPU if not has_gpu else "compute-sanitizer is not installed (CUDA toolkit)"
                continue
            env = {**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}  # each tensor its own allocation
            env.pop("TRITON_INTERPRET", None)
            command = [
                sanitizer,
                "--tool",
                "memcheck",
                "--error-exitcode",
                "1",
                sys.executable,
                "-c",
                _MEMCHECK_CASE,
            ]
            _script_step(step, command, timeout, env)
            step.command = (
                f"{sanitizer} --tool memcheck --error-exitcode 1 python -c <small case, every tile>"
            )
            summary = re.search(r"ERROR SUMMARY: \d+ errors?", step.output)
            step.note = "; ".join(filter(None, [step.note, summary.group(0) if summary else ""]))
        elif name == "gpu and tensorrt tests":
            marker = "gpu or tensorrt" if slow else "(gpu or tensorrt) and not slow"
            args = ["-m", marker, "tests", "--ignore=tests/plugins/test_mdcn_cuda.py"]
            _pytest_step(step, args, work / "tests.xml", timeout)
        elif not has_gpu:
            step.result, step.note = "skipped", NO_GPU
        elif name == ENGINES:
            if not has_tensorrt:
                step.result, step.note = "skipped", "TensorRT is not installed (its Python bindings)"
                continue
            _engines_step(step, work, timeout)
        elif name.startswith("benchmarks/dcn_gpu.py"):
            _script_step(
                step, [sys.executable, "benchmarks/dcn_gpu.py", "--skip-model", "--iters", "20"], timeout
            )
        else:
            _script_step(step, [sys.executable, "benchmarks/dcn_gpu.py", "--skip-convs"], timeout)
    return steps, info


def _launcher_toolchain(info: dict) -> str:
    """What Triton's JIT launcher compiles with, or what is missing (reported, not required: the
    AOT engine path needs neither)."""
    compiler = info.get("c_compiler") or "none found (set CC, or install gcc)"
    include = info.get("python_include", "?")
    headers = info.get("python_headers") or f"missing in {include} (install python3-dev)"
    return f"C compiler {compiler}; Python headers {headers}"


def render(steps: list[Step], info: dict, total_s: float, budget_s: float) -> str:
    """The markdown report (format: docs/gpu-check.md)."""
    gpu = info.get("gpu")
    lines = [
        f"# GPU check: {gpu or 'no CUDA GPU'}",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; host: {platform.node()}; "
        f"commit: {info.get('commit', '?')}",
        f"- GPU: {gpu} ({info.get('capability')}, {info.get('memory_gib')} GiB, {info.get('gpus')} visible)"
        if gpu
        else "- GPU: none visible (torch.cuda.is_available() is False)",
        f"- nvidia-smi: {info.get('nvidia_smi', 'not installed')}",
        f"- Python {info.get('python', '?')}, torch {info.get('torch', '?')} (CUDA {info.get('cuda')}), "
        f"Triton {info.get('triton') or 'not installed'}, TensorRT {info.get('tensorrt') or 'not installed'}",
        f"- Triton's JIT launcher: {_launcher_toolchain(info)}",
        f"- total: {total_s:.0f} s of a {budget_s:.0f} s budget",
        "",
        "| step | result | seconds | note |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s.name} | {s.result} | {s.seconds:.0f} | {s.note} |" for s in steps]
    for step in steps[1:]:
        lines += [
            "",
            f"## {step.name}",
            "",
            f"Result: **{step.result}**" + (f" ({step.note})" if step.note else ""),
        ]
        if step.command:
            lines += ["", f"`{step.command}`"]
        if step.output.strip():
            tail = step.output.strip()[-OUTPUT_TAIL:]
            lines += ["", "```", tail, "```"]
        lines += step.extra
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="report file (default: benchmarks/results/...)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help=f"seconds for all steps (default {BUDGET_S}; {SLOW_BUDGET_S} with --slow)",
    )
    parser.add_argument(
        "--slow", action="store_true", help="also the slow GPU tests (the engine build matrix)"
    )
    args = parser.parse_args()
    budget = args.budget if args.budget is not None else SLOW_BUDGET_S if args.slow else BUDGET_S
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_check-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    steps, info = run_checks(work, budget, slow=args.slow)
    total = time.monotonic() - started
    slug = re.sub(r"[^a-z0-9]+", "-", (info.get("gpu") or "no-gpu").lower()).strip("-")
    out = args.out or REPO / "benchmarks" / "results" / f"gpu_check-{slug}-{datetime.now():%Y%m%d-%H%M%S}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(steps, info, total, budget))
    shutil.rmtree(work, ignore_errors=True)
    width = max(len(s.name) for s in steps)
    for step in steps:
        print(f"{step.name:{width}s}  {step.result:9s} {step.seconds:5.0f} s  {step.note}")
    print(f"report: {out}")
    return 1 if any(s.result in ("failed", "timed out") for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
