"""TensorBoard monitoring of a search: alpha, skip collapse, gradient variance, losses, genotype.

The search writes into OUT/tb/NAME (`tensorboard_dir`), NAME being OUT's folder name, so that
TensorBoard's run selector names the search, and several searches' tb folders compare side by side.
Every event file starts with a custom-scalars layout (`search_layout`, TensorBoard's "Custom
Scalars" tab): one chart per cell type and edge holding all its ops' alpha curves, and one chart
per metric family, instead of one card per scalar.

Tags written by `SearchMonitor` (step = search iteration, global over epochs):

* ``alpha/{cell}/n{node}_from{input}/{op}``: softmax(alpha) per edge and op (scalars);
  ``alpha_heatmap/{cell}``: the same as an edges x ops image, annotated;
* ``skip/weight_mass/{cell}``: mean effective (hooked) skip_connect weight over the edges;
  ``skip/derived_count/{cell}``: skip_connects in the genotype derived now (collapse watch);
* ``gradvar/weights``: Eq. 14, E||g - E g||^2 of the per-sample gradients of the supernet
  weights (not alpha) over a fixed probe batch, by torch.func vmap
  (`nasaudit.probes.gradvar.per_sample_grad_variance`, BN in eval mode);
* ``loss/train``, ``loss/val``, ``acc/train``, ``acc/val`` (means since the last log),
  ``lr/weights``, ``lr/arch``;
* ``genotype/text`` (text) and ``genotype/cells`` (drawing of both cells);
* images (``alpha_heatmap/*``, ``genotype/cells``) only at epoch ends (`log(..., drawing=...)`):
  rendering them costs seconds, more than an iteration of a small search;
* ``objective/{name}``: each architecture objective's unweighted term (mean since the last log;
  `nasaudit.search.objectives`), with the losses;
* at epoch ends also ``cost/epoch_seconds``, ``cost/weight_steps``, ``cost/arch_steps``,
  ``cost/virtual_steps`` (step = epoch number, 1-based) and ``epoch/*`` metrics, and with
  ``--early-stop darts-es[:K[:RATIO]]`` ``hessian/top_eigenvalue`` (top eigenvalue of the alpha
  Hessian of L_val, `nasaudit.search.hessian`) and ``hessian/windowed_mean`` (its K-epoch mean).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nasaudit.search.supernet import CELL_TYPES, Supernet, edge_list

STEP_TAGS = (
    "loss/train", "loss/val", "acc/train", "acc/val", "lr/weights", "lr/arch", "gradvar/weights",
    "skip/weight_mass/normal", "skip/weight_mass/reduce",
    "skip/derived_count/normal", "skip/derived_count/reduce",
)
EPOCH_TAGS = ("cost/epoch_seconds", "cost/weight_steps", "cost/arch_steps", "cost/virtual_steps")
IMAGE_TAGS = ("alpha_heatmap/normal", "alpha_heatmap/reduce", "genotype/cells")
TEXT_TAGS = ("genotype/text",)
# Probe images per vmap call of the gradient variance: the monitor's progress bar advances per
# chunk, so a slow probe on a busy machine is seen moving rather than hanging.
GRADVAR_CHUNK = 8


def tensorboard_dir(out_dir: str | Path) -> Path:
    """Where a search in `out_dir` writes its events: OUT/tb/NAME (NAME: OUT's folder name).

    A search begun before runs were named (events directly in OUT/tb) keeps writing there, so a
    resumed run continues its own curves instead of starting a second run.
    """
    tb = Path(out_dir) / "tb"
    if any(tb.glob("events.out.tfevents.*")):
        return tb
    return tb / (Path(out_dir).resolve().name or "search")


def alpha_tag(cell: str, node: int, inp: int, op: str) -> str:
    """The scalar tag of softmax(alpha) of `op` on edge (node <- inp) of `cell`."""
    return f"alpha/{cell}/n{node}_from{inp}/{op}"


def _exact(tag: str) -> str:
    return f"^{re.escape(tag)}$"  # custom-scalars charts take regexes


def search_layout(ops: tuple[str, ...], nodes: int) -> dict[str, dict[str, list]]:
    """The custom-scalars layout, as `SummaryWriter.add_custom_scalars` takes it:
    {category: {chart title: ["Multiline", [tag regexes]]}}. Category "search" groups the
    metrics (one chart per family); "alpha/{cell}" holds one chart per edge, titled
    "{cell} n{node}_from{input}", with one line per op."""
    layout: dict[str, dict[str, list]] = {"search": {
        title: ["Multiline", [f"^{prefix}"]] for title, prefix in (
            ("loss", "loss/"), ("accuracy", "acc/"), ("learning rate", "lr/"),
            ("gradient variance of the weights", "gradvar/"),
            ("skip_connect weight mass", "skip/weight_mass/"),
            ("skip_connects in the derived genotype", "skip/derived_count/"),
            ("objective terms", "objective/"),
            ("epoch loss", "epoch/loss/"), ("epoch accuracy", "epoch/acc/"),
            ("alpha Hessian top eigenvalue (DARTS-ES)", "hessian/"),
        )}}
    for cell in CELL_TYPES:
        layout[f"alpha/{cell}"] = {
            f"{cell} n{node}_from{inp}": ["Multiline", [_exact(alpha_tag(cell, node, inp, op)) for op in ops]]
            for node, inp in edge_list(nodes)
        }
    return layout


def heatmap_image(weights: torch.Tensor, ops: tuple[str, ...], nodes: int, title: str) -> np.ndarray:
    """An annotated edges x ops heatmap of weights [E, O] as an RGB uint8 array [H, W, 3]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w = weights.detach().float().cpu().numpy()
    labels = [f"{node}<-{inp}" for node, inp in edge_list(nodes)]
    fig = Figure(figsize=(1.0 + 0.9 * len(ops), 1.2 + 0.32 * len(labels)))
    canvas = FigureCanvasAgg(fig)  # no pyplot: no global backend, no display needed
    ax = fig.subplots()
    # Colours span this map's own range: early in a search all weights are near 1/O and a
    # fixed [0, 1] scale would show one flat colour; the numbers give the absolute values.
    lo, hi = float(w.min()), float(w.max())
    im = ax.imshow(w, cmap="viridis", vmin=lo, vmax=max(hi, lo + 1e-6), aspect="auto")
    ax.set_xticks(range(len(ops)), ops, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for (i, j), v in np.ndenumerate(w):
        ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=5,
                color="white" if v < lo + 0.6 * (hi - lo) else "black")
    fig.colorbar(im, ax=ax)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class SearchMonitor:
    """Writes the search's TensorBoard summaries into `log_dir`.

    probe_x: float images [P, 3, H, W] in [0, 1] and probe_y int64 [P] for the gradient
    variance (None or P < 2 disables it); `purge_step` discards events a killed run wrote at and
    after it. progress: a tqdm status bar naming the part being written while `log` runs (the
    gradient variance with its own bar per chunk of probe images).
    """

    def __init__(self, log_dir: str | Path, model: Supernet, *, probe_x: torch.Tensor | None = None,
                 probe_y: torch.Tensor | None = None, purge_step: int | None = None,
                 progress: bool = False):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)
        self.model, self.probe_x, self.probe_y = model, probe_x, probe_y
        self.progress = progress
        # In every event file (also a resumed run's): TensorBoard uses the first it finds.
        self.writer.add_custom_scalars(search_layout(tuple(model.ops), model.nodes))

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Write {tag: value} scalars at `step`."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def log(self, step: int, metrics: dict[str, float], genotype, drawing: str | Path | None = None,
            *, images: bool | None = None, desc: str | None = None) -> None:
        """Everything of the module docstring at `step` except the epoch costs; the genotype
        drawing is also kept at `drawing` when given.

        images: render the heatmaps and the cell drawing (IMAGE_TAGS). By default only when
        `drawing` is given, which the search does once per epoch: rendering takes seconds
        (matplotlib), the scalars a fraction of an iteration. The gradient-variance probe costs
        one per-sample gradient of the supernet weights per probe image. desc: the status bar's
        label (with `progress`).
        """
        images = drawing is not None if images is None else images
        parts: list[tuple[str, Callable[[], object]]] = [
            ("scalars and alpha", lambda: (self.scalars(step, metrics), self.log_alpha(step, images=False)))]
        if images:
            parts.append(("alpha heatmaps", lambda: self.log_alpha_heatmaps(step)))
        if self._probing:
            parts.append((f"gradient variance: per-sample gradients of {self.probe_x.shape[0]} probe images",
                          lambda: self.log_gradvar(step)))
        parts.append(("genotype drawing" if images else "genotype",
                      lambda: self.log_genotype(step, genotype, drawing, image=images)))
        from tqdm.auto import tqdm

        bar = tqdm(total=len(parts), desc=desc or f"TensorBoard, step {step}", unit="part",
                   disable=not self.progress, leave=False)
        try:
            for name, write in parts:
                bar.set_postfix_str(name)
                write()
                bar.update()
        finally:
            bar.close()
        self.writer.flush()

    def log_epoch_end(self, step: int, epoch: int, metrics: dict[str, float], epoch_values: dict[str, float],
                      genotype, drawing: str | Path | None) -> None:
        """An epoch end's summaries: `log` at `step` with images (the drawing kept at `drawing`),
        then `log_epoch(epoch, epoch_values)`. The search checkpoints the epoch before calling
        this and redoes it on resume when a run was killed meanwhile."""
        self.log(step, metrics, genotype, drawing=drawing, images=True,
                 desc=f"epoch {epoch} end: TensorBoard")
        # Last: a kill before here leaves no epoch scalars that the redo would write twice.
        self.log_epoch(epoch, epoch_values)

    @property
    def _probing(self) -> bool:
        return self.probe_x is not None and self.probe_x.shape[0] >= 2

    @torch.no_grad()
    def log_alpha(self, step: int, *, images: bool = True) -> None:
        """Softmax(alpha) scalars and (with `images`) heatmaps, and the effective skip weight mass."""
        m = self.model
        for cell in CELL_TYPES:
            soft = torch.softmax(getattr(m, f"alpha_{cell}"), dim=-1).float().cpu()
            for e, (node, inp) in enumerate(edge_list(m.nodes)):
                for o, op in enumerate(m.ops):
                    self.writer.add_scalar(alpha_tag(cell, node, inp, op), soft[e, o], step)
            if "skip_connect" in m.ops:
                eff = m.op_weights(cell)[:, m.ops.index("skip_connect")].mean()
                self.writer.add_scalar(f"skip/weight_mass/{cell}", float(eff), step)
        if images:
            self.log_alpha_heatmaps(step)

    @torch.no_grad()
    def log_alpha_heatmaps(self, step: int) -> None:
        """The softmax(alpha) heatmap image of each cell type (`alpha_heatmap/{cell}`)."""
        m = self.model
        for cell in CELL_TYPES:
            soft = torch.softmax(getattr(m, f"alpha_{cell}"), dim=-1).float().cpu()
            self.writer.add_image(f"alpha_heatmap/{cell}", heatmap_image(
                soft, m.ops, m.nodes, f"{cell}: softmax(alpha), step {step}"), step,
                dataformats="HWC")

    def log_gradvar(self, step: int) -> float | None:
        """Eq. 14 gradient variance of the supernet weights over the probe batch."""
        if not self._probing:
            return None
        from nasaudit.probes.gradvar import per_sample_grad_variance

        stats = per_sample_grad_variance(
            self.model, self.model.named_weights(), self.probe_x, self.probe_y,
            chunk_size=GRADVAR_CHUNK, progress=self.progress,
        )
        self.writer.add_scalar("gradvar/weights", stats["variance"], step)
        return stats["variance"]

    def log_genotype(self, step: int, genotype, drawing: str | Path | None = None, *,
                     image: bool = True) -> None:
        """The derived genotype as text, as a drawing (with `image`; kept at `drawing` if
        given), and its skip counts."""
        from matplotlib.image import imread

        from nasaudit.cell_drawing import draw_genotype

        for cell in CELL_TYPES:
            count = sum(op == "skip_connect" for op, _ in getattr(genotype, cell))
            self.writer.add_scalar(f"skip/derived_count/{cell}", count, step)
        text = "\n\n".join(
            f"**{cell}**: " + ", ".join(f"`{op}` <- {inp}" for op, inp in getattr(genotype, cell))
            for cell in CELL_TYPES
        )
        self.writer.add_text("genotype/text", text, step)
        if not image:
            return
        with tempfile.TemporaryDirectory(prefix="nasaudit-draw-") as tmp:
            path = Path(drawing) if drawing else Path(tmp) / "genotype.png"
            draw_genotype(genotype, path, title=f"derived genotype, step {step}")
            pixels = imread(path)[..., :3]
        self.writer.add_image("genotype/cells", pixels, step, dataformats="HWC")

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        """Per-epoch scalars (cost and metrics) at step `epoch` (1-based)."""
        self.scalars(epoch, values)
        self.writer.flush()
