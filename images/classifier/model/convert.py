#!/usr/bin/env python3
"""Convert the EfficientNet-Lite0 PyTorch checkpoint to an ONNX (opset 13) model.

Runs without torch: the .pth is read with a restricted unpickler that can only rebuild
tensors, BatchNorm is folded into the preceding convolutions, and the graph is written
with the onnx helper API. Same checkpoint in, same bytes out.

Usage: convert.py CHECKPOINT.pth OUT.onnx
"""

import collections
import io
import pickle
import sys
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# The legacy (pre-1.6) torch.save format starts with this pickled integer.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
BN_EPS = 1e-3  # EfficientNet's TensorFlow batch_norm_epsilon
INPUT_SIZE = 224
NUM_CLASSES = 1000

# EfficientNet-B0/Lite0 stages: (repeats, kernel, stride, expand ratio, out channels).
# The checkpoint holds kernels and channels but not strides, so the table is checked
# against the weights before use.
STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class StorageType:
    """Stands in for torch.*Storage classes: only the element type is needed."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class StorageRef:
    """A storage named by the pickle; its bytes are attached once they are read."""

    def __init__(self, dtype, numel):
        self.dtype = dtype
        self.numel = numel
        self.array = None


class LazyTensor:
    """Arguments of torch._utils._rebuild_tensor_v2, materialised after loading."""

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def numpy(self):
        base = self.storage.array
        if base is None:
            raise ValueError("tensor storage was never read")
        item = base.dtype.itemsize
        needed = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, dtype=base.dtype)
        if needed > base.size:
            raise ValueError(f"tensor view {self.size}/{self.stride} exceeds its storage")
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :],
            shape=self.size,
            strides=tuple(st * item for st in self.stride),
            writeable=False,
        )
        # Weights converted from TensorFlow are stored transposed (non-contiguous);
        # copying gives a plain C-order array.
        return np.ascontiguousarray(view)


def rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *rest):
    return LazyTensor(storage, offset, size, stride)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild a state dict of tensors and nothing else."""

    def __init__(self, fileobj, storages):
        super().__init__(fileobj)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the checkpoint")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(storage_type, StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if key not in self.storages:
            self.storages[key] = StorageRef(storage_type.dtype, int(numel))
        return self.storages[key]


class PlainUnpickler(pickle.Unpickler):
    """For the legacy header pickles, which hold only builtin values."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the checkpoint")


def load_legacy(f):
    magic = PlainUnpickler(f).load()
    if magic != LEGACY_MAGIC:
        raise ValueError("not a torch checkpoint (bad magic number)")
    protocol = PlainUnpickler(f).load()
    if protocol != 1001:
        raise ValueError(f"unsupported legacy protocol version {protocol}")
    sys_info = PlainUnpickler(f).load()
    if not sys_info.get("little_endian", False):
        raise ValueError("big-endian checkpoints are not supported")
    storages = {}
    state = RestrictedUnpickler(f, storages).load()
    keys = PlainUnpickler(f).load()
    for key in keys:
        ref = storages[str(key)]
        (numel,) = np.frombuffer(f.read(8), dtype="<i8")
        if numel != ref.numel:
            raise ValueError(f"storage {key}: header says {numel} elements, pickle says {ref.numel}")
        nbytes = int(numel) * ref.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"storage {key} is truncated")
        ref.array = np.frombuffer(raw, dtype=ref.dtype.newbyteorder("<"))
    return state


def load_zip(path):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise ValueError("zip checkpoint without data.pkl")
        prefix = pkl[: -len("data.pkl")]
        storages = {}
        state = RestrictedUnpickler(io.BytesIO(zf.read(pkl)), storages).load()
        for key, ref in storages.items():
            raw = zf.read(f"{prefix}data/{key}")
            ref.array = np.frombuffer(raw, dtype=ref.dtype.newbyteorder("<"))[: ref.numel]
    return state


def load_state_dict(path):
    if zipfile.is_zipfile(path):
        state = load_zip(path)
    else:
        with open(path, "rb") as f:
            state = load_legacy(f)
    if not isinstance(state, collections.OrderedDict):
        raise ValueError("checkpoint is not a state dict")
    return {k: v.numpy() for k, v in state.items()}


def same_pads(size, kernel, stride):
    """TensorFlow 'SAME' padding (the weights come from TF): extra padding goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


