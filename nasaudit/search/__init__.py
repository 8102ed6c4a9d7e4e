"""DARTS-style differentiable architecture search with the study's two in-search mitigations.

* `supernet`: the mixed-op network over a search space (zero op skipped, optional PC-DARTS
  partial channels) and the DARTS derivation rule;
* `architect`: bi-level optimisation with `n_step` inner steps (first order, unrolled through
  torch.func, or DARTS's finite-difference Hessian-vector product);
* `hooks`: alpha hooks, e.g. the skip_connect penalty gamma;
* `monitor`: TensorBoard summaries; `run`: config, resumable loop, outputs.
"""

from nasaudit.search.architect import MODES, Architect
from nasaudit.search.hooks import AlphaHook, parse_hook, register_hook_factory, skip_penalty
from nasaudit.search.run import SearchConfig, SearchResult, build_supernet, run_search
from nasaudit.search.supernet import Supernet, derive_genotype

__all__ = [
    "MODES",
    "AlphaHook",
    "Architect",
    "SearchConfig",
    "SearchResult",
    "Supernet",
    "build_supernet",
    "derive_genotype",
    "parse_hook",
    "register_hook_factory",
    "run_search",
    "skip_penalty",
]
