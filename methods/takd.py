"""TAKD, Improved Knowledge Distillation via Teacher Assistant (Mirzadeh et al., AAAI 2020): teacher → (KD) →
assistant → (KD) → student, three stages run in order.

The cell's group is [teacher, student]; the assistant is a hyper-parameter.  The teacher is the ``ind`` cell of
the teacher network (shared with every other student of it); the assistant is the ``kd`` cell (teacher,
assistant) with this method's KD settings; the student learns by KD from the frozen assistant, which is also
the output evaluated as ``teacher``.

Choices (``docs/notes/baselines.md#takd``, ``docs/notes/official_code.md#takd``):
- ``assistant`` None: the paper's rule, "the model whose performance is close to the average of the teacher and
  the student", as ACKD names it: ResNet-44 for ResNet-110 → ResNet-20, WRN-28-2 for WRN-28-4 → ResNet-56 (and
  → ResNet-20/56 on CINIC-10).  For the ACKD pairs it does not name, our pick by the same rule, from accuracies
  of the CRD benchmark (a guess, stated as such): WRN-16-2 for WRN-40-2 → WRN-40-1, MobileNetV2 ×1.0 for
  ×1.4 → ×0.5, and MobileNetV2 ×1.0 for ShuffleNetV1 → MobileNetV2 ×0.5.  Any other pair must name its assistant.
- KD settings for both hops are KD's defaults (T = 4, 0.1 CE + 0.9 T²·KL, batch mean).  TAKD's own code searched T
  and λ per pair and divided the KD term by the number of classes (KLDivLoss' default reduction); ACKD says its
  baselines follow the CRD benchmark, whose KD these defaults are.
- The assistant is trained with the student's recipe (or ``teacher_recipe``) and ``teacher_seed``, like the teacher.
"""
from __future__ import annotations

from harness.training.method import register_method
from harness.training.stages import Stage
from methods.common.offline import teacher_cell
from methods.kd import KD, KDParams

ASSISTANTS = {  # (teacher, student) → assistant; the first two are named by ACKD, the rest are our picks
    ("cifar_resnet110", "cifar_resnet20"): "cifar_resnet44",
    ("cifar_wrn_28_4", "cifar_resnet56"): "cifar_wrn_28_2",
    ("cifar_wrn_28_4", "cifar_resnet20"): "cifar_wrn_28_2",
    ("cifar_wrn_40_2", "cifar_wrn_40_1"): "cifar_wrn_16_2",
    ("cifar_mobilenetv2_x1_4", "cifar_mobilenetv2_x0_5"): "cifar_mobilenetv2_x1_0",
    ("cifar_shufflenetv1", "cifar_mobilenetv2_x0_5"): "cifar_mobilenetv2_x1_0",
}


class TAKDParams(KDParams):
    assistant: str | None = None


def kd_settings(hp: TAKDParams) -> dict:
    """The hyper-parameters of the assistant's own KD cell: KD's, with the teacher's definition."""
    return {k: v for k, v in hp.model_dump(mode="json").items() if k in KDParams.model_fields
            and v != KDParams.model_fields[k].default}


@register_method("takd")
class TAKD(KD):
    """KD from a teacher assistant, itself distilled from the teacher."""

    HParams = TAKDParams
    teacher_stage = "assistant"
    check_hparams = {"assistant": "cifar_resnet8"}  # a ResNet-8 pair has no assistant of ACKD's

    @classmethod
    def assistant_of(cls, hp: TAKDParams, group: tuple[str, ...]) -> str | None:
        return hp.assistant or ASSISTANTS.get(tuple(group))

    @classmethod
    def group_error(cls, hp, group):
        if cls.assistant_of(hp, group) is None:
            return (f"takd needs a teacher assistant for {group[0]} → {group[1]}: set assistant: <model name> "
                    f"(ACKD's pairs have one: {', '.join(f'{t}→{s}' for t, s in ASSISTANTS)})")
        return None

    @classmethod
    def stages(cls, hp, cell):
        assistant = cls.assistant_of(hp, cell.group)
        chain = teacher_cell(cell, (cell.group[0], assistant), hp.teacher_recipe, hp.teacher_seed, method="kd",
                             hparams=kd_settings(hp))
        return {"assistant": Stage(cell=chain)}

    @classmethod
    def analysis_roles(cls, hp, cell):
        """ACKD Table 1: the teacher (T), the assistant (P, the proxy) and the student."""
        assistant = cls.stages(hp, cell)["assistant"]
        teacher = KD.stages(KDParams.model_validate(kd_settings(hp)), assistant.cell)["teacher"]
        return {"teacher": teacher, "proxy": assistant}
