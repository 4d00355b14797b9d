"""Packing a batch of sequences into fixed-width rows (several sequences per row).

A padded batch of B sequences of at most W tokens computes B x W positions, of which about a third
are padding for the study's training sets (docs/DESIGN.md section 8: a mean of 18 of at most 29-31
input positions). Packed, the same B sequences share rows of `width` positions: each sequence keeps
its tokens contiguous and whole in one row, attends only to itself (a block-diagonal causal mask,
src.model) and counts its positions from 0 (rotary embedding), so every token's output and the loss
over the batch are those of the padded batch.

Rows are filled by first-fit decreasing: the batch's sequences, longest first (ties in batch order),
each go to the first row with room for it. Measured at batch 256 and width 64 on the generated set
of 200,000 (a mean of 18.1 positions): every step of a 16-epoch schedule fits in 80 rows, 91% tokens,
where padded rows (256 of width 29) are 63% tokens; with the trainer's margin (81 rows, see
src/training/trainer.py PackedLayout) 90%. In batch order, next-fit would need 89 rows and first-fit
81 (over 2 epochs, where first-fit decreasing needs 79). The layout is vectorised over steps (one loop over
the B places of a batch, every step of an epoch at once), so a whole epoch's layout is computed on
the device in one pass; and the order of the examples, the batch composition, is not touched:
packing only says where in the rows each example of a batch goes.

    start, rows = pack_rows(lengths, width)   # lengths [steps, B]: start[s, j] = row * width + offset
"""

from __future__ import annotations

import torch

ALIGN = 16  # row widths are a multiple of this: the memory-efficient attention kernel's alignment


def row_width(longest: int) -> int:
    """The packed row width for sequences of at most `longest` tokens: twice that, rounded up to a
    multiple of ALIGN (64 for the study's 28-32). Measured on the study's sets (first-fit decreasing,
    the most rows any step needs): width 64 fills 92% of the positions, 96 and 128 fill 93%, while
    attention's cost per token grows with the width; width 32 fills 71%."""
    return max(ALIGN, -(-2 * max(longest, 1) // ALIGN) * ALIGN)


def pack_rows(lengths: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First-fit decreasing placement of each step's sequences into rows of `width` positions.

    `lengths`: [steps, B] integer tensor, the number of positions of each sequence (0 for an empty
    place, which takes no room), each at most `width`. Returns (start, rows): start [steps, B] long,
    the flat position (row * width + offset) of each sequence's first token in its step's rows, in
    the order of `lengths`; rows [steps] long, the rows each step fills (they are rows 0..rows-1).
    Deterministic: the same lengths give the same layout on any device.
    """
    if lengths.dim() != 2:
        raise ValueError(f"lengths must be [steps, batch], got shape {tuple(lengths.shape)}")
    steps, b = lengths.shape
    lengths = lengths.to(torch.int32)
    if lengths.numel() and int(lengths.max()) > width:
        raise ValueError(f"a sequence of {int(lengths.max())} positions does not fit a row of {width}")
    device = lengths.device
    by_length = torch.argsort(lengths, dim=1, descending=True, stable=True)
    sorted_lengths = lengths.gather(1, by_length)
    fill = torch.zeros(steps, max(b, 1), dtype=torch.int32, device=device)  # B rows always suffice
    every = torch.arange(steps, device=device)
    start_sorted = torch.empty(steps, b, dtype=torch.long, device=device)
    for j in range(b):
        length = sorted_lengths[:, j]
        room = (fill + length.unsqueeze(1) <= width).to(torch.int32)
        row = room.argmax(dim=1)  # the first row with room (argmax returns the first maximum)
        offset = fill[every, row]
        start_sorted[:, j] = row * width + offset.long()
        fill[every, row] = offset + length
    start = torch.empty_like(start_sorted).scatter_(1, by_length, start_sorted)
    return start, (fill > 0).sum(dim=1)


def packed_sources(index: torch.Tensor, start: torch.Tensor, lengths: torch.Tensor, data_width: int,
                   rows: int, width: int, empty: int) -> torch.Tensor:
    """For each position of a packed batch, the flat index into the padded data ([examples, data_width],
    flattened) of the token it holds.

    `index` [B]: the batch's examples (rows of the data); `start` [B]: where each begins in the packed
    rows (pack_rows); `lengths` [B]: their numbers of positions. Positions no sequence fills point to
    `empty` * data_width, the first position of an all-padding example (no label). Returns a
    [rows * width] long tensor; the position of a token within its sequence is source % data_width,
    and its sequence is source // data_width. Static shapes and no host synchronisation: fit for a
    CUDA graph.
    """
    b = index.shape[0]
    t = torch.arange(data_width, device=index.device)
    valid = t < lengths.long().unsqueeze(1)  # [B, data_width]
    # positions past a sequence's end go to slots of their own beyond the rows (every target distinct:
    # a scatter with repeated indices would be non-deterministic), dropped afterwards
    spill = rows * width + torch.arange(b * data_width, device=index.device).view(b, data_width)
    target = torch.where(valid, start.unsqueeze(1) + t, spill)
    source = index.unsqueeze(1) * data_width + t
    out = torch.full((rows * width + b * data_width,), empty * data_width, dtype=torch.long, device=index.device)
    out.scatter_(0, target.flatten(), source.flatten())
    return out[: rows * width]
