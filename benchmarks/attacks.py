"""Throughput of nasaudit's torch attacks against ART's implementations, on the current device.

    python benchmarks/attacks.py [--device auto] [--model tiny_cnn] [--n 256] [--hsj-n 16]
    python benchmarks/attacks.py --cifar [--bf16]   # darts_v2 (C=16, 8 cells) and resnet18
    python benchmarks/attacks.py --tiny --cifar --bf16   # seconds: proves the script runs

Prints, for the same model and inputs:
  * PGD (L-inf, eps 8/255, step 2/255, random start), each side against ART's
    ProjectedGradientDescentPyTorch: input-iterations per second of the untargeted primitive
    `nasaudit.attacks.pgd.pgd_untargeted` (every iteration for every input, like ART, as
    adversarial training runs it); then inputs per second and ASR of `pgd_attack` as the
    audit's attacks run it (early stopping), untargeted (10 iterations, as the eps sweep) and
    the study's targeted setting (most likely wrong class, 3 iterations, 5 restarts);
  * label-only boundary distance (HopSkipJump, L2, reduced budget): inputs per second of
    `nasaudit.attacks.membership.boundary_distances` vs ART's HopSkipJump as
    LabelOnlyDecisionBoundary runs it (one input at a time, numpy in and out);
and the ratios, then each side's float32 forward rate (ms per image, GFLOP/s), which bounds
HopSkipJump. The victim is --model trained briefly on the embedded digits data unless --checkpoint is
given; with --cifar, two CIFAR-size victims instead, darts_v2 (C=16, 8 cells) and resnet18 (full
width), each trained briefly on the CIFAR-10 subset (--data-dir). Inputs are the victim's
correctly classified test images. --bf16 adds both PGDs under bf16 autocast (their throughput,
and the per-input success agreement of the study's targeted PGD with float32 on the same inputs
and seeds). --repeat R runs each attack figure R times and prints the medians (default 3 on
digits, whose runs last a fraction of a second, 1 with --cifar). --json writes
every figure to a file (benchmarks/gpu_check.sh collects them).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from nasaudit.models.inference import inference_model


def _victim(args: argparse.Namespace, device: torch.device, model_name: str | None = None,
            model_kwargs: dict | None = None):
    """(model in eval mode, real test images float [N, 3, 32, 32] it classifies correctly, labels).

    Default: `--model` trained for a few epochs on the embedded digits data (no files needed),
    so that inputs are real images with a real decision boundary; HopSkipJump's work depends on
    it (on noise inputs ART gives up at initialisation and the comparison would be void).
    """
    from nasaudit.data import load_dataset
    from nasaudit.training import TrainConfig, load_checkpoint_model, train_on_dataset

    if args.checkpoint:
        model, meta = load_checkpoint_model(args.checkpoint, device=device)
        data = load_dataset(meta.get("dataset", "digits"), args.data_dir)
    elif model_name is not None:  # a CIFAR-size victim on the CIFAR-10 subset
        data = load_dataset("cifar10", args.data_dir)
        train_images, train_labels = data.train_images, data.train_labels
        if args.train_subset:
            train_images, train_labels = train_images[: args.train_subset], train_labels[: args.train_subset]
        data = dataclasses.replace(data, train_images=train_images, train_labels=train_labels)
        config = TrainConfig(epochs=args.train_epochs, batch_size=64, lr=0.05, seed=0,
                             drop_path_prob=0.0, val_fraction=0.0)
        model = train_on_dataset(model_name, data, config, device=device,
                                 model_kwargs=model_kwargs, progress=False).model
    else:
        data = load_dataset("digits")
        kwargs = {} if args.model == "tiny_cnn" else {"C": args.C, "layers": args.layers}
        config = TrainConfig(epochs=args.train_epochs, batch_size=64, lr=0.05, seed=0)
        model = train_on_dataset(args.model, data, config, device=device, model_kwargs=kwargs,
                                 progress=False).model
    model.eval()
    x = data.test_images.float() / 255
    y = data.test_labels
    with torch.no_grad():
        ok = model(x.to(device)).argmax(1).cpu() == y
    return model, x[ok], y[ok]


class _Float32(torch.nn.Module):
    """Casts inputs to float32: ART's HopSkipJump hands float64 arrays to the estimator."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.images = 0  # images queried, to compare work done, not only wall time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.model(x.float())


