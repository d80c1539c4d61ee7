"""LowRankAdamW and GaLoreAdamW inside a real Hugging Face transformers Trainer (no mocks): a tiny
LlamaForCausalLM from a config (random init, nothing downloaded), `Trainer(optimizers=(opt, scheduler))`,
gradient accumulation, bf16 autocast on CPU, the Trainer's own checkpoints and `resume_from_checkpoint`.

Must show: the loss falls, and resuming from the Trainer's checkpoint continues bit-identically to the
uninterrupted run (final parameters compared with torch.equal). Also lowrank_ops.optim.param_groups on
that model, and the adapter view on it: lowrank_ops.nn.convert with an INT8/NF4 base trained by the Trainer
with merge_and_reset every few steps, then merged to a dense model whose save_pretrained export loads in a
process where lowrank_ops cannot be imported and gives the same logits."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the model is built from a config

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

from lowrank_ops.optim import GaLoreAdamW, LowRankAdamW, param_groups

VOCAB, SEQ, SAMPLES = 64, 16, 32
MAX_STEPS, SAVE_AT, ACCUM, BATCH = 8, 4, 2, 4


def tiny_llama(seed=0):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)


class CountingData(torch.utils.data.Dataset):
    """Sequences a, a+1, a+2, ... (mod VOCAB) from random starts: learnable in a few steps."""

    def __init__(self):
        starts = torch.randint(0, VOCAB, (SAMPLES, 1), generator=torch.Generator().manual_seed(1))
        self.tokens = (starts + torch.arange(SEQ)) % VOCAB

    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


OPTIMIZERS = {
    "LowRankAdamW": lambda model: LowRankAdamW(
        param_groups(model, rank=4, projection="rademacher", update_gap=3), lr=1e-2, weight_decay=0.01
    ),
    "GaLoreAdamW": lambda model: GaLoreAdamW(
        param_groups(model, rank=4, update_proj_gap=3, scale=0.5, proj_type="std"), lr=1e-2
    ),
}


def make_trainer(name, out_dir, bf16):
    model = tiny_llama()
    opt = OPTIMIZERS[name](model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / (2 * MAX_STEPS))
    args = transformers.TrainingArguments(
        output_dir=str(out_dir),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUM,
        save_strategy="steps",
        save_steps=SAVE_AT,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=bf16,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    return transformers.Trainer(
        model=model, args=args, train_dataset=CountingData(), optimizers=(opt, scheduler)
    )


def losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.fixture(autouse=True)
def no_progress_bars():
    """The checkpoint writer's progress bars are off (clean test output); the thread count is conftest.py's
    one_thread."""
    transformers.utils.logging.disable_progress_bar()
    yield
    transformers.utils.logging.enable_progress_bar()


def test_param_groups_on_llama():
    model = tiny_llama()
    projected, plain = param_groups(model, rank=4, projection="rademacher", update_gap=3)
    names = {id(p): n for n, p in model.named_parameters()}
    projected_names = sorted(names[id(p)] for p in projected["params"])
    per_layer = (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
    assert projected_names == sorted(f"model.layers.{i}.{m}.weight" for i in range(2) for m in per_layer)
    assert (projected["rank"], projected["projection"], projected["update_gap"]) == (4, "rademacher", 3)
    plain_names = sorted(names[id(p)] for p in plain["params"])
    assert plain_names == sorted(
        ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
        + [
            f"model.layers.{i}.{n}.weight"
            for i in range(2)
            for n in ("input_layernorm", "post_attention_layernorm")
        ]
    )
    assert set(plain) == {"params"}  # takes the optimizer's defaults


def test_param_groups_target_and_errors():
    model = tiny_llama()
    (only_mlp, _) = param_groups(model, rank=2, target="mlp")
    assert len(only_mlp["params"]) == 6 and "projection" not in only_mlp
    with pytest.raises(ValueError, match=r"param_groups: no 2-D module weight matches target \('conv',\)"):
        param_groups(model, rank=2, target=("conv",))
    with pytest.raises(ValueError, match="'target' must be"):
        param_groups(model, rank=2, target=())
    frozen = tiny_llama()
    for p in frozen.model.layers[0].parameters():
        p.requires_grad_(False)
    projected, plain = param_groups(frozen, rank=2)
    assert len(projected["params"]) == 7 and len(plain["params"]) == 5


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_trainer_trains_and_resumes_bit_identically(tmp_path, name, bf16):
    full = make_trainer(name, tmp_path / "full", bf16)
    dtypes = set()  # the bf16 run really runs the projections' matmuls in bf16 (CPU autocast)
    full.model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    full.train()
    assert dtypes == {torch.bfloat16 if bf16 else torch.float32}
    loss = losses(full)
    assert len(loss) == MAX_STEPS
    assert sum(loss[-2:]) < 0.8 * sum(loss[:2]), f"{name}: the loss did not fall: {loss}"
    checkpoint = tmp_path / "full" / f"checkpoint-{SAVE_AT}"
    assert (checkpoint / "optimizer.pt").is_file()

    resumed = make_trainer(name, tmp_path / "resumed", bf16)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == MAX_STEPS
    # The optimizer state came back from the Trainer's checkpoint (the low-rank state is ints + fp32 moments).
    lowrank = [s for s in resumed.optimizer.state.values() if "layer" in s]
    assert lowrank and all(s["step"] == MAX_STEPS for s in lowrank)
    assert losses(resumed) == loss  # the first SAVE_AT from the checkpoint's trainer_state.json
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), f"{name}: {n} differs after resume"


# ---------------------------------------------------------------------------------------------------
# The adapter view on the same transformers model: lowrank_ops.nn.convert with an INT8/NF4 base, trained by
# the Trainer, merge_and_reset mid-run, then merged to a dense model that save_pretrained writes and a
# process without lowrank_ops loads.

ADAPTER_STEPS = (
    24  # only the rank-4 adapters train (random embeddings, norms, head frozen): slower than AdamW
)
LOAD_WITHOUT_LOWRANK_OPS = """
import sys
sys.modules["lowrank_ops"] = None  # any import of lowrank_ops now raises ImportError
import torch, transformers
torch.set_num_threads(1)
model = transformers.LlamaForCausalLM.from_pretrained(sys.argv[1])
tokens = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(tokens).logits, sys.argv[3])
"""


class MergeEvery(transformers.TrainerCallback):
    """merge_and_reset every `every` optimizer steps (the adapter view's refresh, LowRankAdamW's update_gap)."""

    def __init__(self, every):
        self.every, self.merges = every, 0

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        from lowrank_ops import nn as lnn

        if state.global_step % self.every == 0:
            lnn.merge_and_reset(model, state.global_step, optimizer)
            self.merges += 1


@pytest.mark.parametrize("base", ["int8", "nf4"])
def test_convert_llama_train_merge_export_dense(tmp_path, base):
    import subprocess
    import sys

    from lowrank_ops import nn as lnn

    model = tiny_llama()
    lnn.convert(
        model, rank=4, projection="rademacher", base=base, target=("self_attn", "mlp"), seed=0, group_size=32
    )
    converted = lnn.lowrank_modules(model)
    assert len(converted) == 14 and all(m.base == base for _, m in converted)
    for name, p in model.named_parameters():  # QLoRA-style: only the adapters A train
        p.requires_grad_(name.endswith(".A"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 14
    opt = torch.optim.AdamW(trainable, lr=3e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=ADAPTER_STEPS,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUM,
        save_strategy="no",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    merges = MergeEvery(5)  # merges at steps 5, 10, 15, 20; steps 21-24 stay in A
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=CountingData(), optimizers=(opt, scheduler), callbacks=[merges]
    )
    trainer.train()
    loss = losses(trainer)
    assert merges.merges == ADAPTER_STEPS // 5
    # The loss falls by 0.2 nats over the run here; 0.1 between the first and last quarter's means is well
    # above the step-to-step noise (~0.04), and training nothing would leave it flat (ln 64 = 4.16).
    quarter = ADAPTER_STEPS // 4
    assert sum(loss[-quarter:]) / quarter < sum(loss[:quarter]) / quarter - 0.1, (
        f"{base}: the loss did not fall: {loss}"
    )
    assert any(bool(m.A.abs().sum() > 0) for _, m in converted)  # steps since the last merge live in A

    tokens = CountingData().tokens[:4]
    with torch.no_grad():
        adapter_logits = model(tokens).logits
    lnn.merge_and_reset(model, dense=True)  # plain nn.Linear layers holding deq(W0) + P^T A
    assert not lnn.lowrank_modules(model)
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n.endswith("_proj"))
    with torch.no_grad():
        dense_logits = model(tokens).logits
    torch.testing.assert_close(dense_logits, adapter_logits, rtol=1e-5, atol=1e-5)  # one rounding of W apart

    export = tmp_path / "export"
    model.save_pretrained(export)
    fresh = transformers.LlamaForCausalLM.from_pretrained(export)
    assert set(fresh.state_dict()) == set(tiny_llama().state_dict())  # the plain architecture's keys only
    torch.save(tokens, tmp_path / "tokens.pt")
    subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_WITHOUT_LOWRANK_OPS,
            str(export),
            str(tmp_path / "tokens.pt"),
            str(tmp_path / "logits.pt"),
        ],
        check=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert torch.equal(torch.load(tmp_path / "logits.pt"), dense_logits)
