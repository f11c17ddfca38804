"""Smaller files for download: the float32 weights that int8 dynamic quantization leaves
(those of ``Conv`` and ``ConvTranspose``) stored as float16 and cast back to float32 in the
graph.

ONNX Runtime folds a ``Cast`` of a constant when it loads the model, so the graph then runs
the same float32 kernels on weights rounded to float16 (relative error below 2**-11): the
file shrinks, the arithmetic and speed stay float32. Used by the in-browser site
(:mod:`mobilesam.web`), where the int8 variant's download is what counts.
"""

from __future__ import annotations

from pathlib import Path

#: Only tensors at least this large are converted (biases and small tables stay float32).
MIN_ELEMENTS = 1024
_OPS = {"Conv": 1, "ConvTranspose": 1}  # op type → input index of its weight


def store_conv_weights_fp16(src: Path, dst: Path, min_elements: int = MIN_ELEMENTS) -> int:
    """Rewrite the ONNX model ``src`` into ``dst`` with each float32 ``Conv`` /
    ``ConvTranspose`` weight of at least ``min_elements`` stored as float16 behind a
    ``Cast`` to float32. Returns the number of weights converted.

    A weight also read by any other node, or already of another type, is left as it is.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    readers: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node.op_type, i))
    converted = 0
    new_nodes = []
    for init in graph.initializer:
        uses = readers.get(init.name, [])
        if (
            init.data_type != TensorProto.FLOAT
            or not uses
            or any(_OPS.get(op) != i for op, i in uses)
        ):
            continue
        array = numpy_helper.to_array(init)
        if array.size < min_elements:
            continue
        half = numpy_helper.from_array(array.astype(np.float16), init.name + "_fp16")
        init.CopyFrom(half)
        new_nodes.append(
            helper.make_node(
                "Cast",
                [half.name],
                [half.name[: -len("_fp16")]],
                to=TensorProto.FLOAT,
                name=f"{half.name}_to_float",
            )
        )
        converted += 1
    # the casts first: a graph's nodes must come after what they read
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)
    onnx.save(model, str(dst))
    return converted


#: For each op whose weight :func:`store_weights_int8` stores: the input index of the weight
#: and its output-channel axis (per-channel scales), by the node's attributes.
def _channel_axis(node, rank: int) -> int | None:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "MatMul":
        return 1 if rank == 2 else None  # (K, N): a scale per output column
    if node.op_type == "Gemm":
        return 0 if attrs.get("transB", 0) else 1
    if node.op_type == "Conv":
        return 0  # (O, I/g, kh, kw)
    if node.op_type == "ConvTranspose":
        return 1 if attrs.get("group", 1) == 1 else None  # (I, O, kh, kw)
    return None


def store_weights_int8(src: Path, dst: Path, min_elements: int = MIN_ELEMENTS) -> int:
    """Rewrite the ONNX model ``src`` into ``dst`` with the float32 weights of ``MatMul``,
    ``Gemm``, ``Conv`` and ``ConvTranspose`` (at least ``min_elements``) stored as int8 with
    one float32 scale per output channel (symmetric, ``round(w / s)`` with ``s = max|w| /
    127``), behind a ``DequantizeLinear`` to float32. Returns the number of weights stored.

    Weight-only: activations and arithmetic stay float32, so the results move by the weights'
    rounding only (unlike dynamic quantization, which also rounds every activation to int8),
    and ONNX Runtime runs its float32 kernels, which in WebAssembly are faster than its int8
    ones. A weight also read by any other node is left as it is.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    readers: dict[str, list[tuple[object, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, i))
    converted = 0
    new_nodes = []
    kept = []
    for init in graph.initializer:
        uses = readers.get(init.name, [])
        axes = {_channel_axis(node, len(init.dims)) if i == 1 else None for node, i in uses}
        axis = axes.pop() if len(axes) == 1 else None
        size = int(np.prod(init.dims)) if init.dims else 1
        if init.data_type != TensorProto.FLOAT or not uses or axis is None or size < min_elements:
            kept.append(init)
            continue
        w = numpy_helper.to_array(init).astype(np.float32)
        other = tuple(a for a in range(w.ndim) if a != axis)
        peak = np.abs(w).max(axis=other)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        kept += [
            numpy_helper.from_array(q, f"{init.name}_int8"),
            numpy_helper.from_array(scale, f"{init.name}_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{init.name}_zero"),
        ]
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{init.name}_int8", f"{init.name}_scale", f"{init.name}_zero"],
                [init.name],
                axis=axis,
                name=f"{init.name}_dequantize",
            )
        )
        converted += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)
    onnx.save(model, str(dst))
    return converted
