"""scfm: registered sizes, padding invariance with seq_lens, the sigmoid/softmax twins, checkpointing, head reset."""

import pytest
import torch

import gatedzoo
from gatedzoo.models.scfm import CLS_ID, PAD_ID, SCFM
from gatedzoo.tasks.masked_expression import embed_cells


@pytest.fixture(scope="module")
def pbmc68k_cells():
    """The 700 real pbmc68k_reduced cells (log1p .raw), tokenised with their own 765-gene vocabulary."""
    from gatedzoo.data.singlecell import GeneVocab, read_dataset, tokenize_anndata

    adata, kw = read_dataset("pbmc68k_reduced")
    return tokenize_anndata(adata, GeneVocab(list(adata.raw.var_names)), **kw)


def _cell_batch(tokens, vocab=200, seed=0):
    """Cells of the given lengths, padded: real-looking tokens (distinct genes, bins 1..50)."""
    g = torch.Generator().manual_seed(seed)
    t = max(tokens)
    genes = torch.zeros(len(tokens), t, dtype=torch.long)
    bins = torch.zeros(len(tokens), t, dtype=torch.long)
    for i, n in enumerate(tokens):
        genes[i, :n] = torch.randperm(vocab - 2, generator=g)[:n] + 2
        bins[i, :n] = torch.randint(1, 51, (n,), generator=g)
    return genes, bins, torch.tensor(tokens, dtype=torch.int32)


def test_registered_sizes_and_large_is_over_100m():
    names = gatedzoo.list_models("scfm_*")
    for size in ("tiny", "small", "base", "large"):
        assert f"scfm_sigmoid_{size}" in names and f"scfm_softmax_{size}" in names
    with torch.device("meta"):
        large = gatedzoo.create_model("scfm_sigmoid_large", vocab_size=9050)
        small = gatedzoo.create_model("scfm_sigmoid_small", vocab_size=9050)
    assert sum(p.numel() for p in large.parameters()) >= 100e6
    assert 1e6 <= sum(p.numel() for p in small.parameters()) <= 4e6


def test_twins_differ_only_in_activation():
    sig = gatedzoo.create_model("scfm_sigmoid_tiny", vocab_size=200)
    soft = gatedzoo.create_model("scfm_softmax_tiny", vocab_size=200)
    assert {k: v.shape for k, v in sig.state_dict().items()} == {k: v.shape for k, v in soft.state_dict().items()}
    assert {b.attn.activation for b in sig.blocks} == {"sigmoid"}
    assert {b.attn.activation for b in soft.blocks} == {"softmax"}
    assert all(b.attn.sigmoid_bias is None for b in sig.blocks)  # the core's -log(n valid keys)
    soft.load_state_dict(sig.state_dict())
    genes, bins, lens = _cell_batch([7, 12])
    assert not torch.allclose(sig.forward_features(genes, bins, lens), soft.forward_features(genes, bins, lens))


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_padding_does_not_change_a_cell(activation, pool):
    torch.manual_seed(0)
    m = SCFM(vocab_size=200, dim=32, depth=2, num_heads=4, activation=activation, pool=pool).eval()
    genes, bins, lens = _cell_batch([5, 17, 11])
    both = m.forward_features(genes, bins, lens)
    alone = m.forward_features(genes[:1, :5], bins[:1, :5], lens[:1])
    assert torch.allclose(both[0], alone[0], atol=1e-5)
    # changing what sits in the padding must not change anything either
    genes2 = genes.clone()
    genes2[0, 5:] = 3
    assert torch.allclose(m.forward_features(genes2, bins, lens), both, atol=1e-5)


