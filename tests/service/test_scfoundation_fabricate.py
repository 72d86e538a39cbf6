"""`scstrata fabricate --family scfoundation` writes the full official layout: the official
loader's steps (docs/models.md, scFoundation) find every config key they read and load the
state dict strictly into the official model's key set.

The official loader (``load_model_frommmf``): take the sub-checkpoint, flatten
``config['model_config'][config['model']]`` and ``config['dataset_config']['rnaseq']`` into one
dict, strip ``model.`` from the state-dict keys, read ``config['model']`` from the flattened
dict, build ``MaeAutobin`` (token_emb, pos_emb, a transformer encoder, a performer decoder,
decoder_embed, norm, to_final) and ``load_state_dict`` strictly. The key set below is that
model's, written out from those facts for the fabricated sizes (a depth-1 decoder).
"""

from __future__ import annotations

import torch

from scstrata_service.cli import main

HIDDEN, N_LAYERS, N_HEADS = 32, 2, 4


def official_keys(flat: dict) -> dict[str, tuple[int | None, ...]]:
    """Key -> shape of the official MaeAutobin for a flattened config (transformer encoder,
    performer decoder of depth 1)."""
    dim, dec = flat["encoder"]["hidden_dim"], flat["decoder"]["hidden_dim"]
    bins, seq_len = flat["bin_num"], flat["seq_len"]
    keys = {
        "token_emb.mlp.weight": (bins, 1),
        "token_emb.mlp.bias": (bins,),
        "token_emb.mlp2.weight": (bins, bins),
        "token_emb.mlp2.bias": (bins,),
        "token_emb.emb.weight": (bins, dim),
        "token_emb.emb_mask.weight": (1, dim),
        "token_emb.emb_pad.weight": (1, dim),
        "pos_emb.weight": (seq_len + 1, dim),
        "encoder.norm.weight": (dim,),
        "encoder.norm.bias": (dim,),
        "decoder_embed.weight": (dec, dim),
        "decoder_embed.bias": (dec,),
        "norm.weight": (dec,),
        "norm.bias": (dec,),
        "to_final.weight": (1, dec),
        "to_final.bias": (1,),
        "decoder.norm.weight": (dec,),
        "decoder.norm.bias": (dec,),
        "decoder.performer.calls_since_last_redraw": (),
    }
    layer = torch.nn.TransformerEncoderLayer(dim, flat["encoder"]["heads"], 4 * dim)
    for i in range(flat["encoder"]["depth"]):
        for name, tensor in layer.state_dict().items():
            keys[f"encoder.transformer_encoder.{i}.{name}"] = tuple(tensor.shape)
    assert flat["decoder"]["depth"] == 1  # the fabricated size
    attention, ff = "decoder.performer.net.layers.0.0", "decoder.performer.net.layers.0.1"
    for block in (attention, ff):
        keys[f"{block}.norm.weight"] = keys[f"{block}.norm.bias"] = (dec,)
    for proj in ("to_q", "to_k", "to_v", "to_out"):
        keys[f"{attention}.fn.{proj}.weight"] = (dec, dec)
        keys[f"{attention}.fn.{proj}.bias"] = (dec,)
    # [random features, dim_head]: the feature count is the file's own choice
    keys[f"{attention}.fn.fast_attention.projection_matrix"] = (None, flat["decoder"]["dim_head"])
    keys[f"{ff}.fn.fn.w1.weight"], keys[f"{ff}.fn.fn.w1.bias"] = (4 * dec, dec), (4 * dec,)
    keys[f"{ff}.fn.fn.w2.weight"], keys[f"{ff}.fn.fn.w2.bias"] = (dec, 4 * dec), (dec,)
    return keys


def test_fabricated_scfoundation_loads_as_the_official_loader_does(tmp_path, capsys):
    folder = tmp_path / "scf"
    argv = ["fabricate", "--family", "scfoundation", "--out", str(folder)]
    argv += ["--hidden", str(HIDDEN), "--n-layers", str(N_LAYERS), "--n-heads", str(N_HEADS)]
    assert main(argv) == 0
    assert "RANDOM DEMO WEIGHTS" in capsys.readouterr().out
    raw = torch.load(folder / "models.ckpt", map_location="cpu", weights_only=True)
    assert set(raw) == {"gene", "cell", "rde"}
    for version, sub in raw.items():
        config = sub["config"]
        model_type = config["model"]
        flat = {**config["model_config"][model_type], **config["dataset_config"]["rnaseq"]}
        # what the official loader and model builder read from the flattened config
        assert flat["model"] == "mae_autobin", version
        for key in ("n_class", "seq_len", "bin_alpha", "bin_num", "pad_token_id"):
            assert key in flat, (version, key)
        assert "mask_token_id" in flat and flat["encoder"]["module_type"] == "transformer"
        assert {"hidden_dim", "depth", "heads", "dim_head"} <= set(flat["decoder"])
        assert flat["decoder"]["module_type"] == "performer"
        assert (flat["encoder"]["hidden_dim"], flat["encoder"]["depth"]) == (HIDDEN, N_LAYERS)
        state = {key.split("model.", 1)[1]: t for key, t in sub["state_dict"].items()}
        want = official_keys(flat)
        assert sorted(set(want) - set(state)) == [], f"{version}: missing under a strict load"
        assert sorted(set(state) - set(want)) == [], f"{version}: unexpected under a strict load"
        for key, shape in want.items():
            got = tuple(state[key].shape)
            assert len(got) == len(shape), (version, key, got)
            assert all(w is None or w == g for w, g in zip(shape, got)), (version, key, got)
