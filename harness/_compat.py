"""Process set-up that must run before torchvision (and so timm) is first imported.

The only torchvision wheel that matches the pinned torch is a CUDA build.  With the CPU build of torch its
compiled extension cannot load, and ``import torchvision`` then fails while registering fake kernels for
operators that were never declared ("operator torchvision::nms does not exist").  Declaring the operator
schemas ourselves lets the pure-Python parts (datasets, transforms) import; the compiled ops stay unusable,
and the harness never calls them.  Nothing is changed where torch has CUDA or torchvision is a CPU build.
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, "
    "Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
    "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, "
    "Tensor, Tensor)",
)
_LIBRARY = None  # kept alive: the schemas vanish when the Library object is collected


def _torchvision_cuda_label() -> str | None:
    """The '+cuXXX' label of the installed torchvision, read as text so torchvision is not imported."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    if not version_file.exists():
        return None
    match = re.search(r"__version__\s*=\s*['\"][^'\"]*\+(cu\d+)", version_file.read_text())
    return match.group(1) if match else None


def install() -> bool:
    """Declare torchvision's operator schemas when a CUDA torchvision meets a CPU torch. True if it did."""
    global _LIBRARY
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here loads hub weights; avoid 45 s of DNS retries
    if _LIBRARY is not None:
        return True
    import torch

    if torch.version.cuda is not None or _torchvision_cuda_label() is None:
        return False
    if hasattr(torch.ops.torchvision, "nms"):  # declared already (another copy of this shim)
        return False
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _LIBRARY.define(schema)
    return True
