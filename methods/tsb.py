"""TSB, online KD by Temporal-Spatial Boosting (Li, Wang and Qi, WACV 2022), for K ≥ 2 peers.

Loss of peer i in epoch t (1-based), p = softmax(z / τ), CE at τ = 1 (Eq. 9):

    CE(z_i, y) + λ_ta·w(t)·T²·Σ_{j≠i} KL(p̂_ta_j ‖ p_i) + λ_si·w(t)·T²·KL(p_si ‖ p_i)

- temporal accumulator (Eq. 3-5), one N×C buffer Z_j per peer, zeros at the start; when sample k is visited in
  epoch t: Z_j[k] ← β·Z_j[k] + (1−β)·p_j(x_k) (the detached τ-softened prediction of the augmented training
  view), read out bias-corrected as p̂_ta_j = Z_j[k] / (1 − β^t).  Sum over j≠i as the paper says for M > 2.
- spatial integrator (Eq. 7-8): p_si = (1/K) Σ_m p_m over all peers, peer i included, detached.
- w(t) = 0 for the first ``warmup_epochs`` (20) epochs, then 1 (Sec. 4.1); τ = 4, β = 0.8, λ_ta = λ_si = 0.5.

Choices the paper leaves open (no code was released), with the default and where it comes from:
- ``kl_direction`` "forward" = KL(target ‖ student), the direction of every public online-KD code base
  (``docs/notes/conventions.md#kl-direction``); "reverse" = KL(student ‖ target), the paper's literal Eq. 2
  L_kl(p_i, p_j) (a target probability that is exactly 0, e.g. an fp16 underflow, is clamped to the smallest
  positive float inside its log).  The direction applies to every KL term of the method, the DML term of the
  ablations included.
- ``t2_scaling`` true: the paper never mentions T²; RepDistiller's convention, whose recipe TSB copies
  (``docs/notes/conventions.md#temperature-scaling``).  With λ = 0.5 and τ = 4 it changes the effective weight 16-fold.
- every target (TA read-out, SI, peer) is detached; none is stated (``docs/notes/conventions.md#detached-targets``).
- Eq. 5 written as ``Z = Z / (1 − β^t)`` would compound in the stored buffer every epoch; the correction is applied
  Adam-style to the read-out copy only (``docs/notes/tsb.md#open-questions-and-choices``).  ``bias_correction`` "epoch"
  divides by 1 − β^t with t the number of epochs folded into Z (the paper's t); "row_sum" divides each row by its own
  sum, which equals 1 − β^(visits of that sample) exactly, so it also corrects a sample that missed an epoch (the
  engine drops a last batch of one image) and fp16 rounding.  Both agree whenever every sample is visited once per
  epoch.
- ``ta_update`` "per_visit" (Alg. 1: the rows of the batch are updated when visited, before the loss) or "per_epoch"
  (Laine & Aila's temporal ensembling, ``docs/notes/official_code.md#temporal-ensembling``: the epoch's predictions
  are collected and folded into Z after the epoch's last step; during epoch t+1 the target is the frozen buffer,
  corrected with 1 − β^t; in epoch 1 there is no target yet and the TA term is 0).
- ``ta_target_includes_current`` (per_visit only; ignored by per_epoch, whose target never holds the current
  prediction): true = Alg. 1's order, the target already holds this step's prediction with weight
  (1−β)/(1−β^t) (in epoch 1 the read-out *is* the peer's current prediction); false = the row before the update,
  corrected with 1 − β^(t−1), so the TA term is 0 in epoch 1.  Since the engine visits every sample once per
  epoch (a permutation), per_visit with false gives the same targets as per_epoch without per_epoch's second
  buffer; the tests check this.
- ``warmup_applies_to_si`` true: Sec. 4.1 says "zero-outing the KL divergence loss for the first 20 epochs", although
  Eq. 6 writes w(t) only on L_ta (``docs/notes/tsb.md#open-questions-and-choices``); ``warmup_applies_to_peer_kl``
  true for the same sentence.  Z is updated during the warm-up too, so the targets are ready when it ends.
- ablations of Table 5 (the reading of ``docs/notes/tsb.md#ablations-of-table-5``) as settings of this method:
    TSB      use_ta, use_si,  no use_peer_kl   (Eq. 9 has no raw-peer term: its TA term *is* the peer term)
    DML+TA   use_ta, no use_si, no use_peer_kl (the TA target replaces the raw peer prediction)
    DML+SI   no use_ta, use_si, use_peer_kl    (SI added to DML)
    DML      no use_ta, no use_si, use_peer_kl (DML under TSB's recipe: τ = 4, warm-up)
  The DML term is ``peer_kl_weight``·T²·(1/(K−1))·Σ_{j≠i} KL(p_j ‖ p_i) (DML's mean over peers); its weight is not
  stated; 0.5 = the λ the paper uses for its other KL terms ("a smaller weight ... for simplicity", Sec. 4.1).
- the stored prediction is the softened (τ) probability of the training view the peer saw, computed once per step
  with the logits of the loss (train mode); the TA update happens inside ``losses`` (Alg. 1's order).

Memory (``memory``): the buffers hold N·C numbers per peer (plus as much again for per_epoch's collection buffer,
and N bytes for its visited mask); they are not modules: they live in ``extra_state`` and are saved with every
checkpoint, with the epoch counters used for the bias correction, so a resume continues exactly.
- "device": float32 on the training device, 4·N·C bytes per peer: CIFAR-100 (50,000 × 100) 20 MB, CIFAR-10 2 MB,
  ImageNet (1,281,167 × 1000) 5.1 GB of GPU memory per peer.
- "host_fp16": float16 in host memory, 2·N·C bytes per peer: CIFAR-100 10 MB, ImageNet 2.6 GB of host RAM per
  peer; each step moves only the batch's rows (B·C·2 bytes each way, 0.5 MB for B = 256 on ImageNet).  Values are
  rounded to fp16 when stored (relative error ≈ 5e-4; the read-out of the current step is computed in float32).
  The rows cross through the host, so on a GPU each step waits for them (host syncs): the price of keeping the
  tables off the GPU; "device" has none.
Duplicate indices within one batch are not supported (the engine's batches never have them).

Evaluation: the peers only.  The spatial integrator at test time, the mean of the peers' softmax at T = 1, is
exactly the engine's ``ens`` (Table 1's "averaging their predictions"), so an ``si`` output would only repeat it
and is not returned.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat

from harness.training.method import HParams, Method, register_method

_FOLD_ROWS = 1 << 16  # rows folded at once by per_epoch, to bound the temporaries on ImageNet


class TSBParams(HParams):
    temperature: PositiveFloat = 4.0
    beta: float = Field(0.8, gt=0.0, lt=1.0)
    lambda_ta: NonNegativeFloat = 0.5
    lambda_si: NonNegativeFloat = 0.5
    warmup_epochs: int = Field(20, ge=0)
    warmup_applies_to_si: bool = True
    warmup_applies_to_peer_kl: bool = True
    kl_direction: Literal["forward", "reverse"] = "forward"
    t2_scaling: bool = True
    ta_update: Literal["per_visit", "per_epoch"] = "per_visit"
    ta_target_includes_current: bool = True
    bias_correction: Literal["epoch", "row_sum"] = "epoch"
    memory: Literal["device", "host_fp16"] = "device"
    use_ta: bool = True
    use_si: bool = True
    use_peer_kl: bool = False
    peer_kl_weight: NonNegativeFloat = 0.5


def kl_term(student_logits: torch.Tensor, target: torch.Tensor, temperature: float, direction: str,
            t2_scaling: bool) -> torch.Tensor:
    """Batch-mean KL between a detached target distribution and softmax(student / τ), times τ² if asked."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_student = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    target = target.to(dtype)
    if direction == "forward":  # KL(target ‖ student)
        kl = F.kl_div(log_student, target, reduction="batchmean")
    else:  # KL(student ‖ target), Eq. 2 literally
        log_target = torch.log(target.clamp_min(torch.finfo(dtype).tiny))
        kl = (log_student.exp() * (log_student - log_target)).sum(1).mean()
    return kl * temperature**2 if t2_scaling else kl