def _art_classifier(model: torch.nn.Module, device: torch.device):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=_Float32(model), loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
        clip_values=(0.0, 1.0), device_type="gpu" if device.type == "cuda" else "cpu",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_pgd(model, x, y, device, iters: int, batch: int) -> tuple[float, float]:
    """(ours, ART) input-iterations per second of untargeted L-inf PGD on x [N, 3, 32, 32]."""
    from art.attacks.evasion import ProjectedGradientDescentPyTorch

    from nasaudit.attacks.pgd import pgd_untargeted
    from nasaudit.infra.device import generator

    eps, step = 8 / 255, 2 / 255
    xd, yd = x.to(device), y.to(device)
    gen = generator(0, device)
    pgd_untargeted(model, xd[:batch], yd[:batch], eps=eps, step=step, iters=1, generator=gen)  # warm-up
    _sync(device)
    t = time.perf_counter()
    fast = inference_model(model)  # what the attack entry points run on (folding time counted)
    for s in range(0, len(xd), batch):
        pgd_untargeted(fast, xd[s : s + batch], yd[s : s + batch], eps=eps, step=step,
                       iters=iters, generator=gen)
    _sync(device)
    ours = len(x) * iters / (time.perf_counter() - t)

    art = ProjectedGradientDescentPyTorch(
        _art_classifier(model, device), norm=np.inf, eps=eps, eps_step=step, max_iter=iters,
        targeted=False, num_random_init=1, batch_size=batch, verbose=False,
    )
    xn, yn = x.numpy(), np.eye(10, dtype=np.float32)[y.numpy()]
    art.generate(xn[:batch], yn[:batch])  # warm-up
    t = time.perf_counter()
    art.generate(xn, yn)
    theirs = len(x) * iters / (time.perf_counter() - t)
    return ours, theirs


def bench_pgd_attack(model, x, device, batch: int, *, targeted: bool, iters: int,
                     restarts: int) -> tuple[float, float, float, float]:
    """PGD as the audit's attacks run it (`pgd_attack`: early stopping, restarts only for
    unsolved inputs) against ART's PGD at the same eps, step, iterations and restarts: (ours,
    ART) inputs per second and (ours, ART) ASR on x [N, 3, 32, 32]. Targeted: towards each
    input's most likely wrong class (the study's c2); untargeted: away from the model's label
    (x is correctly classified, so that is the true label). ART runs every restart in full."""
    from art.attacks.evasion import ProjectedGradientDescentPyTorch

    from nasaudit.attacks.pgd import pgd_attack
    from nasaudit.attacks.sampling import target_classes
    from nasaudit.infra.device import generator

    eps, step = 8 / 255, 2 / 255
    xd = x.to(device)
    with torch.no_grad():
        logits = model(xd)
    label = target_classes(logits, "most_likely") if targeted else logits.argmax(1)
    gen = generator(0, device)
    _sync(device)
    t = time.perf_counter()
    fast = inference_model(model)
    oks = []
    for s in range(0, len(xd), batch):
        oks.append(pgd_attack(fast, xd[s : s + batch], label[s : s + batch], targeted=targeted,
                              eps=eps, step=step, iters=iters, restarts=restarts, generator=gen)[1])
    _sync(device)
    ours = len(x) / (time.perf_counter() - t)
    ours_asr = float(torch.cat(oks).float().mean())

    art = ProjectedGradientDescentPyTorch(
        _art_classifier(model, device), norm=np.inf, eps=eps, eps_step=step, max_iter=iters,
        targeted=targeted, num_random_init=restarts, batch_size=batch, verbose=False,
    )
    onehot = np.eye(logits.shape[1], dtype=np.float32)[label.cpu().numpy()]
    t = time.perf_counter()
    adv = art.generate(x.numpy(), onehot)
    theirs = len(x) / (time.perf_counter() - t)
    with torch.no_grad():
        pred = model(torch.from_numpy(adv).to(device)).argmax(1)
    hit = pred == label if targeted else pred != label
    return ours, theirs, ours_asr, float(hit.float().mean())


