"""Membership inference at low false-positive rates: offline RMIA with few reference models.

RMIA (Zarifzadeh, Liu, Chang and Shokri, "Low-Cost High-Power Membership Inference Attacks",
ICML 2024), offline version: the reference models never train on the inputs under test.

Why RMIA rather than offline LiRA (Carlini et al., "Membership Inference Attacks From First
Principles", S&P 2022): this attack is meant to run with 2-4 reference models per audited model.
Offline LiRA fits, per input, a Gaussian to the reference models' (logit-scaled) confidences; with
2-4 models the per-input variance cannot be estimated, so it falls back to one variance shared by
all inputs and a mean from a handful of models, and its low-FPR tail (where the test lives) rests on
that Gaussian assumption. RMIA needs only the mean reference probability per input, makes no
distributional assumption, and its offline coefficient a (below) corrects for the missing IN
models with one number tuned on the reference models themselves; its comparison with population
inputs z scored by the same victim turns the ratio into a score in [0, 1] that a victim simply
more (or less) confident than its reference models leaves unchanged, so it can be thresholded
without labelled data. The RMIA paper reports it above offline LiRA at 1-4 reference models, at
low FPR as well as in AUC. Its limit: the signal is
a probability, so once the victim fits an input with probability near 1 it cannot tell a member
from a non-member it also predicts confidently (LiRA's logit scaling can, if its Gaussian tail
holds); on small, saturated victims the low-FPR end reflects that.

The score, for an input x with label y:

    f(x; m)   = softmax(m(x))_y, the probability model m gives the true label (un-augmented query)
    p(x)      = (1 + a)/2 * mean_j f(x; ref_j) + (1 - a)/2      (offline approximation of the mean
                over IN and OUT models from OUT models only; a in [0, 1])
    LR(x)     = f(x; victim) / p(x)
    score(x)  = fraction of the population inputs z with LR(x) / LR(z) > gamma

A higher score means "member". For a fixed population the score is a non-decreasing step function
of LR(x) (it is the empirical distribution function of the population's ratios at LR(x) / gamma),
so it ranks the inputs as LR(x) does, except that inputs whose ratios fall between the same two
population ratios tie. Those ties cost the low-FPR end of the ROC most (the most confident
non-members and members all reach score 1 when the population is small), so the ROC, the AUC and
the TPRs are computed from LR(x) itself: RMIA's ranking with its ties resolved, independent of
gamma. The record keeps both the scores (the paper's decision statistic, thresholded without
labels) and log LR. `a` is tuned as in the authors' code (privacytrustlab's
ml_privacy_meter) when not given: each reference model is attacked in turn with the others as its
references, on pool inputs that none of the others trained on (about half of which it trained on),
and the a of the grid 0, 0.1, ..., 1 with the best mean AUC is kept.

Data roles (every image of the training and test splits has exactly one role):
  * members: `n_members` inputs the victim was trained on (its training split minus the recipe's
    validation split), chosen exactly as the label-only `membership` attack chooses them for the
    same seed, so both attacks score the same inputs; members_from="test" is the null experiment
    (the "members" are test inputs, so every rate should sit at chance);
  * non-members: `n_nonmembers` test inputs (as `membership` chooses them);
  * population z: `n_population` inputs the victim was not trained on that are not targets (the
    rest of the test split and the recipe's validation split);
  * reference pool: every other image, training or test. Each reference model trains with the
    victim's recipe (`victim_train_config`; `reference_epochs` may shorten it) on its own random
    subset of the pool, of `reference_size` images (default: the victim's training-set size, at
    most half the pool: random halves when the pool holds less than twice the victim's set).
    A reference model therefore never sees a target or a z.

Low-FPR rates are exact points of the empirical ROC (`tpr_at_fpr`): the threshold may flag at most
floor(fpr * n_nonmembers) non-members, so an FPR below 1 / n_nonmembers is not resolvable (0.1% needs
at least 1000 non-members); its TPR is recorded as None and `tpr_at_zero_fpr` says what the lowest
reachable FPR gives. Intervals are stratified bootstrap percentiles (members and non-members
resampled apart) for the AUC and each TPR, given the trained models: the randomness of the
reference models' training is not resampled. A threshold that rests on few non-members (the record
keeps how many the threshold may flag) makes the percentile interval rough.

Cost: `n_reference` trainings of the victim's architecture with the victim's recipe (the record
keeps each one's training seconds, also across resumes), then forward passes of 1 + n_reference
models over targets, population and tuning inputs. With `work_dir` every reference model
checkpoints there after each epoch under a name that hashes its recipe, architecture and training
images, so a killed run resumes, and a rerun reuses the finished models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nasaudit.attacks import AttackSpec
from nasaudit.attacks.common import (
    AttackRecord,
    Victim,
    batched_logits,
    build_fresh,
    record_fields,
    timed,
    victim_train_config,
)
from nasaudit.attacks.membership import member_pool
from nasaudit.attacks.sampling import candidate_indices
from nasaudit.infra.device import generator as make_generator
from nasaudit.infra.device import stream_seed
from nasaudit.infra.errors import InputError
from nasaudit.infra.params import make_params, param
from nasaudit.models.inference import inference_model

if TYPE_CHECKING:
    from nasaudit.data import ImageDataset

# The grid of the offline coefficient a searched when it is not given (as ml_privacy_meter).
A_GRID = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class Params:
    """Offline RMIA settings.

    n_members / n_nonmembers: inputs per side (0.1% FPR needs n_nonmembers >= 1000).
    members_from: "train" (inputs the victim was trained on) or "test" (null experiment).
    n_population: population inputs z (fewer when fewer are available).
    n_reference: reference models trained; reference_size: images per reference model (none: the
    victim's training-set size, at most half the pool); reference_epochs: none = the victim's
    recipe. offline_a: none = tuned on the reference models (needs n_reference >= 2).
    gamma: the likelihood-ratio threshold of the pairwise test. fprs: false-positive rates at
    which the TPR is reported. tune_points: pool inputs scored to tune a. n_bootstrap: bootstrap
    draws for the intervals (0: none). batch_size: images per forward pass.
    """

    n_members: int = param(1000, min=1, doc="member inputs")
    n_nonmembers: int = param(1000, min=1, doc="non-member (test) inputs; 0.1% FPR needs >= 1000")
    members_from: str = param("train", choices=("train", "test"), doc="test: a null experiment")
    n_population: int = param(2000, min=1, doc="population inputs z (victim non-members, not targets)")
    n_reference: int = param(2, min=1, doc="reference models trained with the victim's recipe")
    reference_size: int | None = param(None, min=2, doc="images per reference model (none: the "
                                       "victim's training-set size, at most half the pool)")
    reference_epochs: int | None = param(None, min=1, doc="reference training epochs (none: the victim's recipe)")
    offline_a: float | None = param(None, min=0, max=1, doc="offline coefficient a (none: tuned)")
    gamma: float = param(1.0, gt=0, doc="likelihood-ratio threshold of the pairwise test")
    fprs: tuple[float, ...] = param((0.001, 0.01), gt=0, lt=1, unique=True, doc="FPRs for the TPR")
    tune_points: int = param(2000, min=10, doc="pool inputs scored to tune a")
    n_bootstrap: int = param(1000, min=0, doc="bootstrap draws for the intervals (0: none)")
    batch_size: int = param(512, min=1, doc="images per forward pass")


@dataclass
class RmiaRecord(AttackRecord):
    """Offline RMIA results; higher means "member".

    member_scores / nonmember_scores: RMIA's scores in [0, 1] (fractions of the population
    inputs); member_log_ratios / nonmember_log_ratios: log LR(x), the statistic the scores are a
    step function of, from which every ROC figure below is computed (the scores with their ties
    resolved). auc: ROC AUC, members positive; auc_interval: [low, high] bootstrap 95% (None without draws).
    fprs: the requested false-positive rates; tpr_at_fpr: the TPR at each (None when the FPR is
    below min_fpr = 1 / n_nonmembers, not resolvable); tpr_interval: [low, high] per FPR (None
    when not resolvable or without draws); low_fpr: per FPR the exact ROC point (`LowFprPoint`
    fields: achieved_fpr, true/false positives, allowed non-members, chance_tpr = the expected
    TPR of a score that ignores membership). tpr_at_zero_fpr: TPR with no non-member flagged.
    member_accuracy / nonmember_accuracy: the victim's top-1 accuracy on the targets.
    offline_a: the coefficient used; offline_a_search: [a, mean AUC] per grid value when tuned.
    reference_seconds: training seconds of each reference model (summed over resumed runs);
    reference_epochs_run: epochs each one trained in this call (0: a finished checkpoint was reused);
    reference_population_accuracy: each reference model's accuracy on the population inputs.
    victim_train_size: images the victim was trained on; reference_size: images per reference
    model; pool_size: images the reference subsets are drawn from.
    member_indices index the training split (the test split when members_from == "test");
    nonmember_indices the test split.
    """

    kind = "attack.rmia"
    members_from: str
    n_members: int
    n_nonmembers: int
    n_population: int
    auc: float
    auc_interval: list[float] | None
    fprs: list[float]
    tpr_at_fpr: list[float | None]
    tpr_interval: list[list[float] | None]
    low_fpr: list[dict[str, Any]]
    min_fpr: float
    tpr_at_zero_fpr: float
    member_accuracy: float
    nonmember_accuracy: float
    offline_a: float
    offline_a_tuned: bool
    offline_a_search: list[list[float]]
    gamma: float
    n_reference: int
    reference_epochs: int
    reference_size: int
    victim_train_size: int
    pool_size: int
    reference_seconds: list[float]
    reference_epochs_run: list[int]
    reference_population_accuracy: list[float]
    scoring_seconds: float
    member_indices: list[int]
    nonmember_indices: list[int]
    member_scores: list[float]
    nonmember_scores: list[float]
    member_log_ratios: list[float]
    nonmember_log_ratios: list[float]


# ------------------------------------------------------------------------------ low-FPR metrics


@dataclass(frozen=True)
class LowFprPoint:
    """One exact point of the empirical ROC at a target false-positive rate.

    The threshold is the lowest one that flags ("member": score > threshold) at most
    `allowed` = floor(target_fpr * n_nonmembers) non-members; `tpr` = true_positives / n_members
    and `achieved_fpr` = false_positives / n_nonmembers (<= target_fpr; below it under ties).
    Not `resolvable` when allowed == 0 (target_fpr < 1 / n_nonmembers): `tpr` is then the TPR at
    FPR 0. `chance_tpr` = (allowed + 1) / (n_nonmembers + 1) is the expected TPR of a score that is
    independent of membership (without ties: each member's score ranks uniformly among the
    non-members'), the null a TPR is compared with.
    """

    target_fpr: float
    tpr: float
    achieved_fpr: float
    true_positives: int
    false_positives: int
    allowed: int
    n_members: int
    n_nonmembers: int
    threshold: float

    @property
    def resolvable(self) -> bool:
        return self.allowed >= 1

    @property
    def min_fpr(self) -> float:
        return 1.0 / self.n_nonmembers

    @property
    def chance_tpr(self) -> float:
        return (self.allowed + 1) / (self.n_nonmembers + 1)

    def to_dict(self) -> dict[str, Any]:
        """The fields and the derived values, JSON-ready."""
        return {**dataclasses.asdict(self), "resolvable": self.resolvable, "min_fpr": self.min_fpr,
                "chance_tpr": self.chance_tpr}


def allowed_false_positives(fpr: float, n_nonmembers: int) -> int:
    """floor(fpr * n_nonmembers), robust to float rounding (0.001 * 1000 counts as 1)."""
    return int(math.floor(fpr * n_nonmembers + 1e-9))


def tpr_at_fpr(member_scores, nonmember_scores, fpr: float) -> LowFprPoint:
    """The exact empirical TPR at false-positive rate `fpr` (members positive, higher = member).

    Args: member_scores float [n_members], nonmember_scores float [n_nonmembers] (array-like).
    The answer equals max(tpr[fpr_curve <= fpr]) of sklearn's roc_curve(drop_intermediate=False).
    """
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("tpr_at_fpr needs at least one member and one non-member score")
    k = allowed_false_positives(fpr, neg.size)
    if k >= neg.size:
        threshold = -math.inf
    else:
        # The (k+1)-th largest non-member score: flagging only scores above it flags at most k.
        threshold = float(np.partition(neg, neg.size - 1 - k)[neg.size - 1 - k])
    tp, fp = int((pos > threshold).sum()), int((neg > threshold).sum())
    return LowFprPoint(float(fpr), tp / pos.size, fp / neg.size, tp, fp, k, pos.size, neg.size, threshold)


def auc_score(member_scores, nonmember_scores) -> float:
    """ROC AUC = P(member score > non-member score) + P(tie) / 2 (Mann-Whitney U / (n1 n0))."""
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.sort(np.asarray(nonmember_scores, dtype=np.float64).ravel())
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (pos.size * neg.size))


def bootstrap_intervals(member_scores, nonmember_scores, fprs, *, n_draws: int, seed: int,
                        level: float = 0.95, chunk: int = 200) -> tuple[list[float] | None, list[list[float] | None]]:
    """Stratified bootstrap percentile intervals: (AUC [low, high], per FPR [low, high] or None).

    Members and non-members are resampled apart (their counts fixed), `n_draws` times from a
    seeded numpy generator; an FPR that is not resolvable with these counts gets None.
    """
    from scipy.stats import rankdata

    if n_draws <= 0:
        return None, [None for _ in fprs]
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    n1, n0 = pos.size, neg.size
    rng = np.random.default_rng(seed)
    ks = [allowed_false_positives(f, n0) for f in fprs]
    aucs, tprs = [], [[] for _ in fprs]
    for start in range(0, n_draws, chunk):
        b = min(chunk, n_draws - start)
        p = pos[rng.integers(0, n1, size=(b, n1))]
        q = neg[rng.integers(0, n0, size=(b, n0))]
        ranks = rankdata(np.concatenate([p, q], axis=1), axis=1)
        aucs.append((ranks[:, :n1].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0))
        for i, k in enumerate(ks):
            if 1 <= k < n0:
                thr = np.partition(q, n0 - 1 - k, axis=1)[:, n0 - 1 - k]
                tprs[i].append((p > thr[:, None]).mean(1))
            elif k >= n0:
                tprs[i].append(np.ones(b))
    tail = (1 - level) / 2 * 100

    def interval(values: list[np.ndarray]) -> list[float]:
        v = np.concatenate(values)
        return [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]

    return interval(aucs), [interval(t) if t else None for t in tprs]


# ------------------------------------------------------------------------------------- scores


def true_label_log_probs(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                         device: torch.device, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(log softmax probability of the true label, float64 [N]; correct, bool [N]) on the CPU, for
    uint8 images [N, C, H, W] and int64 labels [N]. Float32 logits even under autocast: member and
    non-member probabilities differ near 1, below bf16's resolution."""
    logits = batched_logits(model, images, device=device, batch_size=batch_size, fp32=True).cpu()
    if logits.numel() == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    # float64 log-softmax (on the CPU: not every device has float64): in float32 a member's
    # log-probability saturates at 0 once its margin exceeds about 16 logits, tying the most
    # confident members with each other.
    labels = labels.cpu()
    logp = torch.log_softmax(logits.double(), dim=1).gather(1, labels[:, None]).squeeze(1)
    correct = logits.argmax(1) == labels
    return logp.numpy(), correct.numpy()


def log_likelihood_ratio(target: np.ndarray, ref: np.ndarray, a: float) -> np.ndarray:
    """log LR = log f(x; victim) - log p(x), float64 [N], p(x) = (1 + a)/2 mean_j f(x; ref_j) + (1 - a)/2.

    Args: log-probabilities of the true label, target [N] under the victim and ref [R, N] under R
    reference models that never trained on these inputs; a in [0, 1]. Computed in log space, so a
    probability that underflows float64 still ranks.
    """
    from scipy.special import logsumexp

    target = np.asarray(target, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64).reshape(-1, target.shape[0])
    log_out = logsumexp(ref, axis=0) - math.log(ref.shape[0])
    log_p = log_out + math.log((1 + a) / 2)
    if a < 1:
        log_p = np.logaddexp(log_p, math.log((1 - a) / 2))
    return target - log_p


def rmia_scores(target_x: np.ndarray, ref_x: np.ndarray, target_z: np.ndarray, ref_z: np.ndarray,
                a: float, gamma: float = 1.0) -> np.ndarray:
    """RMIA scores float64 [Nx] in [0, 1]: the fraction of z with LR(x) / LR(z) > gamma.

    Args: log-probabilities of the true label: target_x [Nx] and target_z [Nz] under the victim,
    ref_x [R, Nx] and ref_z [R, Nz] under the R reference models (OUT for every x and z);
    a: the offline coefficient in [0, 1]; gamma > 0. For a fixed population the score is a
    non-decreasing step function of LR(x) (`log_likelihood_ratio`).
    """
    lr_x = log_likelihood_ratio(target_x, ref_x, a)
    lr_z = np.sort(log_likelihood_ratio(target_z, ref_z, a))
    # LR(x) / LR(z) > gamma  <=>  log LR(z) < log LR(x) - log gamma: count by binary search.
    return np.searchsorted(lr_z, lr_x - math.log(gamma), side="left") / lr_z.size


def tune_offline_a(ref_pool: np.ndarray, in_ref: np.ndarray,
                   grid: tuple[float, ...] = A_GRID) -> tuple[float, list[list[float]]]:
    """The a of `grid` with the best mean AUC when each reference model is attacked with the others.

    Args: ref_pool float64 [R, P]: log-probabilities of the true label of P pool inputs under the
    R >= 2 reference models; in_ref bool [R, P]: which model trained on which input. For target
    model j the inputs are those no other model trained on, about half of them members of j; the
    AUC is that of the likelihood ratio (the RMIA score with its ties resolved). Returns
    (a, [[a, mean AUC], ...]); ties go to the smaller a.
    """
    r = ref_pool.shape[0]
    if r < 2:
        raise ValueError("tuning a needs at least two reference models")
    search = []
    for a in grid:
        aucs = []
        for j in range(r):
            others = [i for i in range(r) if i != j]
            keep = ~in_ref[others].any(0)
            members = in_ref[j] & keep
            if not members.any() or not (keep & ~in_ref[j]).any():
                continue
            lr = log_likelihood_ratio(ref_pool[j, keep], ref_pool[others][:, keep], a)
            aucs.append(auc_score(lr[in_ref[j, keep]], lr[~in_ref[j, keep]]))
        search.append([float(a), float(np.mean(aucs)) if aucs else math.nan])
    finite = [row for row in search if math.isfinite(row[1])]
    if not finite:
        raise InputError("--param offline_a", "cannot tune a: no pool input is IN one reference model "
                         "and OUT of the others; give offline_a or a larger pool")
    best = max(finite, key=lambda row: row[1])  # max keeps the first (smaller a) among ties
    return best[0], search


# ---------------------------------------------------------------------------------- data roles


@dataclass
class Roles:
    """Index tensors (int64, CPU) of one run. members / nonmembers index their splits (members the
    test split when members_from == "test"); population, pool and the global index of every
    role run over train ∪ test, the training split first (test image j is n_train + j)."""

    members: torch.Tensor
    nonmembers: torch.Tensor
    member_global: torch.Tensor
    nonmember_global: torch.Tensor
    population: torch.Tensor
    pool: torch.Tensor
    victim_train_size: int


def gather(data: ImageDataset, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [N, C, H, W], int64 labels [N]) at global indices over train ∪ test (the
    training split first), in the order given, without concatenating the splits."""
    n_train = data.train_images.shape[0]
    in_train = index < n_train
    images = torch.empty((index.numel(), *data.train_images.shape[1:]), dtype=data.train_images.dtype)
    labels = torch.empty(index.numel(), dtype=data.train_labels.dtype)
    images[in_train], labels[in_train] = data.train_images[index[in_train]], data.train_labels[index[in_train]]
    rest = index[~in_train] - n_train
    images[~in_train], labels[~in_train] = data.test_images[rest], data.test_labels[rest]
    return images, labels


def make_roles(victim: Victim, data: ImageDataset, params: Params, seed: int) -> Roles:
    """Members, non-members, population and reference pool for `seed` (see the module docstring)."""
    n_train, n_test = data.train_images.shape[0], data.test_images.shape[0]
    fitted = member_pool(victim, data)
    if params.members_from == "train":
        members = fitted[candidate_indices(len(fitted), params.n_members, seed)]
        nonmembers = candidate_indices(n_test, params.n_nonmembers, seed + 1)
        member_global = members
    else:
        perm = candidate_indices(n_test, params.n_members + params.n_nonmembers, seed)
        half = min(params.n_members, len(perm) // 2)
        members, nonmembers = perm[:half], perm[half:]
        member_global = n_train + members
    nonmember_global = n_train + nonmembers
    if members.numel() == 0 or nonmembers.numel() == 0:
        raise InputError("--param n_members", f"no members or no non-members: {n_train} training and "
                         f"{n_test} test images")
    role = torch.zeros(n_train + n_test, dtype=torch.long)  # 0 free, 1 target
    role[member_global] = 1
    role[nonmember_global] = 1
    unseen = torch.ones(n_train + n_test, dtype=torch.bool)  # the victim never trained on these
    unseen[fitted] = False
    candidates = torch.nonzero(unseen & (role == 0)).squeeze(1)
    if candidates.numel() == 0:
        raise InputError("--param n_population", "no population input left: every image the victim was "
                         "not trained on is a target; lower n_nonmembers")
    gen = make_generator(stream_seed(seed, "rmia", "population"))
    population = candidates[torch.randperm(candidates.numel(), generator=gen)[: params.n_population]]
    role[population] = 2
    pool = torch.nonzero(role == 0).squeeze(1)
    return Roles(members, nonmembers, member_global, nonmember_global, population.sort().values, pool,
                 int(len(fitted)))


# ------------------------------------------------------------------------------- reference models


@dataclass
class Reference:
    """A trained reference model: the model (eval mode), its training subset (global indices,
    int64 [S]), its training seconds and how many of its epochs ran in this call."""

    model: nn.Module
    subset: torch.Tensor
    seconds: float
    epochs_trained_now: int


def reference_subsets(pool: torch.Tensor, n_reference: int, size: int, seed: int) -> list[torch.Tensor]:
    """`n_reference` independent random subsets of `pool` (global indices) of `size` each, sorted."""
    out = []
    for i in range(n_reference):
        gen = make_generator(stream_seed(seed, "rmia", "subset", i))
        out.append(pool[torch.randperm(pool.numel(), generator=gen)[:size]].sort().values)
    return out


def _checkpoint_key(victim: Victim, config_dict: dict, images: torch.Tensor, labels: torch.Tensor) -> str:
    """A short hash naming one reference model's checkpoint: architecture, recipe and training set."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": victim.model_name, "kwargs": victim.model_kwargs, "config": config_dict},
                        sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(images.numpy()).tobytes())
    h.update(np.ascontiguousarray(labels.numpy()).tobytes())
    return h.hexdigest()[:16]


