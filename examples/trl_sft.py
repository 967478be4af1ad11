"""AdaLoRA inside TRL's SFTTrainer: chat data, loss on the assistant's words only, the whole method.

    python examples/trl_sft.py                       # SmolLM2-135M-Instruct (embedded), 40 steps on CPU
    python examples/trl_sft.py --model FOLDER --steps 8

Mixing AdaRankTrainer into SFTTrainer (AdaRankTrainer first in the bases) gives SFTTrainer's own loss
plus the orthogonality penalty (in the loss, clipped with the task gradient), lambda's learning-rate
multiplier, rank allocation, shrink and resume. With `SFTTrainer(..., callbacks=[AdaRankCallback(...)])`
alone, the callback applies the penalty after clipping and warns that lambda's multiplier is missing.
The data: the embedded Rotten Tomatoes reviews as conversations (examples/rt_chat.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from datasets import Dataset
from rt_chat import conversations
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from adarank import AdaRankCallback, AdaRankTrainer, BudgetConfig, RankAllocator, inject_adapters
from adarank.config import ModelConfig
from adarank.core.export import export_peft
from adarank.data import load_splits
from adarank.io.models import hf_folder

# ChatML (SmolLM2's format) with TRL's {% generation %} markers around what the assistant says, end-of-turn
# included: assistant_only_loss needs them to know which tokens are the assistant's
CHATML_TRAINING = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}"
    "{{ m['content'] }}<|im_end|>{% endgeneration %}\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class AdaRankSFTTrainer(AdaRankTrainer, SFTTrainer):
    """SFTTrainer with adarank's penalty, lambda's learning rate and the allocator's hooks."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a causal LM folder (default: the embedded SmolLM2)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--max-train", type=int, default=512, help="training conversations used")
    parser.add_argument("--out", type=Path, default=Path("out/trl-sft"))
    args = parser.parse_args()

    path = args.model or hf_folder(ModelConfig(name_or_path="smollm2"))  # the GGUF, dequantized once
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHATML_TRAINING
    texts, labels = load_splits("rotten_tomatoes")["train"]
    data = Dataset.from_dict({"messages": conversations(texts, labels, ["negative", "positive"])})
    data = data.shuffle(seed=0).select(range(min(args.max_train, len(data))))

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    adapters = inject_adapters(model, ["q_proj", "k_proj", "v_proj", "o_proj"], rank=4, alpha=8, seed=0)
    budget = BudgetConfig(init_rank=4, target_rank=2, t_init=0.1, t_final=0.3, mask_interval=2)
    allocator = RankAllocator(adapters, budget)  # T comes from the Trainer
    trainer = AdaRankSFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(args.out),
            max_steps=args.steps,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=2,
            learning_rate=2e-3,
            assistant_only_loss=True,
            max_length=256,
            logging_steps=max(1, args.steps // 8),
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            bf16=torch.cuda.is_available(),  # TRL's default is bf16; on a CPU float32 is the faster
        ),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[AdaRankCallback(allocator)],
        orth_weight=0.1,
        singular_lr_multiplier=10,
    )
    trainer.train()  # raises if the allocation never finished
    ranks = allocator.ranks()
    print(f"final ranks: total {sum(ranks.values())} over {len(ranks)} modules (target {budget.target_rank} each)")
    print(f"PEFT LoRA adapter with per-module ranks: {export_peft(model, args.out / 'peft', overwrite=True)}")


if __name__ == "__main__":
    main()
