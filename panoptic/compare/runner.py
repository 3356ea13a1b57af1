"""``run_compare``: data -> training (or cached checkpoints) -> one evaluation pass per network -> tables + figure."""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import AtomicFiles
from ..data import PanopticDataError
from ..data.writer import encode_png
from ..engine._precision import autocast_dtype
from ..engine.checkpoint import CheckpointError, load_checkpoint
from ..engine.config import TrainConfig
from ..engine.data import build_datasets, synthetic_benchmark
from ..engine.distributed import resolve_device
from ..engine.resume import config_differences
from ..engine.runlog import format_eta, progress_enabled
from ..fusion import UPSNetFusion
from .config import DISPLAY_NAMES, CompareConfig
from .evaluate import NetworkEvaluation, evaluate_network, figure_panels
from .figure import comparison_figure
from .intervals import held_out_size, paired_bootstrap, seed_spread
from .report import checks, claim_lines, machine_info, main_entry, pq_entry, to_csv, to_markdown
from .rows import ABLATION_FLAGS, Row, ablation_rows, main_rows
from .rule_counts import RULE_COUNTS, RuleCounter, RuleCounts
from .training import TrainedNetwork, default_cache_dir, train_in_parallel, train_or_reuse

__all__ = ["run_compare"]


CLAIMS = (("UPSNet beats MR-CNN-PSP (PQ)", "upsnet", "mrcnn_psp"),
          ("UPSNet beats UPSNet-C (PQ)", "upsnet", "upsnet_c"),
          ("unknown prediction improves PQ", "ablation/+ unknown", "ablation/+ ICA"))
"""The PQ claims checked with an interval: (name, key of row a, key of row b); holds when the
interval of ``PQ(a) - PQ(b)`` is above 0."""


@dataclass
class SeedRun:
    """One seed's trained networks and their evaluations.

    Attributes:
        seed: Training seed.
        trained: Network id -> checkpoint.
        evals: Network id -> its evaluation pass.
        counts: Row key -> what the row changes (:mod:`panoptic.compare.rule_counts`).
    """

    seed: int
    trained: dict[str, TrainedNetwork]
    evals: dict[str, NetworkEvaluation]
    counts: dict[str, RuleCounts]


@dataclass
class CompareResult:
    """What :func:`run_compare` returns.

    Attributes:
        results: The JSON written to ``results.json`` (see :mod:`panoptic.compare`).
        out_dir: The output folder.
        files: Every file written.
    """

    results: dict[str, Any]
    out_dir: Path
    files: list[Path]