def train_references(victim: Victim, data: ImageDataset, subsets: list[torch.Tensor], epochs: int, *,
                     device: torch.device, seed: int, work_dir: str | None, progress: bool) -> list[Reference]:
    """Train one model of the victim's architecture with the victim's recipe (its seed replaced by
    a per-model seed, `epochs` epochs) on each subset (global indices over train ∪ test).

    With `work_dir`, model i checkpoints after every epoch to work_dir/rmia_reference_{i}_{key}.pth
    (key: a hash of architecture, recipe and training images) and resumes from it; a finished
    checkpoint is loaded without training.
    """
    from nasaudit.training import train_model

    base = victim_train_config(victim)
    refs = []
    for i, subset in enumerate(tqdm(subsets, desc="rmia references", disable=not progress)):
        ref_seed = stream_seed(seed, "rmia", "reference", i) % 2**31
        config = dataclasses.replace(base, seed=ref_seed, epochs=epochs)
        x, y = gather(data, subset)
        ckpt = None
        if work_dir is not None:
            key = _checkpoint_key(victim, config.to_dict(), x, y)
            ckpt = Path(work_dir) / f"rmia_reference_{i}_{key}.pth"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
        model = build_fresh(victim.model_name, data, ref_seed, victim.model_kwargs)
        ran: list[int] = []
        result = train_model(model, x, y, config, device=device, checkpoint_path=ckpt, resume=ckpt is not None,
                             sidecar={"model": victim.model_name, "model_kwargs": victim.model_kwargs,
                                      "attack": "rmia", "reference": i, "dataset": data.name},
                             progress=progress, on_epoch=lambda record, ran=ran: ran.append(1))
        # The history (kept in the checkpoint) covers every epoch, also those of a killed run.
        seconds = float(sum(float(h.get("seconds") or 0.0) for h in result.history))
        refs.append(Reference(result.model.eval(), subset, seconds, len(ran)))
    return refs