def test_cls_token_and_pad_index():
    m = SCFM(vocab_size=50, dim=16, depth=1, num_heads=2)
    assert m.gene_embed.padding_idx == PAD_ID and CLS_ID == 1 and m.mask_bin == m.n_bins
    with pytest.raises(ValueError, match="pool"):
        SCFM(vocab_size=50, pool="max")
    with pytest.raises(ValueError, match="genes"):
        m.forward_features(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.tensor([3]))


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    m = SCFM(vocab_size=200, dim=32, depth=2, num_heads=4)
    genes, bins, lens = _cell_batch([9, 4])
    targets = torch.full_like(genes, -100)
    targets[:, :3] = bins[:, :3]
    masked = bins.clone()
    masked[:, :3] = m.mask_bin
    m.masked_expression_loss(genes, masked, lens, targets).backward()
    ref = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m.masked_expression_loss(genes, masked, lens, targets).backward()
    for a, p in zip(ref, m.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_compile_reaches_the_pretraining_loss_and_keeps_its_values():
    """SCFM.compile() compiles the blocks, which masked_expression_loss runs (it never calls forward); the loss and
    every gradient equal the eager model's, and the parameter names do not change."""
    torch.manual_seed(0)
    eager = SCFM(vocab_size=200, dim=32, depth=2, num_heads=4, backend="reference")
    compiled = SCFM(vocab_size=200, dim=32, depth=2, num_heads=4, backend="reference")
    compiled.load_state_dict(eager.state_dict())
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled.compile(backend=recording_backend)
    assert all(blk._compiled_call_impl is not None for blk in compiled.blocks)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    genes, bins, lens = _cell_batch([9, 4])
    targets = torch.full_like(genes, -100)
    targets[:, :3] = bins[:, :3]
    losses = [m.masked_expression_loss(genes, bins, lens, targets) for m in (eager, compiled)]
    assert graphs, "the compiled blocks were not traced: the loss ran eager"
    torch.testing.assert_close(losses[1], losses[0])
    for loss in losses:
        loss.backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    torch._dynamo.reset()


def test_cell_loss_scores_unexpressed_genes_as_bin_zero():
    torch.manual_seed(0)
    m = SCFM(vocab_size=200, dim=32, depth=2, num_heads=4, mvc=True, pool="cls").eval()
    genes, bins, lens = _cell_batch([9, 4])
    targets = torch.full_like(genes, -100)
    targets[:, :2] = bins[:, :2]
    neg = torch.tensor([[150, 151, 0], [160, 0, 0]])
    got = m.masked_expression_loss(genes, bins, lens, targets, parts=True, neg_genes=neg)["cell"]
    cell = m.forward_features(genes, bins, lens)
    logits = torch.cat([m.cell_expression_logits(cell, genes)[targets != -100],
                        m.cell_expression_logits(cell, neg)[neg > 0]])
    want = torch.nn.functional.cross_entropy(logits, torch.cat([targets[targets != -100], torch.zeros(3).long()]))
    assert torch.allclose(got, want, atol=1e-6)
    # padding columns of neg_genes change nothing; without negatives the loss differs
    wider = torch.cat([neg, torch.zeros(2, 4, dtype=torch.long)], 1)
    assert torch.allclose(m.masked_expression_loss(genes, bins, lens, targets, parts=True, neg_genes=wider)["cell"],
                          got, atol=1e-6)
    assert not torch.allclose(m.masked_expression_loss(genes, bins, lens, targets, parts=True)["cell"], got)


def test_gene_subset_view_keeps_a_share_of_each_cells_own_tokens():
    m = SCFM(vocab_size=200, dim=32, depth=1, num_heads=4)
    genes, bins, lens = _cell_batch([9, 4, 1])
    torch.manual_seed(0)
    g, b, n = m.gene_subset_view(genes, bins, lens, keep=0.5)
    assert n.tolist() == [4, 2, 1] and n.dtype == torch.int32 and g.shape == b.shape == (3, 4)  # round(4.5) = 4
    for i in range(3):
        pairs = dict(zip(genes[i, : lens[i]].tolist(), bins[i, : lens[i]].tolist()))
        kept = g[i, : n[i]].tolist()
        assert len(set(kept)) == len(kept) and all(pairs[x] == y for x, y in zip(kept, b[i, : n[i]].tolist()))
        assert (g[i, n[i]:] == PAD_ID).all() and (b[i, n[i]:] == 0).all()
    torch.manual_seed(1)
    assert not torch.equal(m.gene_subset_view(genes, bins, lens, keep=0.5)[0][0], g[0])  # a new draw each call


def test_contrastive_loss_is_infonce_between_two_views_and_trains_only():
    with pytest.raises(ValueError, match="contrastive"):
        SCFM(vocab_size=200, dim=32, depth=1, num_heads=4, contrastive=0.5, contrastive_keep=0.0)
    assert SCFM(vocab_size=200, dim=32, depth=1, num_heads=4).contrast_proj is None  # off by default
    torch.manual_seed(0)
    m = SCFM(vocab_size=200, dim=32, depth=2, num_heads=4, contrastive=0.5, contrastive_keep=0.6,
             contrastive_temperature=0.2)
    genes, bins, lens = _cell_batch([9, 4, 7, 12])
    targets = torch.full_like(genes, -100)
    targets[:, 0] = bins[:, 0]
    masked = bins.clone()
    masked[:, 0] = m.mask_bin
    torch.manual_seed(3)
    parts = m.masked_expression_loss(genes, masked, lens, targets, parts=True)
    # the same draw by hand: the second view sees the true bins of a random 60 % of each cell's genes
    torch.manual_seed(3)
    cell = m.forward_features(genes, masked, lens)
    g, b, n = m.gene_subset_view(genes, bins, lens, 0.6)
    za = torch.nn.functional.normalize(m.contrast_proj(cell), dim=-1)
    zb = torch.nn.functional.normalize(m.contrast_proj(m.forward_features(g, b, n)), dim=-1)
    sim = za @ zb.T / 0.2
    want = 0.5 * (torch.nn.functional.cross_entropy(sim, torch.arange(4)) +
                  torch.nn.functional.cross_entropy(sim.T, torch.arange(4)))
    assert torch.allclose(parts["contrast"], want, atol=1e-5)
    torch.manual_seed(3)
    total = m.masked_expression_loss(genes, masked, lens, targets)
    assert torch.allclose(total, parts["token"] + parts["cell"] + 0.5 * parts["contrast"], atol=1e-5)
    total.backward()
    assert m.contrast_proj[0].weight.grad.abs().sum() > 0
    m.eval()  # evaluation losses carry no random view
    assert set(m.masked_expression_loss(genes, masked, lens, targets, parts=True)) == {"token", "cell"}


def test_reset_classifier_and_logits_shape():
    m = gatedzoo.create_model("scfm_sigmoid_tiny", vocab_size=200)
    genes, bins, lens = _cell_batch([6, 3])
    assert m(genes, bins, lens).shape == (2, 64)
    m.reset_classifier(7)
    assert m(genes, bins, lens).shape == (2, 7)
    assert m.zoo_config["model_args"]["num_classes"] == 7


def test_embed_cells_matches_forward(pbmc68k_cells):
    torch.manual_seed(0)
    m = gatedzoo.create_model("scfm_sigmoid_tiny", vocab_size=pbmc68k_cells.meta["vocab_size"])
    emb = embed_cells(m, pbmc68k_cells.subset(range(10)), max_genes=64, batch_size=4)
    assert emb.shape == (10, 64) and emb.dtype.name == "float32"
    g, b = pbmc68k_cells.cell(3)
    one = m.forward_features(torch.from_numpy(g[:64]).long()[None], torch.from_numpy(b[:64]).long()[None],
                             torch.tensor([min(len(g), 64)]))
    assert torch.allclose(torch.from_numpy(emb[3]), one[0], atol=1e-5)


# `gatedzoo eval scfm_sigmoid_small.pbmc --json` on CPU (docs/models/scfm.md gives the command and the date)
GOLDEN = {"masked_loss": 1.14365, "knn_acc": 0.39143}


def test_shipped_weights_golden_metric():
    from gatedzoo.tasks import EVALUATORS

    model = gatedzoo.create_model("scfm_sigmoid_small.pbmc", pretrained=True)
    assert model.zoo_config["gene_vocab"]["genes"][:2] == ["LINC00115", "NOC2L"]
    assert model.zoo_config["preprocessing"]["expected_input"] == "counts"
    res = EVALUATORS[model.zoo_config["task"]](model, data=None, split="test")
    for k, v in GOLDEN.items():
        assert res[k] == pytest.approx(v, abs=2e-3), k
