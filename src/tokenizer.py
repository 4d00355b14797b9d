"""The 35-token character vocabulary shared by data, model and analysis.

Ids are fixed by ../shared/SPEC.md section 3: four special tokens, then 31 characters. Some characters
(division, hex letters, comma) never occur in the data; they are reserved so that the
vocabulary, and therefore the parameter count, stays that of the original study.
"""

SPECIAL_TOKENS = ("<PAD>", "<BOS>", "<EOS>", "<UNK>")
CHARACTERS = "0123456789+-*/()=ABCDEFabcdef ,"
VOCAB = SPECIAL_TOKENS + tuple(CHARACTERS)
VOCAB_SIZE = len(VOCAB)

PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
IGNORE_INDEX = -100  # label value that cross-entropy skips

_ID_OF = {tok: i for i, tok in enumerate(VOCAB)}
ANSWER_SEPARATOR = " = "

assert VOCAB_SIZE == 35


def encode(text: str) -> list[int]:
    """Character ids of `text`; raises ValueError on a character outside the vocabulary."""
    ids = []
    for pos, ch in enumerate(text):
        if ch not in CHARACTERS:
            raise ValueError(f"character {ch!r} at position {pos} is not in the vocabulary")
        ids.append(_ID_OF[ch])
    return ids


def decode(ids) -> str:
    """Text of `ids`, stopping at the first <EOS> and skipping <PAD>/<BOS>."""
    out = []
    for i in ids:
        i = int(i)
        if i == EOS_ID:
            break
        if i in (PAD_ID, BOS_ID):
            continue
        out.append(VOCAB[i] if 0 <= i < VOCAB_SIZE else "<UNK>")
    return "".join(out)


def prompt_ids(expr: str) -> list[int]:
    """`<BOS>expr = `: what greedy decoding starts from."""
    return [BOS_ID] + encode(expr + ANSWER_SEPARATOR)


def sequence_ids(expr: str, result: int) -> list[int]:
    """The full training sequence `<BOS>expr = result<EOS>`."""
    return prompt_ids(expr) + encode(str(result)) + [EOS_ID]
