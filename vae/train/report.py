"""What a run tells its user: the curated TensorBoard HParams, the closing summary, no known noise.

* :func:`curated_hparams` / :func:`log_hparams`: the few hyper-parameters that tell a sweep's runs
  apart (:data:`CURATED_KEYS`, for every logger); TensorBoard's HParams plugin gets the three that
  say what a run is (:data:`HPARAMS_PLUGIN_KEYS`) with the final metrics (:data:`HPARAM_METRICS`),
  so that its table fits a 1920-px screen, and nothing else: no scalar is written, because the
  plugin reads each metric's value from the scalar the module already logged under the same tag.
* :func:`summary_table`: what ``python train.py`` prints at the end (test metrics in nats per
  image, the run directory, the figures).
* :func:`silence_known_noise`: drop the warnings and Lightning messages that are known to be
  harmless, each matched narrowly (by message, and by module or logger).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: the config keys every logger gets (the override names, so a run can be rerun): CSV's
#: ``hparams.yaml``, MLflow's parameters; TensorBoard's HParams table shows :data:`HPARAMS_PLUGIN_KEYS`
CURATED_KEYS: tuple[str, ...] = (
    "model.latent_dim",
    "model.architecture",
    "model.hidden_dims",
    "model.likelihood",
    "model.beta",
    "model.free_bits",
    "model.norm",
    "optim.lr",
    "optim.scheduler",
    "data.dataset",
    "data.binarize",
    "data.batch_size",
    "seed",
    "trainer.max_epochs",
)

#: the hparam columns of TensorBoard's HParams table (it sorts them by name): what a run is, as
#: its trial name says it. With the trial name and :data:`HPARAM_METRICS` that is eight columns of
#: 160 px beside the 385-px panel, on screen at 1920 px; ``config.yaml`` and the other loggers
#: have the rest
HPARAMS_PLUGIN_KEYS: tuple[str, ...] = ("data.dataset", "model.architecture", "model.latent_dim")

#: the metric columns of the HParams table: scalar tags the module logs (last value shown)
HPARAM_METRICS: tuple[str, ...] = ("test/loss", "test/nll_iw", "test/active_units", "val/loss")


def _hparam_value(value: Any) -> str | None:
    """The value as the config writes it, as a string: TensorBoard shows a number with five
    significant digits (latent_dim 2 as 2.0000, lr as 0.0030000, a bool as 0.0000 or 1.0000),
    a string as it is. bool → "true"/"false", list → "[512, 256]", float → ``f"{v:g}"``
    (3e-3 → "0.003"), None → left out (an empty cell)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def curated_hparams(cfg: DictConfig) -> dict[str, str]:
    """``{key: value}`` for each of :data:`CURATED_KEYS` in the composed config that is set.

    Keys are the dotted config paths (``model.latent_dim``); values are strings as the config
    writes them (:func:`_hparam_value`; TensorBoard then filters a column by regex and sorts it as
    text); unset (``null``) or missing keys are left out.
    """
    values = {key: _hparam_value(OmegaConf.select(cfg, key, default=None)) for key in CURATED_KEYS}
    return {key: value for key, value in values.items() if value is not None}


