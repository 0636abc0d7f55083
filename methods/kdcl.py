"""KDCL, Online Knowledge Distillation via Collaborative Learning (Guo et al., CVPR 2020) for K ≥ 2 peers.

Loss (Eq. 1-2): Σ_i [ CE(z_i, y) + λ · T² · KL(p_t ‖ softmax(z_i / T)) ], batch mean, with one soft target
p_t shared by every peer and detached (no gradient reaches a peer through the target).  The four ways of
building the target (``target``):

- "naive" (Eq. 4): z_t = z_k, k = argmin_i CE(z_i, y); p_t = softmax(z_t / T).
- "linear" (Eq. 5): z_t = αᵀZ with α on the simplex minimising CE(αᵀZ, y), solved on detached logits.
- "minlogit" (Eq. 6-7): z_t,j = min_i (z_i,j − z_i,y): every peer's logits shifted so that the true class
  is 0, then the element-wise minimum (the true-class entry stays 0).
- "general" (Eq. 8-11): p_t = Σ_i w_i softmax(z_i / T), with w = C⁻¹1 / (1ᵀC⁻¹1) and
  C_ij = mean_k (f_i(x_k) − 1)(f_j(x_k) − 1) over a held-out validation split, f_i the probability peer i
  gives the true class (T = 1); recomputed at the start of every epoch from epoch 1 on (epoch 0: w = 1/K).

ICL (invariant collaborative learning, ``icl``): every peer gets its own random augmentation of the batch's
images and the target fuses the K outputs on the K views; without it all peers see one shared view.

Evaluated outputs: net1..netK, their ensemble ``ens`` (engine), and for "general" only the KDCL teacher
``teacher`` = log Σ_i w_i softmax(z_i / ``teacher_eval_temperature``), which needs no label.  Naive, Linear
and MinLogit build their teacher from the label (the argmin of CE, the CE-optimal α, the shift by the
true-class logit), so they have no test-time teacher and no ``teacher`` output.

Choices where the paper is silent or open (there is no official code; the defaults are the paper's CIFAR
values or the common reading, as marked):
- ``target`` "general": the best KDCL row of the CIFAR-100 Table 7 (74.0/75.2, with ICL 74.3/75.5, against
  Naive 73.7/74.8, Linear 73.4/74.6, MinLogit 73.0/74.1); Table 9 uses General (Table 10 most likely).
  On ImageNet (Table 2) Linear and MinLogit are best and Table 4 uses them: set ``target`` for those rows.
- ``icl`` True: the method's overview (Sec. 3.2, Fig. 2) augments the raw images "separately with different
  random seeds" for each sub-network, and every best CIFAR row uses ICL; Table 7's no-ICL rows need False.
- ``temperature`` 2 and ``kd_weight`` λ = 1: the CIFAR values (Sec. 4.2); ImageNet states λ = 1 only.
- ``t2_scaling`` True: Eq. 1 writes T² explicitly.  KL(target ‖ peer) as Eq. 1, batch mean as Eq. 1.
- ``naive_per`` "sample": Eq. 4 does not say whether the argmin is taken per sample or over the batch
  ("batch": one peer, the one with the lowest batch-mean CE, gives the target of every sample).
- ``linear_per`` "sample": α is chosen per sample ("batch": one α minimising the batch-mean CE).
  The solver is not stated ("convex, easy to solve"); here it is projected gradient on the simplex,
  ``linear_iters`` (50) iterations from α = 1/K with an adaptive step per sample (see ``linear_weights``),
  the step bounded below by 1/L_max, L_max = max_c Σ_i (z_i,c − mean_j z_j,c)² a bound on the curvature
  of CE(αᵀZ, y) along the simplex (Popoviciu: the softmax variance of a logit direction is at most a
  quarter of its squared range); per batch the mean of the samples' L_max.  No gradient flows into the
  peers (the solve runs on detached logits under no_grad).
- ``val_per_class`` 50: the CIFAR-100 split (5,000 images, 50 per class); ImageNet uses 20.  The split is
  removed from training (the engine's ``held_out_per_class``) and only for ``target`` "general".
- General's validation pass: eval mode (BN running statistics), no augmentation, T = 1 for f_i (Eq. 8-10).
- General's soft target averages probabilities at temperature T (softmax(z_i / T)), one reading of "the
  weighted average probability distribution".
- General's weights (the paper requires w_i ∈ [0, 1], Σ w_i = 1, but Eq. 11 can give negative weights or meet a
  singular C): C' = C + ``general_ridge`` · (tr C / K) · I (default 1e-6 of the mean diagonal entry; C' is positive
  definite whenever tr C > 0), then with ``general_weights`` "simplex" (the default) w is the exact minimiser of
  wᵀC'w on the simplex (Eq. 9 with the paper's constraint), found by enumerating the supports: on the optimum's
  support S, w_S = C'_S⁻¹1 / (1ᵀC'_S⁻¹1), so the best non-negative such solution over all 2^K − 1 supports is the
  optimum.  "clip" is this harness's earlier heuristic (Eq. 11's w, negative entries set to 0, renormalised),
  which can sit far from the optimum (tests/test_kdcl.py has a case); "eq11" is Eq. 11 as printed, negative weights
  included.  If tr C = 0 (every peer gives the true class probability 1 on every validation image) or C is not
  finite, w = 1/K; with ``general_ridge`` 0 a singular C'_S uses the pseudo-inverse (and a support whose 1ᵀC'_S⁺1
  is not positive is skipped).  In float64.  Every epoch's w and C are in the cell's history (``general/w/netk``,
  ``general/c/neti_netj``), so a degenerate w = (1, 0) can be seen afterwards.
- ``teacher_eval_temperature`` 1: the temperature of the General teacher evaluated at test time, like the
  engine's ``ens`` (an average of T = 1 probabilities).
- One joint update of all peers on the summed loss per step (Eq. 2 is one multi-task loss).
"""
from __future__ import annotations