class RowTable:
    """An N×C table of per-sample probabilities: float32 on the training device, or float16 in host memory."""

    def __init__(self, rows: int, cols: int, memory: str, device: torch.device):
        self.device = device
        if memory == "device":
            self.table = torch.zeros(rows, cols, dtype=torch.float32, device=device)
        else:
            self.table = torch.zeros(rows, cols, dtype=torch.float16)

    def read(self, index: torch.Tensor) -> torch.Tensor:
        """The rows of ``index`` as float32 on the training device (a copy)."""
        return self.table[index.to(self.table.device)].to(self.device).float()

    def write(self, index: torch.Tensor, rows: torch.Tensor) -> None:
        self.table[index.to(self.table.device)] = rows.detach().to(self.table.dtype).to(self.table.device)


@register_method("tsb")
class TSB(Method):
    HParams = TSBParams
    min_peers = 2
    stackable = True

    def __init__(self, hp: TSBParams, ctx):
        super().__init__(hp, ctx)
        k, n, c = len(ctx.group), ctx.num_train, ctx.num_classes
        self.per_epoch = hp.use_ta and hp.ta_update == "per_epoch"
        self.accumulators = [RowTable(n, c, hp.memory, ctx.device) for _ in range(k)] if hp.use_ta else []
        self.collected = [RowTable(n, c, hp.memory, ctx.device) for _ in range(k)] if self.per_epoch else []
        self.visited = (torch.zeros(n, dtype=torch.bool, device=self.accumulators[0].table.device)
                        if self.per_epoch else None)
        self.epochs_in_buffer = 0  # epochs folded into Z: the t of the bias correction
        self.epoch = 0  # 0-based epoch, from the step (or on_epoch_start when called without one)

    # --- temporal accumulator --------------------------------------------------------------------------
    def _readout(self, z: torch.Tensor, epochs: int) -> torch.Tensor | None:
        """Bias-corrected copy of accumulated rows; None while nothing has been accumulated."""
        if epochs <= 0:
            return None
        if self.hp.bias_correction == "epoch":
            return z / (1.0 - self.hp.beta**epochs)
        return z / z.sum(1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)

    def _temporal_targets(self, index: torch.Tensor, probs: list[torch.Tensor]) -> list[torch.Tensor | None]:
        beta, targets = self.hp.beta, []
        everyone = self.ctx.gather(index)  # data-parallel workers write the rows of the whole batch
        if not self.per_epoch:
            t = self.epoch + 1
            self.epochs_in_buffer = t
            for table, p in zip(self.accumulators, probs):
                old = table.read(index)
                new = beta * old + (1.0 - beta) * p
                table.write(everyone, self.ctx.gather(new))
                targets.append(self._readout(new, t) if self.hp.ta_target_includes_current
                               else self._readout(old, t - 1))
        else:
            for table, collected, p in zip(self.accumulators, self.collected, probs):
                targets.append(self._readout(table.read(index), self.epochs_in_buffer))
                collected.write(everyone, self.ctx.gather(p))
            self.visited[everyone.to(self.visited.device)] = True
        return targets

    @torch.no_grad()
    def _fold(self) -> None:
        """per_epoch: Z ← β·Z + (1−β)·(the epoch's predictions) on the rows visited in the epoch."""
        beta = self.hp.beta
        for table, collected in zip(self.accumulators, self.collected):
            z_all, p_all = table.table, collected.table
            for start in range(0, len(z_all), _FOLD_ROWS):
                rows = slice(start, start + _FOLD_ROWS)
                z, mask = z_all[rows].float(), self.visited[rows, None]
                z_all[rows] = torch.where(mask, beta * z + (1.0 - beta) * p_all[rows].float(), z).to(z_all.dtype)
        self.visited.zero_()
        self.epochs_in_buffer += 1

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        if self.per_epoch and bool(self.visited.any()):  # an epoch ended without the fold of its last step
            self._fold()

    # --- loss ---------------------------------------------------------------------------------------------
    def _kl_sum(self, weight: float, logits: torch.Tensor, targets: list) -> torch.Tensor:
        targets = [t for t in targets if t is not None]
        if weight == 0 or not targets:
            return logits.new_zeros(())
        hp = self.hp
        return weight * torch.stack([kl_term(logits, t, hp.temperature, hp.kl_direction, hp.t2_scaling)
                                     for t in targets]).sum()

    def losses(self, batch, step):
        hp = self.hp
        if step is not None:
            self.epoch = step.epoch
        logits = self.peer_logits(batch)
        probs = [F.softmax(z.detach().to(torch.promote_types(z.dtype, torch.float32)) / hp.temperature, dim=1)
                 for z in logits]
        ta = self._temporal_targets(batch.index, probs) if hp.use_ta else None
        if self.per_epoch and step is not None and step.step == step.steps_per_epoch - 1:
            self._fold()
        si = torch.stack(probs).mean(0) if hp.use_si else None

        warm = 0.0 if self.epoch < hp.warmup_epochs else 1.0
        w_si = warm if hp.warmup_applies_to_si else 1.0
        w_kl = warm if hp.warmup_applies_to_peer_kl else 1.0
        k, terms = len(logits), {}
        for i, z in enumerate(logits):
            others = [j for j in range(k) if j != i]
            terms[f"ce/net{i + 1}"] = F.cross_entropy(z, batch.y)
            if hp.use_peer_kl:
                terms[f"kl/net{i + 1}"] = self._kl_sum(hp.peer_kl_weight * w_kl / len(others), z,
                                                       [probs[j] for j in others])
            if hp.use_ta:
                terms[f"ta/net{i + 1}"] = self._kl_sum(hp.lambda_ta * warm, z, [ta[j] for j in others])
            if hp.use_si:
                terms[f"si/net{i + 1}"] = self._kl_sum(hp.lambda_si * w_si, z, [si])
        return terms

    # --- state --------------------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """The buffers (references, as ``state_dict`` gives) and the bias-correction counter."""
        state = {"epochs_in_buffer": self.epochs_in_buffer, "epoch": self.epoch,
                 "accumulators": [t.table for t in self.accumulators]}
        if self.per_epoch and bool(self.visited.any()):  # only mid-epoch; the engine saves after the fold
            state["collected"] = [t.table for t in self.collected]
            state["visited"] = self.visited
        return state

    def load_extra_state(self, state: dict) -> None:
        if len(state.get("accumulators", [])) != len(self.accumulators):
            raise ValueError(f"checkpoint holds {len(state.get('accumulators', []))} temporal accumulators, "
                             f"this TSB run has {len(self.accumulators)}")
        self.epochs_in_buffer, self.epoch = state["epochs_in_buffer"], state["epoch"]
        for table, saved in zip(self.accumulators, state["accumulators"]):
            table.table.copy_(saved)
        if self.per_epoch:
            if "visited" in state:
                for table, saved in zip(self.collected, state["collected"]):
                    table.table.copy_(saved)
                self.visited.copy_(state["visited"])
            else:
                self.visited.zero_()