class GraphBuilder:
    def __init__(self, sd):
        self.sd = sd
        self.used = set()
        self.nodes = []
        self.inits = []
        self.counter = 0

    def take(self, key):
        if key not in self.sd:
            raise KeyError(f"checkpoint has no {key}")
        self.used.add(key)
        return self.sd[key]

    def name(self, base):
        self.counter += 1
        return f"{base}_{self.counter}"

    def init(self, name, array):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def conv_bn(self, x, size, conv, bn, stride, groups=1):
        w = self.take(f"{conv}.weight").astype(np.float64)
        gamma = self.take(f"{bn}.weight").astype(np.float64)
        beta = self.take(f"{bn}.bias").astype(np.float64)
        mean = self.take(f"{bn}.running_mean").astype(np.float64)
        var = self.take(f"{bn}.running_var").astype(np.float64)
        self.take(f"{bn}.num_batches_tracked")
        scale = gamma / np.sqrt(var + BN_EPS)
        wf = (w * scale[:, None, None, None]).astype(np.float32)
        bf = (beta - mean * scale).astype(np.float32)
        k = w.shape[2]
        before, after, out = same_pads(size, k, stride)
        wn = self.init(f"{conv}.weight", wf)
        bn_ = self.init(f"{conv}.bias", bf)
        y = self.name(conv.replace(".", "_"))
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, wn, bn_],
                [y],
                name=y,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[before, before, after, after],
                group=groups,
            )
        )
        return y, out, w.shape[0]

    def relu6(self, x):
        y = self.name("relu6")
        self.nodes.append(helper.make_node("Clip", [x, "clip_min", "clip_max"], [y], name=y))
        return y


def build_model(sd):
    g = GraphBuilder(sd)
    g.init("clip_min", np.array(0.0, dtype=np.float32))
    g.init("clip_max", np.array(6.0, dtype=np.float32))

    x, size, ch = g.conv_bn("input", INPUT_SIZE, "_conv_stem", "_bn0", 2)
    x = g.relu6(x)

    idx = 0
    for repeats, kernel, stride, expand, out_ch in STAGES:
        for r in range(repeats):
            p = f"_blocks.{idx}"
            s = stride if r == 0 else 1
            inp, in_ch = x, ch
            if expand != 1:
                x, size, ch = g.conv_bn(x, size, f"{p}._expand_conv", f"{p}._bn0", 1)
                x = g.relu6(x)
            dw = sd.get(f"{p}._depthwise_conv.weight")
            if dw is None or dw.shape != (in_ch * expand, 1, kernel, kernel):
                got = None if dw is None else dw.shape
                raise ValueError(f"{p}: depthwise weights {got} do not match the Lite0 table")
            x, size, ch = g.conv_bn(x, size, f"{p}._depthwise_conv", f"{p}._bn1", s, groups=ch)
            x = g.relu6(x)
            x, size, ch = g.conv_bn(x, size, f"{p}._project_conv", f"{p}._bn2", 1)
            if ch != out_ch:
                raise ValueError(f"{p}: {ch} output channels, expected {out_ch}")
            if s == 1 and in_ch == out_ch:
                y = g.name("residual")
                g.nodes.append(helper.make_node("Add", [x, inp], [y], name=y))
                x = y
            idx += 1
    if f"_blocks.{idx}._project_conv.weight" in sd:
        raise ValueError(f"checkpoint has more than {idx} blocks")

    x, size, ch = g.conv_bn(x, size, "_conv_head", "_bn1", 1)
    x = g.relu6(x)
    pooled = g.name("avgpool")
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled], name=pooled))
    flat = g.name("flatten")
    g.nodes.append(helper.make_node("Flatten", [pooled], [flat], name=flat, axis=1))
    fc_w = g.init("_fc.weight", g.take("_fc.weight").astype(np.float32))
    fc_b = g.init("_fc.bias", g.take("_fc.bias").astype(np.float32))
    g.nodes.append(
        helper.make_node("Gemm", [flat, fc_w, fc_b], ["logits"], name="fc", transB=1)
    )

    unused = sorted(set(sd) - g.used)
    if unused:
        raise ValueError(f"checkpoint tensors not used by the graph: {unused[:5]}")

    graph = helper.make_graph(
        g.nodes,
        "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, NUM_CLASSES])],
        g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="imgforge-classifier-convert",
        producer_version="1",
        doc_string=(
            "EfficientNet-Lite0 (Apache-2.0), BatchNorm folded. Input: RGB 224x224 NCHW, "
            "(px - 127) / 128. Output: 1000 ImageNet logits."
        ),
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    sd = load_state_dict(argv[1])
    model = build_model(sd)
    with open(argv[2], "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