import itertools
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from harness.training.method import HParams, Method, added_option, register_method
from methods.common.losses import distill_kl, warmup_gate


class KDCLParams(HParams):
    target: Literal["naive", "linear", "minlogit", "general"] = "general"
    temperature: PositiveFloat = 2.0
    kd_weight: NonNegativeFloat = 1.0
    t2_scaling: bool = True
    icl: bool = True
    naive_per: Literal["sample", "batch"] = "sample"
    linear_per: Literal["sample", "batch"] = "sample"
    linear_iters: PositiveInt = 50
    val_per_class: int = Field(50, ge=1)
    general_ridge: NonNegativeFloat = 1e-6
    general_weights: Literal["simplex", "clip", "eq11"] = "simplex"
    teacher_eval_temperature: PositiveFloat = 1.0
    # KL terms zero for the first n epochs (TSB re-implements every baseline with its 20-epoch warm-up, Sec. 4.1)
    warmup_epochs: int = added_option(0, ge=0)


# --- soft-target generators (all on detached logits, shape (K, B, C)) ------------------------------------

def naive_target(logits: torch.Tensor, y: torch.Tensor, per: str = "sample") -> torch.Tensor:
    """Eq. 4: the logits of the peer with the lowest CE, chosen per sample or once for the batch."""
    ce = torch.stack([F.cross_entropy(z, y, reduction="none") for z in logits])  # (K, B)
    if per == "batch":
        return logits[ce.mean(1).argmin()]
    best = ce.argmin(0)  # (B,)
    return logits[best, torch.arange(logits.shape[1], device=logits.device)]