def bench_hsj(model, x, y, device, budget: dict) -> tuple[float, float, float, float, int]:
    """(ours, ART) inputs per second of label-only HopSkipJump boundary distances, (ours, ART)
    mean queries per input, and how many inputs ART gave up on at initialisation."""
    from art.attacks.evasion import HopSkipJump

    from nasaudit.attacks.membership import boundary_distances

    images = (x * 255).round().to(torch.uint8)
    t = time.perf_counter()
    _, _, queries = boundary_distances(inference_model(model), images, y, device=device, seed=0,
                                       batch_size=len(x), progress=False, **budget)
    _sync(device)
    ours = len(x) / (time.perf_counter() - t)

    classifier = _art_classifier(model, device)
    hsj = HopSkipJump(classifier, targeted=False, norm=2,
                      max_iter=budget["max_iter"], max_eval=budget["max_eval"],
                      init_eval=budget["init_eval"], init_size=budget["init_size"],
                      batch_size=256, verbose=False)
    xq = (images.float() / 255).numpy()
    t = time.perf_counter()
    adv = hsj.generate(xq, np.eye(10, dtype=np.float32)[y.numpy()])
    theirs = len(x) / (time.perf_counter() - t)
    art_queries = classifier.model.images / len(x)
    # ART returns x itself when no random start is adversarial (distance 0, no work done).
    art_failed = int((np.abs(adv - xq).reshape(len(x), -1).max(1) == 0).sum())
    return ours, theirs, float(queries.float().mean()), art_queries, art_failed


def bench_forward(model, x, device, reps: int = 3) -> dict:
    """Float32 forward rate of each side's model (ms per image, GFLOP/s), the bound of a
    label-only attack: ours the folded channels_last copy in chunks of 64 images (as the
    attacks run it), ART's the model as given in NCHW batches of 256 (its HopSkipJump batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    from nasaudit.attacks.common import batched_logits

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x[:1].to(device))
    gflop = counter.get_total_flops() / 1e9
    fast = inference_model(model)
    xs = x.repeat((256 + len(x) - 1) // len(x), 1, 1, 1)[:256].to(device)
    runs = {"ours": lambda: batched_logits(fast, xs, device=device, batch_size=256, fp32=True),
            "art": lambda: model(xs)}
    best = {}
    with torch.no_grad():
        for _ in range(reps):  # interleaved, best of `reps`: the machine's speed drifts
            for side, run in runs.items():
                _sync(device)
                t = time.perf_counter()
                run()
                _sync(device)
                best[side] = min(best.get(side, float("inf")), time.perf_counter() - t)
    out = {"gflop_per_image": gflop}
    for side, seconds in best.items():
        out[f"{side}_ms_per_image"] = seconds / len(xs) * 1e3
        out[f"{side}_gflops"] = gflop * len(xs) / seconds
    return out


def bench_bf16(model, x, y, device, iters: int, batch: int) -> dict:
    """Our attacks under bf16 autocast (AVX-512 BF16 or AMX on a recent CPU, tensor cores on a GPU) against
    float32 on the same inputs and seeds: the untargeted PGD primitive's input-iterations per
    second, and the study's targeted PGD (c2, 3 iterations, 5 restarts) inputs per second, both
    ASRs and the fraction of inputs whose success agrees (success is always decided in fp32)."""
    from nasaudit.attacks.pgd import pgd_attack, pgd_untargeted
    from nasaudit.attacks.sampling import target_classes
    from nasaudit.infra.device import generator

    xd, yd = x.to(device), y.to(device)
    fast = inference_model(model)
    with torch.no_grad():
        target = target_classes(fast(xd), "most_likely")
    out: dict = {}
    success = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        ctx = (torch.autocast(device.type, dtype=dtype) if dtype is not None
               else torch.autocast(device.type, enabled=False))
        gen = generator(0, device)
        with ctx:
            pgd_untargeted(fast, xd[:batch], yd[:batch], eps=8 / 255, step=2 / 255, iters=1,
                           generator=gen)  # warm-up (oneDNN primitives per dtype)
            _sync(device)
            t = time.perf_counter()
            for s in range(0, len(xd), batch):
                pgd_untargeted(fast, xd[s : s + batch], yd[s : s + batch], eps=8 / 255,
                               step=2 / 255, iters=iters, generator=gen)
            _sync(device)
            out[f"pgd_{name}"] = len(x) * iters / (time.perf_counter() - t)
            gen = generator(0, device)
            t = time.perf_counter()
            oks = [pgd_attack(fast, xd[s : s + batch], target[s : s + batch], targeted=True,
                              eps=8 / 255, step=2 / 255, iters=3, restarts=5, generator=gen)[1]
                   for s in range(0, len(xd), batch)]
            _sync(device)
            out[f"targeted_{name}"] = len(x) / (time.perf_counter() - t)
        success[name] = torch.cat(oks).cpu()
    out.update({"asr_fp32": float(success["fp32"].float().mean()),
                "asr_bf16": float(success["bf16"].float().mean()),
                "agreement": float((success["fp32"] == success["bf16"]).float().mean())})
    return out


def _median_of(repeat: int, bench) -> tuple:
    """`bench()` (a tuple of figures, each side timed in turn) run `repeat` times; each figure's
    median. Runs of a fraction of a second (the digits victim) swing by 1.5x between calls on
    this project's machine; alternating the sides inside each run keeps drift from favouring one."""
    runs = [bench() for _ in range(repeat)]
    return tuple(float(np.median([run[i] for run in runs])) for i in range(len(runs[0])))


