"""LowRankAdamW in a real PyTorch Lightning Trainer (no mocks): returned from `configure_optimizers`, trained
with `Trainer(max_steps=..., accelerator="cpu")`, checkpointed by Lightning's ModelCheckpoint and resumed with
`fit(ckpt_path=...)`, in fp32 and with bf16-mixed precision (CPU autocast).

Must show: the loss falls, and the resumed run ends bit-identically to the uninterrupted one (final
parameters compared with torch.equal)."""

import warnings

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning")

from lowrank_ops.optim import LowRankAdamW, param_groups

VOCAB, DIM, SEQ, SAMPLES, BATCH = 32, 24, 12, 32, 4
MAX_STEPS, SAVE_AT = 12, 8  # 8 batches per epoch: the checkpoint is taken at an epoch's end


class TinyLM(pl.LightningModule):
    """Embedding -> attention-free residual MLP block -> head; the MLP weights get the projection."""

    def __init__(self, projection="rademacher"):
        super().__init__()
        self.projection = projection
        self.emb = torch.nn.Embedding(VOCAB, DIM)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(DIM, 2 * DIM), torch.nn.GELU(), torch.nn.Linear(2 * DIM, DIM)
        )
        self.norm = torch.nn.LayerNorm(DIM)
        self.head = torch.nn.Linear(DIM, VOCAB)
        self.losses = []

    def forward(self, tokens):
        h = self.emb(tokens)
        return self.head(self.norm(h + self.mlp(h)))

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        logits = self(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return LowRankAdamW(
            param_groups(self, rank=4, projection=self.projection, target="mlp", update_gap=5),
            lr=2e-2,
            weight_decay=0.01,
        )

    def train_dataloader(self):
        starts = torch.randint(0, VOCAB, (SAMPLES, 1), generator=torch.Generator().manual_seed(1))
        tokens = (starts + torch.arange(SEQ)) % VOCAB  # a counting pattern: learnable in a few steps
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens), batch_size=BATCH)


def checkpointing(dirpath):
    return pl.callbacks.ModelCheckpoint(dirpath=dirpath, every_n_train_steps=SAVE_AT, save_top_k=-1)


def make_trainer(root, callbacks=(), precision="32-true"):
    return pl.Trainer(
        max_steps=MAX_STEPS,
        precision=precision,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(root),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        deterministic=True,
    )


@pytest.fixture(autouse=True)
def quiet():
    """Lightning's advice-level warnings (few dataloader workers on CPU; the resumed run checkpointing into
    the directory of the checkpoint it resumes from) are not what this test is about. The thread count is
    conftest.py's one_thread."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # the resumed run's own dir
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning 2.6 vs torch 2.13 pytree API
        yield


@pytest.mark.parametrize(
    ("projection", "precision"), [("rademacher", "32-true"), ("svd", "32-true"), ("rademacher", "bf16-mixed")]
)
def test_lightning_trains_and_resumes_bit_identically(tmp_path, projection, precision):
    pl.seed_everything(0, verbose=False)
    full = TinyLM(projection)
    dtypes = set()  # bf16-mixed really runs the MLP's matmuls in bf16 (CPU autocast)
    full.mlp[0].register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    make_trainer(tmp_path / "full", [checkpointing(tmp_path / "ckpt")], precision).fit(full)
    assert dtypes == {torch.bfloat16 if precision == "bf16-mixed" else torch.float32}
    assert len(full.losses) == MAX_STEPS
    assert sum(full.losses[-3:]) < 0.8 * sum(full.losses[:3]), f"the loss did not fall: {full.losses}"
    (ckpt,) = [p for p in (tmp_path / "ckpt").iterdir() if f"step={SAVE_AT}" in p.name]

    pl.seed_everything(0, verbose=False)
    resumed = TinyLM(projection)
    make_trainer(tmp_path / "resumed", [checkpointing(tmp_path / "ckpt")], precision).fit(
        resumed, ckpt_path=str(ckpt)
    )
    assert resumed.losses == full.losses[SAVE_AT:]
    state = resumed.trainer.optimizers[0].state
    assert all(s["step"] == MAX_STEPS for s in state.values() if "layer" in s)
    for (n, p), q in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), f"{n} differs after resume"