def minlogit_target(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. 6-7: each peer's logits minus its true-class logit, element-wise minimum over the peers."""
    true = logits.gather(2, y.view(1, -1, 1).expand(logits.shape[0], -1, 1))  # (K, B, 1)
    return (logits - true).min(0).values


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of every row of ``v`` (..., K) onto the probability simplex (sort-based)."""
    u = v.sort(dim=-1, descending=True).values
    excess = u.cumsum(-1) - 1
    ranks = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    support = (u - excess / ranks > 0).sum(-1, keepdim=True).clamp_min(1)  # the largest entry qualifies
    theta = excess.gather(-1, support - 1) / support.to(v.dtype)
    return (v - theta).clamp_min(0)


def linear_weights(logits: torch.Tensor, y: torch.Tensor, per: str = "sample", iters: int = 50) -> torch.Tensor:
    """Eq. 5: α on the simplex minimising CE(αᵀZ, y), per sample (B, K) or for the batch (1, K).

    Projected gradient from α = 1/K with an adaptive step 1/L per row (a sample, or the batch): a step is
    kept only when it passes the sufficient-decrease test f(α') ≤ f(α) + gᵀ(α' − α) + L/2 ‖α' − α‖²
    (then L halves, down to L_max · 1e-6), else the row stays and L doubles, up to
    L_max = max_c Σ_i (z_ic − mean_j z_jc)², a bound on the curvature of f along the simplex at which the
    test always passes.  One gradient and one objective evaluation per iteration; f never increases.
    Computed in float64 on detached logits.
    """
    k, b, _ = logits.shape
    z = logits.detach().transpose(0, 1).double()  # (B, K, C); float64: CE differences of 1e-6 matter
    rows = 1 if per == "batch" else b
    spread = (z - z.mean(1, keepdim=True)).pow(2).sum(1).amax(1)  # (B,)
    l_max = (spread.mean().view(1) if per == "batch" else spread).clamp_min(1e-12).view(rows, 1)

    def objective_and_gradient(a: torch.Tensor, need_grad: bool = True):
        mixed = torch.einsum("bk,bkc->bc", a.expand(b, k), z)
        log_p = F.log_softmax(mixed, dim=1)
        ce = -log_p.gather(1, y.view(-1, 1)).squeeze(1)  # (B,)
        if not need_grad:
            return (ce.mean().view(1) if per == "batch" else ce), None
        residual = log_p.exp()
        residual[torch.arange(b, device=z.device), y] -= 1  # d CE / d mixed
        g = torch.einsum("bkc,bc->bk", z, residual)
        g = g - g.mean(1, keepdim=True)  # the part along the simplex (the projection ignores the rest)
        if per == "batch":
            return ce.mean().view(1), g.mean(0, keepdim=True)
        return ce, g

    with torch.no_grad():
        alpha = torch.full((rows, k), 1.0 / k, dtype=z.dtype, device=z.device)
        lipschitz = l_max / 16  # optimistic start; corrected by doubling
        value, grad = objective_and_gradient(alpha)
        for _ in range(iters):
            candidate = project_simplex(alpha - grad / lipschitz)
            step = candidate - alpha
            new_value, _ = objective_and_gradient(candidate, need_grad=False)
            bound = value + (grad * step).sum(1) + 0.5 * lipschitz.squeeze(1) * step.pow(2).sum(1)
            accept = (new_value <= bound + 1e-12 * value.abs()) | (lipschitz.squeeze(1) >= l_max.squeeze(1))
            alpha = torch.where(accept[:, None], candidate, alpha)
            lipschitz = torch.where(accept[:, None], torch.maximum(lipschitz / 2, l_max * 1e-6),
                                    torch.minimum(lipschitz * 2, l_max))
            value, grad = objective_and_gradient(alpha)
    return alpha


def linear_target(logits: torch.Tensor, y: torch.Tensor, per: str = "sample", iters: int = 50) -> torch.Tensor:
    alpha = linear_weights(logits, y, per, iters).to(logits.dtype)  # (B or 1, K)
    return torch.einsum("bk,kbc->bc", alpha.expand(logits.shape[1], -1), logits.detach())


def _equality_weights(c: torch.Tensor) -> torch.Tensor | None:
    """Eq. 11 on ``c``: C⁻¹1 / (1ᵀC⁻¹1) (the pseudo-inverse where C is singular); None if 1ᵀC⁻¹1 is not positive."""
    ones = torch.ones(c.shape[0], dtype=c.dtype, device=c.device)
    try:
        raw = torch.linalg.solve(c, ones)
    except torch.linalg.LinAlgError:  # only reachable with general_ridge = 0
        raw = torch.linalg.pinv(c, hermitian=True) @ ones
    if not torch.isfinite(raw).all() or raw.sum() <= 0:
        return None
    return raw / raw.sum()


def simplex_weights(c: torch.Tensor) -> torch.Tensor:
    """argmin wᵀCw subject to w ≥ 0, Σw = 1, exactly, for a positive semi-definite ``c`` (K ≤ 16).

    On the optimum's support S the inequalities are inactive, so w_S is Eq. 11 on C_S; every support's Eq. 11
    solution that is non-negative is feasible, hence the best of them is the optimum."""
    k = c.shape[0]
    if k > 16:
        raise ValueError(f"KDCL-General's exact weights enumerate 2^K supports; K = {k} peers is too many")
    best, best_value = None, 0.0
    for size in range(k, 0, -1):  # larger supports first: a tie (identical peers) keeps every peer in
        for support in itertools.combinations(range(k), size):
            index = torch.tensor(support, device=c.device)
            part = _equality_weights(c[index][:, index])
            if part is None or (part < 0).any():
                continue
            w = torch.zeros(k, dtype=c.dtype, device=c.device)
            w[index] = part
            value = float(w @ c @ w)
            if best is None or value < best_value * (1 - 1e-12):
                best, best_value = w, value
    return best


def weights_from_c(c: torch.Tensor, ridge: float = 1e-6, solver: str = "simplex") -> torch.Tensor:
    """General's w from Eq. 10's C (see the module docstring): on the simplex (``simplex``), Eq. 11 clipped and
    renormalised (``clip``) or Eq. 11 as printed (``eq11``); uniform where C is degenerate."""
    c = c.double()
    k = c.shape[0]
    uniform = torch.full((k,), 1.0 / k, dtype=torch.float64, device=c.device)
    trace = torch.trace(c)
    if not torch.isfinite(c).all() or trace <= 0:
        return uniform
    c = c + ridge * (trace / k) * torch.eye(k, dtype=c.dtype, device=c.device)
    if solver == "simplex":
        w = simplex_weights(c)
        return uniform if w is None else w
    w = _equality_weights(c)
    if w is None:
        return uniform
    if solver == "clip":
        w = w.clamp_min(0)
        w = w / w.sum()
    return w


def error_covariance(errors: torch.Tensor) -> torch.Tensor:
    """Eq. 10: C_ij = mean_k e_ki e_kj for ``errors`` (N, K) = f_i(x_k) − 1, in float64."""
    errors = errors.double()
    return errors.T @ errors / errors.shape[0]


@register_method("kdcl")
class KDCL(Method):
    """KDCL: every peer distils from one soft target built from all peers (Naive, Linear, MinLogit, General)."""

    HParams = KDCLParams
    check_hparams = {"val_per_class": 2}  # of the 6 images per class of a tiny cell
    min_peers = 2
    stackable = True

    def __init__(self, hp, ctx):
        super().__init__(hp, ctx)
        k = len(ctx.group)
        self.weights = torch.full((k,), 1.0 / k, dtype=torch.float64)  # General's w, on the CPU
        self.weights_epoch = -1  # epoch whose start computed them (-1: the uniform start)
        self.last_c: torch.Tensor | None = None  # the last C of Eq. 10, for inspection
        self._weights_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def weights_on(self, like: torch.Tensor) -> torch.Tensor:
        """General's w on ``like``'s device and dtype, copied once per change of the weights."""
        cached = self._weights_cache
        if cached is None or cached[0] is not self.weights or cached[1].device != like.device \
                or cached[1].dtype != like.dtype:
            self._weights_cache = cached = (self.weights, self.weights.to(like))
        return cached[1]

    @classmethod
    def per_peer_views(cls, hp) -> bool:
        return hp.icl

    @classmethod
    def held_out_per_class(cls, hp) -> int:
        return hp.val_per_class if hp.target == "general" else 0

    # --- the soft target -----------------------------------------------------------------------------
    def soft_target(self, logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """p_t of the batch (B, C), detached."""
        hp = self.hp
        z = torch.stack([l.detach() for l in logits])  # (K, B, C)
        if hp.target == "general":
            probs = F.softmax(z / hp.temperature, dim=2)
            return torch.einsum("k,kbc->bc", self.weights_on(probs), probs)
        if hp.target == "naive":
            teacher = naive_target(z, y, hp.naive_per)
        elif hp.target == "linear":
            teacher = linear_target(z, y, hp.linear_per, hp.linear_iters)
        else:
            teacher = minlogit_target(z, y)
        return F.softmax(teacher / hp.temperature, dim=1)

    def losses(self, batch, step):
        logits = self.peer_logits(batch)
        target = self.soft_target(logits, batch.y)
        gate = warmup_gate(step, self.hp.warmup_epochs)
        terms = {}
        for k, z in enumerate(logits):
            terms[f"ce/net{k + 1}"] = F.cross_entropy(z, batch.y)
            terms[f"kl/net{k + 1}"] = gate * self.hp.kd_weight * distill_kl(z, target, self.hp.temperature,
                                                                            self.hp.t2_scaling)
        return terms

    # --- General's weights -----------------------------------------------------------------------------
    @torch.no_grad()
    def validation_errors(self) -> torch.Tensor:
        """(N, K): f_i(x) − 1 on the held-out split, eval mode, no augmentation, T = 1."""
        if self.ctx.validation is None:
            raise RuntimeError("KDCL-General needs the held-out validation split (ctx.validation is None)")
        training = self.modules.training
        self.modules.eval()
        try:
            rows = []
            for batch in self.ctx.validation():
                probs = [F.softmax(z.double(), dim=1) for z in self.forward_peers([batch.x] * len(self.peers))]
                rows.append(torch.stack([p.gather(1, batch.y.view(-1, 1)).squeeze(1) for p in probs], 1) - 1)
        finally:
            self.modules.train(training)
        return torch.cat(rows)

    def on_epoch_start(self, epoch: int) -> None:
        if self.hp.target != "general" or epoch == 0:
            return
        c = error_covariance(self.validation_errors()).cpu()
        self.last_c = c
        self.weights = weights_from_c(c, self.hp.general_ridge, self.hp.general_weights)
        self.weights_epoch = epoch

    def epoch_metrics(self) -> dict[str, float]:
        """General's w and C of this epoch (computed at its start), for the cell's history."""
        if self.hp.target != "general":
            return {}
        k = len(self.peers)
        out = {f"general/w/net{i + 1}": float(self.weights[i]) for i in range(k)}
        if self.last_c is not None:
            out.update({f"general/c/net{i + 1}_net{j + 1}": float(self.last_c[i, j])
                        for i in range(k) for j in range(i, k)})
        return out

    # --- evaluation and state --------------------------------------------------------------------------
    def predict(self, x):
        outputs = super().predict(x)
        if self.hp.target == "general":
            t = self.hp.teacher_eval_temperature
            logits = [outputs[f"net{k + 1}"] for k in range(len(self.peers))]
            dtype = torch.promote_types(logits[0].dtype, torch.float32)
            probs = torch.stack([F.softmax(z.to(dtype) / t, dim=1) for z in logits])
            mixed = torch.einsum("k,kbc->bc", self.weights_on(probs), probs)
            outputs["teacher"] = mixed.clamp_min(torch.finfo(mixed.dtype).tiny).log()
        return outputs

    def extra_state(self) -> dict:
        return {"weights": self.weights.clone(), "weights_epoch": self.weights_epoch, "c": self.last_c}

    def load_extra_state(self, state: dict) -> None:
        if "weights" in state:
            self.weights = state["weights"].detach().to("cpu", torch.float64).clone()
            self.weights_epoch = int(state.get("weights_epoch", -1))
            self.last_c = state.get("c")