def run_victim(args: argparse.Namespace, device: torch.device, label: str, model, x, y) -> dict:
    """Every benchmark on one victim; prints its lines and returns its figures."""
    x, y = x[: args.n], y[: args.n]
    out: dict = {"victim": label, "n": len(x), "repeat": args.repeat}
    if args.repeat > 1:
        print(f"each attack figure: median of {args.repeat} runs", flush=True)
    print(f"victim {label}: {len(x)} correctly classified test inputs")
    ours, art = _median_of(args.repeat, lambda: bench_pgd(model, x, y, device, args.iters, args.batch))
    out["pgd"] = {"ours": ours, "art": art, "ratio": ours / art}
    print(f"PGD  primitive (n={len(x)}, iters={args.iters}, no early stop):  nasaudit {ours:9.1f} input-it/s   "
          f"ART {art:9.1f} input-it/s   ratio {ours / art:5.2f}x", flush=True)

    attacks = (("pgd_attack", f"untargeted attack, {args.iters} it, early stop", False, args.iters, 1),
               ("pgd_targeted", "targeted c2, 3 it, 5 restarts", True, 3, 5))
    for key, title, targeted, iters, restarts in attacks:
        ours, art, a1, a2 = _median_of(args.repeat, lambda t=targeted, i=iters, r=restarts: (
            bench_pgd_attack(model, x, device, args.batch, targeted=t, iters=i, restarts=r)))
        out[key] = {"ours": ours, "art": art, "ratio": ours / art, "asr_ours": a1, "asr_art": a2}
        print(f"PGD  {title} (n={len(x)}): nasaudit {ours:8.1f} inputs/s (ASR {a1:.2f})   "
              f"ART {art:8.1f} inputs/s (ASR {a2:.2f})   ratio {ours / art:5.2f}x", flush=True)

    budget = {"max_iter": args.hsj_iter, "max_eval": 2500, "init_eval": 100, "init_size": 100}
    xs, ys = x[: args.hsj_n], y[: args.hsj_n]
    ours, art, q, q_art, failed = _median_of(args.repeat, lambda: bench_hsj(model, xs, ys, device, budget))
    failed = int(failed)
    out["hsj"] = {"ours": ours, "art": art, "ratio": ours / art, "queries_ours": q,
                  "queries_art": q_art, "art_gave_up": failed}
    print(f"HSJ  (n={len(xs)}, max_iter={args.hsj_iter}, init_eval 100): nasaudit {ours:7.2f} "
          f"inputs/s ({q:.0f} queries/input)   ART {art:7.2f} inputs/s ({q_art:.0f} "
          f"queries/input, gave up on {failed})   ratio {ours / art:5.2f}x")
    print(f"HSJ  queries/s: nasaudit {ours * q:9.0f}   ART {art * q_art:9.0f}   ratio "
          f"{ours * q / (art * q_art):5.2f}x", flush=True)
    f = out["forward"] = bench_forward(model, x, device)
    print(f"forward fp32 ({f['gflop_per_image']:.3f} GFLOP/image): nasaudit "
          f"{f['ours_ms_per_image']:.2f} ms/image ({f['ours_gflops']:.0f} GFLOP/s)   ART's model "
          f"{f['art_ms_per_image']:.2f} ms/image ({f['art_gflops']:.0f} GFLOP/s)   ratio "
          f"{f['art_ms_per_image'] / f['ours_ms_per_image']:5.2f}x", flush=True)
    if args.bf16:
        b = bench_bf16(model, x, y, device, args.iters, args.batch)
        out["bf16"] = b
        pgd_art, targeted_art = out["pgd"]["art"], out["pgd_targeted"]["art"]
        b["pgd_ratio_vs_art"] = b["pgd_bf16"] / pgd_art
        b["targeted_ratio_vs_art"] = b["targeted_bf16"] / targeted_art
        print(f"PGD  bf16 autocast: nasaudit {b['pgd_bf16']:9.1f} input-it/s (fp32 "
              f"{b['pgd_fp32']:.1f})   vs ART fp32 {b['pgd_ratio_vs_art']:5.2f}x", flush=True)
        print(f"PGD  targeted, bf16 autocast: nasaudit {b['targeted_bf16']:8.1f} inputs/s (fp32 "
              f"{b['targeted_fp32']:.1f})   vs ART fp32 {b['targeted_ratio_vs_art']:5.2f}x", flush=True)
        print(f"bf16 vs fp32, targeted PGD (n={len(x)}): ASR fp32 {b['asr_fp32']:.3f}, bf16 "
              f"{b['asr_bf16']:.3f}, per-input agreement {b['agreement']:.3f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="tiny_cnn", help="registry model or genotype")
    parser.add_argument("--C", type=int, default=8, help="genotype networks: initial channels")
    parser.add_argument("--layers", type=int, default=5, help="genotype networks: cells")
    parser.add_argument("--checkpoint", default=None, help="benchmark a trained checkpoint")
    parser.add_argument("--cifar", action="store_true",
                        help="victims darts_v2 (C=16, 8 cells) and resnet18 on the CIFAR-10 subset")
    parser.add_argument("--data-dir", default=None,
                        help="data of --checkpoint / --cifar (default for --cifar: "
                             "<repo>/../shared/data/cifar10-subset)")
    parser.add_argument("--train-epochs", type=int, default=None,
                        help="epochs of the victim (default 3 digits, 2 --cifar)")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="--cifar: first N training images (default: all)")
    parser.add_argument("--n", type=int, default=256, help="PGD inputs")
    parser.add_argument("--iters", type=int, default=10, help="PGD iterations")
    parser.add_argument("--batch", type=int, default=128, help="PGD batch size")
    parser.add_argument("--hsj-n", type=int, default=16, help="HopSkipJump inputs")
    parser.add_argument("--hsj-iter", type=int, default=5, help="HopSkipJump iterations")
    parser.add_argument("--bf16", action="store_true", help="bf16 vs fp32 targeted PGD agreement")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per attack figure, median printed (default 3 digits, 1 --cifar)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes and small victims (CI: proves the script runs)")
    parser.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = parser.parse_args(argv)
    if args.train_epochs is None:
        args.train_epochs = 2 if args.cifar else 3
    if args.repeat is None:
        args.repeat = 1 if args.cifar or args.tiny else 3
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.cifar and args.data_dir is None:
        args.data_dir = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset")
    victims = [("darts_v2", {"C": 16, "layers": 8, "auxiliary": False}), ("resnet18", {})]
    if args.tiny:
        args.n, args.iters, args.batch, args.hsj_n, args.hsj_iter = 8, 2, 8, 2, 1
        args.train_epochs, args.train_subset = 1, args.train_subset or 256
        victims = [("darts_v2", {"C": 4, "layers": 3, "auxiliary": False}), ("resnet18", {"width": 4})]

    from nasaudit.infra.device import resolve_device

    device = resolve_device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    results = []
    if args.cifar:
        for name, kwargs in victims:
            model, x, y = _victim(args, device, name, kwargs)
            label = f"{name} ({', '.join(f'{k}={v}' for k, v in kwargs.items()) or 'full width'}, CIFAR-10 subset)"
            results.append(run_victim(args, device, label, model, x, y))
    else:
        model, x, y = _victim(args, device)
        results.append(run_victim(args, device, args.model, model, x, y))
    if args.json:
        from nasaudit.infra.io import atomic_write_json

        atomic_write_json(args.json, {"device": str(device), "victims": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
