"""The text tokenizer: a byte-level BPE built locally with the `tokenizers` library (no hub).

Vocabulary layout (ids):
  0 <pad>, 1 <s> (BOS), 2 </s> (EOS), 3 <cog> (CogACT's cognition token),
  then the BPE vocabulary trained on `tokenizer_corpus.txt` (our suites' instructions plus common
  English words; byte-level, so any text encodes without an unknown token),
  then the 256 action tokens <act_000>..<act_255>: OpenVLA maps action bins to the LAST 256 ids.
Wrapped as a transformers `PreTrainedTokenizerFast` and saved with the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, COG = "<pad>", "<s>", "</s>", "<cog>"
CORPUS = Path(__file__).with_name("tokenizer_corpus.txt")


def action_token(i: int) -> str:
    return f"<act_{i:03d}>"


def build_tokenizer(
    bpe_vocab_size: int = 1024, n_action_tokens: int = 256, extra_texts: list[str] | None = None
) -> PreTrainedTokenizerFast:
    """Train the BPE on our corpus (+ `extra_texts`, e.g. a dataset's instructions) and append the
    action tokens so that they take the last `n_action_tokens` ids."""
    if bpe_vocab_size < 300:
        raise ValueError(f"bpe_vocab_size must be >= 300 (256 bytes + specials), got {bpe_vocab_size}")
    texts = CORPUS.read_text().splitlines() + [t.lower() for t in (extra_texts or [])]
    texts += [t.capitalize() for t in texts]  # both cases of sentence starts
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        special_tokens=[PAD, BOS, EOS, COG],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if n_action_tokens:
        tok.add_special_tokens([action_token(i) for i in range(n_action_tokens)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
    )
    fast.add_special_tokens({"additional_special_tokens": [COG]})
    if n_action_tokens and fast.convert_tokens_to_ids(action_token(0)) != len(fast) - n_action_tokens:
        raise RuntimeError("action tokens must take the last ids of the vocabulary")
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(path))