def log_hparams(logger: Any, cfg: DictConfig, metrics: Mapping[str, float]) -> None:
    """Record the run's :func:`curated_hparams` with the final metrics in ``logger``.

    TensorBoard: the three HParams summaries (experiment, session start and end) with the
    :data:`HPARAMS_PLUGIN_KEYS` of the curated dict and the metrics of :data:`HPARAM_METRICS`
    found in ``metrics``, the session named by :func:`trial_name`, written to the logger's
    directory by a FileWriter of our own; unlike ``TensorBoardLogger.log_hyperparams(params,
    metrics=...)``, no metric is written again as a scalar (each would be a one-point card in Time
    Series). Other loggers get the whole curated dict through ``log_hyperparams``.
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    params = curated_hparams(cfg)
    if not isinstance(logger, TensorBoardLogger):
        logger.log_hyperparams(params)
        return
    from torch.utils.tensorboard.summary import hparams
    from torch.utils.tensorboard.writer import FileWriter

    columns = {k: params[k] for k in HPARAMS_PLUGIN_KEYS if k in params}
    shown = {k: float(metrics[k]) for k in HPARAM_METRICS if k in metrics}
    experiment, start, end = hparams(columns, shown)
    _set_trial_name(start, trial_name(cfg, Path(str(cfg.paths.output_dir))))
    with contextlib.closing(FileWriter(logger.log_dir)) as writer:
        for summary in (experiment, start, end):
            writer.add_summary(summary)


def trial_name(cfg: DictConfig, run_dir: Path) -> str:
    """The run's short, unique name in the HParams table: when it started, from its directory's
    name, then ``paths.run_name`` (dataset, model, latent size): ``12-01 10:31:07 mnist_mlp-z2``,
    in a sweep ``#1 12-01 11:02:40 mnist_mlp-z10``; a directory named otherwise
    (``hydra.run.dir=...``) is named as it is. The table's Trial ID column shows 128 px of it
    (``12-01 10:31:07`` is 106 px in its 16-px font), so what tells runs apart comes first; what a
    run is, it shows in its own columns (:data:`HPARAMS_PLUGIN_KEYS`)."""
    label = str(OmegaConf.select(cfg, "paths.run_name", default="") or "")
    stamp = re.compile(r"\d{4}-(\d\d-\d\d)_(\d\d)-(\d\d)-(\d\d)")

    def when(name: str) -> str | None:
        m = stamp.fullmatch(name[:19])
        return f"{m[1]} {m[2]}:{m[3]}:{m[4]}" if m else None

    name, parent = run_dir.name, run_dir.parent.name
    if label and name.endswith("_" + label) and when(name):  # runs/<date>_<time>_<label>
        return f"{when(name)} {label}"
    job = name.split("_", 1)[0]
    if label and name == f"{job}_{label}" and job.isdigit() and when(parent):  # a sweep's job
        return f"#{job} {when(parent)} {label}"
    return name


def _set_trial_name(start: Any, name: str) -> None:
    """Name the session of a session-start ``Summary`` in place (its ``group_name``, which the
    HParams table shows as the trial ID instead of the event file's folder)."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    plugin_data = start.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(plugin_data.content)
    data.session_start_info.group_name = name
    plugin_data.content = data.SerializeToString()


def written_figures(callbacks: Iterable[Any]) -> list[Path]:
    """The PNGs the figure callbacks wrote (``LatentVisualizer.png_paths``), in order."""
    return [Path(p) for c in callbacks for p in getattr(c, "png_paths", ())]


#: the rows of :func:`summary_table`: label, metric name (after ``<stage>/``), format
_SUMMARY_ROWS = (
    ("−ELBO", "loss", "{:.2f}"),
    ("reconstruction", "recon", "{:.2f}"),
    ("KL", "kl", "{:.2f}"),
    ("IW bound", "nll_iw", "{:.2f}"),
    ("active units", "active_units", "{:.0f}"),
    ("−ELBO, bits/dim", "loss_bpd", "{:.4f}"),
    ("IW bound, bits/dim", "nll_iw_bpd", "{:.4f}"),
)
#: the metrics (nats per image) also reported in bits per dimension, as ``<tag>_bpd``
BPD_METRICS = ("loss", "nll_iw")
#: what ``metrics.json`` says of its numbers' units
UNITS = "nats per image (keys ending in _bpd: bits per dimension, nats / (C·H·W · ln 2))"


def with_bits_per_dim(metrics: Mapping[str, float], dims: Sequence[int]) -> dict[str, float]:
    """``metrics`` and, for each of :data:`BPD_METRICS` present, ``<tag>_bpd``: the value in bits
    per dimension, nats per image / (C·H·W · ln 2) (``dims`` = (C, H, W)), the unit colour-image
    papers report. For grey levels or colours modelled as continuous values in [0, 1] it is the
    same conversion, not a discrete 8-bit likelihood."""
    out = dict(metrics)
    per_image = math.prod(dims) * math.log(2.0)
    for stage in ("val", "test"):
        for name in BPD_METRICS:
            if f"{stage}/{name}" in metrics:
                out[f"{stage}/{name}_bpd"] = float(metrics[f"{stage}/{name}"]) / per_image
    return out


def summary_table(
    metrics: Mapping[str, float],
    run_dir: str | Path,
    figures: Sequence[str | Path] = (),
    *,
    iw_samples: int | None = None,
    latent_dim: int | None = None,
) -> str:
    """The closing lines of a run: its final metrics, run directory and figures.

    Shows the test metrics (the validation ones when the run was not tested): −ELBO, recon and KL
    in nats per image to 2 decimals (``metrics.json`` holds them unrounded), the
    importance-weighted bound with ``iw_samples`` samples and the active units (of
    ``latent_dim``), each followed by its tag. Figures inside ``run_dir`` are listed by name.
    """
    run_dir = Path(run_dir).resolve()
    stage = "test" if "test/loss" in metrics else "val"
    images = metrics.get(f"{stage}/num_images")
    count = f", {int(images):,} images" if images is not None else ""
    rows = []
    for label, name, fmt in _SUMMARY_ROWS:
        tag = f"{stage}/{name}"
        if tag not in metrics:
            continue
        if name == "nll_iw" and iw_samples:
            label = f"{label} (K={iw_samples})"
        if name == "active_units" and latent_dim is not None:
            label = f"{label} (of {latent_dim})"
        rows.append((label, fmt.format(metrics[tag]), tag))
    lines = [f"{'Test' if stage == 'test' else 'Validation'} set (nats per image{count}):"]
    width = max((len(label) for label, _, _ in rows), default=0)
    digits = max((len(value) for _, value, _ in rows), default=0)
    lines += [f"  {label:<{width}}  {value:>{digits}}   {tag}" for label, value, tag in rows]
    lines.append(f"Run directory: {run_dir}")
    if figures:
        paths = [Path(f).resolve() for f in figures]
        inside = all(p.parent == run_dir for p in paths)
        names = ", ".join(p.name if inside else str(p) for p in paths)
        lines.append(f"Figures: {names}" + (" (in the run directory)" if inside else ""))
    return "\n".join(lines)


def print_summary(
    cfg: DictConfig, metrics: Mapping[str, float], run_dir: Path, figures: Sequence[Path]
) -> None:
    """Print :func:`summary_table` on stdout, and log it to ``vae.train.report`` (under Hydra the job
    logging config sends that logger to the run's ``train.log`` only)."""
    table = summary_table(
        metrics,
        run_dir,
        figures,
        iw_samples=OmegaConf.select(cfg, "eval.iw_samples", default=None),
        latent_dim=OmegaConf.select(cfg, "model.latent_dim", default=None),
    )
    print(table)
    logging.getLogger("vae.train.report").info(table)


# ---- known noise ---------------------------------------------------------------------------------
# Lightning's info lines that say nothing about this run: the advertising tips (litlogger,
# litmodels), "TPU available: False" (the GPU line stays: it says whether a GPU was used) and the
# internal "Loading `train_dataloader` to estimate ..." (the cosine schedule asks for the step count)
_LIGHTNING_NOISE = re.compile(
    r"💡 Tip: |TPU available: False, using: 0 TPU cores$"
    r"|Loading `train_dataloader` to estimate number of stepping batches\.$"
    # the precision is in the summary's environment line (trainer.precision=auto picks it)
    r"|Using (bfloat16|16bit) Automatic Mixed Precision \(AMP\)$"
)
_LIGHTNING_INFO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


def _not_lightning_noise(record: logging.LogRecord) -> bool:
    return not _LIGHTNING_NOISE.match(record.getMessage())


def silence_known_noise() -> None:
    """Filter the known-harmless warnings and Lightning messages (idempotent).

    * ``FutureWarning: `isinstance(treespec, LeafSpec)` is deprecated`` from
      ``lightning.pytorch.utilities._pytree``: Lightning 2.6 still builds torch's deprecated
      ``LeafSpec`` (torch ≥ 2.9) at every fit and test; nothing for a user to do.
    * the Lightning info lines of :data:`_LIGHTNING_NOISE`, on Lightning's rank-zero loggers.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    for name in _LIGHTNING_INFO_LOGGERS:  # addFilter adds the same filter only once
        logging.getLogger(name).addFilter(_not_lightning_noise)