class _Bar:
    """A tqdm bar with ETA on a terminal; otherwise a line every ~10% (logs and CI stay readable)."""

    def __init__(self, total: int, desc: str, enabled: bool | None, log: Callable[[str], None],
                 unit: str = "img") -> None:
        self.total, self.desc, self.log, self.n, self.unit = total, desc, log, 0, unit
        self.t0 = time.perf_counter()
        self.bar = None
        if progress_enabled(enabled):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def update(self) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.n == self.total or self.n % max(1, self.total // 10) == 0:
            el = time.perf_counter() - self.t0
            eta = el / self.n * (self.total - self.n)
            self.log(f"      {self.desc}: {self.n}/{self.total}, {el:.0f} s, eta {format_eta(eta)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write(files: AtomicFiles, path: Path, text: str, index: bool = False) -> None:
    files.write_bytes(path, text.encode("utf-8"), index=index)


def _json_safe(obj: Any) -> Any:
    """NaN -> None so the file is strict JSON."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def run_compare(config: CompareConfig, log: Callable[[str], None] = print) -> CompareResult:
    """Run the whole comparison described by ``config`` and write its outputs to ``config.out_dir``.

    Stages (each with a progress bar and ETA on a terminal): 1. the data (the synthetic benchmark is generated
    once into its cache); 2. training every needed network with the same schedule, or reusing a cached
    checkpoint trained with the same config; 3. one evaluation pass per network over the held-out split, which
    scores every main-table and ablation row fed by it and times network and fusion apart at batch size 1;
    4. the tables (Markdown, CSV, JSON) and the figure.

    Args:
        config: The run.
        log: Where progress lines go.

    Returns:
        The results and the written files.

    Raises:
        PanopticDataError: If the data has no held-out split.
    """
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, log, t_start)
    finally:
        torch.set_num_threads(threads)


def _run(config: CompareConfig, log: Callable[[str], None], t_start: float) -> CompareResult:
    out_dir = Path(config.out_dir)
    device = resolve_device(config.device)
    names = ", ".join(DISPLAY_NAMES[m] for m in config.models)
    log(f"panoptic compare: {names} on {device} (preset {config.preset}, {config.iterations} iterations x "
        f"{config.batch_size} images, trained in {_training_precision(config, device)})")

    train_set, val_set = _data(config, log)  # 1. data
    table = train_set.table

    # 2. training, 3. evaluation: per seed, so a finished seed is cached before the next starts
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    n_eval = len(val_set) if config.eval_images is None else min(len(val_set), config.eval_images)
    fig_idx = list(range(min(config.figure_images, n_eval)))
    runs: list[SeedRun] = []
    rows: list[Row] = []
    ahead = _train_ahead(config, train_set, cache, device, log)  # every training at once, with --jobs N > 1
    for k in range(config.seeds):
        tag = f" seed {config.seed + k} ({k + 1}/{config.seeds})" if config.seeds > 1 else ""
        trained: dict[str, TrainedNetwork] = {}
        for j, net in enumerate(config.networks):
            if (k, net) in ahead:
                trained[net] = ahead[(k, net)]
                continue
            log(f"[2/4] training {DISPLAY_NAMES[net]} ({j + 1}/{len(config.networks)}){tag}")
            trained[net] = tn = train_or_reuse(net, config.train_config(net, "", k), cache, config.retrain,
                                               data_files=_training_files(train_set, config), device=device.type)
            _log_trained(tn, log)
        models = {net: _load_trained(tn, config.train_config(net, "", k), device, table)
                  for net, tn in trained.items()}
        fusions = {m: models[m].fusion for m in models}
        rows = main_rows(config.models, fusions, DISPLAY_NAMES)
        head = fusions.get("upsnet")
        if isinstance(head, UPSNetFusion):
            rows += ablation_rows(head, have_upsnet_c="upsnet_c" in models)
        evals: dict[str, NetworkEvaluation] = {}
        counter = RuleCounter(rows)
        for j, net in enumerate(models):
            log(f"[3/4] evaluating {DISPLAY_NAMES[net]} ({j + 1}/{len(models)}){tag}: "
                f"{sum(r.network == net for r in rows)} rows on {n_eval} images")
            bar = _Bar(n_eval, f"eval {net}", config.progress, log)
            try:
                evals[net] = evaluate_network(net, models[net], val_set, rows, table, max_images=n_eval,
                                              timing_warmup=config.timing_warmup,
                                              figure_indices=fig_idx if k == 0 else (), on_image=bar.update,
                                              on_result=counter)
            finally:
                bar.close()
        runs.append(SeedRun(config.seed + k, trained, evals, counter.counts))

    # 4. report
    log("[4/4] tables, intervals and figure")
    results = _results(config, rows, runs, device, n_eval)
    results["wall_s"] = time.perf_counter() - t_start  # everything but writing the few output files
    stats = {row.key: np.stack([run.evals[row.network].rows[row.key].image_stats() for run in runs]) for row in rows}
    files = _write_outputs(results, rows, runs[0].evals, val_set, table, fig_idx, out_dir, stats)
    return CompareResult(results, out_dir, files)


def _log_trained(tn: TrainedNetwork, log: Callable[[str], None]) -> None:
    if tn.reused:
        log(f"      reused {tn.checkpoint}")
    else:
        log(f"      {tn.seconds:.0f} s, {tn.images_per_second:.1f} images/s -> {tn.checkpoint}")


def _train_ahead(config: CompareConfig, train_set: Any, cache: Path, device: torch.device,
                 log: Callable[[str], None]) -> dict[tuple[int, str], TrainedNetwork]:
    """With ``jobs > 1`` on the CPU, every (seed, network) training up front, ``jobs`` at once (the longest
    network first, so the workers finish together); else nothing (each seed trains in the loop)."""
    if config.jobs == 1 or device.type != "cpu":
        if config.jobs > 1:
            log(f"      --jobs {config.jobs} applies to CPU training; training one network at a time on {device}")
        return {}
    # MR-CNN-PSP trains two networks per iteration: about twice the others' time
    nets = sorted(config.networks, key=lambda n: n != "mrcnn_psp")
    keys = [(k, net) for net in nets for k in range(config.seeds)]
    tasks = [(net, config.train_config(net, "", k)) for k, net in keys]
    log(f"[2/4] training {len(tasks)} networks, {config.jobs} at once with {config.training_threads} thread(s) each")

    def done(i: int, tn: TrainedNetwork) -> None:
        k, net = keys[i]
        log(f"      {DISPLAY_NAMES[net]} seed {config.seed + k} ({i + 1}/{len(tasks)} started in this order):")
        _log_trained(tn, log)

    trained = train_in_parallel(tasks, cache, config.retrain, data_files=_training_files(train_set, config),
                                jobs=config.jobs, on_done=done)
    return dict(zip(keys, trained, strict=True))


def _data(config: CompareConfig, log: Callable[[str], None]) -> tuple[Any, Any]:
    """The training and held-out datasets (the synthetic benchmark written first when no folder is given)."""
    t = time.perf_counter()
    log("[1/4] data" + ("" if config.data.root or config.data.train_json else
                        f": synthetic benchmark, {config.data.synthetic_n} scenes of {config.data.synthetic_size} px"))
    if not (config.data.root or config.data.train_json):
        bar = _Bar(config.data.synthetic_n, "synthetic scenes", config.progress, log, unit="scene")
        try:
            synthetic_benchmark(config.data, progress=lambda done, n: bar.update())
        finally:
            bar.close()
    train_set, val_set = build_datasets(config.data, config.seed)
    if val_set is None or len(val_set) == 0:
        raise PanopticDataError("panoptic compare needs a held-out split: the data has no validation JSON (give a "
                                "folder with panoptic_val.json or annotations/panoptic_val2017.json, or pass "
                                "--val-json).")
    log(f"      {len(train_set)} training / {len(val_set)} held-out images, {train_set.table.num_stuff} stuff + "
        f"{train_set.table.num_things} thing categories ({time.perf_counter() - t:.1f} s)")
    return train_set, val_set


def _training_files(train_set: Any, config: CompareConfig) -> list[Path]:
    """Every file training reads, in order: the JSON, the categories file, then each image and its PNG."""
    files = [Path(train_set.panoptic_json)] + ([Path(config.data.categories)] if config.data.categories else [])
    for item in train_set.items:
        files += [item.image_path, item.png_path]
    return files


def _load_trained(tn: TrainedNetwork, expected: TrainConfig, device: torch.device, table: Any) -> torch.nn.Module:
    """Load a network's checkpoint after checking that it holds the row's model, trained with the row's config.

    Raises:
        CheckpointError: If it does not (for a cached checkpoint: telling to rerun with ``--retrain``).
    """
    try:
        model, _, meta = load_checkpoint(tn.checkpoint, device, table=table)
        if meta.model != expected.model:
            raise CheckpointError(f"{tn.checkpoint} holds a {meta.model!r} model, not {DISPLAY_NAMES[tn.network]}'s "
                                  f"{expected.model!r}.")
        diffs = config_differences(meta.config or {}, expected.to_dict(), ignore=frozenset())
        if meta.iteration != expected.iterations:
            diffs.append(("completed iterations", meta.iteration, expected.iterations))
        threads = expected.threads or torch.get_num_threads()
        if meta.threads is not None and meta.threads != threads:
            diffs.append(("threads", meta.threads, threads))
        if diffs:
            listed = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} expected" for k, a, b in diffs)
            raise CheckpointError(f"{tn.checkpoint} was not trained with {DISPLAY_NAMES[tn.network]}'s config "
                                  f"({listed}).")
    except CheckpointError as e:
        if not tn.reused:
            raise
        raise CheckpointError(f"the cached checkpoint of {DISPLAY_NAMES[tn.network]} cannot be used: {e} Rerun with "
                              "--retrain to train it again.") from None
    return model


def _results(config: CompareConfig, rows: list[Row], runs: list[SeedRun], device: torch.device,
             n_eval: int) -> dict[str, Any]:
    """Per row: each seed's metrics, then their mean (the table value) and std; the claims' intervals."""
    models: dict[str, Any] = {}
    runtime = []
    ablation = []
    for row in rows:
        per_seed = []
        for run in runs:
            ne = run.evals[row.network]
            ev = ne.rows[row.key]
            pq = ev.pq.compute()
            if row.flags:
                per_seed.append(pq_entry(pq))
            else:
                per_seed.append(main_entry(row.label, pq, ne.semantic, ne.detection, ne.network_ms, ev.fusion_ms))
        mean, std = _spread(per_seed)
        if row.flags:
            counts = {c: round(float(np.mean([getattr(run.counts[row.key], c) for run in runs])))
                      for c in RULE_COUNTS}  # seed means
            ablation.append({"row": row.label, "network": row.network, **dict(row.flags), **mean, **counts,
                             "std": std, "per_seed_PQ": [e["PQ"] for e in per_seed]})
            continue
        entry = {"name": row.label, **mean, "std": std, "per_seed_PQ": [e["PQ"] for e in per_seed]}
        models[row.key] = entry
        runtime.append({"model": row.key, "name": row.label, "image_size": list(runs[0].evals[row.network].image_size),
                        **{k: entry[k] for k in ("network_ms", "fusion_ms", "ms_per_image")}})
    assert all(set(ABLATION_FLAGS) <= set(r) for r in ablation)
    claims = _claims(rows, runs, config)
    return {
        "models": models,
        "ablation": ablation,
        "runtime": runtime,
        "claims": claims,
        "checks": checks(models, ablation, claims),
        "seeds": [run.seed for run in runs],
        "bootstrap": {"resamples": config.bootstrap.resamples, "level": config.bootstrap.level,
                      "seed": config.bootstrap.seed, "unit": "paired resampling of held-out images and seeds; PQ "
                      "recomputed from summed per-class tp/fp/fn/IoU"},
        "training": {net: [{"seed": run.seed, "checkpoint": str(run.trained[net].checkpoint),
                            "reused": run.trained[net].reused, "seconds": run.trained[net].seconds,
                            "images_per_second": run.trained[net].images_per_second} for run in runs]
                     for net in runs[0].trained},
        "num_images": n_eval,
        "machine": machine_info(device),
        "training_precision": _training_precision(config, device),
        "config": config.to_dict(),
    }


def _training_precision(config: CompareConfig, device: torch.device) -> str:
    """How the networks were trained: ``"float32"``, ``"bfloat16 autocast"`` (CPU) or ``"float16 autocast"`` (CUDA)."""
    dtype = autocast_dtype(device, config.train_config("upsnet", "").amp, config.training_cpu_amp)
    return "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"


def _spread(per_seed: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    """Mean and std over seeds of every float metric (NaN stays NaN)."""
    mean: dict[str, Any] = {}
    std: dict[str, float] = {}
    for key, value in per_seed[0].items():
        if not isinstance(value, float):
            mean[key] = value
            continue
        mean[key], std[key] = seed_spread(np.array([e[key] for e in per_seed], dtype=np.float64))
    return mean, std


def _claims(rows: list[Row], runs: list[SeedRun], config: CompareConfig) -> list[dict[str, Any]]:
    """The PQ claims with a paired bootstrap interval each (only those whose rows were run)."""
    by_key = {r.key: r for r in rows}
    out = []
    for name, a_key, b_key in CLAIMS:
        a, b = by_key.get(a_key), by_key.get(b_key)
        if a is None or b is None:
            continue
        stats_a = np.stack([run.evals[a.network].rows[a.key].image_stats() for run in runs])
        stats_b = np.stack([run.evals[b.network].rows[b.key].image_stats() for run in runs])
        iv = paired_bootstrap(stats_a, stats_b, config.bootstrap)
        size = held_out_size(stats_a, stats_b, config.bootstrap)
        out.append({"claim": name, "a": a.label, "b": b.label, "pq_diff": iv.diff, "lo": iv.lo, "hi": iv.hi,
                    "level": iv.level, "images": iv.images, "seeds": iv.seeds, "holds": iv.holds,
                    "text": iv.describe(), "held_out": size.as_dict()})
    return out


def _per_image_npz(stats: dict[str, np.ndarray], seeds: list[int]) -> bytes:
    """``per_image.npz``: row key -> ``(S, N, C, 4)`` per-image ``tp, fp, fn, iou`` (see
    :mod:`panoptic.compare.intervals`), plus ``seeds``: the bootstrap's input, for a reader's own analysis."""
    buf = io.BytesIO()
    np.savez_compressed(buf, seeds=np.asarray(seeds), **stats)
    return buf.getvalue()


def _write_outputs(results: dict[str, Any], rows: list[Row], evals: dict[str, NetworkEvaluation], val_set: Any,
                   table: Any, fig_idx: list[int], out_dir: Path, stats: dict[str, np.ndarray]) -> list[Path]:
    """Write every output to a temporary name, then rename them into place together (``results.json`` and
    ``report.md``, which name the others, last): a failure leaves the previous run's outputs as they were."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = AtomicFiles()
    try:
        files.write_bytes(out_dir / "per_image.npz", _per_image_npz(stats, results["seeds"]))
        _write(files, out_dir / "results.json", json.dumps(_json_safe(results), indent=2) + "\n", index=True)
        sections = []
        for kind, title in (("main", "Main results (Table 7 style)"), ("ablation", "Ablation (Table 6 style)"),
                            ("runtime", "Run time (Table 5 style), ms per image at batch size 1")):
            if not results["models" if kind == "main" else kind]:
                continue
            md = to_markdown(kind, results)
            _write(files, out_dir / f"{kind}.md", md)
            _write(files, out_dir / f"{kind}.csv", to_csv(kind, results))
            sections.append(f"## {title}\n\n{md}")
        m = results["machine"]
        lines = [f"# panoptic compare ({results['num_images']} held-out images)", "",
                 f"Measured on {m['processor']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, "
                 f"device {m.get('gpu', m['device'])}, torch {m['torch']}, trained in "
                 f"{results.get('training_precision', 'float32')}; total wall time {results['wall_s']:.0f} s.",
                 "", *sections]
        if results["claims"]:
            b = results["bootstrap"]
            seeds = results["seeds"]
            lines += ["## Claims", "", f"Tables show the mean ± std over {len(seeds)} seed(s) ({seeds}). Each claim: "
                      f"the PQ difference of the seed means and its {100 * b['level']:.0f}% paired bootstrap interval "
                      f"({b['resamples']} resamples, seed {b['seed']}; {b['unit']}). A claim holds only when the "
                      "interval is above 0.", ""] + [f"- {line}" for line in claim_lines(results)] + [""]
        if results["checks"]:
            lines += ["## Checks", ""] + [f"- {'PASS' if ok else 'MISS'}: {name}"
                                          for name, ok in results["checks"].items()]
        if fig_idx:
            lines += ["", "## Figure", "", "![image | ground truth | combined | UPSNet](figure.png)"]
            fig = _figure(rows, evals, val_set, table, fig_idx)
            files.write_bytes(out_dir / "figure.png", encode_png(fig))
        _write(files, out_dir / "report.md", "\n".join(lines) + "\n", index=True)
        return files.commit()  # results.json and report.md last
    except BaseException:
        files.discard()
        raise


def _figure(rows: list[Row], evals: dict[str, NetworkEvaluation], val_set: Any, table: Any,
            fig_idx: list[int]) -> np.ndarray:
    main = [r for r in rows if not r.flags]
    combined = next((r for r in main if r.key in ("mrcnn_psp", "upsnet_c", "upsnet_cp")), None)
    ours = next((r for r in main if r.key == "upsnet"), None)
    shown = [r for r in (combined, ours) if r is not None] or main
    panels = figure_panels(val_set, fig_idx)
    columns = {r.label: [evals[r.network].rows[r.key].figure[i] for i in fig_idx] for r in shown}
    return comparison_figure([panels[i][0] for i in fig_idx], [panels[i][1] for i in fig_idx], columns, table)
