"""The per-image PyTorch loop that a user of the paper would write (for bench_cid).

Two parts:

* :func:`torch_model`: a zoo ``LayeredModel`` built from ConvBN, MaxPool,
  GlobalAvgPool and Dense stages (the demo ``convnet``, also ``alexnet`` and
  ``vgg*``) rebuilt in PyTorch with the same weights (convolution without
  bias, BatchNorm in inference mode on its running averages with the same
  epsilon, ReLU, non-overlapping max pooling, global average pooling, dense),
  and the input centring ``(x - mean) * scale``. :func:`torch_features`
  returns a layer's features in the JAX layout (NHWC) for the equality check.
* :func:`cid_loop`: pixel-wise CID of one image and one layer as the paper
  states it (Eq. 3-4 with ``f = h(x)``): Adam on ``log sigma`` of the loss
  ``E||h(x + sigma delta) - f||^2 / delta_f^2 - lambda sum_i log sigma_i``
  (Monte-Carlo draws, one sigma per pixel shared by the channels), and an
  outer search on ``lambda`` (bracketing by factors of 10 from the linear
  regime's ``2 beta / n``, then bisection on ``log lambda``) until held
  draws say the budget ``beta`` is met. ``delta_f^2 = ||J||_F^2`` comes
  from forward-mode Jacobian-vector products with Rademacher probes
  (``torch.func.jvp``), or exactly from one VJP per feature entry when the
  layer has at most as many entries as probes.

Every model pass is counted: one forward (and backward) of one image is one
pass, as in the solver's ``passes``. Needs ``pip install -e ".[bench]"``
(a CPU build of torch).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

# 0.5 log(2 pi e): entropy of a unit Gaussian minus log sigma (nats).
ENTROPY_CONSTANT = 0.5 * math.log(2.0 * math.pi * math.e)


def _np(v) -> np.ndarray:
    return np.asarray(v[...], dtype=np.float32)


def torch_model(model) -> dict:
    """The stages of a flax zoo ``LayeredModel`` as torch tensors.

    Args:
      model: a ``jax_infodiscard.models`` classification model whose stages
        are ``ConvBN``, ``MaxPool``, ``GlobalAvgPool`` or ``Dense``.

    Returns:
      ``{"norm": (mean (C,), scale) or None, "stages": [(name, kind, params)]}``
      with float32 tensors (convolution kernels as ``OIHW``).

    Raises:
      ValueError: a stage of another kind.
    """
    from jax_infodiscard.models.layers import ConvBN, Dense, GlobalAvgPool, MaxPool

    norm = None
    if model.input_norm is not None:
        norm = (torch.from_numpy(_np(model.input_norm.mean)), model.input_norm.scale)
    stages = []
    for name in model.stage_names:
        m = getattr(model, name)
        if isinstance(m, ConvBN):
            kernel = torch.from_numpy(_np(m.conv.kernel)).permute(3, 2, 0, 1)
            strides = m.conv.strides
            stride = strides if isinstance(strides, int) else strides[0]
            p = {
                "kernel": kernel.contiguous(),
                "stride": int(stride),
                "scale": torch.from_numpy(_np(m.bn.scale)),
                "bias": torch.from_numpy(_np(m.bn.bias)),
                "mean": torch.from_numpy(_np(m.bn.mean)),
                "var": torch.from_numpy(_np(m.bn.var)),
                "eps": float(m.bn.epsilon),
                "relu": bool(m.relu),
            }
            stages.append((name, "conv", p))
        elif isinstance(m, MaxPool):
            stages.append((name, "maxpool", {"window": int(m.window)}))
        elif isinstance(m, GlobalAvgPool):
            stages.append((name, "avgpool", {}))
        elif isinstance(m, Dense):
            p = {
                "kernel": torch.from_numpy(_np(m.linear.kernel)).T.contiguous(),
                "bias": torch.from_numpy(_np(m.linear.bias)),
                "relu": bool(m.relu),
            }
            stages.append((name, "dense", p))
        else:
            raise ValueError(
                f"stage {name!r} of kind {type(m).__name__} has no torch copy"
            )
    return {"norm": norm, "stages": stages}


def forward(net: dict, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Features of ``layer`` for images ``x`` ``(N, C, H, W)`` (torch layout).

    The network stops at ``layer`` (what a per-layer loop would run). Conv
    features come out as ``(N, C, H, W)``, dense ones as ``(N, D)``.
    """
    h = x
    if net["norm"] is not None:
        mean, scale = net["norm"]
        h = (h - mean[None, :, None, None]) * scale
    for name, kind, p in net["stages"]:
        if kind == "conv":
            k = p["kernel"].shape[-1]
            h = F.conv2d(h, p["kernel"], stride=p["stride"], padding=k // 2)
            h = F.batch_norm(
                h, p["mean"], p["var"], p["scale"], p["bias"], False, 0.0, p["eps"]
            )
            if p["relu"]:
                h = F.relu(h)
        elif kind == "maxpool":
            h = F.max_pool2d(h, p["window"])
        elif kind == "avgpool":
            h = h.mean(dim=(2, 3))
        else:  # dense: flatten in the JAX (NHWC) order
            if h.ndim == 4:
                h = h.permute(0, 2, 3, 1)
            h = F.linear(h.reshape(h.shape[0], -1), p["kernel"], p["bias"])
            if p["relu"]:
                h = F.relu(h)
        if name == layer:
            return h
    raise ValueError(f"unknown layer {layer!r}")


def torch_features(net: dict, images: np.ndarray, layer: str) -> np.ndarray:
    """``layer``'s features of NHWC ``images`` in the JAX layout (NHWC / ``(N, D)``)."""
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2)
        h = forward(net, x.contiguous(), layer)
    if h.ndim == 4:
        h = h.permute(0, 2, 3, 1)
    return h.numpy()


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Settings of the per-image loop for a target of ``passes`` per map.

    The passes are split as a user with that budget would: some for
    ``delta_f^2``, the rest over the outer ``lambda`` iterations, each an
    Adam run (warm-started from the previous one) and a budget check.

    Attributes:
      passes: target model passes per map.
      beta: the budget.
      lr: Adam learning rate on ``log sigma`` (nats per step).
      decay: cosine decay of the learning rate to ``lr / 10`` over each
        inner Adam run (``torch.optim.lr_scheduler.CosineAnnealingLR``).
      budget_tol: the checked budget meets ``beta`` when
        ``|log(r / beta)| < budget_tol``.
      use_all: spend every outer iteration (bisection goes on after the
        budget is met; the answer is the last iterate that met it, else the
        closest); ``False`` stops at the first iterate that meets it.
      max_sigma: cap on sigma (as the solver's ``max_sigma``).
      min_sigma: floor on sigma.
    """

    passes: int
    beta: float = 1.5e-4
    lr: float = 0.1
    decay: bool = False
    use_all: bool = True
    budget_tol: float = 0.05
    max_sigma: float = 10.0
    min_sigma: float = 1e-6

    def schedule(self) -> dict[str, int]:
        """``scale_probes``, ``outer``, ``steps``, ``samples``, ``check``.

        >>> LoopConfig(100).schedule()
        {'scale_probes': 8, 'outer': 4, 'steps': 9, 'samples': 2, 'check': 4}
        """
        p = self.passes
        probes = max(8, p // 16)
        outer = 4 + max(0, round(math.log2(p / 100)))
        samples = max(2, 2 * round(math.sqrt(p / 100)))
        per_outer = (p - 1 - probes) // outer
        check = max(4, 2 * (per_outer // 8))
        steps = max(1, (per_outer - check) // samples)
        return {
            "scale_probes": probes,
            "outer": outer,
            "steps": steps,
            "samples": samples,
            "check": check,
        }


def feature_scale(
    net: dict, x: torch.Tensor, layer: str, probes: int, gen: torch.Generator
) -> tuple[float, int]:
    """``delta_f^2 = ||J||_F^2`` of one image ``x`` ``(1, C, H, W)``, and its passes.

    Rademacher input probes ``v``: ``E||J v||^2 = ||J||_F^2``; one batched
    forward-mode JVP per probe. A layer with at most ``probes`` entries uses
    one VJP per entry instead (exact).
    """

    def h(z):
        return forward(net, z, layer).reshape(z.shape[0], -1)

    size = h(x).shape[1]
    if size <= probes:
        _, vjp = torch.func.vjp(lambda z: h(z)[0], x)
        (cols,) = torch.func.vmap(vjp)(torch.eye(size))
        return float(cols.square().sum()), size
    v = torch.randint(0, 2, (probes, *x.shape[1:]), generator=gen).float() * 2 - 1
    _, jv = torch.func.jvp(h, (x.expand(probes, *x.shape[1:]).contiguous(),), (v,))
    return float(jv.square().sum() / probes), probes


def cid_loop(
    net: dict, image: np.ndarray, layer: str, cfg: LoopConfig, seed: int
) -> dict:
    """Pixel-wise CID of one image and one layer: Adam plus a ``lambda`` search.

    Args:
      net: from :func:`torch_model`.
      image: ``(H, W, C)`` float32 in ``[0, 1]``.
      layer: layer name.
      cfg: the loop's settings.
      seed: seed of this map's torch generator.

    Returns:
      ``{"log_sigma": (H, W), "pixel": (H, W) nats, "lam", "budget" (the
      loop's own check), "scale", "passes", "seconds", "outer"}``.
    """
    t0 = time.perf_counter()
    sch = cfg.schedule()
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None]
    x = x.contiguous()
    _, c, hh, ww = x.shape
    n = hh * ww

    def h(z):
        return forward(net, z, layer).reshape(z.shape[0], -1)

    with torch.no_grad():
        f = h(x)
    passes = 1
    scale, used = feature_scale(net, x, layer, sch["scale_probes"], gen)
    passes += used
    lo_u, hi_u = math.log(cfg.min_sigma), math.log(cfg.max_sigma)

    def budget(u, draws):
        d = torch.randn((draws, c, hh, ww), generator=gen)
        xp = x + torch.exp(u)[None, None] * d
        dist = (h(xp) - f).square().sum(dim=1)
        return dist.mean() / scale

    u = torch.full((hh, ww), 0.5 * math.log(cfg.beta))  # uniform, linear budget
    log_lam = math.log(2.0 * cfg.beta / n)  # the linear regime's lambda
    lo = hi = None  # bracket on log lambda: budget(lo) < beta < budget(hi)
    best = None
    for it in range(sch["outer"]):
        u = u.clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=sch["steps"], eta_min=cfg.lr / 10 if cfg.decay else cfg.lr
        )
        lam = math.exp(log_lam)
        for _ in range(sch["steps"]):
            opt.zero_grad()
            loss = budget(u, sch["samples"]) - lam * u.sum()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                u.clamp_(lo_u, hi_u)
        passes += sch["steps"] * sch["samples"]
        u = u.detach()
        with torch.no_grad():
            r = float(budget(u, sch["check"]))
        passes += sch["check"]
        err = math.log(r / cfg.beta)
        ok = abs(err) < cfg.budget_tol
        # The answer: the last iterate that met the budget, else the closest.
        if best is None or (ok and cfg.use_all) or abs(err) < abs(best[0]):
            best = (err, u.clone(), log_lam, r)
        if (ok and not cfg.use_all) or it == sch["outer"] - 1:
            break
        if err > 0:
            hi = log_lam
        else:
            lo = log_lam
        if lo is None:
            log_lam = hi - math.log(10.0)
        elif hi is None:
            log_lam = lo + math.log(10.0)
        else:
            log_lam = 0.5 * (lo + hi)
    err, u, log_lam, r = best
    log_sigma = u.numpy().astype(np.float32)
    return {
        "log_sigma": log_sigma,
        "pixel": log_sigma + np.float32(ENTROPY_CONSTANT),
        "lam": math.exp(log_lam),
        "budget": r / cfg.beta,
        "scale": scale,
        "passes": passes,
        "seconds": time.perf_counter() - t0,
        "outer": it + 1,
    }