# ----------------------------------------------------------------------------------------- run


def run_rmia(
    victim: Victim,
    data: ImageDataset,
    params: Params | dict | None = None,
    *,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    work_dir: str | None = None,
) -> RmiaRecord:
    """Offline RMIA against `victim` (see the module docstring); returns an RmiaRecord."""
    params = make_params(Params, params, source="params")
    if params.offline_a is None and params.n_reference < 2:
        raise InputError("--param offline_a", "tuning a needs n_reference >= 2; give offline_a (the "
                         "authors' default is 0.3) to run with one reference model")
    with timed() as elapsed:
        roles = make_roles(victim, data, params, seed)
        size = params.reference_size or min(roles.victim_train_size, roles.pool.numel() // 2)
        if not 2 <= size <= roles.pool.numel():
            raise InputError("--param reference_size", f"the reference pool holds {roles.pool.numel()} images, "
                             f"so a reference model cannot train on {size}")
        epochs = int(params.reference_epochs or victim_train_config(victim).epochs)
        subsets = reference_subsets(roles.pool, params.n_reference, size, seed)
        refs = train_references(victim, data, subsets, epochs, device=device, seed=seed,
                                work_dir=work_dir, progress=progress)

        with timed() as scoring:
            targets = torch.cat([roles.member_global, roles.nonmember_global])
            models = [inference_model(victim.model)] + [inference_model(r.model) for r in refs]

            def signals(index: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
                x, y = gather(data, index)
                out = [true_label_log_probs(m, x, y, device=device, batch_size=params.batch_size)
                       for m in models]
                return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])

            logp_x, correct_x = signals(targets)
            logp_z, correct_z = signals(roles.population)
            if params.offline_a is None:
                gen = make_generator(stream_seed(seed, "rmia", "tune"))
                tune = roles.pool[torch.randperm(roles.pool.numel(), generator=gen)[: params.tune_points]]
                logp_t, _ = signals(tune)
                in_ref = np.stack([torch.isin(tune, r.subset).numpy() for r in refs])
                a, search = tune_offline_a(logp_t[1:], in_ref)
            else:
                a, search = float(params.offline_a), []
            scores = rmia_scores(logp_x[0], logp_x[1:], logp_z[0], logp_z[1:], a, params.gamma)
            # The ROC of the score with its ties resolved: the likelihood ratio it is a step function of.
            log_lr = log_likelihood_ratio(logp_x[0], logp_x[1:], a)
        n_m = roles.members.numel()
        m_scores, n_scores = log_lr[:n_m], log_lr[n_m:]
        points = [tpr_at_fpr(m_scores, n_scores, f) for f in params.fprs]
        auc_ci, tpr_ci = bootstrap_intervals(m_scores, n_scores, params.fprs, n_draws=params.n_bootstrap,
                                             seed=stream_seed(seed, "rmia", "bootstrap"))
        zero = tpr_at_fpr(m_scores, n_scores, 0.0)
    return RmiaRecord(
        **record_fields("rmia", victim, data, seed, params, elapsed()),
        members_from=params.members_from, n_members=n_m, n_nonmembers=int(roles.nonmembers.numel()),
        n_population=int(roles.population.numel()),
        auc=auc_score(m_scores, n_scores), auc_interval=auc_ci, fprs=[float(f) for f in params.fprs],
        tpr_at_fpr=[p.tpr if p.resolvable else None for p in points],
        tpr_interval=[ci if p.resolvable else None for p, ci in zip(points, tpr_ci, strict=True)],
        low_fpr=[p.to_dict() for p in points], min_fpr=1.0 / roles.nonmembers.numel(),
        tpr_at_zero_fpr=zero.tpr,
        member_accuracy=float(correct_x[0, :n_m].mean()), nonmember_accuracy=float(correct_x[0, n_m:].mean()),
        offline_a=float(a), offline_a_tuned=params.offline_a is None, offline_a_search=search,
        gamma=params.gamma, n_reference=params.n_reference, reference_epochs=epochs, reference_size=int(size),
        victim_train_size=roles.victim_train_size, pool_size=int(roles.pool.numel()),
        reference_seconds=[r.seconds for r in refs], reference_epochs_run=[r.epochs_trained_now for r in refs],
        reference_population_accuracy=[float(c.mean()) for c in correct_z[1:]],
        scoring_seconds=scoring(),
        member_indices=roles.members.tolist(), nonmember_indices=roles.nonmembers.tolist(),
        member_scores=scores[:n_m].tolist(), nonmember_scores=scores[n_m:].tolist(),
        member_log_ratios=m_scores.tolist(), nonmember_log_ratios=n_scores.tolist(),
    )


# TPRs at a threshold estimated from the non-members are not plain k/n proportions: the record
# carries their bootstrap intervals instead.
ATTACK = AttackSpec(
    Params, run_rmia,
    rates={"member_accuracy": "n_members", "nonmember_accuracy": "n_nonmembers"},
    counts={"n_members": ("members", "--param n_members"),
            "n_nonmembers": ("non-members", "--param n_nonmembers")},
    victim_accuracy="nonmember_accuracy", retrains=True, members=True,
    demo={"n_members": 32, "n_nonmembers": 32, "n_population": 64, "n_reference": 2, "reference_epochs": 1,
          "tune_points": 64, "n_bootstrap": 100},
    import_note=("rmia trains its reference models of {spec} from scratch with the victim recipe "
                 "([attacks.rmia] n_reference, reference_epochs)"),
)
