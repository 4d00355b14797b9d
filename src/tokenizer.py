"""The 35-token character vocabulary shared by data, model and analysis, and the answer formats.

Ids are fixed by docs/DESIGN.md section 3: four special tokens, then 31 characters. Some characters
(division, hex letters, comma) never occur in the data; they are reserved so that the
vocabulary, and therefore the parameter count, stays that of the original study.
"""

import re

SPECIAL_TOKENS = ("<PAD>", "<BOS>", "<EOS>", "<UNK>")
CHARACTERS = "0123456789+-*/()=ABCDEFabcdef ,"
VOCAB = SPECIAL_TOKENS + tuple(CHARACTERS)
VOCAB_SIZE = len(VOCAB)

PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
IGNORE_INDEX = -100  # label value that cross-entropy skips

_ID_OF = {tok: i for i, tok in enumerate(VOCAB)}
ANSWER_SEPARATOR = " = "
ANSWER_FORMATS = ("plain", "reversed")  # data.answer_format; reversed: docs/DESIGN.md section 8

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


def answer_text(result: int, answer_format: str = "plain") -> str:
    """The answer as the model writes it: str(result), or its reversed form (reversed_answer)."""
    if answer_format == "plain":
        return str(result)
    if answer_format == "reversed":
        return reversed_answer(result)
    raise ValueError(f"unknown answer format {answer_format!r}; one of {', '.join(ANSWER_FORMATS)}")


def sequence_ids(expr: str, result: int, answer_format: str = "plain") -> list[int]:
    """The full training sequence `<BOS>expr = answer<EOS>`, the answer in `answer_format`."""
    return prompt_ids(expr) + encode(answer_text(result, answer_format)) + [EOS_ID]


# ---------------------------------------------------------------------------- reversed answers

_REVERSED = re.compile(r"-?[0-9]+")


def reversed_answer(result: int) -> str:
    """The answer's digits least significant first, the sign kept in front: -123 -> "-321",
    120 -> "021", 0 -> "0". The variant answer format of docs/DESIGN.md section 8."""
    if not isinstance(result, int) or isinstance(result, bool):
        raise TypeError(f"expected an int, got {type(result).__name__}")
    return ("-" if result < 0 else "") + str(abs(result))[::-1]


def parse_reversed_answer(text: str) -> int:
    """The int whose `reversed_answer` is exactly `text`; ValueError otherwise.

    Strict, like exact_match: only the canonical form is accepted, so "-0" and "210" (whose value
    would have a leading zero: "012") are malformed, as are "", "-", "+12", " 12" and non-ASCII digits.
    """
    if not isinstance(text, str) or not _REVERSED.fullmatch(text):
        raise ValueError(f"{text!r} is not a reversed answer: an optional '-' then the digits 0-9")
    sign, digits = ("-", text[1:]) if text.startswith("-") else ("", text)
    if len(digits) > 1 and digits.endswith("0"):
        raise ValueError(f"{text!r} is not a reversed answer: its last digit, the most significant one, is 0")
    if sign and digits == "0":
        raise ValueError(f"{text!r} is not a reversed answer: zero has no sign")
    return int(sign + digits[::-1])
