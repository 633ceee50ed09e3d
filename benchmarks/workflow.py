"""Benchmark what a user gets: the shipped ``nanoseg run`` on the shared TiO2 micrographs, several seeds.

For each seed the script runs, as subprocesses, exactly the commands of the README:

1. ``nanoseg run DATA --out WORK/seed<S>/run --profile PROFILE --seed S`` with the profile's
   defaults and no other setting (``--smoke`` adds the step-count cuts of
   :func:`benchmarks.common.smoke_overrides`). DATA is ``../shared/data/bam-tio2`` itself (its ``sem/``
   and ``outlines/``; the workflow never reads ``masks/`` or ``classes/``), or, with
   ``--images N``, a folder of links to the first N micrographs and the outlines;
2. ``nanoseg measure DATA/sem --model RUN/adapt/model.pt --classifier RUN/classify/model.pt
   --config RUN/config.yaml --probabilities``: the run's models applied to the micrographs the
   way a user measures new images.

It then scores every image against the expert's manual masks: the ``strict`` protocol on the
measured instance labels (probability maps only for Youden's ROC) and the ``paper`` protocol on
the probability maps (see :mod:`nanoseg.metrics`), and compares the kept particles' size
distribution with the manual particles that the manual classes keep (count; mean, median, D10,
D90 of min Feret and ECD; relative errors; KS), all pooled over the images. Diagnostics per seed:
the segmenter's strict F1 on its own held-out synthetic pairs beside its F1 on the real images
(the domain gap), the artifact filter's drop count, and the precision/recall of "keep" against
the manual classes. The scoring lives in ``workflow_scoring.py``, the Markdown in
``workflow_report.py``.

The supervised reference (``--supervised``, on by default) trains the same segmentation net
(the profile's segment settings, UNet) on the manual masks by k-fold cross-validation (fold k
holds out every k-th image, 6 images per fold for 30 images), one seed, and keeps particles by
the classifier's rules; it is scored on the same images in the same way.

Results: ``benchmarks/results/workflow_<profile>[_smoke].md`` and ``.json``, per seed and mean +- sd
across seeds, with per-stage wall time and peak RSS, the machine and the commit. Overlays of
three fixed images (expert outlines vs the first seed's particles) go to
``benchmarks/results/workflow_<profile>[_smoke]/``; they show the CC BY-NC-ND micrographs, so
they are not committed (``.gitignore``): the script makes them again.

    python -m benchmarks.workflow                         # quick profile, seeds 0,1,2, all 30 images
    python -m benchmarks.workflow --profile demo --smoke --seeds 0 --images 3   # minutes; the tests run this
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.workflow_report import readme_section, render_report
from benchmarks.workflow_scoring import aggregate, expert_truth, headline, read_seed_outputs, score_images, score_seed
from nanoseg.atomic import write_json, write_text
from nanoseg.errors import NanosegError
from nanoseg.runtime import peak_rss_mb

ROOT = common.ROOT
DATA = common.DATA
RESULTS = common.RESULTS
logger = logging.getLogger("nanoseg.benchmarks.workflow")

#: Images whose overlays are drawn (fixed: first, middle and last of the 30 sorted ids).
OVERLAY_IDS: tuple[str, ...] = (common.ALL_IDS[0], common.ALL_IDS[14], common.ALL_IDS[-1])


# --------------------------------------------------------------------------------------------
# Running the commands
# --------------------------------------------------------------------------------------------


def nanoseg_cli(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``python -m nanoseg ARGS`` (the installed CLI); returns its wall time, CPU time and peak RSS.

    The CPU time (user + system) is what the process would need alone on one core: with
    ``--jobs`` > 1 the wall time is that of a shared machine, the CPU time is not.

    Raises NanosegError naming the log when the command fails.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "nanoseg", *args]
    logger.info("$ nanoseg %s", " ".join(args))
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        # wait4 gives this child's own resource use (RUSAGE_CHILDREN would mix all children).
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise NanosegError(f"nanoseg {args[0]} failed (exit {proc.returncode}); see {log_path}: {' | '.join(tail)}")
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def smoke_sets(profile: str) -> list[str]:
    """``--set`` options that shrink every step count like ``bam_tio2 --smoke`` (:func:`common.smoke_overrides`)."""
    from nanoseg.config import build_config

    sets = []
    for section, values in common.smoke_overrides(build_config(profile=profile)).items():
        sets += [f"{section}.{key}={value}" for key, value in values.items()]
    return sets


def data_folder(image_ids: tuple[str, ...], work_dir: Path) -> Path:
    """The data folder a user would give: the shared one itself, or links to a subset of it."""
    if image_ids == common.ALL_IDS:
        return DATA
    from nanoseg.evaluate.baselines import link_file

    folder = work_dir / "data"
    for i in image_ids:
        link_file(DATA / "sem" / f"{i}.tif", folder / "sem" / f"{i}.tif")
    for outline in sorted((DATA / "outlines").iterdir()):
        link_file(outline, folder / "outlines" / outline.name)
    return folder


def run_seed(seed: int, profile: str, sets: list[str], data: Path, seed_dir: Path,
             env: dict[str, str] | None = None, resume: bool = False) -> dict[str, Any]:
    """``nanoseg run`` then ``nanoseg measure`` for one seed; returns stage times and memory.

    With ``resume`` the measure folder of an earlier call is kept: ``nanoseg measure`` itself
    skips the images it finished with the same model and settings, so its time is that of the
    remaining images.
    """
    run_dir, measure_dir = seed_dir / "run", seed_dir / "measure"
    set_args = [a for s in sets for a in ("--set", s)]
    logger.info("seed %d", seed)
    run_res = nanoseg_cli(["run", str(data), "--out", str(run_dir), "--profile", profile, "--seed", str(seed),
                           *set_args], seed_dir / "run.log", env)
    stages: dict[str, dict[str, float]] = {}
    for marker in (run_dir / name / ".done.json" for name in _stage_names()):
        rec = json.loads(marker.read_text())
        stages[f"run: {marker.parent.name}"] = {"wall_s": rec["seconds"], "peak_rss_mb": rec.get("peak_rss_mb")}
    stages["nanoseg run (whole process)"] = run_res
    if measure_dir.exists() and not resume:
        shutil.rmtree(measure_dir)
    measure_args = ["measure", str(data / "sem"), "--model", str(run_dir / "adapt" / "model.pt"),
                    "--config", str(run_dir / "config.yaml"), "--out", str(measure_dir), "--probabilities"]
    if (run_dir / "classify" / "model.pt").is_file():
        measure_args += ["--classifier", str(run_dir / "classify" / "model.pt")]
    stages["nanoseg measure (whole process)"] = nanoseg_cli(measure_args, seed_dir / "measure.log", env)
    return {"stages": stages, "run_dir": run_dir, "measure_dir": measure_dir}


def _stage_names() -> tuple[str, ...]:
    from nanoseg.pipeline import STAGE_NAMES

    return STAGE_NAMES


# --------------------------------------------------------------------------------------------
# Supervised reference: UNet on the manual masks, k-fold cross-validation
# --------------------------------------------------------------------------------------------


def supervised_key(profile: str, smoke: bool, image_ids: tuple[str, ...], n_folds: int) -> dict[str, Any]:
    """What the supervised reference depends on: a cached result is reused only when all of it matches.

    It keeps particles by the rules alone, so of the classify settings only the rules count.
    """
    import hashlib

    from nanoseg.classify import RULE_SETTINGS

    config = common.unet_config(common.benchmark_config(profile, smoke=smoke))
    rules = json.dumps(config.classify.model_dump(mode="json", include=set(RULE_SETTINGS)), sort_keys=True)
    return {"profile": profile, "smoke": smoke, "images": list(image_ids), "folds": min(n_folds, len(image_ids)),
            "seed": config.seed, "segment": config.section_hash("segment"),
            "classify_rules": hashlib.sha256(rules.encode()).hexdigest()[:16]}


def cached_supervised(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The supervised result stored at ``path`` when it was made with exactly ``key``, else None."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except ValueError:
        return None
    return stored["result"] if stored.get("key") == key else None


def supervised_reference(profile: str, smoke: bool, truth: dict[str, tuple[np.ndarray, np.ndarray]], work_dir: Path,
                         n_folds: int = 5) -> dict[str, Any]:
    """Train on the manual masks of all folds but one, segment the held-out fold; score all images."""
    from nanoseg import nets, segment
    from nanoseg.evaluate.baselines import link_file
    from nanoseg.io import read_micrograph
    from nanoseg.runtime import configure_torch, seed_everything

    image_ids = tuple(truth)
    config = common.unet_config(common.benchmark_config(profile, smoke=smoke))
    configure_torch(config.num_threads)
    n_folds = min(n_folds, len(image_ids))
    labels, probs, stages = {}, {}, {}
    micrographs = {i: read_micrograph(DATA / "sem" / f"{i}.tif") for i in image_ids}
    for k in range(n_folds):
        held_out = image_ids[k::n_folds]
        folder = work_dir / f"fold{k}"
        for i in image_ids:
            if i not in held_out:
                link_file(DATA / "sem" / f"{i}.tif", folder / "pairs" / "images" / f"{i}.tif")
                link_file(DATA / "masks" / f"{i}_m.tif", folder / "pairs" / "masks" / f"{i}_m.tif")
        t0 = time.perf_counter()
        pairs = segment.load_pairs(folder / "pairs")
        model = segment.train(pairs, config.segment, folder / "model", rng=seed_everything(config.seed),
                              pixel_size_nm=common.pixel_size_nm())
        net, meta = nets.load(model)
        for i in held_out:
            labels[i], probs[i] = segment.segment_image(net, meta, micrographs[i].image, config.segment,
                                                        pixel_size_nm=micrographs[i].pixel_size_nm)
        stages[f"fold {k}: train {config.segment.steps} steps + segment {len(held_out)}"] = {
            "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
    kept = common.keep_discard(labels, micrographs, common.rules_only(config))
    scored = score_images(labels, probs, kept, truth, common.pixel_size_nm())
    scored["stages"] = stages
    scored["notes"] = (f"{config.segment.architecture} {config.segment.target}, {config.segment.steps} steps, "
                       f"{n_folds}-fold cross-validation on the manual masks, seed {config.seed}, kept by the rules")
    return scored


def write_overlays(measure_dir: Path, image_ids: tuple[str, ...], out_dir: Path) -> list[str]:
    """Expert outlines vs our particles on the micrograph, for the fixed overlay images."""
    from skimage.segmentation import find_boundaries

    from nanoseg.io import read_micrograph, write_png
    from nanoseg.labels import label_binary

    labels, _, kept = read_seed_outputs(measure_dir, tuple(i for i in OVERLAY_IDS if i in image_ids))
    written = []
    for i in labels:
        image = read_micrograph(DATA / "sem" / f"{i}.tif").image
        rgb = np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
        expert = find_boundaries(label_binary(common.manual_mask(i), 1), mode="inner")
        ours = find_boundaries(labels[i], mode="inner")
        ours_kept = ours & (kept[i] > 0)
        rgb[ours & ~ours_kept] = (230, 40, 230)
        rgb[ours_kept] = (250, 230, 0)
        rgb[expert] = (0, 220, 255)
        path = out_dir / f"overlay_{i}.png"
        write_png(path, rgb)
        written.append(common.shown_path(path))
    return written


# --------------------------------------------------------------------------------------------


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return out + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _finite(tree: Any) -> Any:
    """JSON-ready: paths as text, numpy scalars as Python, NaN/inf as None."""
    if isinstance(tree, dict):
        return {str(k): _finite(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_finite(v) for v in tree]
    return str(tree) if isinstance(tree, Path) else common.finite(tree)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", choices=("demo", "quick", "paper"))
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds (default 0,1,2).")
    parser.add_argument("--images", type=int, default=None, help="Use the first N of the 30 images (default all).")
    parser.add_argument("--smoke", action="store_true", help=f"Divide every step count by {common.SMOKE_FACTOR} "
                        "(polygon shapes): checks the code path in minutes; meaningless numbers.")
    parser.add_argument("--no-supervised", dest="supervised", action="store_false",
                        help="Skip the supervised cross-validated reference.")
    parser.add_argument("--folds", type=int, default=5, help="Folds of the supervised reference (default 5).")
    parser.add_argument("--only-supervised", action="store_true",
                        help="Compute the supervised reference only and store it in results/<name>_supervised.json. "
                        "It does not depend on the workflow's settings, so a later run reuses it while the profile's "
                        "segment/classify settings, the images and the folds are the same.")
    parser.add_argument("--fresh-supervised", action="store_true", help="Recompute the supervised reference even "
                        "when a stored one matches.")
    parser.add_argument("--jobs", type=int, default=1, help="Seeds run at once (default 1). Each `nanoseg` "
                        "process then gets cores/jobs torch threads; stage times are those of a shared machine.")
    parser.add_argument("--resume", action="store_true", help="Keep the run folders of an interrupted call: "
                        "`nanoseg run` skips its finished stages (their times are those of the earlier call), "
                        "`nanoseg measure` its finished images.")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="Pass `--set KEY=VALUE` to every `nanoseg run` (repeatable): an experiment against the "
                        "profile's defaults. Give it its own --out and --work-dir; the report shows the command.")
    parser.add_argument("--note", default=None, help="A line on the conditions (e.g. machine load) for the report.")
    parser.add_argument("--render-from", type=Path, default=None, help="Only rewrite the report (and with --readme "
                        "the README section) from an earlier run's JSON; runs nothing.")
    parser.add_argument("--readme", type=Path, default=None, help="Also write the summary into this README between "
                        "its workflow-benchmark markers.")
    parser.add_argument("--work-dir", type=Path, default=None, help="Run folders (not committed); default "
                        "benchmarks/work/workflow_<profile>[_smoke].")
    parser.add_argument("--out", type=Path, default=None, help="Report; default results/workflow_<profile>[_smoke].md.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.render_from is not None:
        return rerender(args.render_from, args.note, args.readme, args.folds)
    if not (DATA / "masks").is_dir():
        raise SystemExit(f"error: {DATA} not found; the benchmark needs the shared TiO2 data")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"error: --seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise SystemExit("error: --seeds: give at least one seed")
    n_images = len(common.ALL_IDS) if args.images is None else args.images
    if not 1 <= n_images <= len(common.ALL_IDS):
        raise SystemExit(f"error: --images {args.images}: choose 1 to {len(common.ALL_IDS)}")
    image_ids = common.ALL_IDS[:n_images]
    name = f"workflow_{args.profile}{'_smoke' if args.smoke else ''}"
    work_dir = args.work_dir or ROOT / "benchmarks" / "work" / (name + ("_supervised" if args.only_supervised else ""))
    out = args.out or RESULTS / f"{name}.md"
    if work_dir.exists() and not args.resume:
        shutil.rmtree(work_dir)  # every seed trains from scratch
    sets = (smoke_sets(args.profile) if args.smoke else []) + list(args.sets)
    data = data_folder(image_ids, work_dir)
    t_start = time.perf_counter()
    load = os.getloadavg()
    per_seed: dict[int, dict[str, Any]] = {}
    overlays: list[str] = []
    truth = expert_truth(image_ids)
    supervised_path = out.with_name(f"{out.stem}_supervised.json")
    key = supervised_key(args.profile, args.smoke, image_ids, args.folds)

    def compute_supervised() -> dict[str, Any]:
        logger.info("supervised reference (%d-fold)", args.folds)
        t0 = time.perf_counter()
        result = supervised_reference(args.profile, args.smoke, truth, work_dir / "supervised", args.folds)
        result["made"] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(),
                          "wall_s": round(time.perf_counter() - t0, 1), "load_at_start": " / ".join(
                              f"{v:.2f}" for v in load)}
        write_json(supervised_path, _finite({"key": key, "result": result}))
        return result

    if args.only_supervised:
        compute_supervised()
        return {"supervised": str(supervised_path)}
    from concurrent.futures import ThreadPoolExecutor

    # Seeds run as separate `nanoseg` processes; with --jobs > 1 several at once (threads only
    # wait for their subprocesses), each process with its share of the cores.
    env = None
    if args.jobs > 1:
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, common.cpu_count() // args.jobs)))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {seed: pool.submit(run_seed, seed, args.profile, sets, data, work_dir / f"seed{seed}", env,
                                      args.resume)
                   for seed in seeds}
        seed_runs = {seed: f.result() for seed, f in futures.items()}
    for seed in seeds:
        seed_run = seed_runs[seed]
        per_seed[seed] = score_seed(seed_run, truth)
        logger.info("seed %d: %s", seed, {k: round(v, 4) for k, v in headline(per_seed[seed]).items()
                                          if isinstance(v, float) and np.isfinite(v)})
        if not overlays:
            overlays = write_overlays(seed_run["measure_dir"], image_ids, out.with_suffix(""))
    supervised = None
    if args.supervised:
        supervised = None if args.fresh_supervised else cached_supervised(supervised_path, key)
        if supervised is not None:
            logger.info("supervised reference: reusing %s (same settings, images and folds)", supervised_path)
        else:
            supervised = compute_supervised()
    set_text = "".join(f" --set {s}" for s in sets)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "profile": args.profile, "smoke": args.smoke,
        "seeds": seeds, "images": list(image_ids), "commit": _commit(),
        "machine": f"{platform.machine()} ({common.cpu_model()}), Python {platform.python_version()}, "
                   f"{common.cpu_count()} CPU cores, "
                   f"{common.device_name()}",
        "load_at_start": " / ".join(f"{v:.2f}" for v in load) + " (1/5/15 min load average)",
        "jobs": args.jobs, "resumed": args.resume,
        "run_command": f"nanoseg run {'DATA' if data != DATA else '../shared/data/bam-tio2'} --out RUN "
                       f"--profile {args.profile} --seed S{set_text}",
        "measure_command": "nanoseg measure DATA/sem --model RUN/adapt/model.pt --classifier RUN/classify/model.pt "
                           "--config RUN/config.yaml --probabilities --out M",
        "total_wall_s": round(time.perf_counter() - t_start, 1),
        "supervised_file": common.shown_path(supervised_path),
    }
    results = {"meta": meta, "seeds": per_seed, "aggregate": aggregate(per_seed), "supervised": supervised,
               "overlays": overlays}
    if args.note:
        meta["note"] = args.note
    write_results(results, out, args.readme)
    return results


def write_results(results: dict[str, Any], out: Path, readme: Path | None = None) -> None:
    """The Markdown report and the JSON beside it (and the README section)."""
    report = render_report(results)
    write_text(out, report + "\n")
    write_json(out.with_suffix(".json"), _finite(results))
    if readme is not None:
        from nanoseg.atomic import embed_section

        md = out.relative_to(readme.resolve().parent) if out.is_relative_to(readme.resolve().parent) else out
        embed_section(readme, f"workflow-benchmark-{results['meta']['profile']}", readme_section(results, str(md)))
    print(report)


def rerender(json_path: Path, note: str | None, readme: Path | None, n_folds: int = 5) -> dict[str, Any]:
    """Rewrite the report (and README section) of a finished run from its JSON.

    A run made with ``--no-supervised`` (or before the reference was finished) gets the stored
    supervised reference when one was computed for exactly its profile, images and settings
    (:func:`supervised_key`): the reference does not depend on the workflow, only on those.
    """
    results = json.loads(json_path.read_text())
    results["seeds"] = {int(k): v for k, v in results["seeds"].items()}
    meta = results["meta"]
    if note:
        meta["note"] = note
    if results.get("supervised") is None:
        key = supervised_key(meta["profile"], meta["smoke"], tuple(meta["images"]), n_folds)
        stored = cached_supervised(ROOT / meta["supervised_file"], key)
        if stored is not None:
            logger.info("adding the supervised reference from %s", meta["supervised_file"])
            results["supervised"] = stored
    write_results(results, json_path.with_suffix(".md").resolve(), readme)
    return results


if __name__ == "__main__":
    main()
