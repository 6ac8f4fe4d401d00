"""Packing: deterministic sequences, masked cross-document targets, no attention across documents."""

from __future__ import annotations

import numpy as np
import torch

from nbtune.train.packing import one_per_sequence, pack

DOCS = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
MASKS = [[1, 1, 1], [1, 1], [0, 1, 1, 1]]


def test_pack_hand_computed():
    p = pack(DOCS, MASKS, seq_len=4, seed=0, epoch=0, shuffle=False)
    assert p.input_ids.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert p.targets.tolist() == [[2, 3, 4, 5], [6, 7, 8, 9]]
    # predicting a document's first token from the previous document is masked; so are masked (prompt) targets
    assert p.weights.tolist() == [[1, 1, 0, 1], [0, 1, 1, 1]]
    assert p.position_ids.tolist() == [[0, 1, 2, 0], [0, 0, 1, 2]]


def test_pack_is_a_pure_function_of_seed_and_epoch():
    docs = [list(range(i, i + 5 + i % 3)) for i in range(50)]
    masks = [[1] * len(d) for d in docs]
    a = pack(docs, masks, seq_len=8, seed=3, epoch=2)
    b = pack(docs, masks, seq_len=8, seed=3, epoch=2)
    c = pack(docs, masks, seq_len=8, seed=3, epoch=3)
    assert np.array_equal(a.input_ids, b.input_ids) and not np.array_equal(a.input_ids, c.input_ids)
    assert len(a) == len(c)  # same tokens, another order


def test_one_per_sequence_pads_and_masks():
    p = one_per_sequence(DOCS, MASKS, seq_len=4, pad_id=0, seed=0, epoch=0, shuffle=False)
    assert p.input_ids.tolist() == [[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9]]
    assert p.weights.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]]


def test_no_attention_across_documents_with_packed_position_ids():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).eval()
    doc_b = [7, 8, 9, 10, 11]

    def logits_of_b(doc_a):
        ids = torch.tensor([doc_a + doc_b])
        pos = torch.tensor([list(range(len(doc_a))) + list(range(len(doc_b)))])
        with torch.no_grad():
            return model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, len(doc_a):]

    alone = model(input_ids=torch.tensor([doc_b]), use_cache=False).logits[0].detach()
    torch.testing.assert_close(logits_of_b([1, 2, 3]), alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_of_b([40, 41, 42, 43, 44, 45]), alone, rtol=1e-5, atol=1e-5)
